"""dc_zoo: Diffusion Classifier as a zero-shot model of the CLIP_benchmark / timm zoo.

Li, Prabhudesai, Duggal, Brown, Pathak, "Your Diffusion Model is Secretly a Zero-Shot
Classifier", ICCV 2023 (arXiv 2303.16203).
"""
from .backends import (DenoiserBackend, DiffusionBackend, DiTBackend, StableDiffusion3Backend, StableDiffusionBackend,
                       StableDiffusionXLBackend)
from .backends import FluxBackend
from .candidates import CandidateSet
from .classifier import DiffusionClassifier
from .config import PreprocessConfig, ScoringConfig
from .engine import EngineResult, NonFiniteScoreError, score_candidates
from .image_io import ImageInputError, ImageReadError
from .noise import sample_noise
from .strategies import SequentialPairedTest, StageSchedule, TimestepWeighting, build_strategy
from .calibration import Calibration
from .error_cache import ErrorCache
from .noise_schedules import DiscreteDiffusionSchedule, FlowMatchingSchedule, NoiseSchedule, schedule_from_scheduler
from .outputs import ClassificationOutput
from .timestep_plan import TimestepPlan
from ._factory import create_model
from ._registry import get_entry, list_models
from . import timm_zoo  # registers the class-conditional entries as timm models

__version__ = "0.1.0"

__all__ = [
    "create_model", "list_models", "get_entry",
    "DiffusionClassifier", "ClassificationOutput", "ScoringConfig", "PreprocessConfig",
    "TimestepPlan", "CandidateSet", "score_candidates", "EngineResult", "NonFiniteScoreError",
    "ImageInputError", "ImageReadError",
    "SequentialPairedTest", "StageSchedule", "TimestepWeighting", "build_strategy", "Calibration", "ErrorCache",
    "sample_noise", "NoiseSchedule", "DiscreteDiffusionSchedule", "FlowMatchingSchedule", "schedule_from_scheduler",
    "DiffusionBackend", "StableDiffusionBackend", "StableDiffusion3Backend", "StableDiffusionXLBackend", "DiTBackend",
    "DenoiserBackend",
]
__all__ += ["FluxBackend"]
