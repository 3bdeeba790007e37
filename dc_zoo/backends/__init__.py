"""Model families, one file each, behind ``DiffusionBackend``."""
from .base import DTYPES, DiffusionBackend, resolve_dtype
from .denoiser import DenoiserBackend
from .dit import DiTBackend
from .stable_diffusion import StableDiffusionBackend

__all__ = ["DiffusionBackend", "StableDiffusionBackend", "DiTBackend", "DenoiserBackend", "DTYPES", "resolve_dtype"]
