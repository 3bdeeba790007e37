"""Tiny, real diffusers components for tests (diffusers ``get_dummy_components`` style).

Random weights, seeded before each component (configs in ``dc_zoo.architectures``), so every
test sees the same networks and exercises the code paths of the full-size models quickly.
"""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from dc_zoo.architectures import build_dit, build_stable_diffusion

TOKENIZER_DIR = Path(tempfile.gettempdir()) / "dc_zoo_test_clip_tokenizer"


@functools.lru_cache(maxsize=1)
def clip_tokenizer():
    from dc_zoo.clip_tokenizer import build_clip_tokenizer

    return build_clip_tokenizer(TOKENIZER_DIR)


def tiny_sd_components(seed: int = 0, prediction_type: str = "epsilon") -> dict:
    """UNet2DConditionModel + AutoencoderKL + CLIPTextModel + CLIPTokenizer + DDPMScheduler (16 px)."""
    return build_stable_diffusion("tiny-sd", seed, prediction_type, tokenizer=clip_tokenizer())


def tiny_dit_components(seed: int = 0) -> dict:
    """DiTTransformer2DModel with learned sigma (out = 2 x in channels) + AutoencoderKL + DDIM schedule."""
    return build_dit("tiny-dit", seed)


def tiny_sd_backend(seed: int = 0, prediction_type: str = "epsilon"):
    from dc_zoo import StableDiffusionBackend

    return StableDiffusionBackend(**tiny_sd_components(seed, prediction_type))


def tiny_dit_backend(seed: int = 0):
    from dc_zoo import DiTBackend

    return DiTBackend(**tiny_dit_components(seed))


def label_shift_denoiser():
    """A pixel "denoiser" whose error depends on the image and the class label: enough to classify
    quickly where only the input handling is under test (see ``label_shift_classifier``)."""
    import torch

    class LabelShift(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))
            self.calls = 0  # network calls, so a test can show an input was refused before any

        def forward(self, x, t, labels):
            self.calls += 1
            return x * 0.1 * self.scale + labels.view(-1, 1, 1, 1).float() * 0.05

    return LabelShift()


def label_shift_classifier(n_samples=(2,), to_keep=(1,), image_batch_size: int = 8):
    """A ``DiffusionClassifier`` over 8 px pixels with ``label_shift_denoiser`` (``.backend.model``)."""
    import dc_zoo
    from dc_zoo.noise_schedules import DiscreteDiffusionSchedule

    backend = dc_zoo.DenoiserBackend(label_shift_denoiser(), DiscreteDiffusionSchedule.linear(),
                                     dc_zoo.PreprocessConfig(size=8))
    return dc_zoo.DiffusionClassifier(backend, dc_zoo.ScoringConfig(n_samples=n_samples, to_keep=to_keep),
                                      image_batch_size=image_batch_size)
