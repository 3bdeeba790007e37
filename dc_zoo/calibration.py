"""Calibrated class probabilities from a Diffusion Classifier's denoising errors.

The classifier's score is a mean denoising error per class (lower is better). Read as
``softmax(-errors / T)`` it becomes a probability, but the scale of the errors depends on
the model, the loss and the timestep schedule (a mean L2 error of ~0.01 needs ``T`` ~0.001),
so ``T = 1`` is rarely calibrated. A temperature is therefore fitted on held-out data, once
per model and schedule, by minimising the negative log-likelihood (temperature scaling,
Guo et al. 2017); it can be stored with a zoo entry (``Calibration.to_dict``) or passed in.

A temperature never changes the order of the errors. The engine's prediction, though, is
not always the lowest error: a class pruned in an early adaptive stage has an error over
fewer timesteps, and a noisier mean can be lower than the finalist's. Given the engine's
``ranking`` (``ClassificationOutput.logits``, argmax = prediction), ``probabilities`` keeps
``argmax(probabilities) == argmax(ranking)`` exactly, so what clip_benchmark ranks by stays
the prediction; see ``probabilities`` for the rule.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import torch

__all__ = [
    "Calibration",
    "probabilities",
    "fit_temperature",
    "negative_log_likelihood",
    "expected_calibration_error",
    "brier_score",
    "reliability_table",
]

_EPS = 1e-12  # probabilities are clamped to this before the log (NLL of a zero probability: ~27.6)
_GRID = 97  # points of the log-T grid before the golden-section refinement
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def probabilities(errors: Any, temperature: float = 1.0, ranking: Any = None) -> torch.Tensor:
    """``[N, K]`` float32 probabilities ``softmax(-errors / temperature)`` over classes.

    Computed in float64; each row sums to 1. A NaN error (a class that was not scored) gets
    probability 0, and so does ``+inf``.

    With ``ranking`` (``[N, K]``, higher is better; the engine's ``logits``), the row's top
    probability is moved to the ranking's top class: where the lowest-error class ``a`` is
    not the ranking's top ``b``, the probabilities of ``a`` and ``b`` are swapped. ``a`` was
    pruned in an earlier stage, so its error is a mean over fewer, noisier timesteps than
    ``b``'s and is not trusted to beat it; the swap keeps the row's set of probabilities
    (hence its sum and its confidence) and changes only which class holds the top one. Should
    float32 rounding leave another class tied with ``b``, that class is lowered by one ulp, so
    ``argmax`` (which takes the first maximum) is exactly ``argmax(ranking)``.
    """
    t = _check_temperature(temperature)
    e = _as_errors(errors)
    top = None if ranking is None else _ranking_top(ranking, e)
    p = _log_probs(e, t).exp()
    if top is None:
        return p.to(torch.float32)
    rows = torch.arange(e.shape[0], device=e.device)
    lowest = _lowest(e)
    p_low, p_top = p[rows, lowest], p[rows, top]
    p[rows, top], p[rows, lowest] = p_low, p_top  # a no-op where lowest == top
    p32 = p.to(torch.float32)
    best = p32[rows, top].unsqueeze(1)
    tied = p32 >= best
    tied[rows, top] = False
    return torch.where(tied, torch.nextafter(best, torch.zeros_like(best)), p32)


def fit_temperature(errors: Any, labels: Any, *, ranking: Any = None,
                    bounds: tuple[float, float] = (1e-4, 1e4)) -> float:
    """The temperature minimising the NLL of ``probabilities(errors, T, ranking)`` on ``labels``.

    The NLL of a softmax is convex in ``1 / T``, hence unimodal in ``log T``: a grid over
    ``log T`` across ``bounds`` finds the basin and a golden-section search refines it.
    Deterministic (no random start, no iteration-order dependence). When the labels are
    separable by the errors the NLL keeps falling as ``T`` shrinks and the lower bound is
    returned.

    Args:
        errors: ``[N, K]`` mean denoising errors (lower is better) of held-out images.
        labels: ``[N]`` true class indices.
        ranking: optional ``[N, K]`` engine ranking, as in ``probabilities``.
        bounds: ``(low, high)`` range searched for ``T``; both positive.
    """
    e = _as_errors(errors)
    if e.shape[1] < 2:
        raise ValueError(f"Fitting a temperature needs at least 2 classes; errors have {e.shape[1]}.")
    y = _as_labels(labels, e.shape[0], e.shape[1]).to(e.device)
    lo, hi = _check_bounds(bounds)
    rows = torch.arange(e.shape[0], device=e.device)
    col = y
    if ranking is not None:  # the label's probability after the swap in ``probabilities``
        top = _ranking_top(ranking, e)
        lowest = _lowest(e)
        col = torch.where(y == lowest, top, torch.where(y == top, lowest, y))

    def nll(u: float) -> float:
        logp = _log_probs(e, math.exp(u))[rows, col]
        return float(-logp.clamp_min(math.log(_EPS)).mean())

    grid = torch.linspace(math.log(lo), math.log(hi), _GRID, dtype=torch.float64).tolist()
    values = [nll(u) for u in grid]
    i = min(range(len(grid)), key=lambda j: (values[j], j))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = nll(c), nll(d)
    while b - a > 1e-7:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = nll(d)
    u, _ = min([(grid[i], values[i]), (c, fc), (d, fd)], key=lambda v: v[1])
    return float(min(max(math.exp(u), lo), hi))


def negative_log_likelihood(probs: Any, labels: Any) -> float:
    """Mean ``-log p[label]`` over images, each probability clamped to ``1e-12`` first."""
    p, y = _check_probs(probs, labels)
    picked = p[torch.arange(p.shape[0], device=p.device), y]
    return float(-picked.clamp_min(_EPS).log().mean())


def brier_score(probs: Any, labels: Any) -> float:
    """Mean over images of ``sum_k (p_k - [k == label])^2`` (0 is perfect, 2 the worst)."""
    p, y = _check_probs(probs, labels)
    onehot = torch.nn.functional.one_hot(y, p.shape[1]).to(p.dtype)
    return float(((p - onehot) ** 2).sum(dim=1).mean())


def reliability_table(probs: Any, labels: Any, n_bins: int = 15) -> list[dict[str, Any]]:
    """Per confidence bin: ``lower``, ``upper``, ``count``, ``confidence`` and ``accuracy``.

    Bins split ``[0, 1]`` into ``n_bins`` equal widths; an image falls in the bin with
    ``lower < top-1 confidence <= upper``. ``confidence`` is the bin's mean top-1 confidence
    and ``accuracy`` the fraction of its images whose argmax is the label; both are ``None``
    for an empty bin. JSON-ready, for reliability diagrams.
    """
    p, y = _check_probs(probs, labels)
    if isinstance(n_bins, bool) or not isinstance(n_bins, numbers.Integral) or int(n_bins) < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}.")
    n_bins = int(n_bins)
    conf, pred = p.max(dim=1)
    correct = (pred == y).to(torch.float64)
    uppers = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64, device=p.device)[1:]
    index = torch.bucketize(conf, uppers, right=False).clamp_max(n_bins - 1)
    table = []
    for k in range(n_bins):
        member = index == k
        count = int(member.sum())
        table.append({
            "lower": k / n_bins,
            "upper": (k + 1) / n_bins,
            "count": count,
            "confidence": float(conf[member].mean()) if count else None,
            "accuracy": float(correct[member].mean()) if count else None,
        })
    return table


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """ECE (Guo et al. 2017): ``sum_b (n_b / N) |accuracy_b - confidence_b|`` over equal-width bins."""
    table = reliability_table(probs, labels, n_bins)
    n = sum(row["count"] for row in table)
    return float(sum(row["count"] / n * abs(row["accuracy"] - row["confidence"]) for row in table if row["count"]))


@dataclass(frozen=True)
class Calibration:
    """A temperature fitted on held-out data, with the metrics that justify it.

    Attributes:
        temperature: ``T`` of ``softmax(-errors / T)``.
        n_images: held-out images it was fitted on.
        nll_before, ece_before: NLL and ECE of those images at ``T = 1``.
        nll_after, ece_after: the same at the fitted ``T``.
        fitted_on: free-form note naming the data (e.g. ``"cifar10 train[:2000]"``).
    """

    temperature: float
    n_images: int
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    fitted_on: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "temperature", _check_temperature(self.temperature, "temperature"))
        if isinstance(self.n_images, bool) or not isinstance(self.n_images, numbers.Integral) or self.n_images < 1:
            raise ValueError(f"n_images must be a positive integer, got {self.n_images!r}.")
        object.__setattr__(self, "n_images", int(self.n_images))
        for name in ("nll_before", "nll_after", "ece_before", "ece_after"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite non-negative number, got {value!r}.")
            object.__setattr__(self, name, float(value))
        if not isinstance(self.fitted_on, str):
            raise ValueError(f"fitted_on must be a string, got {type(self.fitted_on).__name__}.")

    @classmethod
    def fit(cls, errors: Any, labels: Any, *, ranking: Any = None, fitted_on: str = "") -> "Calibration":
        """Fit ``T`` on held-out ``errors`` / ``labels`` and record NLL and ECE at ``T = 1`` and at ``T``."""
        temperature = fit_temperature(errors, labels, ranking=ranking)
        before = probabilities(errors, 1.0, ranking)
        after = probabilities(errors, temperature, ranking)
        return cls(
            temperature=temperature,
            n_images=int(before.shape[0]),
            nll_before=negative_log_likelihood(before, labels),
            nll_after=negative_log_likelihood(after, labels),
            ece_before=expected_calibration_error(before, labels),
            ece_after=expected_calibration_error(after, labels),
            fitted_on=fitted_on,
        )

    def apply(self, errors: Any, ranking: Any = None) -> torch.Tensor:
        """``probabilities(errors, self.temperature, ranking)``."""
        return probabilities(errors, self.temperature, ranking)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (plain floats, an int and a string)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Calibration":
        """Validate ``data`` (as ``to_dict`` wrote it) and build the calibration; errors name the field."""
        if not isinstance(data, Mapping):
            raise ValueError(f"A calibration must be a mapping of its fields, got {type(data).__name__}.")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"Calibration has unknown field(s) {unknown}; known fields: {names}.")
        missing = [f.name for f in fields(cls) if f.name not in data and f.name != "fitted_on"]
        if missing:
            raise ValueError(f"Calibration is missing field(s) {missing}.")
        return cls(**dict(data))


def _check_temperature(value: Any, name: str = "temperature") -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite positive number, got {value!r}.")
    return float(value)


def _check_bounds(bounds: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"bounds must be a pair (low, high) of positive numbers, got {bounds!r}.") from None
    if not (0 < lo < hi < math.inf):
        raise ValueError(f"bounds must satisfy 0 < low < high < inf, got {bounds!r}.")
    return lo, hi


def _as_errors(errors: Any) -> torch.Tensor:
    """``errors`` as a float64 ``[N, K]`` tensor with a finite error in every row."""
    e = torch.as_tensor(errors).detach()
    if e.dim() != 2:
        raise ValueError(f"errors must be [N images, K classes], got shape {tuple(e.shape)}.")
    if e.shape[0] == 0 or e.shape[1] == 0:
        raise ValueError(f"errors are empty (shape {tuple(e.shape)}): give at least one image and one class.")
    if e.is_complex():
        raise ValueError(f"errors must be real numbers, got dtype {e.dtype}.")
    e = e.to(torch.float64)
    if bool((e == -math.inf).any()):
        raise ValueError("errors contain -inf; a mean denoising error is never negative infinite.")
    scored = torch.isfinite(e).any(dim=1)
    if not bool(scored.all()):
        row = int((~scored).nonzero()[0])
        raise ValueError(f"errors row {row} has no finite error: at least one class per image must be scored.")
    return e


def _log_probs(e: torch.Tensor, temperature: float) -> torch.Tensor:
    """float64 ``log_softmax(-e / T)``; NaN / +inf errors give ``-inf``."""
    logits = torch.where(torch.isnan(e), -math.inf, -e / temperature)
    return torch.log_softmax(logits, dim=1)


def _lowest(e: torch.Tensor) -> torch.Tensor:
    """Each row's lowest-error class (first on ties, NaN counted as unscored): the softmax's top."""
    return torch.where(torch.isnan(e), math.inf, e).argmin(dim=1)


def _ranking_top(ranking: Any, e: torch.Tensor) -> torch.Tensor:
    r = torch.as_tensor(ranking).detach().to(e.device)
    if tuple(r.shape) != tuple(e.shape):
        raise ValueError(f"ranking has shape {tuple(r.shape)} but errors have {tuple(e.shape)}; they must match.")
    if r.is_floating_point() and bool(torch.isnan(r).any()):
        raise ValueError("ranking contains NaN; it must order every class (higher is better).")
    top = r.argmax(dim=1)
    unscored = ~torch.isfinite(e.gather(1, top.unsqueeze(1)).squeeze(1))
    if bool(unscored.any()):
        row = int(unscored.nonzero()[0])
        raise ValueError(f"ranking row {row} puts class {int(top[row])} first, but its error is not finite: "
                         "the predicted class must have been scored.")
    return top


def _as_labels(labels: Any, n: int, k: int) -> torch.Tensor:
    y = torch.as_tensor(labels).detach()
    if y.dim() != 1 or y.shape[0] != n:
        raise ValueError(f"labels must be [N] with N = {n} (one per row), got shape {tuple(y.shape)}.")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got dtype {y.dtype}.")
    y = y.to(torch.long)
    bad = (y < 0) | (y >= k)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(f"label {int(y[i])} at position {i} is out of range: classes are 0..{k - 1}.")
    return y


def _check_probs(probs: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    p = torch.as_tensor(probs).detach()
    if p.dim() != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"probs must be a non-empty [N images, K classes] tensor, got shape {tuple(p.shape)}.")
    p = p.to(torch.float64)
    if not bool(torch.isfinite(p).all()) or bool((p < 0).any()) or bool(((p.sum(dim=1) - 1).abs() > 1e-3).any()):
        raise ValueError("probs must be probabilities (finite, non-negative, rows summing to 1); "
                         "pass the output of probabilities(), not raw errors.")
    return p, _as_labels(labels, p.shape[0], p.shape[1]).to(p.device)
