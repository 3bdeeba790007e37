"""clip_benchmark's zero-shot classification metrics, computed from the per-sample records.

The same helpers ``clip_benchmark eval`` uses (its ``accuracy`` for top-k, scikit-learn's
balanced accuracy as ``mean_per_class_recall``, top-5 reported as NaN under 5 classes), fed
with the engine's ranking logits: argmax is the prediction and the top-k order respects the
adaptive stages, so acc5 ranks classes pruned early below those that reached later stages.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import torch

from ..candidates import ranking_logits
from .result_store import SampleRecord

__all__ = ["classification_metrics", "records_to_logits", "cost_summary"]


def records_to_logits(records: Sequence[SampleRecord]) -> torch.Tensor:
    """``[N, K]`` ranking logits of scored records (callers drop the failed ones first)."""
    return torch.stack([
        ranking_logits(torch.tensor(r.errors, dtype=torch.float32), torch.tensor(r.stage_reached, dtype=torch.long))
        for r in records
    ])


def classification_metrics(records: Sequence[SampleRecord], num_classes: int) -> dict[str, float]:
    """``{"acc1", "acc5", "mean_per_class_recall"}`` exactly as clip_benchmark reports them.

    A sample that could not be read or scored (undecodable image, non-finite network output) counts as wrong.
    """
    from clip_benchmark.metrics.zeroshot_classification import accuracy
    from sklearn.metrics import balanced_accuracy_score

    if not records:
        raise ValueError("No records to compute metrics from.")
    scored = [r for r in records if r.errors is not None]
    topk = (1, 5) if num_classes >= 5 else (1,)
    if scored:
        logits = records_to_logits(scored)
        target = torch.tensor([r.label for r in scored], dtype=torch.long)
        accs = [a * len(scored) / len(records) for a in accuracy(logits, target, topk=topk)]
    else:
        accs = [0.0] * len(topk)
    acc1, acc5 = (accs[0], accs[1]) if len(accs) == 2 else (accs[0], float("nan"))
    labels = [r.label for r in records]
    predictions = [r.prediction for r in records]
    with warnings.catch_warnings():  # a failed sample's prediction -1 is no class, on purpose
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        recall = float(balanced_accuracy_score(labels, predictions))
    return {"acc1": float(acc1), "acc5": float(acc5), "mean_per_class_recall": recall}


def cost_summary(records: Sequence[SampleRecord]) -> dict[str, float | int]:
    """Network evaluations per image and how many samples could not be scored."""
    evaluations = [r.evaluations for r in records]
    return {
        "evaluations_per_image": sum(evaluations) / max(1, len(evaluations)),
        "n_samples": len(records),
        "n_failed": sum(r.error is not None for r in records),
    }
