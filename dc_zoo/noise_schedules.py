"""Forward processes and regression targets: how x_t, the network's target and the error are formed.

The engine knows no model family; it asks a schedule to noise ``x0`` at an integer timestep
index ``t`` in ``[0, T)`` (the grid the plan and the keyed noise live on), for what the network
is given as its time, and for the pair (estimate, target) whose distance is the error. Both
families below are linear, ``x_t = a(t) x0 + b(t) eps``, and every parameterisation is a linear
target ``alpha x0 + beta eps``, so a network trained for one target can be scored in the space
of another (``error_space``): from ``x_t`` and the prediction the schedule recovers the model's
``(x0_hat, eps_hat)`` and compares them in the chosen space. Which space weights which
timesteps (per element, for rectified flow with noise level ``s``):

* velocity ``eps - x0``: ``|v_hat - v|^2 = |x0_hat - x0|^2 / s^2 = |eps_hat - eps|^2 / (1 - s)^2``:
  near-clean timesteps (s -> 0) dominate; the SD3-class training target.
* x0: ``|x0_hat - x0|^2``: near-clean timesteps count little, noisy ones fully.
* epsilon: ``|eps_hat - eps|^2``: the paper's (DDPM) error, noisy timesteps count little.

The families:

* ``DiscreteDiffusionSchedule``: DDPM-style ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``
  (done by hand, as the paper) with target eps (``"epsilon"``), v (``"v_prediction"``,
  SD 2.x 768 px) or x0 (``"sample"``); built from any diffusers scheduler's training schedule.
* ``FlowMatchingSchedule``: rectified flow ``x_t = (1 - s) x0 + s eps`` with a velocity, x0 or
  eps target, either time direction, continuous or integer network time at any scale, and
  ``shifted`` (SD3's) or ``logit_normal`` spacing of the noise levels over the grid.

Bring a schedule the library does not have by implementing ``NoiseSchedule`` (``add_noise``,
``target``, ``model_timestep``; optionally ``estimate``, to measure the error in another space).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = [
    "NoiseSchedule",
    "DiscreteDiffusionSchedule",
    "FlowMatchingSchedule",
    "PREDICTION_TYPES",
    "FLOW_PREDICTIONS",
    "FLOW_SPACINGS",
    "estimate_in_target_space",
    "schedule_from_scheduler",
]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
FLOW_PREDICTIONS = ("velocity", "x0", "epsilon")
FLOW_SPACINGS = ("shifted", "logit_normal")
_FLOW_ALIASES = {"velocity": "velocity", "flow": "velocity", "flow_prediction": "velocity", "v": "velocity",
                 "x0": "x0", "sample": "x0", "epsilon": "epsilon", "eps": "epsilon"}


def _expand(coef: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return coef.reshape(-1, *([1] * (like.ndim - 1)))


@runtime_checkable
class NoiseSchedule(Protocol):
    """What the engine needs of a forward process.

    ``t`` is always a ``[B]`` long tensor of grid indices in ``[0, num_train_timesteps)``: the
    plan, the keyed noise and the error cache are indexed by it. What the network receives as
    its time is ``model_timestep(t)``. A schedule may also define
    ``estimate(prediction, x_t, t) -> tensor``, the network's output converted into the space of
    ``target`` (when the error is measured in another space than the network predicts); without
    it the prediction is compared with ``target`` as is.
    """

    num_train_timesteps: int

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t for clean samples ``x0`` and noise ``eps`` at grid indices ``t``."""

    def target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the error compares the (converted) prediction with."""

    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        """The time the network is given for grid indices ``t``."""


def estimate_in_target_space(schedule: Any, prediction: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``schedule.estimate(prediction, x_t, t)`` where the schedule defines it, else the prediction."""
    estimate = getattr(schedule, "estimate", None)
    return prediction if estimate is None else estimate(prediction, x_t, t)


class _LinearGaussianSchedule(ABC):
    """``x_t = a x0 + b eps`` and targets ``alpha x0 + beta eps``: the conversion between spaces.

    Subclasses give ``coefficients(t) -> (a, b)`` and ``target_coefficients(kind, t) -> (alpha, beta)``,
    and set ``prediction`` (what the network outputs) and ``error_space`` (where the error is measured).
    """

    prediction: str
    error_space: str
    _LATER_DEFAULTS: dict[str, Any] = {}  # settings added after the first release, at their defaults

    def settings(self) -> dict[str, Any]:
        """The public settings that fix results (what a model identity hashes), without the fields
        added after the first release while they hold their defaults, so identities and error
        caches made before those fields existed still match."""
        out = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        if out.get("error_space") == self.prediction:
            out.pop("error_space")
        for name, default in self._LATER_DEFAULTS.items():
            if name in out and out[name] == default:
                out.pop(name)
        return out

    @abstractmethod
    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a, b)`` of ``x_t = a x0 + b eps`` at grid indices ``t``."""

    @abstractmethod
    def target_coefficients(self, kind: str, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha, beta)`` of the target ``alpha x0 + beta eps`` of parameterisation ``kind``."""

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, b = self.coefficients(t)
        return _expand(a, x0) * x0 + _expand(b, x0) * eps

    def target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, beta = self.target_coefficients(self.error_space, t)
        return _expand(alpha, x0) * x0 + _expand(beta, x0) * eps

    def estimate(self, prediction: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The prediction in ``error_space``: solve ``[a b; alpha beta] [x0; eps] = [x_t; prediction]``."""
        if self.error_space == self.prediction:
            return prediction
        a, b = self.coefficients(t)
        alpha, beta = self.target_coefficients(self.prediction, t)
        det = a * beta - b * alpha
        if bool((det.abs() < 1e-8).any()):
            bad = int(t[(det.abs() < 1e-8).nonzero()[0]])
            raise ValueError(
                f"A {self.prediction} prediction cannot be turned into {self.error_space} at timestep {bad}: "
                f"x_t and the prediction do not determine x0 and eps there. Leave that end of the range out "
                f"(ScoringConfig(timestep_range=(lo, hi))) or measure the error in the {self.prediction} space."
            )
        pred = prediction.float()
        x0_hat = (_expand(beta / det, pred) * x_t - _expand(b / det, pred) * pred)
        eps_hat = (_expand(a / det, pred) * pred - _expand(alpha / det, pred) * x_t)
        q_alpha, q_beta = self.target_coefficients(self.error_space, t)
        return _expand(q_alpha, pred) * x0_hat + _expand(q_beta, pred) * eps_hat


@dataclass
class DiscreteDiffusionSchedule(_LinearGaussianSchedule):
    """DDPM-family schedule given by its cumulative alphas (``abar``), float64 for accuracy.

    ``error_space`` (default: ``prediction_type``, the paper's choice for eps models) measures the
    error of an eps, v or x0 prediction in any of the three spaces.
    """

    alphas_cumprod: torch.Tensor
    prediction_type: str = "epsilon"
    error_space: str | None = None

    def __post_init__(self) -> None:
        for name, value in (("prediction_type", self.prediction_type), ("error_space", self.error_space)):
            if value is not None and value not in PREDICTION_TYPES:
                raise ValueError(
                    f"{name} {value!r} is not supported; choose one of {PREDICTION_TYPES} "
                    "(flow-matching models use FlowMatchingSchedule)."
                )
        self.error_space = self.error_space or self.prediction_type
        self.alphas_cumprod = torch.as_tensor(self.alphas_cumprod, dtype=torch.float64).cpu()
        self._sqrt_abar: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def prediction(self) -> str:
        return self.prediction_type

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.numel())

    @classmethod
    def from_betas(cls, betas: torch.Tensor, prediction_type: str = "epsilon", **kwargs) -> "DiscreteDiffusionSchedule":
        abar = torch.cumprod(1.0 - torch.as_tensor(betas, dtype=torch.float64), dim=0)
        return cls(abar, prediction_type, **kwargs)

    @classmethod
    def linear(cls, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
               prediction_type: str = "epsilon", **kwargs) -> "DiscreteDiffusionSchedule":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
        return cls.from_betas(betas, prediction_type, **kwargs)

    @classmethod
    def scaled_linear(cls, num_train_timesteps: int = 1000, beta_start: float = 0.00085,
                      beta_end: float = 0.012, prediction_type: str = "epsilon", **kwargs) -> "DiscreteDiffusionSchedule":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
        return cls.from_betas(betas, prediction_type, **kwargs)

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        device = t.device
        if device not in self._sqrt_abar:
            abar = self.alphas_cumprod
            self._sqrt_abar[device] = (abar.sqrt().float().to(device), (1 - abar).sqrt().float().to(device))
        a, s = self._sqrt_abar[device]
        return a[t], s[t]

    def target_coefficients(self, kind: str, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, s = self.coefficients(t)
        if kind == "epsilon":
            return torch.zeros_like(a), torch.ones_like(a)
        if kind == "sample":
            return torch.ones_like(a), torch.zeros_like(a)
        return -s, a  # v = sqrt(abar) eps - sqrt(1 - abar) x0

    def target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.error_space == "epsilon":
            return eps  # the paper's target, untouched
        if self.error_space == "sample":
            return x0
        a, s = self.coefficients(t)
        return _expand(a, x0) * eps - _expand(s, x0) * x0

    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        return t


@dataclass
class FlowMatchingSchedule(_LinearGaussianSchedule):
    """Rectified flow ``x_t = (1 - s) x0 + s eps`` on a grid of ``num_train_timesteps`` noise levels.

    Attributes:
        num_train_timesteps: grid size T; the plan's integer timesteps index it.
        shift: ``shifted`` spacing: ``s = shift u / (1 + (shift - 1) u)`` with ``u = (t + 1) / T``
            (diffusers' FlowMatchEulerDiscreteScheduler, so ``s`` is never 0; SD3 uses shift 3).
        timestep_scale: the network is given its time times this (1000 for diffusers models,
            1 for a model trained on continuous time in [0, 1]).
        prediction: what the network outputs: ``velocity`` (the time derivative of x_t:
            ``eps - x0`` when noise is at time 1, ``x0 - eps`` when the clean image is), ``x0`` or
            ``epsilon``.
        error_space: where the error is measured (default: ``prediction``); see the module
            docstring for which timesteps each space weights.
        clean_at: the network's time of the clean image: 0 (SD3, diffusers: time = s) or 1
            (time = 1 - s, as many flow-matching codebases write it).
        integer_time: give the network ``round(time * timestep_scale)`` as integers.
        spacing: ``shifted`` (above) or ``logit_normal`` (``s = sigmoid(logit_mean + logit_std *
            Phi^-1(u))``, ``u = (t + 0.5) / T``: SD3's training distribution of noise levels).
        logit_mean, logit_std: the logit-normal's parameters (SD3: 0 and 1).
    """

    num_train_timesteps: int = 1000
    shift: float = 1.0
    timestep_scale: float = 1000.0
    prediction: str = "velocity"
    error_space: str | None = None
    clean_at: int = 0
    integer_time: bool = False
    spacing: str = "shifted"
    logit_mean: float = 0.0
    logit_std: float = 1.0

    _LATER_DEFAULTS = {"prediction": "velocity", "clean_at": 0, "integer_time": False, "spacing": "shifted",
                       "logit_mean": 0.0, "logit_std": 1.0}

    def __post_init__(self) -> None:
        for name, value in (("prediction", self.prediction), ("error_space", self.error_space)):
            if value is not None and value not in _FLOW_ALIASES:
                raise ValueError(f"FlowMatchingSchedule {name} {value!r} is not supported; choose one of "
                                 f"{FLOW_PREDICTIONS}.")
        self.prediction = _FLOW_ALIASES[self.prediction]
        self.error_space = _FLOW_ALIASES[self.error_space] if self.error_space is not None else self.prediction
        if self.clean_at not in (0, 1):
            raise ValueError(f"clean_at is the network's time of the clean image, 0 or 1; got {self.clean_at!r}.")
        if self.spacing not in FLOW_SPACINGS:
            raise ValueError(f"spacing {self.spacing!r} is not supported; choose one of {FLOW_SPACINGS}.")
        if not float(self.shift) > 0 or not float(self.logit_std) > 0 or not float(self.timestep_scale) > 0:
            raise ValueError(f"shift, logit_std and timestep_scale must be positive; got {self.shift}, "
                             f"{self.logit_std}, {self.timestep_scale}.")
        if int(self.num_train_timesteps) < 1:
            raise ValueError(f"num_train_timesteps must be a positive integer, got {self.num_train_timesteps!r}.")

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """The noise level ``s`` of grid indices ``t``."""
        T = float(self.num_train_timesteps)
        if self.spacing == "logit_normal":
            u = (t.double() + 0.5) / T
            z = math.sqrt(2.0) * torch.erfinv(2.0 * u - 1.0)
            return torch.sigmoid(self.logit_mean + self.logit_std * z).float()
        u = (t.float() + 1.0) / T
        return self.shift * u / (1.0 + (self.shift - 1.0) * u)

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.sigma(t)
        return 1.0 - s, s

    def target_coefficients(self, kind: str, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        one = torch.ones(t.shape, device=t.device)
        if kind == "x0":
            return one, torch.zeros_like(one)
        if kind == "epsilon":
            return torch.zeros_like(one), one
        sign = 1.0 if self.clean_at == 0 else -1.0  # d x_t / d time, time = s or 1 - s
        return -sign * one, sign * one

    def target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.error_space == "x0":
            return x0
        if self.error_space == "epsilon":
            return eps
        return eps - x0 if self.clean_at == 0 else x0 - eps

    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        s = self.sigma(t)
        time = (s if self.clean_at == 0 else 1.0 - s) * self.timestep_scale
        return time.round().long() if self.integer_time else time


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
