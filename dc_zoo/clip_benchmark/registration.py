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
- ``clip_benchmark.cli.run`` wrapped to stop unsupported tasks, and an ``--output`` whose folder
  does not exist (``{pretrained}`` of an ``hf-hub:`` name holds a ``/``), before a model is
  loaded, and the metric functions wrapped (``tasks.patch_metrics``) when a Diffusion
  Classifier is loaded;
- ``clip_benchmark.cli.main`` wrapped so that dc_zoo's own user errors (an invalid
  ``DC_ZOO_SCORING``, an unknown ``--pretrained`` with its close matches, a bad schedule, a model
  that is not cached or is damaged, an unsupported task) end as one line
  ``clip_benchmark: error: <message>`` and exit status 2, not under a traceback; any other
  exception, clip_benchmark's own included, propagates unchanged;
- ``clip_benchmark.cli.build_dataset`` wrapped, for Diffusion Classifier runs only, so that a
  WebDataset sample that cannot be decoded (corrupt or zero-byte image) stops the run with one
  line naming the shard, the sample key and the reason (exit status 1), instead of webdataset's
  empty ``DecodingError`` (skipping the sample would change clip_benchmark's metrics silently);
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

import contextlib
import dataclasses
import functools
import json
import logging
import os
import sys
from typing import Any, Iterator

logger = logging.getLogger(__name__)

__all__ = [
    "MODEL_NAME", "MODEL_TYPE", "SCORING_ENV", "register", "load_diffusion_classifier",
    "patch_models_module", "patch_cli_module", "patch_zeroshot_module", "is_diffusion_classifier_run",
    "CorruptSampleError", "USAGE_STATUS", "DATA_STATUS",
]

MODEL_NAME = "diffusion-classifier"  # --model diffusion-classifier --pretrained <entry>
MODEL_TYPE = "diffusion_classifier"  # --model_type diffusion_classifier
SCORING_ENV = "DC_ZOO_SCORING"  # JSON overrides of the entry's ScoringConfig, e.g. {"n_samples": [10, 50]}
CAPTION_SCORE_ENV = "DC_ZOO_CAPTION_SCORE"  # caption selection: "normalized" (default, Diffusion-ITM) or "raw"
USAGE_STATUS = 2  # exit status of a user error (argparse's), as `dc-zoo` uses
DATA_STATUS = 1  # exit status of a sample that cannot be decoded
_USER_ERROR = "_dc_zoo_user_error"  # attribute marking an exception as a dc_zoo user error


class CorruptSampleError(Exception):
    """A WebDataset sample that cannot be decoded, with its shard, key and reason in the message.

    Built from one string so that it survives torch's DataLoader, which re-raises a worker's
    exception in the main process as ``type(err)(<worker traceback text>)``.
    """

    def __init__(self, message: str):
        super().__init__(message)

    @property
    def summary(self) -> str:
        """The message alone: the worker's own line when the DataLoader wrapped it in a traceback."""
        text = str(self)
        marker = f"{type(self).__module__}.{type(self).__qualname__}: "
        lines = [line[len(marker):] for line in text.splitlines() if line.startswith(marker)]
        return lines[-1] if lines else text.strip()


def _decoding_reason(err: BaseException) -> str:
    cause = err.__cause__ or err.__context__
    if cause is None:
        return type(err).__name__
    text = " ".join(str(cause).split())
    if "<_io.BytesIO object" in text:  # PIL names the in-memory stream, not the file
        text = text.split("<_io.BytesIO object")[0].rstrip() or text
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


def _raise_corrupt_sample(err: BaseException) -> bool:
    """webdataset exception handler of the decode stage: a DecodingError becomes a ``CorruptSampleError``."""
    from webdataset.autodecode import DecodingError

    if not isinstance(err, DecodingError):
        raise err
    k = getattr(err, "k", None)
    field = f"its {k!r} field" if k else "it"
    value = (getattr(err, "sample", None) or {}).get(k) if k else None
    size = f"{len(value):,} bytes, " if isinstance(value, (bytes, bytearray)) else ""
    raise CorruptSampleError(
        f"shard {getattr(err, 'url', None) or '<unknown shard>'}, sample {getattr(err, 'key', None) or '<unknown key>'}: "
        f"{field} cannot be decoded ({size}{_decoding_reason(err)}); the sample is corrupt or empty. clip_benchmark stops "
        "here, because skipping the sample would change its metrics silently: rewrite the shard without it (or "
        "repair it), or evaluate with `dc-zoo eval`, which records such samples as failed and goes on."
    ) from err


def _mark_user_error(err: BaseException) -> BaseException:
    try:
        setattr(err, _USER_ERROR, True)
    except AttributeError:  # an exception type with __slots__: reported with its traceback
        pass
    return err


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Mark dc_zoo's user errors (bad names, settings, missing or damaged files) raised inside."""
    from .._hub import ZooHubError

    try:
        yield
    except (ValueError, KeyError, ZooHubError) as err:
        raise _mark_user_error(err)


def _user_error_message(err: BaseException) -> tuple[str, int] | None:
    """``(message, exit status)`` when ``err`` is one of dc_zoo's user errors, else None."""
    from .._hub import ZooHubError
    from .model import UnsupportedTaskError

    if isinstance(err, CorruptSampleError):
        return err.summary, DATA_STATUS
    if isinstance(err, (UnsupportedTaskError, ZooHubError)) or getattr(err, _USER_ERROR, False):
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        return " ".join(str(message).split()), USAGE_STATUS
    return None


def _scoring_overrides() -> dict[str, Any]:
    raw = os.environ.get(SCORING_ENV, "").strip()
    if not raw:
        return {}
    try:
        overrides = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"{SCORING_ENV} must be a JSON object such as "
                         f'\'{{"n_samples": [10, 50], "to_keep": [3, 1]}}\' or \'"recommended"\'; got {raw!r} ({err}).') from None
    from ..config import ScoringConfig

    if overrides == "recommended":  # the entry's measured cheaper scoring (dc_zoo.strategies)
        return {"preset": "recommended"}
    fields = ({f.name for f in dataclasses.fields(ScoringConfig)} - {"extra"}) | {"preset"}
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
    from ..timestep_plan import validate_stages
    from .model import CAPTION_SCORES, DiffusionClassifierForClipBenchmark
    from .tasks import patch_metrics

    patch_metrics()
    kwargs: dict[str, Any] = {"device": device}
    if cache_dir:
        kwargs["cache_dir"] = cache_dir
    with _user_errors():
        overrides = _scoring_overrides()
        if overrides:
            kwargs["scoring"] = overrides  # merged over the entry's own schedule by create_model
            logger.info("%s: scoring overrides from %s: %s", pretrained, SCORING_ENV, overrides)
        classifier = create_model(pretrained, **kwargs)
        scoring = classifier.scoring  # checked now, not after the dataset is opened and the first batch read
        try:
            validate_stages(scoring.n_samples, scoring.to_keep, classifier.backend.schedule.num_train_timesteps)
        except ValueError as err:
            source = f"{SCORING_ENV}={os.environ[SCORING_ENV].strip()}" if overrides else f"the entry {pretrained}"
            raise ValueError(f"The schedule of {source} is invalid: {err}") from None
        caption_score = os.environ.get(CAPTION_SCORE_ENV, "").strip() or "normalized"
        if caption_score not in CAPTION_SCORES:
            raise ValueError(f"{CAPTION_SCORE_ENV}={caption_score!r} is unknown; choose one of {CAPTION_SCORES} "
                             "(normalized: unconditional minus conditional error, Diffusion-ITM; raw: minus the "
                             "conditional error).")
        model = DiffusionClassifierForClipBenchmark(classifier, name=pretrained, caption_score=caption_score)
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


def _check_output_folder(args: Any, task: str) -> None:
    """Fail before the evaluation if clip_benchmark could not write its result file after it.

    clip_benchmark fills ``--output`` with the raw ``--pretrained`` name and writes only at the
    end, into a folder it does not create: ``hf-hub:org/repo`` or a model folder's path put a
    ``/`` in the file name, and the result of a long run would be lost.
    """
    template, pretrained = getattr(args, "output", None), str(getattr(args, "pretrained", ""))
    if not isinstance(template, str):
        return
    dataset = args.dataset[len("wds/"):] if args.dataset.startswith("wds/") else args.dataset
    is_file = os.path.isfile(pretrained)
    try:  # the same fields as clip_benchmark.cli.run
        output = template.format(model=args.model, pretrained=os.path.basename(pretrained) if is_file else pretrained,
                                 pretrained_full_path=pretrained.replace("/", "_") if is_file else pretrained,
                                 task=task, dataset=dataset.replace("/", "_"), language=getattr(args, "language", "en"))
    except (KeyError, IndexError, ValueError, AttributeError):
        return  # clip_benchmark reports its own template errors
    folder = os.path.dirname(output)
    if folder and not os.path.isdir(folder):
        raise _mark_user_error(ValueError(
            f"--output {template!r} gives {output!r} for --pretrained {pretrained!r}, and its folder {folder!r} does "
            "not exist; clip_benchmark writes the result there only after the whole evaluation and does not create "
            "folders (a '/' in the model name makes one). Create the folder, or leave {pretrained} out of --output "
            "(e.g. 'results/{dataset}_{task}.json')."
        ))


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
            _check_output_folder(args, task)
            _DC_RUN["active"] = True
            try:
                return run(args)
            finally:
                _DC_RUN["active"] = False
        return run(args)

    run_checked._dc_zoo_wrapped = True
    return run_checked


_DC_RUN = {"active": False}  # set while clip_benchmark.cli.run evaluates a Diffusion Classifier


_WDS_IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")  # what clip_benchmark's WebDataset reader takes


def _dc_zoo_image_decoder(key: str, data: bytes) -> Any:
    """webdataset decoder handler: image fields decoded by ``dc_zoo.image_io`` (EXIF orientation,
    alpha kept for the transform to composite on white, 16-bit kept for it to scale, bombs
    refused), as ``classify()`` and ``dc-zoo eval`` decode them; other fields go on to the next handler."""
    from ..image_io import decode_image_bytes

    if key.rsplit(".", 1)[-1].lower() not in _WDS_IMAGE_EXTENSIONS:
        return None
    return decode_image_bytes(data)


def _stop_on_corrupt_samples(dataset: Any) -> Any:
    """Decode clip_benchmark's images as dc_zoo does, and name a sample that cannot be decoded.

    WebDataset pipelines: ``_dc_zoo_image_decoder`` goes first in the decode stage and that
    stage raises ``CorruptSampleError``. Image folders (torchvision's ``DatasetFolder``): their
    ``loader`` becomes ``dc_zoo.image_io.load_image``.
    """
    from ..image_io import load_image

    if callable(getattr(dataset, "loader", None)) and isinstance(getattr(dataset, "samples", None), list):
        dataset.loader = load_image
    try:
        from webdataset.autodecode import Decoder
        from webdataset.filters import FilterFunction
    except ImportError:
        return dataset
    patched = False
    for stage in getattr(dataset, "pipeline", ()):
        if isinstance(stage, FilterFunction) and stage.args and isinstance(stage.args[0], Decoder):
            stage.kw["handler"] = _raise_corrupt_sample
            if _dc_zoo_image_decoder not in stage.args[0].handlers:
                stage.args[0].handlers.insert(0, _dc_zoo_image_decoder)
            patched = True
    if getattr(dataset, "pipeline", None) and not patched:
        logger.warning("this webdataset version's pipeline has no decode stage dc_zoo knows: a corrupt sample "
                       "will end the run with webdataset's own error")
    return dataset


def _name_corrupt_samples(build_dataset):
    @functools.wraps(build_dataset)
    def build(*args, **kwargs):
        dataset = build_dataset(*args, **kwargs)
        return _stop_on_corrupt_samples(dataset) if _DC_RUN["active"] else dataset

    build._dc_zoo_wrapped = True
    return build


def _report_user_errors(main):
    @functools.wraps(main)
    def main_reporting(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - re-raised unless it is one of dc_zoo's user errors
            reported = _user_error_message(err)
            if reported is None:
                raise
            message, status = reported
            print(f"clip_benchmark: error: {message}", file=sys.stderr)
            return status

    main_reporting._dc_zoo_wrapped = True
    return main_reporting


def patch_cli_module(module: Any) -> None:
    """Wrap ``clip_benchmark.cli`` (idempotent): ``run`` stops unsupported tasks before loading,
    ``main`` reports dc_zoo's user errors in one line (exit 2), ``build_dataset`` names corrupt samples."""
    if not getattr(module.run, "_dc_zoo_wrapped", False):
        module.run = _stop_unsupported_tasks_early(module.run)
    if not getattr(module.main, "_dc_zoo_wrapped", False):
        module.main = _report_user_errors(module.main)
    if hasattr(module, "build_dataset") and not getattr(module.build_dataset, "_dc_zoo_wrapped", False):
        module.build_dataset = _name_corrupt_samples(module.build_dataset)


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
