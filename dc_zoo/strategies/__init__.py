"""Scoring strategies: which (candidate, timestep) pairs the engine evaluates, and when to stop.

The default is the paper's adaptive stages (``StageSchedule``). Others spend fewer
evaluations for the same answer: ``SequentialPairedTest`` drops candidates as soon as a paired
test says they are worse, ``apply_budget`` stops at a per-image budget, and
``ContrastivePrefilter`` keeps a CLIP model's top-k classes before any diffusion evaluation, and
``TimestepWeighting`` decides how much each timestep's error counts (``ScoringConfig.timestep_weights``).
A strategy is named in ``ScoringConfig(strategy={...})`` by a JSON spec, so it travels through
``DC_ZOO_SCORING``, registry entries and ``dc-zoo eval`` unchanged.
"""
from __future__ import annotations

from typing import Any, Mapping

from .base import RoundDecision, RoundState, ScoringStrategy, masked_argmin, mean_errors
from .budget import apply_budget
from .sequential import SequentialPairedTest, spread_order, student_t_quantile
from .stages import StageSchedule
from .weighting import TimestepWeighting, build_weighting, fit_weight_table

__all__ = ["RoundDecision", "RoundState", "ScoringStrategy", "StageSchedule", "SequentialPairedTest",
           "TimestepWeighting", "build_weighting", "fit_weight_table",
           "apply_budget", "build_strategy", "ContrastivePrefilter", "STRATEGIES", "mean_errors", "masked_argmin", "spread_order",
           "student_t_quantile"]

STRATEGIES = ("stages", "sequential")


def __getattr__(name: str):
    """``ContrastivePrefilter`` on first use: it imports open_clip, which the engine does not need."""
    if name == "ContrastivePrefilter":
        from .prefilter import ContrastivePrefilter

        return ContrastivePrefilter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_strategy(spec: Mapping[str, Any] | None, to_keep: tuple[int, ...]) -> ScoringStrategy:
    """The strategy of a JSON spec (``None`` or ``{"name": "stages"}``: the paper's stages).

    Raises:
        ValueError: unknown name or option, naming the accepted ones.
    """
    if spec is None:
        return StageSchedule(tuple(to_keep))
    if not isinstance(spec, Mapping):
        raise ValueError(f"strategy must be a dict such as {{'name': 'sequential', 'alpha': 0.05}}, got {spec!r}.")
    options = dict(spec)
    name = options.pop("name", None)
    if name == "stages":
        if options:
            raise ValueError(f"strategy 'stages' takes no options (its stages are n_samples/to_keep); got {sorted(options)}.")
        return StageSchedule(tuple(to_keep))
    if name == "sequential":
        known = {"alpha", "chunk", "max_timesteps", "min_timesteps"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"strategy 'sequential' has no option(s) {unknown}; it takes {sorted(known)}.")
        return SequentialPairedTest(**options)
    raise ValueError(f"Unknown strategy {name!r}; choose one of {STRATEGIES} "
                     "(e.g. {'name': 'sequential', 'alpha': 0.05, 'chunk': 10}).")
