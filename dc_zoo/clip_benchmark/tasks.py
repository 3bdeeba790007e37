"""What each clip_benchmark task needs from a Diffusion Classifier, wrapped around its metric.

clip_benchmark dispatches a task by calling ``<metric module>.evaluate(model, ...)``. For a
Diffusion Classifier model the wrappers below (installed by ``registration.register``) tell the
model its task and inputs before the stock metric runs (the full class list and templates for
zero-shot classification), append the DC extras to the returned metrics, and stop at once on
tasks a joint scorer cannot express. Any other model goes straight to the original function.
"""
from __future__ import annotations

import functools
import inspect
import logging
from typing import Any, Callable

from .model import (
    IMAGE_CAPTION_SELECTION, ZEROSHOT_CLASSIFICATION, ZEROSHOT_RETRIEVAL, DiffusionClassifierForClipBenchmark,
    UnsupportedTaskError,
)

logger = logging.getLogger(__name__)

__all__ = ["check_task_supported", "patch_metrics", "UNSUPPORTED_TASKS"]

UNSUPPORTED_TASKS = {
    "linear_probe": ("a linear probe is trained on image features alone, and a Diffusion Classifier has none: "
                     "it only scores an image against a condition. Use --task zeroshot_classification."),
    "captioning": "a Diffusion Classifier scores (image, text) pairs; it does not generate captions.",
}
_SAVE_CLF = ("the saved 'classifier' would be one-hot class columns, meaningless without the image side, "
             "which is where a Diffusion Classifier does all its work. Drop --save_clf.")
_LOAD_CLFS = ("a loaded classifier bypasses the class prompts, and the adaptive stages need them to score "
              "every image against every class. Drop --load_clfs.")


def check_task_supported(task: str, save_clf: Any = None, load_clfs: Any = None) -> None:
    """Raise ``UnsupportedTaskError`` naming the task and the reason, before any work is done."""
    if task in UNSUPPORTED_TASKS:
        raise UnsupportedTaskError(task, UNSUPPORTED_TASKS[task])
    if save_clf:
        raise UnsupportedTaskError(f"{task} with --save_clf", _SAVE_CLF)
    if load_clfs:
        raise UnsupportedTaskError(f"{task} with --load_clfs", _LOAD_CLFS)


def _wrap(module: Any, name: str, make: Callable[[Callable, inspect.Signature], Callable]) -> None:
    original = getattr(module, name)
    if getattr(original, "_dc_zoo_wrapped", False):
        return
    wrapped = functools.wraps(original)(make(original, inspect.signature(original)))
    wrapped._dc_zoo_wrapped = True
    setattr(module, name, wrapped)


def _arguments(signature: inspect.Signature, args: tuple, kwargs: dict) -> dict[str, Any]:
    bound = signature.bind_partial(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def _zeroshot_classification(original: Callable, signature: inspect.Signature) -> Callable:
    def evaluate(*args, **kwargs):
        a = _arguments(signature, args, kwargs)
        model = a["model"]
        if not isinstance(model, DiffusionClassifierForClipBenchmark):
            return original(*args, **kwargs)
        check_task_supported(ZEROSHOT_CLASSIFICATION, a.get("save_clf"), a.get("load_clfs"))
        model.begin_classification(a["classnames"], a["templates"], dataset=getattr(a["dataloader"], "dataset", None))
        metrics = original(*args, **kwargs)
        if "mean_average_precision" in metrics:
            logger.warning("Multi-label mAP compares one class's scores across images, but a Diffusion Classifier "
                           "ranks classes within an image; read mean_average_precision with care.")
        metrics.update(model.extras())
        return metrics

    return evaluate


def _pairs(task: str) -> Callable[[Callable, inspect.Signature], Callable]:
    def make(original: Callable, signature: inspect.Signature) -> Callable:
        def evaluate(*args, **kwargs):
            a = _arguments(signature, args, kwargs)
            model = a["model"]
            if not isinstance(model, DiffusionClassifierForClipBenchmark):
                return original(*args, **kwargs)
            if task == ZEROSHOT_RETRIEVAL:
                try:
                    n_batches = len(a["dataloader"])
                except TypeError:  # an iterable dataset: the model stops at the second batch instead
                    n_batches = 1
                if n_batches > 1:
                    raise UnsupportedTaskError(
                        f"zeroshot_retrieval over {n_batches} batches",
                        "retrieval compares every caption with every image of the dataset, but a joint scorer "
                        "only sees the images and captions of one batch together; use --batch_size at least "
                        "the dataset size (all pairs of that batch are then scored).")
            model.begin_pairs(task)
            metrics = original(*args, **kwargs)
            metrics.update(model.extras())
            return metrics

        return evaluate

    return make


def _unsupported(task: str) -> Callable[[Callable, inspect.Signature], Callable]:
    def make(original: Callable, signature: inspect.Signature) -> Callable:
        def evaluate(*args, **kwargs):
            if isinstance(_arguments(signature, args, kwargs).get("model"), DiffusionClassifierForClipBenchmark):
                check_task_supported(task)
            return original(*args, **kwargs)

        return evaluate

    return make


def patch_metrics() -> None:
    """Wrap the five metric entry points of clip_benchmark (idempotent)."""
    from clip_benchmark.metrics import (
        captioning, image_caption_selection, linear_probe, zeroshot_classification, zeroshot_retrieval,
    )

    _wrap(zeroshot_classification, "evaluate", _zeroshot_classification)
    _wrap(image_caption_selection, "evaluate", _pairs(IMAGE_CAPTION_SELECTION))
    _wrap(zeroshot_retrieval, "evaluate", _pairs(ZEROSHOT_RETRIEVAL))
    _wrap(linear_probe, "evaluate", _unsupported("linear_probe"))
    _wrap(captioning, "evaluate", _unsupported("captioning"))
