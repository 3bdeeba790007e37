"""clip-benchmark 1.6.2's ``accuracy()`` under NumPy 2.4, fixed without editing clip_benchmark.

Its last line calls ``float()`` on a one-element, one-dimensional NumPy array: deprecated since
NumPy 1.25 and a ``TypeError`` from NumPy 2.4, which breaks every zero-shot classification run
(CLIP models included). ``patch_accuracy`` probes the installed function and, only if that
conversion warns or fails, swaps in ``accuracy`` below: the same numbers, read with ``.item()``.
"""
from __future__ import annotations

import logging
import warnings
from typing import Any, Sequence

import torch

logger = logging.getLogger(__name__)

__all__ = ["accuracy", "patch_accuracy"]


def accuracy(output: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1,)) -> list[float]:
    """Top-k accuracies, as clip_benchmark computes them (ties resolved by ``torch.topk``)."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    n = len(target)
    return [float(correct[:k].reshape(-1).float().sum().item()) / n for k in topk]


def _is_broken(fn: Any) -> bool:
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2]])
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        try:
            fn(logits, torch.tensor([1, 1]), topk=(1,))
        except (TypeError, DeprecationWarning):
            return True
    return False


def patch_accuracy(module: Any) -> bool:
    """Replace ``module.accuracy`` if it fails (or warns) on the installed NumPy; True if replaced."""
    original = getattr(module, "accuracy", None)
    if original is None or original is accuracy or not _is_broken(original):
        return False
    module.accuracy = accuracy
    logger.debug("clip_benchmark accuracy() replaced: its float(ndarray) breaks on NumPy >= 2.4")
    return True
