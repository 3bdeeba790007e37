"""The paper's adaptive stages: after stage ``k`` keep the ``to_keep[k]`` lowest mean errors.

Li et al. (arXiv 2303.16203, Alg. 2): every surviving candidate is scored at the stage's new
timesteps and ranked by its mean error over all timesteps evaluated so far. This is the default
strategy; every image is evaluated in every stage, as in the official code, so the evaluation
counts are the paper's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..timestep_plan import TimestepPlan
from .base import RoundDecision, RoundState, mean_errors

__all__ = ["StageSchedule"]


@dataclass(frozen=True)
class StageSchedule:
    """Keep the ``to_keep[k]`` best candidates after stage ``k`` (the paper)."""

    to_keep: tuple[int, ...]
    name: str = "stages"

    def timestep_plan(self, n_samples: tuple[int, ...], num_train_timesteps: int,
                      window: tuple[float, float] | None = None) -> TimestepPlan:
        return TimestepPlan.from_stages(n_samples, num_train_timesteps, window=window)

    def decide(self, state: RoundState) -> RoundDecision:
        keep = int(self.to_keep[state.round])
        means = mean_errors(state.timestep_errors, state.weights)
        means = torch.where(state.alive & ~torch.isnan(means), means, torch.full_like(means, float("inf")))
        k = min(keep, means.shape[1])
        order = torch.sort(means, dim=1, stable=True).indices[:, :k]  # ties: the lower index, always
        alive = torch.zeros_like(state.alive)
        alive.scatter_(1, order, True)
        alive &= state.alive  # fewer alive than `keep` (a prefilter): topk picked some dead ones
        return RoundDecision(alive=alive, active=state.active)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name}
