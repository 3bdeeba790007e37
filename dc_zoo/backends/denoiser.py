"""Your own denoiser: any torch module, in pixel or latent space, with its own schedule.

The module is called as ``model(x_t, timesteps, conditions)`` and must predict what its
schedule says it was trained to predict: eps, v or x0 (``DiscreteDiffusionSchedule`` with
``prediction_type``) or a rectified-flow velocity (``FlowMatchingSchedule``). Candidates are
integer labels by default; pass ``condition_encoder`` for anything else (text embeddings,
non-image conditions).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..config import PreprocessConfig
from ..noise_schedules import NoiseSchedule
from .base import DiffusionBackend
from .latent import encode_with_vae

__all__ = ["DenoiserBackend"]


class DenoiserBackend(DiffusionBackend):
    """Wraps a user's conditional denoiser for the engine."""

    def __init__(self, model: nn.Module, schedule: NoiseSchedule, preprocess: PreprocessConfig,
                 vae: nn.Module | None = None,
                 condition_encoder: Callable[[Sequence[Any]], Any] | None = None,
                 null_condition: Any = None, conditioning: str = "class_label",
                 image_encoder: Callable[[torch.Tensor], torch.Tensor] | None = None):
        super().__init__()
        self.model = model
        self.vae = vae
        self.schedule = schedule
        self.preprocess = preprocess
        self.conditioning = conditioning
        self._condition_encoder = condition_encoder
        self._null_condition = null_condition
        self._image_encoder = image_encoder

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        if self._image_encoder is not None:
            return self._image_encoder(pixels.to(self.device)).float()
        if self.vae is not None:
            return encode_with_vae(self.vae, pixels)
        return pixels.to(self.device, torch.float32)

    def encode_conditions(self, conditions: Sequence[Any]) -> Any:
        if self._condition_encoder is not None:
            return self._condition_encoder(conditions)
        try:
            return torch.tensor([int(c) for c in conditions], dtype=torch.long, device=self.device)
        except (TypeError, ValueError) as err:
            raise TypeError(
                "This denoiser takes integer class labels by default; pass condition_encoder= to "
                f"DenoiserBackend for other candidates ({err})."
            ) from None

    def unconditional(self) -> Any:
        if self._null_condition is None:
            return super().unconditional()
        return self._null_condition

    def denoise(self, x_t: torch.Tensor, timesteps: torch.Tensor, conditions: Any) -> torch.Tensor:
        return self.model(x_t.to(self.dtype), timesteps, conditions)
