"""What a scoring strategy sees and decides between rounds of the engine.

The engine evaluates rounds: in round ``r`` every alive candidate of every active image is
scored at the plan's positions ``plan.stage_positions[r]`` (shared eps, packed batches). After
each round it hands a ``RoundState`` to the strategy, which returns the candidates still alive
and the images that need more work. The paper's adaptive stages (``StageSchedule``) are one
such rule; early dropping by a paired test (``SequentialPairedTest``) is another. Strategies
see only errors, never the model, so they are tested on synthetic numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from ..timestep_plan import TimestepPlan

__all__ = ["RoundState", "RoundDecision", "ScoringStrategy", "mean_errors", "masked_argmin"]


@dataclass
class RoundState:
    """The evidence after round ``round``.

    Attributes:
        round: index of the round just evaluated.
        timestep_errors: ``[N, C, n_timesteps, n_trials]`` errors, NaN where not evaluated.
        alive: ``[N, C]`` bool, the candidates evaluated in this round (still in the race).
        active: ``[N]`` bool, the images evaluated in this round.
        evaluations: ``[N]`` evaluations spent per image so far.
        plan: the timestep plan the rounds come from.
        max_evaluations: the per-image budget (None: no budget).
        n_trials: eps draws per timestep.
        n_candidates: ``[N]`` candidates each image started the race with (after any prefilter).
        weights: ``[n_timesteps]`` weight of each plan position in a score (None: uniform, the paper).
    """

    round: int
    timestep_errors: torch.Tensor
    alive: torch.Tensor
    active: torch.Tensor
    evaluations: torch.Tensor
    plan: TimestepPlan
    max_evaluations: int | None
    n_trials: int
    n_candidates: torch.Tensor | None = None
    weights: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.n_candidates is None:
            self.n_candidates = self.alive.sum(1)

    @property
    def is_last_round(self) -> bool:
        return self.round == len(self.plan.stage_positions) - 1

    def next_round_cost(self, alive: torch.Tensor) -> torch.Tensor:
        """``[N]`` evaluations the next round would spend per image with ``alive`` candidates."""
        if self.is_last_round:
            return torch.zeros_like(self.evaluations)
        n_positions = len(self.plan.stage_positions[self.round + 1])
        return alive.sum(1) * n_positions * self.n_trials


@dataclass
class RoundDecision:
    """A strategy's answer: ``alive [N, C]`` (at least one per image) and ``active [N]``
    (images to evaluate in the next round; an image with one alive candidate may stop)."""

    alive: torch.Tensor
    active: torch.Tensor


@runtime_checkable
class ScoringStrategy(Protocol):
    """A rule for which (candidate, timestep) pairs to evaluate; see the module docstring."""

    name: str

    def timestep_plan(self, n_samples: tuple[int, ...], num_train_timesteps: int,
                      window: tuple[float, float] | None = None) -> TimestepPlan:
        """The plan whose stages are the rounds (``window``: the part of [0, T) it spreads over)."""

    def decide(self, state: RoundState) -> RoundDecision:
        """Prune after a round."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON spec that rebuilds this strategy (``dc_zoo.strategies.build_strategy``)."""


def mean_errors(timestep_errors: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Each candidate's mean error over the (timestep, trial) pairs it was evaluated on (NaN = not
    run; a candidate never evaluated, e.g. dropped by a prefilter, has NaN), weighted by
    ``weights[n_timesteps]`` when given (``dc_zoo.strategies.weighting``)."""
    evaluated = ~torch.isnan(timestep_errors)
    counts = evaluated.sum(dim=(2, 3))
    if weights is None:
        means = torch.nansum(timestep_errors, dim=(2, 3)) / counts.clamp_min(1)
    else:
        w = weights.to(timestep_errors.device, timestep_errors.dtype).view(1, 1, -1, 1) * evaluated
        total = torch.where(evaluated, timestep_errors, torch.zeros_like(timestep_errors)) * w
        means = total.sum(dim=(2, 3)) / w.sum(dim=(2, 3)).clamp_min(1e-30)
    return torch.where(counts > 0, means, torch.full_like(means, float("nan")))


def masked_argmin(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[N]`` index of the smallest value among ``mask`` (lowest index on ties)."""
    usable = mask & ~torch.isnan(values)
    return torch.where(usable, values, torch.full_like(values, float("inf"))).argmin(dim=1)
