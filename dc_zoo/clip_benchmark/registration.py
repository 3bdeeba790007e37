"""Make the stock ``clip_benchmark eval`` command load Diffusion Classifier entries.

clip-benchmark 1.6.2 has no plugin hook: loaders live in ``clip_benchmark.models.TYPE2FUNC``
and ``--model_type`` is checked against ``MODEL_TYPES``, a list the CLI parser captures when it
is built. Registration therefore edits those two objects in place, right after
``clip_benchmark.models`` is imported and before any argument is parsed:

- ``TYPE2FUNC["diffusion_classifier"]`` and ``"diffusion_classifier"`` appended to
  ``MODEL_TYPES`` (the same list object the parser holds), for ``--model_type
  diffusion_classifier``;
- ``TYPE2FUNC["open_clip"]`` wrapped so that ``--model diffusion-classifier --pretrained
  <entry>`` works with the default model type, and so that a ``--pretrained_model`` file can
  mix open_clip models and Diffusion Classifier entries in one run; the zoo's own CLIP
  baselines (``open_clip``-family entries such as ``clip-digits-mini``) load by name, from the
  bundled cache for the miniatures (``--model clip-digits-mini --pretrained dc-zoo``); every
  other name reaches open_clip unchanged;
- ``clip_benchmark.cli.run`` wrapped to stop unsupported tasks before a model is loaded, and
  the metric functions wrapped (``tasks.patch_metrics``) when a Diffusion Classifier is loaded;
- ``zeroshot_classification.accuracy`` replaced only where NumPy >= 2.4 breaks it.

How it is triggered. ``python -m dc_zoo.clip_benchmark eval ...`` calls ``register()``
explicitly. For the bare ``clip_benchmark`` command, an installed ``dc_zoo_clip_benchmark.pth``
loads ``import_hook.py`` at interpreter start; that file only adds an import hook (stdlib, no
torch), and the patches above run when clip_benchmark itself is imported. Trade-offs, chosen
over the alternatives (a ``sitecustomize.py`` would replace the user's own; shipping a second
``clip_benchmark`` console script would fight clip-benchmark's over the same file): a ``.pth``
file runs in every interpreter of the environment (cost: one ``find_spec``), it only works when
installed by pip into site-packages, and ``DC_ZOO_NO_CLIP_BENCHMARK_HOOK=1`` turns it off.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "MODEL_NAME", "MODEL_TYPE", "SCORING_ENV", "register", "load_diffusion_classifier",
    "patch_models_module", "patch_cli_module", "patch_zeroshot_module", "is_diffusion_classifier_run",
]

MODEL_NAME = "diffusion-classifier"  # --model diffusion-classifier --pretrained <entry>
MODEL_TYPE = "diffusion_classifier"  # --model_type diffusion_classifier
SCORING_ENV = "DC_ZOO_SCORING"  # JSON overrides of the entry's ScoringConfig, e.g. {"n_samples": [10, 50]}


def _scoring_overrides() -> dict[str, Any]:
    raw = os.environ.get(SCORING_ENV, "").strip()
    if not raw:
        return {}
    try:
        overrides = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"{SCORING_ENV} must be a JSON object such as "
                         f'\'{{"n_samples": [10, 50], "to_keep": [3, 1]}}\'; got {raw!r} ({err}).') from None
    from ..config import ScoringConfig

    fields = {f.name for f in dataclasses.fields(ScoringConfig)} - {"extra"}
    unknown = sorted(set(overrides) - fields) if isinstance(overrides, dict) else ["<not an object>"]
    if unknown:
        raise ValueError(f"{SCORING_ENV} has unknown keys {unknown}; valid keys: {sorted(fields)}.")
    return overrides


def load_diffusion_classifier(model_name: str = MODEL_NAME, pretrained: str = "", cache_dir: str | None = None,
                              device: Any = "cpu"):
    """clip_benchmark loader: ``(model, transform, tokenizer)`` for the zoo entry ``pretrained``.

    Raises:
        ValueError: ``model_name`` is not ``diffusion-classifier`` or no entry was named.
    """
    if model_name != MODEL_NAME:
        raise ValueError(f"With --model_type {MODEL_TYPE}, pass --model {MODEL_NAME} and the zoo entry as "
                         f"--pretrained (e.g. --pretrained sd-2-base); got --model {model_name!r}.")
    if not pretrained:
        raise ValueError(f"--model {MODEL_NAME} needs --pretrained <entry>; see dc_zoo.list_models().")
    from .._factory import create_model
    from .model import DiffusionClassifierForClipBenchmark
    from .tasks import patch_metrics

    patch_metrics()
    kwargs: dict[str, Any] = {"device": device}
    if cache_dir:
        kwargs["cache_dir"] = cache_dir
    overrides = _scoring_overrides()
    if overrides:
        kwargs["scoring"] = overrides  # merged over the entry's own schedule by create_model
        logger.info("%s: scoring overrides from %s: %s", pretrained, SCORING_ENV, overrides)
    classifier = create_model(pretrained, **kwargs)
    model = DiffusionClassifierForClipBenchmark(classifier, name=pretrained)
    return model, model.transform, model.tokenizer


def _zoo_open_clip_entry(model_name: str) -> Any:
    """The zoo's ``open_clip``-family entry called ``model_name`` (a CLIP baseline), else None."""
    from .._registry import get_entry

    try:
        entry = get_entry(model_name)
    except KeyError:
        return None
    return entry if entry.family == "open_clip" else None


def load_zoo_open_clip(load_open_clip, entry: Any, pretrained: str, cache_dir: str | None, device: Any):
    """A zoo CLIP baseline through clip_benchmark's own open_clip loader.

    The weights are resolved by ``_hub`` (the bundled cache for the miniatures, pinned revision)
    and handed over as ``local-dir:<snapshot>``: clip_benchmark calls ``open_clip.get_tokenizer``
    without ``cache_dir``, so an ``hf-hub:`` name outside the default cache would fail offline.
    """
    from .._hub import download_snapshot

    if pretrained not in ("", entry.name, "dc-zoo"):
        logger.info("%s: --pretrained %r ignored; the entry fixes the weights (%s)", entry.name, pretrained, entry.hub_id)
    snapshot = download_snapshot(entry.hub_id, entry.revision, cache_dir=cache_dir)
    return load_open_clip(model_name=f"local-dir:{snapshot.path}", pretrained="", cache_dir=None, device=device)


def _open_clip_or_diffusion_classifier(load_open_clip):
    @functools.wraps(load_open_clip)
    def load(model_name: str = "ViT-B-32-quickgelu", pretrained: str = "laion400m_e32", cache_dir: str | None = None,
             device: Any = "cpu"):
        if model_name == MODEL_NAME:
            return load_diffusion_classifier(model_name, pretrained, cache_dir=cache_dir, device=device)
        entry = _zoo_open_clip_entry(model_name)
        if entry is not None:
            return load_zoo_open_clip(load_open_clip, entry, pretrained, cache_dir, device)
        return load_open_clip(model_name=model_name, pretrained=pretrained, cache_dir=cache_dir, device=device)

    load._dc_zoo_wrapped = True
    return load


def patch_models_module(module: Any) -> None:
    """Register the loader in ``clip_benchmark.models`` (idempotent)."""
    module.TYPE2FUNC[MODEL_TYPE] = load_diffusion_classifier
    if MODEL_TYPE not in module.MODEL_TYPES:
        module.MODEL_TYPES.append(MODEL_TYPE)  # in place: the CLI parser holds this very list
    if "open_clip" in module.TYPE2FUNC and not getattr(module.TYPE2FUNC["open_clip"], "_dc_zoo_wrapped", False):
        module.TYPE2FUNC["open_clip"] = _open_clip_or_diffusion_classifier(module.TYPE2FUNC["open_clip"])


def is_diffusion_classifier_run(args: Any) -> bool:
    return getattr(args, "model_type", None) == MODEL_TYPE or getattr(args, "model", None) == MODEL_NAME


def _stop_unsupported_tasks_early(run):
    @functools.wraps(run)
    def run_checked(args):
        if is_diffusion_classifier_run(args):
            from clip_benchmark.datasets.builder import get_dataset_default_task

            from .tasks import check_task_supported

            task = args.task
            if task == "auto":
                dataset = args.dataset[len("wds/"):] if args.dataset.startswith("wds/") else args.dataset
                task = get_dataset_default_task(dataset)
            check_task_supported(task, getattr(args, "save_clf", None), getattr(args, "load_clfs", None))
        return run(args)

    run_checked._dc_zoo_wrapped = True
    return run_checked


def patch_cli_module(module: Any) -> None:
    """Wrap ``clip_benchmark.cli.run`` so unsupported tasks stop before loading (idempotent)."""
    if not getattr(module.run, "_dc_zoo_wrapped", False):
        module.run = _stop_unsupported_tasks_early(module.run)


def patch_zeroshot_module(module: Any) -> None:
    """NumPy >= 2.4 compatibility of ``accuracy()`` (for every model, CLIP included)."""
    from .numpy_compat import patch_accuracy

    patch_accuracy(module)


def register() -> None:
    """Apply every patch now (idempotent); what ``python -m dc_zoo.clip_benchmark`` does first."""
    import clip_benchmark.cli as cli
    import clip_benchmark.metrics.zeroshot_classification as zeroshot_classification
    import clip_benchmark.models as models

    patch_models_module(models)
    patch_zeroshot_module(zeroshot_classification)
    patch_cli_module(cli)
    from .tasks import patch_metrics

    patch_metrics()
