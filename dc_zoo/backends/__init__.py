"""Model families, one file each, behind ``DiffusionBackend``."""
from .base import DTYPES, DiffusionBackend, resolve_dtype
from .denoiser import DenoiserBackend
from .dit import DiTBackend
from .flux import FluxBackend
from .sd3 import StableDiffusion3Backend
from .sdxl import StableDiffusionXLBackend
from .stable_diffusion import StableDiffusionBackend

__all__ = ["DiffusionBackend", "StableDiffusionBackend", "StableDiffusion3Backend", "StableDiffusionXLBackend",
           "DiTBackend", "DenoiserBackend", "DTYPES", "resolve_dtype"]
__all__ += ["FluxBackend"]
