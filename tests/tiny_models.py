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
