"""The one small interface every model family implements for the engine.

A backend turns preprocessed pixels into the space the model denoises in, turns candidates
(prompts or class labels) into conditioning tensors, and runs the network. Its
``schedule`` says how x_t and the regression target are formed. The engine knows nothing
else, so a new family (flow-matching text-to-image, non-image data) is a new backend file.
"""
from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import Any, Sequence

import torch
from torch import nn

from ..config import PreprocessConfig
from ..noise_schedules import NoiseSchedule

__all__ = ["DiffusionBackend", "DTYPES", "resolve_dtype"]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"float16"``/``"fp16"``/``torch.float16`` -> ``torch.float16``; ``None`` stays ``None``."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; choose one of {sorted(set(DTYPES))}.")
    return DTYPES[dtype]


class DiffusionBackend(nn.Module, metaclass=ABCMeta):
    """Base class of the model families; subclasses register their networks as attributes.

    Attributes:
        schedule: the training noise schedule and prediction target.
        preprocess: default image preparation for this model.
        conditioning: ``"text"`` (prompts) or ``"class_label"`` (integer labels).
    """

    schedule: NoiseSchedule
    preprocess: PreprocessConfig
    conditioning: str = "text"
    static_batch: bool = False  # compiled networks want one batch shape (the engine pads)

    @abstractmethod
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` in the preprocess config's channels and range (RGB in ``[-1, 1]`` by
        default) -> the clean sample x0 the model denoises."""

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """The shape of one image's x0 (and so of its eps), e.g. ``(4, 64, 64)`` for SD at 512 px:
        measured once by encoding a blank image of the preprocess size."""
        cached = self.__dict__.get("_latent_shape")
        if cached is None:
            size = int(self.preprocess.size)
            channels = int(getattr(self.preprocess, "channels", 3))
            with torch.inference_mode():
                x0 = self.encode_images(torch.zeros(1, channels, size, size, device=self.device))
            cached = self.__dict__["_latent_shape"] = tuple(int(v) for v in x0.shape[1:])
        return cached

    @abstractmethod
    def encode_conditions(self, conditions: Sequence[Any]) -> Any:
        """Candidates -> a pytree of tensors whose leading dimension indexes them."""

    def unconditional(self) -> Any:
        """The null condition (empty prompt / null class), one row, for normalised scores."""
        raise TypeError(f"{type(self).__name__} has no unconditional branch; normalised scores need one.")

    @abstractmethod
    def denoise(self, x_t: torch.Tensor, timesteps: torch.Tensor, conditions: Any) -> torch.Tensor:
        """The network's prediction of ``schedule.target`` for a batch."""

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.float32

    def label_names(self) -> dict[int, str] | None:
        """Class-conditional backends: label -> name, when the model ships one."""
        return None
