"""Class-conditional DiT (Peebles & Xie) through diffusers' ``DiTTransformer2DModel``.

DiT-XL/2 predicts [eps, Sigma] (learned variance); the classifier scores the epsilon half.
Latents come from the sd-vae-ft-ema VAE (mean x 0.18215); images use ADM's center crop.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ..config import PreprocessConfig
from ..noise_schedules import DiscreteDiffusionSchedule, schedule_from_scheduler
from .base import DiffusionBackend
from .latent import encode_with_vae, vae_scale_factor

__all__ = ["DiTBackend"]


class DiTBackend(DiffusionBackend):
    """Class-label-conditional latent diffusion transformer."""

    conditioning = "class_label"

    def __init__(self, transformer, vae, scheduler=None, id2label: dict[int, str] | None = None,
                 preprocess: PreprocessConfig | None = None):
        super().__init__()
        self.transformer = transformer
        self.vae = vae
        self.scheduler = scheduler
        # DiT's training schedule: 1000-step linear betas 1e-4..0.02.
        self.schedule = schedule_from_scheduler(scheduler) if scheduler is not None else DiscreteDiffusionSchedule.linear()
        size = int(transformer.config.sample_size) * vae_scale_factor(vae)
        self.preprocess = preprocess or PreprocessConfig(size=size, interpolation="bicubic", crop="adm_center")
        self.id2label = {int(k): v for k, v in (id2label or {}).items()}
        self.num_classes = int(transformer.config.num_embeds_ada_norm)

    @classmethod
    def from_pipeline(cls, pipe, preprocess: PreprocessConfig | None = None) -> "DiTBackend":
        """From a loaded ``DiTPipeline``; it keeps only ``labels`` (name -> id), so invert that."""
        id2label = getattr(pipe, "id2label", None)
        if id2label is None and getattr(pipe, "labels", None):
            grouped: dict[int, list[str]] = {}
            for name, label in pipe.labels.items():
                grouped.setdefault(int(label), []).append(name)
            id2label = {k: ", ".join(v) for k, v in grouped.items()}
        return cls(pipe.transformer, pipe.vae, pipe.scheduler, id2label, preprocess)

    def label_names(self) -> dict[int, str] | None:
        return self.id2label or None

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return encode_with_vae(self.vae, pixels)

    def encode_conditions(self, conditions: Sequence[Any]) -> torch.Tensor:
        labels = []
        for c in conditions:
            if isinstance(c, bool) or not isinstance(c, (int, torch.Tensor)) or isinstance(c, str):
                raise TypeError(f"DiT candidates are integer class labels; got {c!r}.")
            c = int(c)
            if not 0 <= c < self.num_classes:
                raise ValueError(f"Class label {c} is outside DiT's 0..{self.num_classes - 1}.")
            labels.append(c)
        return torch.tensor(labels, dtype=torch.long, device=self.device)

    def unconditional(self) -> torch.Tensor:
        # The null label is the extra embedding row used for classifier-free guidance.
        return torch.tensor([self.num_classes], dtype=torch.long, device=self.device)

    def denoise(self, x_t: torch.Tensor, timesteps: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        dtype = self.transformer.dtype
        out = self.transformer(x_t.to(dtype), timestep=timesteps, class_labels=conditions).sample
        channels = x_t.shape[1]
        if out.shape[1] == 2 * channels:  # learned sigma: keep the epsilon half
            out = out[:, :channels]
        return out
