"""Timestep weighting: how much each timestep's error counts in a candidate's score.

The paper scores a candidate by the plain mean of its errors over the evaluated timesteps
(``uniform``, the default). Not every noise level carries the same evidence: near t = 0 the
network can copy its input and near t = T nothing of the image is left, so the errors there
barely depend on the condition but still add their variance (``dc-zoo curve``'s
``timesteps.png`` shows it for each miniature; Clark & Jaini, NeurIPS 2023, learn weights for
the same reason, and Jeong et al., NeurIPS 2025, find weighting decisive for flow models).
With weights ``w(t)`` a candidate's score is ``sum w(t) e(t) / sum w(t)`` over its evaluated
(t, eps) pairs:

* ``uniform``: ``w = 1`` (the paper).
* ``sine``: ``w(t) = sin(pi (t + 0.5) / T)``, a documented heuristic that needs no data: it
  keeps the middle of the range and fades both ends out smoothly.
* ``table``: a piecewise-constant table over fractions of ``[0, T)``, fitted on held-out
  labelled images by ``fit_weight_table`` (``dc-zoo fit-weights``): per bin, the mean paired
  margin ``e(wrong) - e(true)`` over its variance, the weights of a linear discriminant that
  treats timesteps as independent evidence.

Weights change which candidate wins, never which pairs exist: errors, noise and the error cache
are the same under every weighting, so a sweep over weightings re-uses every evaluation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

__all__ = ["TimestepWeighting", "WEIGHTINGS", "build_weighting", "fit_weight_table"]

WEIGHTINGS = ("uniform", "sine", "table")
_FLOOR = 0.01  # a fitted bin never weighs less than this fraction of the largest (every pair counts a little)


@dataclass(frozen=True)
class TimestepWeighting:
    """A weight per timestep; ``table`` weights are ``values[b]`` on ``[edges[b], edges[b+1])`` of t / T.

    Attributes:
        name: ``uniform``, ``sine`` or ``table``.
        edges: table bin edges as fractions of T, increasing from 0 to 1 (``len(values) + 1`` of them).
        values: table weights, positive.
        source: where a fitted table comes from (model, images, pool), kept with results.
    """

    name: str = "uniform"
    edges: tuple[float, ...] = ()
    values: tuple[float, ...] = ()
    source: str | None = None

    def __post_init__(self) -> None:
        if self.name not in WEIGHTINGS:
            raise ValueError(f"Unknown timestep weighting {self.name!r}; choose one of {WEIGHTINGS}.")
        object.__setattr__(self, "edges", tuple(float(e) for e in self.edges))
        object.__setattr__(self, "values", tuple(float(v) for v in self.values))
        if self.name != "table":
            if self.edges or self.values:
                raise ValueError(f"timestep weighting {self.name!r} takes no edges or values (only 'table' does).")
            return
        edges, values = self.edges, self.values
        if len(values) < 1 or len(edges) != len(values) + 1:
            raise ValueError(f"A weight table needs len(values) + 1 edges; got {len(edges)} edges for "
                             f"{len(values)} values.")
        if abs(edges[0]) > 1e-9 or abs(edges[-1] - 1.0) > 1e-9 or any(b <= a for a, b in zip(edges, edges[1:])):
            raise ValueError(f"Weight table edges must increase from 0 to 1 (fractions of T); got {list(edges)}.")
        if any(not math.isfinite(v) or v <= 0 for v in values):
            raise ValueError(f"Weight table values must be finite and positive; got {list(values)}. To skip part "
                             "of [0, T) entirely, set ScoringConfig.timestep_range instead (no evaluations there).")

    @property
    def is_uniform(self) -> bool:
        return self.name == "uniform"

    def weights(self, timesteps: Sequence[int], num_train_timesteps: int) -> torch.Tensor:
        """``[len(timesteps)]`` float32 weights (1 everywhere for ``uniform``)."""
        t = torch.as_tensor(list(timesteps), dtype=torch.float64)
        u = (t + 0.5) / float(num_train_timesteps)
        if self.name == "uniform":
            w = torch.ones_like(u)
        elif self.name == "sine":
            w = torch.sin(math.pi * u)
        else:
            inner = torch.tensor(self.edges[1:-1], dtype=torch.float64)
            w = torch.tensor(self.values, dtype=torch.float64)[torch.bucketize(u, inner, right=True)]
        return w.float()

    def to_dict(self) -> dict[str, Any]:
        if self.name != "table":
            return {"name": self.name}
        d: dict[str, Any] = {"name": "table", "edges": list(self.edges), "values": list(self.values)}
        if self.source:
            d["source"] = self.source
        return d


def build_weighting(spec: Mapping[str, Any] | str | None) -> TimestepWeighting:
    """The weighting of a spec: ``None``/``"uniform"``, ``"sine"``, or ``{"name": "table", "edges": [...],
    "values": [...]}`` (the JSON that ``dc-zoo fit-weights`` writes).

    Raises:
        ValueError: unknown name or option, naming the accepted ones.
    """
    if spec is None:
        return TimestepWeighting()
    if isinstance(spec, TimestepWeighting):
        return spec
    if isinstance(spec, str):
        if spec == "table":
            raise ValueError("timestep_weights 'table' needs its edges and values: pass the JSON that "
                             "`dc-zoo fit-weights` wrote.")
        return TimestepWeighting(name=spec)
    if not isinstance(spec, Mapping):
        raise ValueError(f"timestep_weights must be 'uniform', 'sine' or a table dict, got {spec!r}.")
    options = dict(spec)
    unknown = sorted(set(options) - {"name", "edges", "values", "source"})
    if unknown:
        raise ValueError(f"timestep_weights has no option(s) {unknown}; it takes name, edges, values and source.")
    return TimestepWeighting(name=options.get("name", "table"), edges=tuple(options.get("edges", ())),
                             values=tuple(options.get("values", ())), source=options.get("source"))


def fit_weight_table(timestep_errors: torch.Tensor, labels: Sequence[int], timesteps: Sequence[int],
                     num_train_timesteps: int, bins: int = 10, source: str | None = None) -> TimestepWeighting:
    """Fit a ``table`` weighting on held-out images whose every class was scored at every timestep.

    Per bin b of t / T, over images, wrong classes j, timesteps in the bin and trials, the paired
    margin ``m = e_j - e_true`` has mean ``mu_b`` and variance ``var_b``; the weight is
    ``max(mu_b, 0) / var_b`` (a linear discriminant's, timesteps treated as independent), floored
    at 1% of the largest, and scaled to mean 1.

    Args:
        timestep_errors: ``[N, C, n_t, R]`` errors, all finite (an all-classes, all-timesteps run).
        labels: ``N`` true class indices.
        timesteps: the ``n_t`` timesteps of the errors' third axis.
        num_train_timesteps: the model's T.
        bins: equal-width bins over ``[0, T)``.
        source: provenance written into the table.

    Raises:
        ValueError: errors with gaps, too few classes, or a bin with no timestep in it.
    """
    errors = torch.as_tensor(timestep_errors, dtype=torch.float64)
    if errors.ndim != 4 or not bool(torch.isfinite(errors).all()):
        raise ValueError("fit_weight_table needs [N, C, n_t, R] errors of every class at every timestep "
                         "(a one-stage, all-classes run) with no gaps.")
    N, C, n_t, _ = errors.shape
    y = torch.as_tensor(list(labels), dtype=torch.long)
    if C < 2 or y.numel() != N:
        raise ValueError(f"fit_weight_table needs at least 2 classes and one label per image; got {C} classes, "
                         f"{y.numel()} labels for {N} images.")
    true = errors[torch.arange(N), y].unsqueeze(1)  # [N, 1, n_t, R]
    wrong = torch.ones(N, C, dtype=torch.bool)
    wrong[torch.arange(N), y] = False
    margins = (errors - true)[wrong]  # [N * (C - 1), n_t, R]
    u = (torch.as_tensor(list(timesteps), dtype=torch.float64) + 0.5) / float(num_train_timesteps)
    edges = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64)
    which = torch.bucketize(u, edges[1:-1], right=True)
    values = []
    for b in range(bins):
        cols = (which == b).nonzero().view(-1)
        if cols.numel() == 0:
            raise ValueError(f"Bin {b} ([{edges[b]:.2f}, {edges[b + 1]:.2f}) of T) has no timestep: use fewer bins "
                             f"or a larger timestep pool ({n_t} timesteps for {bins} bins).")
        m = margins[:, cols].reshape(-1)
        if m.numel() < 2:
            raise ValueError(f"Bin {b} holds a single margin: a variance needs at least 2 (more images, a larger "
                             "timestep pool or fewer bins).")
        values.append(max(float(m.mean()), 0.0) / max(float(m.var()), 1e-12))
    top = max(values)
    if top <= 0:
        raise ValueError("No timestep bin separates the true class from the others on these images (all mean "
                         "margins <= 0); the model does not classify them, so no weighting can be fitted.")
    values = [max(v, _FLOOR * top) for v in values]
    mean = sum(values) / len(values)
    return TimestepWeighting(name="table", edges=tuple(edges.tolist()), values=tuple(v / mean for v in values),
                             source=source)
