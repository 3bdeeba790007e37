"""Sequential paired testing: drop a candidate as soon as the evidence says it is worse.

Clark & Jaini (NeurIPS 2023, "Text-to-Image Diffusion Models are Zero-Shot Classifiers") note
that with shared noise the errors of two candidates at one (t, eps) are paired, and a
candidate that is clearly worse than the leader can be dropped early. Here:

* Order: the pool of ``max_timesteps`` evenly spaced timesteps (the paper's plan for that
  size) is evaluated in van der Corput (bit-reversed) order, ``chunk`` at a time, so every
  prefix is spread over [0, T) and early looks are not biased to one noise level.
* Test: after each round, for each alive candidate ``j`` and the leader ``L`` (lowest mean
  error), the paired differences ``d = e_j - e_L`` over the n evaluated (t, eps) pairs (times
  ``w(t) / mean(w)`` under a timestep weighting, so their mean is the weighted score gap) give
  the statistic ``mean(d) / (sd(d) / sqrt(n))``; ``j`` is dropped when it exceeds the exact
  Student-t quantile (df = n - 1) at level ``alpha_look / (2 (m - 1))``, m the image's number
  of candidates at the start (fixed, so the bound below does not depend on the data).
* Repeated looks: look ``k`` (1-based, counting looks at which a test was made) spends
  ``alpha_look = alpha * 6 / (pi^2 k^2)``; these sum to ``alpha``.
* What it guarantees (union bound over looks and over the m - 1 possible leaders): the best
  candidate, the one of lowest mean error over the pool, is dropped with probability at most
  ``alpha / 2``, however many looks there are. It does not bound the chance of dropping one of
  several candidates that are all equally good (with 50 equal candidates, one of them is lost
  far more often; any of them is then as good an answer). The t quantile treats the pairs as a
  sample, an approximation: the timesteps are a fixed spread set, not random draws.
* ``min_timesteps`` pairs before any drop; the pool size bounds the timesteps per candidate;
  an image stops when one candidate is left (or its budget is spent, ``dc_zoo.strategies.budget``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from ..timestep_plan import TimestepPlan
from .base import RoundDecision, RoundState, masked_argmin, mean_errors

__all__ = ["SequentialPairedTest", "spread_order", "student_t_quantile"]


def spread_order(n: int) -> list[int]:
    """``0..n-1`` in van der Corput order: each prefix is spread evenly over the range."""
    if n <= 0:
        return []
    bits = max(1, (n - 1).bit_length())
    keyed = sorted(range(n), key=lambda i: int(format(i, f"0{bits}b")[::-1], 2))
    return keyed


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta (Lentz's method)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def student_t_sf(t: float, df: float) -> float:
    """``P(T > t)`` for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


@lru_cache(maxsize=4096)
def _t_isf(p: float, df: int) -> float:
    lo, hi = 0.0, 1.0
    while student_t_sf(hi, df) > p:
        hi *= 2.0
    for _ in range(200):  # bisection to float precision
        mid = 0.5 * (lo + hi)
        if student_t_sf(mid, df) > p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return hi


def student_t_quantile(p: torch.Tensor, df: torch.Tensor) -> torch.Tensor:
    """Upper quantile of Student's t (``P(T > q) = p``), exact to float precision, for 0 < p < 0.5."""
    ps, dfs = torch.broadcast_tensors(p.to(torch.float64), df.to(torch.float64))
    values = [_t_isf(float(a), int(b)) for a, b in zip(ps.reshape(-1).tolist(), dfs.reshape(-1).tolist())]
    return torch.tensor(values, dtype=torch.float64).view(ps.shape)


@dataclass(frozen=True)
class SequentialPairedTest:
    """Drop candidates whose paired error difference to the leader is significant.

    Attributes:
        alpha: family-wise level, spent over looks as ``alpha * 6 / (pi^2 k^2)``.
        chunk: timesteps evaluated per round (a look after each).
        max_timesteps: size of the timestep pool (each candidate's maximum); None: the largest
            ``n_samples`` of the scoring config.
        min_timesteps: evaluated timesteps before the first test.
    """

    alpha: float = 0.05
    chunk: int = 10
    max_timesteps: int | None = None
    min_timesteps: int = 10
    name: str = "sequential"

    def __post_init__(self) -> None:
        if not 0.0 < float(self.alpha) < 1.0:
            raise ValueError(f"sequential strategy: alpha must be in (0, 1), got {self.alpha!r}.")
        for field_name in ("chunk", "min_timesteps"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"sequential strategy: {field_name} must be a positive integer, got {value!r}.")
        if self.min_timesteps < 5:
            raise ValueError(f"sequential strategy: min_timesteps must be at least 5 (the test needs a variance "
                             f"from several pairs), got {self.min_timesteps}.")
        if self.max_timesteps is not None and (isinstance(self.max_timesteps, bool) or
                                               not isinstance(self.max_timesteps, int) or self.max_timesteps < 1):
            raise ValueError(f"sequential strategy: max_timesteps must be a positive integer or null, "
                             f"got {self.max_timesteps!r}.")

    def timestep_plan(self, n_samples: tuple[int, ...], num_train_timesteps: int,
                      window: tuple[float, float] | None = None) -> TimestepPlan:
        pool = int(self.max_timesteps or max(n_samples))
        if pool > num_train_timesteps:
            raise ValueError(f"sequential strategy: max_timesteps={pool} is more than the model's "
                             f"{num_train_timesteps} timesteps.")
        base = TimestepPlan.from_stages((pool,), num_train_timesteps, window=window)
        order = spread_order(base.num_timesteps)
        rounds = tuple(tuple(order[i : i + self.chunk]) for i in range(0, len(order), self.chunk))
        return TimestepPlan(timesteps=base.timesteps, stage_positions=rounds)

    def look_level(self, look: int) -> float:
        """The alpha spent at the ``look``-th test (1-based)."""
        return float(self.alpha) * 6.0 / (math.pi**2 * look**2)

    def decide(self, state: RoundState) -> RoundDecision:
        errors = state.timestep_errors  # [N, C, n_t, R]
        N, C = state.alive.shape
        alive = state.alive.clone()
        means = mean_errors(errors, state.weights)
        leader = masked_argmin(means, alive)
        flat = errors.flatten(2)  # [N, C, n_t * R]
        evaluated = ~torch.isnan(flat[torch.arange(N), leader])  # [N, P]: the leader's pairs
        n = evaluated.sum(1)  # pairs per image (all alive candidates share them)
        look = self.look_index(state.plan, state.round)
        testing = state.active & (alive.sum(1) > 1) if look > 0 else torch.zeros_like(state.active)
        if bool(testing.any()):
            lead = flat[torch.arange(N), leader].unsqueeze(1)  # [N, 1, P]
            diff = torch.where(evaluated.unsqueeze(1), flat - lead, torch.zeros_like(flat)).to(torch.float64)
            if state.weights is not None:  # weighted differences, scaled to mean weight 1 over the pairs seen
                w = state.weights.to(diff.device, torch.float64).repeat_interleave(state.n_trials).view(1, -1)
                w = torch.where(evaluated, w, torch.zeros_like(w))
                w = w / (w.sum(1, keepdim=True) / n.to(torch.float64).clamp_min(1).view(N, 1)).clamp_min(1e-30)
                diff = diff * w.unsqueeze(1)
            nn = n.to(torch.float64).clamp_min(2).view(N, 1)
            mean = diff.sum(2) / nn
            var = ((diff - mean.unsqueeze(2)) ** 2 * evaluated.unsqueeze(1)).sum(2) / (nn - 1)
            stat = mean / (var.clamp_min(1e-300).sqrt() / nn.sqrt())
            m = state.n_candidates.to(torch.float64)  # fixed per image: the bound holds whatever was dropped
            level = torch.full((N,), self.look_level(look), dtype=torch.float64)
            critical = student_t_quantile(level / (2 * (m - 1).clamp_min(1)), (n - 1).clamp_min(1))
            drop = (stat > critical.view(N, 1)) & alive & testing.view(N, 1)
            drop[torch.arange(N), leader] = False
            alive &= ~drop
        active = state.active & (alive.sum(1) > 1)
        return RoundDecision(alive=alive, active=active)

    def look_index(self, plan: TimestepPlan, round_index: int) -> int:
        """The 1-based index of the test made after ``round_index`` (0: too few timesteps yet).

        Every image still racing has been evaluated in every round so far, so it has seen the
        same number of timesteps; tests are made at each round from ``min_timesteps`` on.
        """
        seen, looks = 0, 0
        for positions in plan.stage_positions[: round_index + 1]:
            seen += len(positions)
            looks += seen >= self.min_timesteps
        return looks

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "alpha": self.alpha, "chunk": self.chunk,
                "max_timesteps": self.max_timesteps, "min_timesteps": self.min_timesteps}
