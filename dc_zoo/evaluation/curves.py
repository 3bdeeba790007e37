"""Accuracy against cost: the paper's schedules and the cheaper strategies on the same images.

Every point of a curve is one ``ScoringConfig`` run by ``classify`` on the same images with the
same noise (eps keyed by (seed, image, t, trial)), sharing one error cache, so the sweep costs
the union of its evaluations: each (image, class, t) is computed once, whichever schedule asked
first. Accuracy is plotted against the *mean evaluations per image that the schedule itself
spends* (what a user without the cache pays), not against what the sweep computed.

Also measured: where the information is. On one schedule that scores every class at every
timestep of a pool, the per-timestep margin (best other class's error minus the true class's:
positive means the timestep alone would rank the truth first) and the accuracy of each
timestep alone.
"""
from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..config import ScoringConfig
from ..strategies.weighting import fit_weight_table

logger = logging.getLogger(__name__)

__all__ = ["CurveSpec", "CurvePoint", "CurveResult", "CROSS_FITTED", "default_specs", "run_curve", "pool_errors",
           "timestep_information", "weight_bins", "write_curve", "plot_curve"]


@dataclass(frozen=True)
class CurveSpec:
    """One point to measure: a name, ``paper`` (a stage schedule of the paper's form) or
    ``strategy``, and the ``ScoringConfig`` fields that make it."""

    name: str
    kind: str
    scoring: dict[str, Any]


@dataclass
class CurvePoint:
    name: str
    kind: str
    scoring: dict[str, Any]
    accuracy: float
    correct: int
    images: int
    evaluations_per_image: float
    computed_evaluations: int  # network evaluations this point added to the sweep (cache misses)
    seconds: float
    agreement_with_reference: float | None = None  # share of predictions equal to the reference point's
    calibration: dict[str, Any] | None = None  # 2-fold cross-fitted temperature: ECE / NLL before and after


@dataclass
class CurveResult:
    model: str
    dataset: str
    images: int
    classes: int
    reference: str
    points: list[CurvePoint] = field(default_factory=list)
    timesteps: dict[str, Any] = field(default_factory=dict)
    timestep_weights: dict[str, Any] | None = None  # a table fitted on all the curve's images (information run)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "dataset": self.dataset, "images": self.images, "classes": self.classes,
                "reference": self.reference, "points": [asdict(p) for p in self.points], "timesteps": self.timesteps,
                "timestep_weights": self.timestep_weights}


def _stages(n_samples: Sequence[int], to_keep: Sequence[int]) -> dict[str, Any]:
    return {"n_samples": list(n_samples), "to_keep": list(to_keep)}


def default_specs(num_classes: int, prefilter_model: str | None = None, size: str = "default") -> list[CurveSpec]:
    """The sweep for a label set of ``num_classes``: the paper's schedule for that size first (the
    reference), cheaper paper-form schedules, then the strategies (``size="tiny"``: a CI-sized sweep)."""
    K = int(num_classes)
    specs: list[CurveSpec] = []
    if size == "tiny":
        specs.append(CurveSpec("8/32 keep 2/1", "paper", _stages((8, 32), (min(2, K), 1))))
        specs.append(CurveSpec("8 keep 1", "paper", _stages((8,), (1,))))
        specs.append(CurveSpec("8/32 keep 2/1 + fitted weights", "strategy",
                               {**_stages((8, 32), (min(2, K), 1)), "timestep_weights": CROSS_FITTED}))
        specs.append(CurveSpec("sequential a=0.05 chunk 4", "strategy",
                               {**_stages((32,), (1,)), "strategy": {"name": "sequential", "alpha": 0.05, "chunk": 4,
                                                                    "min_timesteps": 8}}))
        if prefilter_model:
            specs.append(CurveSpec(f"prefilter top-2 + 8/32 keep 2/1", "strategy",
                                   {**_stages((8, 32), (min(2, K), 1)), "prefilter": {"model": prefilter_model, "k": 2}}))
        return specs
    if K <= 20:  # the paper's CIFAR-10 schedule and its authors' half-cost variant
        specs += [CurveSpec("50/500 keep 5/1 (paper)", "paper", _stages((50, 500), (min(5, K), 1))),
                  CurveSpec("25/250 keep 5/1", "paper", _stages((25, 250), (min(5, K), 1))),
                  CurveSpec("10/100 keep 3/1", "paper", _stages((10, 100), (min(3, K), 1))),
                  CurveSpec("50 keep 1", "paper", _stages((50,), (1,))),
                  CurveSpec("10 keep 1", "paper", _stages((10,), (1,)))]
        pool = 500
    else:  # the paper's many-class (ImageNet) shape
        specs += [CurveSpec("20/50/100/500 keep 20/10/5/1 (paper)", "paper",
                            _stages((20, 50, 100, 500), (min(20, K), min(10, K), min(5, K), 1))),
                  CurveSpec("20/50/100 keep 20/5/1", "paper", _stages((20, 50, 100), (min(20, K), min(5, K), 1))),
                  CurveSpec("10/50 keep 5/1", "paper", _stages((10, 50), (min(5, K), 1))),
                  CurveSpec("5 keep 1", "paper", _stages((5,), (1,)))]
        pool = 500
    seq = {"name": "sequential", "alpha": 0.05, "chunk": 10, "min_timesteps": 10, "max_timesteps": pool}
    fitted = {"timestep_weights": CROSS_FITTED}
    reference = specs[0].scoring
    specs += [CurveSpec("sequential a=0.05 chunk 10", "strategy", {**_stages((pool,), (1,)), "strategy": seq}),
              CurveSpec("sequential a=0.2 chunk 5", "strategy",
                        {**_stages((pool,), (1,)), "strategy": {**seq, "alpha": 0.2, "chunk": 5}}),
              CurveSpec(f"{specs[0].name.replace(' (paper)', '')} + sine weights", "strategy",
                        {**reference, "timestep_weights": "sine"}),
              CurveSpec(f"{specs[0].name.replace(' (paper)', '')} + fitted weights", "strategy",
                        {**reference, **fitted}),
              CurveSpec("sequential a=0.2 chunk 5 + fitted weights", "strategy",
                        {**_stages((pool,), (1,)), "strategy": {**seq, "alpha": 0.2, "chunk": 5}, **fitted})]
    if prefilter_model:
        k = 3 if K <= 20 else 10
        pre = {"model": prefilter_model, "k": k}
        short = {**seq, "alpha": 0.2, "chunk": 5, "max_timesteps": 100}
        specs += [CurveSpec(f"prefilter top-{k} + sequential a=0.05", "strategy",
                            {**_stages((pool,), (1,)), "strategy": seq, "prefilter": pre}),
                  CurveSpec(f"prefilter top-{k} + sequential a=0.2 chunk 5", "strategy",
                            {**_stages((pool,), (1,)), "strategy": {**seq, "alpha": 0.2, "chunk": 5}, "prefilter": pre}),
                  CurveSpec(f"prefilter top-{k} + sequential a=0.2 chunk 5 max 100", "strategy",
                            {**_stages((100,), (1,)), "strategy": short, "prefilter": pre}),
                  CurveSpec(f"prefilter top-{k} + sequential a=0.2 chunk 5 max 100 + fitted weights", "strategy",
                            {**_stages((100,), (1,)), "strategy": short, "prefilter": pre, **fitted})]
    return specs


def _scoring(clf, fields: dict[str, Any], batch_size: int | str, seed: int) -> ScoringConfig:
    """A point's scoring: the classifier's (its loss, trials) with the point's stages and strategy only."""
    import dataclasses

    base = dataclasses.replace(clf.scoring, strategy=None, prefilter=None, max_evaluations=None, timestep_weights=None,
                               timestep_range=None)
    return dataclasses.replace(base, **fields, batch_size=batch_size, seed=seed)


CROSS_FITTED = "cross-fitted"  # a spec's timestep_weights: a table fitted on the other half of the images


def run_curve(clf, images: Sequence[Any], labels: Sequence[int], classes: Sequence[Any], specs: Sequence[CurveSpec],
              *, model: str, dataset: str, cache_path: str | Path, batch_size: int | str = 256, seed: int = 0,
              progress: bool = True, information_pool: int | None = 100) -> CurveResult:
    """Run every spec on the same images through ``clf.classify`` with one error cache.

    A spec whose ``timestep_weights`` is ``"cross-fitted"`` is run twice, on each half of the images
    (even and odd positions) with a weight table fitted on the other half's all-classes errors at
    the ``information_pool`` timesteps (``fit_weight_table``): held-out weights for every image,
    fitted from evaluations the information run makes anyway.
    """
    labels_t = torch.as_tensor(list(labels))
    result = CurveResult(model=model, dataset=dataset, images=len(images), classes=len(classes),
                         reference=specs[0].name)
    clf.use_error_cache(cache_path)
    reference_predictions = None
    pool_out = None
    needs_fit = any(spec.scoring.get("timestep_weights") == CROSS_FITTED for spec in specs)
    if needs_fit and not information_pool:
        raise ValueError("Cross-fitted timestep weights are fitted on the information run: give --information-pool "
                         "a number of timesteps (e.g. 20), or drop the weighted points.")
    try:
        if information_pool and needs_fit:
            pool_out = pool_errors(clf, images, classes, information_pool, batch_size=batch_size, seed=seed,
                                   progress=progress)
        for spec in specs:
            fields = {k: v for k, v in spec.scoring.items() if not (k == "timestep_weights" and v == CROSS_FITTED)}
            scoring = _scoring(clf, fields, batch_size, seed)
            start = time.perf_counter()
            if spec.scoring.get("timestep_weights") == CROSS_FITTED:
                out = _cross_fitted_run(clf, images, labels_t, classes, scoring, pool_out, progress)
            else:
                out = clf.classify(images, classes, scoring=scoring, labels=list(labels), progress=progress)
            seconds = time.perf_counter() - start
            correct = int((out.predictions == labels_t).sum())
            cached = out.extras.get("cached_evaluations", torch.zeros_like(out.evaluations))
            point = CurvePoint(
                name=spec.name, kind=spec.kind, scoring=spec.scoring, accuracy=correct / len(images), correct=correct,
                images=len(images), evaluations_per_image=float(out.evaluations.double().mean()),
                computed_evaluations=int((out.evaluations - cached).sum()), seconds=round(seconds, 2))
            point.calibration = cross_fitted_calibration(out.errors, out.logits, labels_t)
            if reference_predictions is None:
                reference_predictions = out.predictions
            point.agreement_with_reference = float((out.predictions == reference_predictions).double().mean())
            result.points.append(point)
            logger.info("%s: accuracy %.4f at %.0f evaluations/image (%d computed, %.1fs)", spec.name,
                        point.accuracy, point.evaluations_per_image, point.computed_evaluations, seconds)
        if information_pool:
            if pool_out is None:
                pool_out = pool_errors(clf, images, classes, information_pool, batch_size=batch_size, seed=seed,
                                       progress=progress)
            result.timesteps = timestep_information(pool_out, labels)
            T = clf.backend.schedule.num_train_timesteps
            result.timestep_weights = fit_weight_table(
                pool_out.timestep_errors, labels_t.tolist(), pool_out.timesteps, T, bins=weight_bins(information_pool),
                source=f"{model} on {dataset}: {len(images)} images, all classes at {information_pool} timesteps",
            ).to_dict()
    finally:
        clf.use_error_cache(None)
    return result


def weight_bins(pool: int) -> int:
    """Bins of a fitted table: 10, or fewer for a small pool (at least 2 timesteps per bin)."""
    return max(1, min(10, int(pool) // 2))


def pool_errors(clf, images, classes, pool: int, *, batch_size: int | str = 256, seed: int = 0, progress: bool = False):
    """Every class scored at every timestep of a ``pool``-timestep plan (one stage, keep 1), per-pair errors kept."""
    scoring = _scoring(clf, {"n_samples": (pool,), "to_keep": (1,)}, batch_size, seed)
    return clf.classify(images, classes, scoring=scoring, return_timestep_errors=True, progress=progress)


def _cross_fitted_run(clf, images, labels: torch.Tensor, classes, scoring: ScoringConfig, pool_out, progress: bool):
    """``scoring`` on each half of the images with weights fitted on the other half; the halves' outputs merged."""
    import dataclasses
    from types import SimpleNamespace

    N = len(images)
    if N < 4:
        raise ValueError(f"Cross-fitted weights need at least 4 images (2 per half), got {N}: raise --limit.")
    T = clf.backend.schedule.num_train_timesteps
    folds = [list(range(0, N, 2)), list(range(1, N, 2))]
    parts = []
    for fit_on, apply_to in (folds, folds[::-1]):
        table = fit_weight_table(pool_out.timestep_errors[fit_on], labels[fit_on].tolist(), pool_out.timesteps, T,
                                 bins=weight_bins(len(pool_out.timesteps)))
        fold_scoring = dataclasses.replace(scoring, timestep_weights=table.to_dict())
        out = clf.classify([images[i] for i in apply_to], classes, scoring=fold_scoring,
                           labels=labels[apply_to].tolist(), progress=progress)
        parts.append((apply_to, out))
    merged = {}
    for name in ("predictions", "evaluations", "errors", "logits"):
        first = getattr(parts[0][1], name)
        value = torch.empty((N, *first.shape[1:]), dtype=first.dtype)
        for index, out in parts:
            value[index] = getattr(out, name)
        merged[name] = value
    cached = torch.zeros(N, dtype=torch.long)
    for index, out in parts:
        cached[index] = out.extras.get("cached_evaluations", torch.zeros_like(out.evaluations)).long()
    return SimpleNamespace(**merged, extras={"cached_evaluations": cached})


def cross_fitted_calibration(errors: torch.Tensor, ranking: torch.Tensor, labels: torch.Tensor) -> dict[str, Any] | None:
    """ECE and NLL of the probabilities before (temperature 1) and after calibration, the
    temperature of each image fitted on the *other* half of the images (2-fold cross-fitting:
    held-out for every image, no extra evaluations). None for fewer than 8 images."""
    from ..calibration import expected_calibration_error, fit_temperature, negative_log_likelihood, probabilities

    N = int(labels.shape[0])
    if N < 8:
        return None
    folds = [torch.arange(0, N, 2), torch.arange(1, N, 2)]
    before = probabilities(errors, 1.0, ranking=ranking)
    after = torch.empty_like(before)
    temperatures = []
    for fit_on, apply_to in (folds, folds[::-1]):
        t = fit_temperature(errors[fit_on], labels[fit_on], ranking=ranking[fit_on])
        temperatures.append(t)
        after[apply_to] = probabilities(errors[apply_to], t, ranking=ranking[apply_to])
    return {"temperatures": temperatures,
            "ece_before": expected_calibration_error(before, labels), "ece_after": expected_calibration_error(after, labels),
            "nll_before": negative_log_likelihood(before, labels), "nll_after": negative_log_likelihood(after, labels)}


def timestep_information(pool_out, labels) -> dict[str, Any]:
    """Per timestep of an all-classes run (``pool_errors``): the mean margin (best other class's error
    minus the true class's) and the accuracy of that timestep alone."""
    errors = pool_out.timestep_errors.mean(dim=3).double()  # [N, C, T] (candidates = classes here)
    labels_t = torch.as_tensor(list(labels))
    rows = torch.arange(errors.shape[0])
    true = errors[rows, labels_t]  # [N, T]
    others = errors.clone()
    others[rows, labels_t] = float("inf")
    margin = others.min(dim=1).values - true  # [N, T]
    alone = (errors.argmin(dim=1) == labels_t.view(-1, 1)).double()  # [N, T]
    return {"timesteps": list(pool_out.timesteps), "mean_margin": margin.mean(0).tolist(),
            "relative_margin": (margin / true.clamp_min(1e-12)).mean(0).tolist(),
            "accuracy_alone": alone.mean(0).tolist()}


def write_curve(result: CurveResult, out_dir: str | Path) -> dict[str, Path]:
    """``curve.json``, ``curve.csv`` and (with matplotlib) ``curve.png`` / ``timesteps.png`` under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "curve.json", "csv": out / "curve.csv"}
    paths["json"].write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    if result.timestep_weights:  # usable as is: --timestep-weights OUT/timestep_weights.json
        paths["weights"] = out / "timestep_weights.json"
        paths["weights"].write_text(json.dumps({"timestep_weights": result.timestep_weights}, indent=2) + "\n")
    with paths["csv"].open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "kind", "accuracy", "correct", "images", "evaluations_per_image",
                         "cost_vs_reference", "agreement_with_reference", "ece_before", "ece_after", "nll_before",
                         "nll_after", "computed_evaluations", "seconds", "scoring"])
        ref = result.points[0].evaluations_per_image if result.points else 1.0
        for p in result.points:
            writer.writerow([p.name, p.kind, f"{p.accuracy:.4f}", p.correct, p.images, f"{p.evaluations_per_image:.1f}",
                             f"{p.evaluations_per_image / ref:.3f}", f"{p.agreement_with_reference:.4f}",
                             *([f"{p.calibration[k]:.4f}" for k in ("ece_before", "ece_after", "nll_before", "nll_after")]
                               if p.calibration else ["", "", "", ""]),
                             p.computed_evaluations, p.seconds, json.dumps(p.scoring, sort_keys=True)])
    paths.update(plot_curve(result, out))
    return paths


def plot_curve(result: CurveResult, out_dir: Path) -> dict[str, Path]:
    """The two pictures; skipped (with a log line) where matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no PNG plots (pip install 'dc_zoo[lab]').")
        return {}
    paths = {}
    fig, ax = plt.subplots(figsize=(9, 4.8))
    for kind, marker in (("paper", "o"), ("strategy", "s")):
        pts = [(i, p) for i, p in enumerate(result.points, 1) if p.kind == kind]
        ax.scatter([p.evaluations_per_image for _, p in pts], [100 * p.accuracy for _, p in pts], marker=marker,
                   label="paper-form stage schedules" if kind == "paper" else "strategies", zorder=3)
        for i, p in pts:  # numbers on the points, names in the key beside the axes (names would overlap)
            ax.annotate(str(i), (p.evaluations_per_image, 100 * p.accuracy), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    key = "\n".join(f"{i}: {p.name}" for i, p in enumerate(result.points, 1))
    fig.text(0.70, 0.5, key, fontsize=7, va="center", family="monospace")
    fig.subplots_adjust(right=0.68)
    if result.points:
        ref = result.points[0]
        ax.axvline(ref.evaluations_per_image / 5, color="grey", ls="--", lw=0.8, label="1/5 of the paper's cost")
        ax.axhline(100 * ref.accuracy, color="grey", ls=":", lw=0.8, label="the paper schedule's accuracy")
    ax.set_xscale("log")
    ax.set_xlabel("mean network evaluations per image")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{result.model} on {result.dataset} ({result.images} images, {result.classes} classes)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    paths["png"] = out_dir / "curve.png"
    fig.savefig(paths["png"], dpi=120)
    plt.close(fig)
    if result.timesteps:
        ts = result.timesteps
        fig, ax1 = plt.subplots(figsize=(7, 4))
        ax1.plot(ts["timesteps"], ts["relative_margin"], color="C0", label="relative margin (best other - true) / true")
        ax1.axhline(0, color="grey", lw=0.8)
        ax1.set_xlabel("timestep t")
        ax1.set_ylabel("relative margin", color="C0")
        ax2 = ax1.twinx()
        ax2.plot(ts["timesteps"], [100 * a for a in ts["accuracy_alone"]], color="C1", label="accuracy of t alone")
        ax2.set_ylabel("accuracy of this timestep alone (%)", color="C1")
        ax1.set_title(f"Where the information is: {result.model} on {result.dataset}", fontsize=9)
        fig.tight_layout()
        paths["timesteps_png"] = out_dir / "timesteps.png"
        fig.savefig(paths["timesteps_png"], dpi=120)
        plt.close(fig)
    return paths
