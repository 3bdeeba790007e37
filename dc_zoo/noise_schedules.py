"""Forward processes and regression targets: how x_t and the network's target are formed.

The engine knows no model family; it asks a schedule to noise ``x0`` at an integer timestep
index ``t`` in ``[0, T)`` and for the target the network was trained to predict. Two families:

* ``DiscreteDiffusionSchedule``: DDPM-style ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``
  (done by hand, as the paper) with target eps (``"epsilon"``), v (``"v_prediction"``,
  SD 2.x 768 px) or x0 (``"sample"``); built from any diffusers scheduler's training schedule.
* ``FlowMatchingSchedule``: rectified flow ``x_t = (1 - s) x0 + s eps`` with velocity target
  ``eps - x0`` (SD3-class models), ``s = shift(t / T)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = [
    "NoiseSchedule",
    "DiscreteDiffusionSchedule",
    "FlowMatchingSchedule",
    "PREDICTION_TYPES",
    "schedule_from_scheduler",
]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def _expand(coef: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return coef.reshape(-1, *([1] * (like.ndim - 1)))


@runtime_checkable
class NoiseSchedule(Protocol):
    """What the engine needs of a forward process."""

    num_train_timesteps: int

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...

    def target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...

    def model_timestep(self, t: torch.Tensor) -> torch.Tensor: ...


@dataclass
class DiscreteDiffusionSchedule:
    """DDPM-family schedule given by its cumulative alphas (``abar``), float64 for accuracy."""

    alphas_cumprod: torch.Tensor
    prediction_type: str = "epsilon"

    def __post_init__(self) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type {self.prediction_type!r} is not supported; choose one of "
                f"{PREDICTION_TYPES} (flow-matching models use FlowMatchingSchedule)."
            )
        self.alphas_cumprod = torch.as_tensor(self.alphas_cumprod, dtype=torch.float64).cpu()
        self._sqrt_abar: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.numel())

    @classmethod
    def from_betas(cls, betas: torch.Tensor, prediction_type: str = "epsilon") -> "DiscreteDiffusionSchedule":
        abar = torch.cumprod(1.0 - torch.as_tensor(betas, dtype=torch.float64), dim=0)
        return cls(abar, prediction_type)

    @classmethod
    def linear(cls, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
               prediction_type: str = "epsilon") -> "DiscreteDiffusionSchedule":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
        return cls.from_betas(betas, prediction_type)

    @classmethod
    def scaled_linear(cls, num_train_timesteps: int = 1000, beta_start: float = 0.00085,
                      beta_end: float = 0.012, prediction_type: str = "epsilon") -> "DiscreteDiffusionSchedule":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
        return cls.from_betas(betas, prediction_type)

    def _coefs(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        device = t.device
        if device not in self._sqrt_abar:
            abar = self.alphas_cumprod
            self._sqrt_abar[device] = (abar.sqrt().float().to(device), (1 - abar).sqrt().float().to(device))
        a, s = self._sqrt_abar[device]
        return a[t], s[t]

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = self._coefs(t)
        return _expand(a, x0) * x0 + _expand(s, x0) * eps

    def target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "epsilon":
            return eps
        if self.prediction_type == "sample":
            return x0
        a, s = self._coefs(t)
        return _expand(a, x0) * eps - _expand(s, x0) * x0

    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        return t


@dataclass
class FlowMatchingSchedule:
    """Rectified flow: ``x_t = (1 - s) x0 + s eps``, target ``eps - x0``.

    ``s = shift * u / (1 + (shift - 1) * u)`` with ``u = (t + 1) / T`` (diffusers'
    FlowMatchEulerDiscreteScheduler convention, so ``s`` is never 0); the network sees
    ``s * timestep_scale``.
    """

    num_train_timesteps: int = 1000
    shift: float = 1.0
    timestep_scale: float = 1000.0

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        u = (t.float() + 1.0) / self.num_train_timesteps
        return self.shift * u / (1.0 + (self.shift - 1.0) * u)

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = _expand(self.sigma(t), x0)
        return (1.0 - s) * x0 + s * eps

    def target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return eps - x0

    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma(t) * self.timestep_scale


def schedule_from_scheduler(scheduler: Any) -> NoiseSchedule:
    """The training schedule of a diffusers scheduler (DDPM/DDIM/PNDM/Euler/FlowMatch...).

    The prediction target follows ``scheduler.config.prediction_type``.
    """
    config = getattr(scheduler, "config", {})
    get = config.get if hasattr(config, "get") else lambda k, d=None: getattr(config, k, d)
    if type(scheduler).__name__.startswith("FlowMatch"):
        return FlowMatchingSchedule(
            num_train_timesteps=int(get("num_train_timesteps", 1000)), shift=float(get("shift", 1.0) or 1.0)
        )
    abar = getattr(scheduler, "alphas_cumprod", None)
    if abar is None:
        raise ValueError(
            f"Scheduler {type(scheduler).__name__} exposes no alphas_cumprod; pass a DDPM-family "
            "scheduler (DDPMScheduler, DDIMScheduler, PNDMScheduler, ...) or a FlowMatch scheduler."
        )
    return DiscreteDiffusionSchedule(abar, prediction_type=get("prediction_type", "epsilon") or "epsilon")
