"""The timestep plan of Diffusion Classifier (Li et al., arXiv 2303.16203, official code).

Timesteps are deterministic and interleaved, never random. With ``max_n`` the largest stage
size, the plan is ``range(T // max_n // 2, T, T // max_n)[:max_n]``; a stage of size ``n``
takes every ``len // n``-th entry starting at ``len // n // 2`` and drops those that an earlier
stage already evaluated. Stage sets do not nest, which is why the paper's schedules spend
more evaluations than the nominal ``n`` (e.g. 2750 for CIFAR-10's 50/500 over 10 classes).

A ``window`` (fractions ``(lo, hi)`` of ``[0, T)``, ``ScoringConfig.timestep_range``) spreads
the same plan over ``[round(lo T), round(hi T))`` instead: the timesteps a model's
information lies in (``dc-zoo curve``'s ``timesteps.png``), or the range a flow model was
trained on. Without one, the plan is exactly the paper's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

__all__ = ["TimestepPlan", "validate_stages", "validate_window"]


def validate_window(window) -> tuple[float, float]:
    """``(lo, hi)`` with ``0 <= lo < hi <= 1`` (fractions of the model's timestep range), or ``ValueError``."""
    try:
        lo, hi = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ValueError(f"timestep_range must be two fractions (lo, hi) of [0, 1], e.g. (0.05, 0.95); "
                         f"got {window!r}.") from None
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"timestep_range must satisfy 0 <= lo < hi <= 1 (fractions of the model's timesteps); "
                         f"got ({lo}, {hi}).")
    return lo, hi


def validate_stages(n_samples: Sequence[int], to_keep: Sequence[int], num_train_timesteps: int | None) -> None:
    """Check a stage schedule for what the plan can serve; raise ``ValueError`` naming the fix
    (``num_train_timesteps=None``: everything but the model's timestep count, as ``ScoringConfig`` does)."""
    n_samples, to_keep = list(n_samples), list(to_keep)
    if not n_samples or not to_keep:
        raise ValueError(
            "n_samples and to_keep must each list at least one stage, e.g. n_samples=(50, 500), "
            "to_keep=(5, 1)."
        )
    if len(n_samples) != len(to_keep):
        raise ValueError(
            f"n_samples {tuple(n_samples)} and to_keep {tuple(to_keep)} must have the same length: "
            "stage k evaluates n_samples[k] timesteps and then keeps to_keep[k] candidates."
        )
    for name, values in (("n_samples", n_samples), ("to_keep", to_keep)):
        if any((not isinstance(v, int)) or isinstance(v, bool) or v < 1 for v in values):
            raise ValueError(f"{name} must hold positive integers, got {tuple(values)}.")
    if to_keep[-1] != 1:
        raise ValueError(
            f"The last to_keep must be 1 (the prediction is the single survivor), got {tuple(to_keep)}."
        )
    if any(b > a for a, b in zip(to_keep, to_keep[1:])):
        raise ValueError(f"to_keep must not increase from one stage to the next, got {tuple(to_keep)}.")
    max_n = max(n_samples)
    if num_train_timesteps is not None and max_n > num_train_timesteps:
        raise ValueError(
            f"n_samples asks for {max_n} timesteps but the model was trained on only "
            f"{num_train_timesteps}; use at most {num_train_timesteps}."
        )


@dataclass(frozen=True)
class TimestepPlan:
    """Which timesteps each stage evaluates.

    Attributes:
        timesteps: the full interleaved plan ``t_to_eval`` (length ``max(n_samples)``).
        stage_positions: per stage, the positions into ``timesteps`` that the stage newly
            evaluates (already-evaluated timesteps removed). The position of a timestep is
            also the index of its noise draw, so each distinct timestep has one eps.
    """

    timesteps: tuple[int, ...]
    stage_positions: tuple[tuple[int, ...], ...]

    @classmethod
    def from_stages(cls, n_samples: Sequence[int], num_train_timesteps: int,
                    window: tuple[float, float] | None = None) -> "TimestepPlan":
        """Build the reference plan for stage sizes ``n_samples`` and ``T = num_train_timesteps``
        (over ``window``, fractions of ``[0, T)``, when given)."""
        T = int(num_train_timesteps)
        low, width = 0, T
        if window is not None:
            lo, hi = validate_window(window)
            low = int(round(lo * T))
            width = int(round(hi * T)) - low
        max_n = max(n_samples)
        if max_n > width:
            where = f"the window {tuple(window)} holds only {width}" if window is not None else f"the model has only {T}"
            raise ValueError(f"n_samples asks for {max_n} timesteps; {where}: lower n_samples (or a strategy's "
                             f"max_timesteps) to at most {width}" + (", or widen timestep_range." if window is not None
                                                                   else "."))
        start = width // max_n // 2
        all_t = [low + t for t in range(start, width, width // max_n)][:max_n]
        evaluated: set[int] = set()
        stages = []
        for k, n in enumerate(n_samples):
            step = len(all_t) // n
            positions = list(range(len(all_t)))[step // 2 :: step][:n]
            new = tuple(p for p in positions if p not in evaluated)
            if not new:
                raise ValueError(
                    f"Stage {k} (n_samples={n}) would evaluate no timestep that earlier stages "
                    f"did not already evaluate (n_samples={tuple(n_samples)}); make n_samples "
                    "increase from stage to stage, e.g. (50, 500)."
                )
            evaluated.update(new)
            stages.append(new)
        return cls(timesteps=tuple(all_t), stage_positions=tuple(stages))

    @property
    def num_timesteps(self) -> int:
        return len(self.timesteps)

    def stage_timesteps(self, stage: int) -> list[int]:
        """The timesteps (not positions) that ``stage`` newly evaluates."""
        return [self.timesteps[p] for p in self.stage_positions[stage]]

    def as_tensor(self, device: torch.device | str | None = None) -> torch.Tensor:
        return torch.tensor(self.timesteps, dtype=torch.long, device=device)

    def evaluations(self, n_candidates: int, to_keep: Sequence[int], n_trials: int = 1) -> int:
        """Network evaluations per image for ``n_candidates`` under this plan (as the paper counts)."""
        alive, total = n_candidates, 0
        for positions, keep in zip(self.stage_positions, to_keep):
            total += alive * len(positions) * n_trials
            alive = min(alive, keep)
        return total
