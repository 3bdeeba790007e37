"""Typed configuration: how images are prepared and how candidates are scored.

Preprocessing and scoring are separate on purpose: the first belongs to a model (its entry
fixes resolution, interpolation and crop), the second to an experiment (stages, loss, seed).
"""
from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .losses import LOSSES
from .timestep_plan import validate_stages, validate_window

__all__ = ["PreprocessConfig", "ScoringConfig", "INTERPOLATIONS", "CROPS", "parse_batch_size"]

INTERPOLATIONS = ("bicubic", "bilinear", "lanczos", "nearest")
CROPS = ("center", "adm_center")


@dataclass(frozen=True)
class PreprocessConfig:
    """How a PIL image or tensor becomes the model's input in ``[-1, 1]`` (mean/std 0.5)."""

    size: int = 512  # short side resized to this, then a square crop of this size
    interpolation: str = "bicubic"  # the paper's default; bilinear and lanczos also allowed
    crop: str = "center"  # "center" (torchvision) or "adm_center" (DiT / ADM's box-then-bicubic)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    channels: int = 3  # what the model takes: 3 (RGB) or 1 (grey: ITU-R 601 luma, as PIL's "L")
    model_range: tuple[float, float] = (-1.0, 1.0)  # the model's pixel range, e.g. (0, 1) for a [0, 1] model

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {self.interpolation!r} unknown; choose one of {INTERPOLATIONS}.")
        if self.crop not in CROPS:
            raise ValueError(f"crop {self.crop!r} unknown; choose one of {CROPS}.")
        if int(self.size) < 1:
            raise ValueError(f"size must be a positive integer, got {self.size!r}.")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {self.channels!r}.")
        try:
            low, high = (float(v) for v in self.model_range)
        except (TypeError, ValueError):
            raise ValueError(f"model_range must be (low, high), e.g. (0, 1); got {self.model_range!r}.") from None
        if not low < high:
            raise ValueError(f"model_range must have low < high, got {self.model_range!r}.")
        object.__setattr__(self, "model_range", (low, high))

    @property
    def is_default_model_input(self) -> bool:
        """The classifier's pixels go to the model unchanged: RGB in [-1, 1]."""
        return self.channels == 3 and self.model_range == (-1.0, 1.0)

    def to_model_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """The classifier's pixels ``[B, 3, S, S]`` (RGB, ``mean``/``std`` normalised: [-1, 1] by
        default, as the prefilter and the content keys see them) in the model's channels and range."""
        if self.is_default_model_input:
            return pixels
        mean = torch.tensor(self.mean, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
        unit = pixels * std + mean  # [0, 1] RGB
        if self.channels == 1:
            luma = torch.tensor((0.299, 0.587, 0.114), dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
            unit = (unit * luma).sum(dim=1, keepdim=True)
        low, high = self.model_range
        return low + (high - low) * unit

    def identity(self) -> dict[str, Any]:
        """The fields that fix results (run identities, error-cache namespaces); the model-input
        fields only when they differ from the default, so identities written before them still match."""
        d = asdict(self)
        if self.is_default_model_input:
            d.pop("channels")
            d.pop("model_range")
        else:
            d["model_range"] = list(self.model_range)
        return d


@dataclass(frozen=True)
class ScoringConfig:
    """The Diffusion Classifier experiment: adaptive stages, loss, noise and batching.

    The defaults are the paper's two-stage schedule for small label sets (CIFAR-10).
    """

    n_samples: tuple[int, ...] = (50, 500)  # timesteps per stage (stage sets do not nest)
    to_keep: tuple[int, ...] = (5, 1)  # candidates kept after each stage; the last must be 1
    loss: str = "l2"  # "l2" (default), "l1" or "huber"
    n_trials: int = 1  # eps draws per timestep
    seed: int = 0  # noise depends only on (seed, sample key)
    batch_size: int | str = 32  # network evaluations per forward pass, packed across images; "auto": measured
    strategy: dict[str, Any] | None = None  # dc_zoo.strategies spec; None: the paper's stages
    max_evaluations: int | None = None  # per-image budget (anytime answer); None: none
    prefilter: dict[str, Any] | None = None  # {"model": open_clip name, "k": classes kept}; None: none
    timestep_weights: dict[str, Any] | str | None = None  # "sine" or a fitted table; None: uniform (the paper)
    timestep_range: tuple[float, float] | None = None  # (lo, hi) fractions of [0, T) the plan spreads over
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # free-form notes kept in results

    def __post_init__(self) -> None:
        object.__setattr__(self, "n_samples", _stage_tuple("n_samples", self.n_samples))
        object.__setattr__(self, "to_keep", _stage_tuple("to_keep", self.to_keep))
        validate_stages(self.n_samples, self.to_keep, None)  # the plan's rules; the model's T: by the engine
        if not isinstance(self.loss, str) or self.loss not in LOSSES:
            raise ValueError(f"Unknown loss {self.loss!r}; choose one of {LOSSES}.")
        object.__setattr__(self, "n_trials", _positive_int("n_trials", self.n_trials))
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
            raise ValueError(f"seed must be an integer, got {self.seed!r}.")
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "batch_size", parse_batch_size(self.batch_size))
        from .strategies import build_strategy

        if self.strategy is not None:
            if not isinstance(self.strategy, dict):
                raise ValueError(f"strategy must be a dict such as {{'name': 'sequential'}}, got {self.strategy!r}.")
            build_strategy(self.strategy, self.to_keep)  # validates the spec, naming the bad option
        if self.max_evaluations is not None:
            object.__setattr__(self, "max_evaluations", _positive_int("max_evaluations", self.max_evaluations))
        if self.prefilter is not None:
            _check_prefilter(self.prefilter)
        if self.timestep_weights is not None:
            from .strategies.weighting import build_weighting

            weighting = build_weighting(self.timestep_weights)  # validates, naming the bad option
            object.__setattr__(self, "timestep_weights", None if weighting.is_uniform else weighting.to_dict())
        if self.timestep_range is not None:
            object.__setattr__(self, "timestep_range", validate_window(self.timestep_range))
        if not isinstance(self.extra, dict):
            raise ValueError(f"extra must be a dict of notes, got {type(self.extra).__name__}.")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["n_samples"], d["to_keep"] = list(self.n_samples), list(self.to_keep)
        if self.timestep_range is not None:
            d["timestep_range"] = list(self.timestep_range)
        return d


def _check_prefilter(spec: Any) -> None:
    if not isinstance(spec, dict) or not isinstance(spec.get("model"), str) or "k" not in spec:
        raise ValueError(f"prefilter must be a dict with an open_clip model and k, e.g. "
                         f"{{'model': 'clip-glyphs-mini', 'k': 10}}; got {spec!r}.")
    unknown = sorted(set(spec) - {"model", "k", "templates"})
    if unknown:
        raise ValueError(f"prefilter has no option(s) {unknown}; it takes model, k and templates.")
    _positive_int("prefilter k", spec["k"])


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def _stage_tuple(name: str, value: Any) -> tuple[int, ...]:
    """One stage as a bare integer (``n_samples=50, to_keep=1``) or a sequence of positive integers."""
    values = (value,) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"{name} must be a positive integer or a sequence of them, e.g. {name}=(50, 500); "
                         f"got {value!r}.")
    values = tuple(values)
    if not values:
        raise ValueError(f"{name} must list at least one stage, e.g. n_samples=(50, 500), to_keep=(5, 1).")
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, numbers.Integral) or int(v) < 1]
    if bad:
        raise ValueError(f"{name} must hold positive integers, got {values}.")
    return tuple(int(v) for v in values)


def parse_batch_size(value: Any) -> int | str:
    """``"auto"``, or a positive integer from an int, a numpy integer or a digit string (``--batch-size 64``)."""
    if isinstance(value, str) and value == "auto":
        return "auto"
    if isinstance(value, bool) or not (isinstance(value, numbers.Integral) or (isinstance(value, str) and value.isdigit())):
        raise ValueError(f"batch_size must be a positive integer or 'auto', got {value!r}.")
    if int(value) < 1:
        raise ValueError(f"batch_size must be at least 1 (or 'auto'), got {value}.")
    return int(value)
