"""A per-image evaluation budget: stop when the next round would overspend, answer the leader.

Anytime classification: whatever strategy runs, an image whose next round would take its
evaluations past ``max_evaluations`` stops, and its prediction is the alive candidate with the
lowest mean error so far (its confidence is in the output's probabilities). The first round is
always evaluated, so an answer rests on some evidence. Budgets are counted in evaluations, not
seconds: a time budget would make the scores depend on the machine's load, and the same inputs
must give the same scores.
"""
from __future__ import annotations

import torch

from .base import RoundDecision, RoundState, masked_argmin, mean_errors

__all__ = ["apply_budget"]


def apply_budget(state: RoundState, decision: RoundDecision) -> RoundDecision:
    """``decision`` with the images that cannot afford their next round stopped at their leader."""
    if state.max_evaluations is None or state.is_last_round:
        return decision
    over = decision.active & (state.evaluations + state.next_round_cost(decision.alive) > state.max_evaluations)
    if not bool(over.any()):
        return decision
    leader = masked_argmin(mean_errors(state.timestep_errors, state.weights), decision.alive)
    only_leader = torch.zeros_like(decision.alive)
    only_leader[torch.arange(only_leader.shape[0]), leader] = True
    alive = torch.where(over.view(-1, 1), only_leader, decision.alive)
    return RoundDecision(alive=alive, active=decision.active & ~over)
