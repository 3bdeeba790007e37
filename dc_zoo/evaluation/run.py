"""One evaluation run: a zoo model on a clip_benchmark dataset, sharded, resumable, merged.

The steps, each rank alike: check the inputs (dataset name, root, output, world size) and load
the model before any sample is scored, so a bad input stops every rank with one clear error;
rank 0 opens the store (checks its identity, cuts a torn tail) and tells every rank which
chunks are finished; each rank scores its round-robin share of the unfinished chunks and
appends their records; rank 0 merges all ranks' records into clip_benchmark's result JSON and
one ``samples.jsonl`` sorted by sample index.

A chunk is ``image_batch_size`` consecutive dataset samples scored together (the engine packs
their work into shared batches); the next chunks are read and preprocessed on a background thread
(``dc_zoo.prefetch``) while one is scored. Chunks are fixed by the run identity, never by the world size
or by where a previous run stopped, and each sample's noise depends only on (seed, index): so a
run on any number of processes, interrupted any number of times, gives the same records, bit
for bit, as one uninterrupted process.

Runs that fail or collide:

- **A second launch on the same output** is refused while the first runs: rank 0 holds a lock
  on the run directory (``lock.py``; names the holder). A killed run holds none.
- **SIGTERM** (how SLURM preempts; torchrun forwards it to every rank): the chunk in flight is
  finished and appended, nothing is torn, the run stops with ``EvalInterrupted`` and the
  command exits with status ``SIGTERM_EXIT_STATUS`` (143 = 128 + SIGTERM) and one line saying
  to re-run the same command. The previous handler is restored afterwards.
- **A full disk** (or any failed write): the write is undone, temporary files removed, and an
  ``OutputWriteError`` names the file and the fix; re-running after freeing space resumes.
- **An image that cannot be decoded** (a corrupt or empty file in a local WebDataset) is
  recorded as a failed sample (``error`` = ``"<shard>:<key>: <reason>"``) and counted in
  ``failed_images``, like a non-finite network output; the other samples are unaffected.

A rank that fails while scoring does not leave the others waiting: they finish their share
(nothing computed is lost) and stop with its message at the end-of-scoring check.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import json
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from ..batch_size import AUTO
from ..candidates import CandidateSet
from ..classifier import DiffusionClassifier
from ..clip_benchmark.registration import MODEL_NAME as CLIP_BENCHMARK_MODEL
from ..config import ScoringConfig
from ..engine import NonFiniteScoreError
from ..image_io import ImageInputError
from ..prefetch import Prefetcher, pin_for
from ..preprocess import to_pixels
from ..timestep_plan import validate_stages
from .benchmark_datasets import BenchmarkDataset, UnreadableSample, load_benchmark_dataset
from .distributed import DistributedContext, RankFailedError, init_distributed, shard
from .identity import RunIdentity
from .lock import LOCK_NAME, RunLock
from .metrics import classification_metrics, cost_summary
from .progress import OverallProgress, RankProgress, file_sizes
from .prompts import resolve_prompts
from .result_store import (ResultStore, SampleRecord, chunk_bounds, complete_chunks, num_chunks, stored_batch_size,
                           write_atomic, write_failure)

logger = logging.getLogger(__name__)

__all__ = ["EvalConfig", "EvalResult", "EvalInterrupted", "run_evaluation", "TASK", "SIGTERM_EXIT_STATUS"]

TASK = "zeroshot_classification"
SIGTERM_EXIT_STATUS = 128 + signal.SIGTERM  # 143: the shell's status for "ended by SIGTERM", said in one line


class EvalInterrupted(RuntimeError):
    """The run was stopped by SIGTERM between two chunks; every stored record is whole."""


class _StopOnSigterm:
    """While active (main thread only), SIGTERM asks the scoring loop to stop after the chunk in flight."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def _handle(self, signum, frame) -> None:
        if not self.requested:
            logger.warning("SIGTERM received: stopping once the chunk in flight is stored")
        self.requested = True

    def __enter__(self) -> "_StopOnSigterm":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False


@dataclass(frozen=True)
class EvalConfig:
    """What ``dc-zoo eval`` was asked to do (``None`` = the model entry's default)."""

    model: str  # zoo name, hf-hub:org/repo[@rev] or a local pipeline folder
    dataset: str  # any clip_benchmark classification dataset name (cifar10, wds/<name>, ...)
    dataset_root: str
    output: str  # directory: <stem>.json (clip_benchmark format) and <stem>/ (records)
    split: str = "test"
    revision: str | None = None
    n_samples: tuple[int, ...] | None = None
    to_keep: tuple[int, ...] | None = None
    loss: str | None = None
    seed: int | None = None
    n_trials: int | None = None
    batch_size: int | str | None = None  # network evaluations per forward pass, or "auto" (measured once)
    strategy: dict | None = None  # dc_zoo.strategies spec, e.g. {"name": "sequential"}; None: the entry's
    max_evaluations: int | None = None  # per-image budget (anytime answer)
    prefilter: dict | None = None  # {"model": open_clip name, "k": classes kept}
    timestep_weights: dict | str | None = None  # "sine" or a fitted table (dc_zoo.strategies.weighting)
    timestep_range: tuple[float, float] | None = None  # (lo, hi) fractions of [0, T) the plan spreads over
    error_cache: str | None = None  # SQLite file of network errors shared by runs (dc_zoo.error_cache)
    recommended: bool = False  # start from the entry's measured cheaper scoring instead of the paper's
    image_batch_size: int = 8  # samples per chunk (scored together, written together)
    templates: str = "entry"  # "entry", "clip_benchmark" or a template file
    dtype: str | None = None
    device: str | None = None
    limit: int | None = None  # score only the first N samples (rounded up to whole chunks)
    download: bool = False  # let clip_benchmark download a missing torchvision dataset
    language: str = "en"
    channels_last: bool = False  # speed levers (dc_zoo.acceleration); part of the run identity
    compile: bool = False
    compile_mode: str | None = None  # "reduce-overhead" (CUDA graphs) or "max-autotune"; implies compile
    attention: str | None = None  # pin one attention kernel: flash, efficient, cudnn, math
    tf32: bool = False
    progress: bool = False  # tqdm bars (the CLI turns them on)
    prefetch: int = 2  # chunks read and preprocessed ahead on a background thread; 0 = on the main thread
    dist_timeout_hours: float = 24.0  # how long ranks wait for the slowest at the end


@dataclass
class EvalResult:
    """Where the results are and what they say (metrics only on rank 0).

    Attributes:
        metrics: clip_benchmark's ``acc1``, ``acc5``, ``mean_per_class_recall`` (rank 0; else None).
        results_file: clip_benchmark's JSON result file.
        samples_file: every sample's record, sorted by index (written by rank 0).
        store_dir: the per-rank record files the run resumes from.
        scored: samples this rank scored in this session.
        resumed: samples already in the store when the session began.
        summary: evaluations per image, samples, failed samples (rank 0; else None).
    """

    metrics: dict[str, float] | None
    results_file: Path
    samples_file: Path
    store_dir: Path
    scored: int
    resumed: int
    summary: dict[str, Any] | None = None


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in text).strip("_") or "model"


def launch_lock_path(output: Path, model: str, dataset: str, split: str) -> Path:
    """The lock a launch takes before loading its model: the same command twice on one output
    collides here, before any weights are loaded (the run directory's own lock, taken once the
    model has resolved to its name, catches two spellings of one model)."""
    return Path(output) / f".{_slug(model)}__{_slug(dataset)}__{_slug(split)}.{LOCK_NAME}"


def _check_output_writable(output: Path) -> None:
    probe = output / f".dc-zoo-write-test-{os.getpid()}"
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        if err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
            raise write_failure(probe, err) from None
        raise PermissionError(
            f"Output directory {output} is not writable ({err.strerror or err}): choose a writable --output "
            "(every rank writes its records there, so on several nodes it must be a shared filesystem)."
        ) from None


def _model_label(config: EvalConfig, clf: DiffusionClassifier) -> tuple[str, str | None]:
    """(model name, resolved revision) for the results and the run identity."""
    entry, source = getattr(clf, "entry", None), getattr(clf, "source", None)
    name = getattr(entry, "name", None) if entry is not None and getattr(entry, "listed", True) else None
    name = name or config.model
    revision = None
    if source is not None:
        revision = getattr(source, "commit", None) or getattr(source, "revision", None)
    if revision is None and entry is not None:
        revision = getattr(entry, "revision", None)
    return name, revision or config.revision


def _candidates(clf: DiffusionClassifier, dataset: BenchmarkDataset, template_source: str) -> tuple[CandidateSet, tuple[str, ...]]:
    """The candidate set for the dataset's classes and the templates it records in the identity."""
    if clf.backend.conditioning == "class_label":
        num_labels = getattr(clf.backend, "num_classes", None)
        if num_labels == 1000:  # ImageNet label space (DiT): map clip_benchmark's names/subsets onto it
            from ..clip_benchmark.imagenet_labels import imagenet_labels_for_classes

            labels = imagenet_labels_for_classes(dataset.classes, dataset.source)
            if labels is not None:
                conditions = [label for group in labels for label in group]
                index = [k for k, group in enumerate(labels) for _ in group]
                return CandidateSet(tuple(conditions), tuple(index), tuple(dataset.classes)), ()
        return clf.candidates(list(dataset.classes)), ()
    choice = resolve_prompts(template_source, clf.templates, dataset.templates, dataset.classes, dataset.name)
    if choice.prompts is not None:
        return clf.candidates(prompts=choice.prompts), choice.identity
    return clf.candidates(list(dataset.classes), templates=choice.templates), choice.identity


def _scoring(config: EvalConfig, clf: DiffusionClassifier) -> ScoringConfig:
    overrides = {k: getattr(config, k) for k in ("n_samples", "to_keep", "loss", "seed", "n_trials", "batch_size",
                                                 "strategy", "max_evaluations", "prefilter", "timestep_weights",
                                                 "timestep_range")
                 if getattr(config, k) is not None}
    return dataclasses.replace(clf.scoring, **overrides)


def _apply_speed_levers(clf: DiffusionClassifier, config: EvalConfig) -> tuple[str, ...]:
    """Apply the requested levers; their names (part of the run identity, they change float rounding)."""
    mode = None if config.compile_mode in (None, "default") else config.compile_mode
    compile = bool(config.compile or mode)
    levers = tuple(name for name, on in (("channels_last", config.channels_last), ("compile", compile),
                                         ("tf32", config.tf32)) if on)
    levers += (f"compile_mode={mode}",) if mode else ()
    levers += (f"attention={config.attention}",) if config.attention else ()
    if levers:
        from ..acceleration import optimize_backend

        optimize_backend(clf.backend, channels_last=config.channels_last, compile=compile, compile_mode=mode,
                         attention=config.attention, tf32=config.tf32)
    return levers


def _resolve_auto_batch_size(ctx: DistributedContext, clf: DiffusionClassifier, scoring: ScoringConfig,
                             candidates: CandidateSet, dataset: BenchmarkDataset, store_dir: Path) -> ScoringConfig:
    """``batch_size="auto"``: the number a previous session stored, else rank 0 measures it on the
    first sample; every rank uses rank 0's number (the identity must agree across ranks)."""
    chosen, error = None, None
    if ctx.is_main:
        try:
            chosen = stored_batch_size(store_dir)
            if chosen is not None:
                logger.info("batch_size='auto': resuming with the stored batch size %d", chosen)
            else:
                image = next((img for _, img, _ in dataset.samples(range(dataset.size))
                              if not isinstance(img, UnreadableSample)), None)
                if image is None:
                    raise ValueError(f"No image of {config.dataset} could be decoded, so batch_size='auto' has "
                                     "nothing to measure: check the dataset (see the warnings above).")
                pixels = to_pixels([image], clf.preprocess).to(clf.backend.device)
                x0 = clf.encode_pixels(pixels)
                chosen = int(clf.scoring_for(scoring, x0, clf.encode_candidates(candidates)).batch_size)
        except Exception as err:  # noqa: BLE001 - every failure must reach the other ranks
            error = err
    ctx.raise_if_any_failed(error)
    return dataclasses.replace(scoring, batch_size=int(ctx.broadcast(chosen)))


def _check_schedule(scoring: ScoringConfig, clf: DiffusionClassifier, candidates: CandidateSet) -> None:
    validate_stages(scoring.n_samples, scoring.to_keep, clf.backend.schedule.num_train_timesteps)
    stages = (scoring.strategy or {}).get("name", "stages") == "stages"
    if stages and not scoring.prefilter and max(scoring.to_keep[:-1], default=1) > len(candidates):
        raise ValueError(
            f"to_keep={scoring.to_keep} keeps more candidates than the {len(candidates)} this dataset has; pass "
            f"--to-keep with values of at most {len(candidates)}."
        )


def _float32(value: float) -> float:
    """The shortest decimal that reads back as the same float32 (short, exact records)."""
    return float(str(np.float32(value)))


def _chunks(samples: Iterable[tuple[int, Any, int]], B: int, size: int) -> Iterator[list[tuple[int, Any, int]]]:
    """The samples grouped into their chunks (``chunk_bounds``); a chunk cut short is an error."""
    chunk: list[tuple[int, Any, int]] = []
    for item in samples:
        chunk.append(item)
        index = item[0]
        if index == chunk_bounds(index // B, B, size)[-1]:
            yield chunk
            chunk = []
    if chunk:
        raise RuntimeError(f"Chunk of samples {[i for i, _, _ in chunk]} ended early: the dataset changed "
                           "while it was read.")


def _prepare(clf: DiffusionClassifier, chunk: list[tuple[int, Any, int]]
             ) -> tuple[list[tuple[int, int]], torch.Tensor | None, list[SampleRecord]]:
    """A chunk's readable ``(index, label)`` pairs, their pixels (pinned for a CUDA device) and the
    failed records of its unreadable images: the read-ahead work."""
    items, pixels, failed = [], [], []
    for index, image, label in chunk:
        if not isinstance(image, UnreadableSample):
            try:  # decoded, but not usable as given (e.g. a float image outside [0, 1])
                pixels.append(to_pixels([image], clf.preprocess)[0])
                items.append((index, label))
                continue
            except ImageInputError as err:
                image = f"sample {index}: {err.reason}"
        failed.append(SampleRecord(index=index, label=label, prediction=-1, errors=None, stage_reached=None,
                                   evaluations=0, error=str(image)))
    if not items:
        return [], None, failed
    return items, pin_for(torch.stack(pixels), clf.backend.device), failed


def _score_chunk(clf: DiffusionClassifier, candidates: CandidateSet, scoring: ScoringConfig,
                 items: Sequence[tuple[int, int]], pixels: torch.Tensor) -> list[SampleRecord]:
    """Score one chunk (``(index, label)`` pairs and their preprocessed pixels); an image whose network
    output is non-finite gets a failed record, not a crash."""
    try:
        out = clf.classify_pixels(pixels, candidates, scoring=scoring)  # content keys, as classify()
    except NonFiniteScoreError as err:
        if len(items) == 1:
            index, label = items[0]
            logger.warning("sample %d could not be scored: %s", index, err)
            return [SampleRecord(index=index, label=label, prediction=-1, errors=None, stage_reached=None,
                                 evaluations=0, error=str(err))]
        # Find the culprit: score the chunk's images one by one (deterministic, so resumes agree).
        return [record for j, item in enumerate(items)
                for record in _score_chunk(clf, candidates, scoring, [item], pixels[j : j + 1])]
    return [
        SampleRecord(index=index, label=label, prediction=int(out.predictions[j]),
                     errors=tuple(_float32(v) for v in out.errors[j].tolist()),
                     stage_reached=tuple(int(v) for v in out.stage_reached[j].tolist()),
                     evaluations=int(out.evaluations[j]))
        for j, (index, label) in enumerate(items)
    ]


def run_evaluation(config: EvalConfig, classifier: DiffusionClassifier | None = None) -> EvalResult:
    """Evaluate ``config.model`` on ``config.dataset``; launched alone or by torchrun / accelerate.

    Args:
        config: the run (see ``EvalConfig``).
        classifier: an already built classifier (library use); default ``create_model(config.model)``.

    Returns:
        An ``EvalResult`` (metrics on rank 0).

    Raises:
        ValueError: unknown dataset (with close matches), bad schedule or templates, world size
            larger than the dataset.
        FileNotFoundError: the dataset root is missing or incomplete (says what is expected).
        PermissionError: the output directory is not writable.
        dc_zoo.evaluation.IdentityMismatchError: the output holds a run of another configuration.
        dc_zoo.evaluation.OutputLockedError: another live launch is writing this run (names it).
        dc_zoo.evaluation.OutputWriteError: a record or result file could not be written (disk full).
        dc_zoo.evaluation.EvalInterrupted: SIGTERM stopped the run between two chunks (re-run resumes).
        dc_zoo.evaluation.RankFailedError: another rank failed one of these checks.
    """
    ctx = init_distributed(config.device, config.dist_timeout_hours)
    with contextlib.ExitStack() as stack:
        stack.callback(ctx.close)
        return _run(ctx, config, classifier, stack)


def _run(ctx: DistributedContext, config: EvalConfig, classifier: DiffusionClassifier | None,
         stack: contextlib.ExitStack) -> EvalResult:
    # ---------------------------------------------------------------- checks before any work
    error: BaseException | None = None
    try:
        if int(config.image_batch_size) < 1:
            raise ValueError(f"image_batch_size must be at least 1, got {config.image_batch_size}.")
        if int(config.prefetch) < 0:
            raise ValueError(f"prefetch must be 0 (read on the main thread) or a number of chunks, got "
                             f"{config.prefetch}.")
        if config.limit is not None and int(config.limit) < 1:
            raise ValueError(f"--limit must be a positive number of samples, got {config.limit}.")
        output = Path(config.output)
        _check_output_writable(output)
        dataset = load_benchmark_dataset(config.dataset, config.dataset_root, config.split, config.download,
                                         config.language)
        B = int(config.image_batch_size)
        n_eval = dataset.size if config.limit is None else min(dataset.size, math.ceil(int(config.limit) / B) * B)
        if ctx.world_size > n_eval:
            raise ValueError(
                f"World size {ctx.world_size} is larger than the {n_eval} samples to score: every rank needs at "
                f"least one. Start at most {n_eval} processes."
            )
        if ctx.is_main:
            # Before any weights are loaded: a second launch of the same command must not load a model
            # (on a GPU the running one may need all its memory) only to be refused by the run's lock.
            launch_lock = RunLock(launch_lock_path(output, config.model, config.dataset, config.split))
            launch_lock.acquire()
            stack.callback(launch_lock.release)
    except Exception as err:  # noqa: BLE001 - every failure must reach the other ranks
        error = err
    ctx.raise_if_any_failed(error)
    try:
        if classifier is None:
            from .._factory import create_model

            classifier = create_model(config.model, revision=config.revision, device=ctx.device, dtype=config.dtype,
                                      image_batch_size=B, scoring="recommended" if config.recommended else None)
        clf = classifier
        levers = _apply_speed_levers(clf, config)
        if config.error_cache:
            clf.use_error_cache(config.error_cache)  # after the levers: they are part of its namespace
        candidates, templates = _candidates(clf, dataset, config.templates)
        scoring = _scoring(config, clf)
        _check_schedule(scoring, clf, candidates)
        model_name, revision = _model_label(config, clf)
    except Exception as err:  # noqa: BLE001 - every failure must reach the other ranks
        error = err
    ctx.raise_if_any_failed(error)

    local_path = model_name.replace("local-dir:", "", 1)
    model_slug = _slug(Path(local_path).name if Path(local_path).is_dir() else model_name)
    # clip_benchmark's names and file naming ({dataset}_{pretrained}_{model}_{language}_{task}), as
    # `clip_benchmark eval --model diffusion-classifier --pretrained <entry>` writes them, so the
    # two ways of evaluating an entry land on the same row of `clip_benchmark build`.
    stem = "_".join([_slug(config.dataset.replace("wds/", "", 1)), model_slug, CLIP_BENCHMARK_MODEL,
                     _slug(config.language), TASK])
    run_dir = output / stem
    # One launch per run directory (rank 0 holds it to the end); a killed run's lock dies with it.
    lock = RunLock(run_dir / LOCK_NAME)
    error = None
    if ctx.is_main:
        try:
            lock.acquire()
        except Exception as err:  # noqa: BLE001
            error = err
    stack.callback(lock.release)
    ctx.raise_if_any_failed(error)
    stop = stack.enter_context(_StopOnSigterm())
    if scoring.batch_size == AUTO:
        scoring = _resolve_auto_batch_size(ctx, clf, scoring, candidates, dataset, run_dir / "store")
    identity = RunIdentity(
        model=model_name, revision=revision, dtype=str(clf.backend.dtype).replace("torch.", ""),
        preprocess=clf.preprocess.identity(), n_samples=scoring.n_samples, to_keep=scoring.to_keep,
        loss=scoring.loss, n_trials=int(scoring.n_trials), seed=int(scoring.seed),
        batch_size=int(scoring.batch_size), image_batch_size=B, templates=tuple(templates),
        class_names=tuple(dataset.classes), dataset=config.dataset, split=config.split,
        dataset_size=dataset.size, speed_levers=levers,
        strategy=scoring.strategy, max_evaluations=scoring.max_evaluations, prefilter=scoring.prefilter,
        timestep_weights=scoring.timestep_weights, timestep_range=scoring.timestep_range,
        cpu_threads=torch.get_num_threads() if torch.device(clf.backend.device).type == "cpu" else None,
    )
    identity = RunIdentity.from_dict(json.loads(json.dumps(identity.to_dict())))  # as a header reads back
    store = ResultStore(run_dir / "store", identity)
    results_file, samples_file = output / f"{stem}.json", run_dir / "samples.jsonl"

    # ---------------------------------------------------------------- rank 0 opens the store
    finished: list[int] = []
    session_start: dict[Path, int] = {}
    error = None
    if ctx.is_main:
        try:
            store.directory.mkdir(parents=True, exist_ok=True)
            finished = sorted(store.open_and_repair())
            session_start = file_sizes(store.directory)  # before any rank appends
        except Exception as err:  # noqa: BLE001
            error = err
    ctx.raise_if_any_failed(error)
    finished = ctx.broadcast(finished)
    done_chunks = complete_chunks(finished, B, dataset.size)
    pending = [c for c in range(num_chunks(n_eval, B)) if c not in done_chunks]
    mine = shard(pending, ctx.rank, ctx.world_size)
    resumed = sum(1 for i in finished if i < n_eval)
    my_indices = [i for c in mine for i in chunk_bounds(c, B, dataset.size)]
    all_todo = sum(len(chunk_bounds(c, B, dataset.size)) for c in pending)
    if ctx.is_main:
        logger.info("%s on %s/%s: %d samples, %d already in %s, %d chunks of %d to score on %d rank(s)",
                    model_name, config.dataset, config.split, n_eval, resumed, store.directory, len(pending), B,
                    ctx.world_size)
    if 0 < len(pending) < ctx.world_size and ctx.rank == len(pending):
        logger.warning("only %d unfinished chunk(s) for %d ranks: ranks %d.. idle (a smaller --image-batch-size "
                       "spreads the work wider)", len(pending), ctx.world_size, len(pending))

    # ---------------------------------------------------------------- score this rank's chunks
    rank_bar = RankProgress(ctx.rank, ctx.world_size, ctx.local_rank, len(my_indices), enabled=config.progress)
    overall = (OverallProgress(store.directory, all_todo, resumed, enabled=config.progress, offsets=session_start)
               if ctx.is_main and ctx.is_distributed else None)
    started = time.perf_counter()
    stored = 0
    error = None
    try:
        # The next chunks are read and preprocessed on a background thread while this one is scored.
        chunks = _chunks(dataset.samples(my_indices), B, dataset.size)
        prepare = functools.partial(_prepare, clf)
        with store.writer(ctx.rank) as writer, \
                Prefetcher(chunks, prepare, ahead=config.prefetch, name=f"dc-zoo-read-rank{ctx.rank}") as ready:
            for items, pixels, failed in ready:
                if stop.requested:  # SIGTERM: the chunk before this one is whole in the store
                    break
                for record in failed:
                    logger.warning("sample %d could not be read, recorded as failed: %s", record.index, record.error)
                records = _score_chunk(clf, candidates, scoring, items, pixels) if items else []
                records = sorted(records + failed, key=lambda r: r.index)
                writer.append(records)
                stored += len(records)
                rank_bar.update(records)
                if stop.requested:  # SIGTERM while this chunk was scored: it is stored, stop now
                    break
        elapsed = time.perf_counter() - started
        if stop.requested and stored < len(my_indices):  # a signal after the last chunk stops nothing
            error = EvalInterrupted(
                f"stopped by SIGTERM after storing {stored} of this rank's {len(my_indices)} samples (every stored "
                f"record is whole, in {store.directory}); re-run the same command to resume."
            )
        elif my_indices:
            logger.info("rank %d scored %d samples in %.1f s (%.2f s/sample)", ctx.rank, len(my_indices), elapsed,
                        elapsed / len(my_indices))
    except Exception as err:  # noqa: BLE001 - the other ranks must hear of it, not wait forever
        error = err
    finally:
        rank_bar.close()
        if overall is not None:
            overall.close()
    try:
        ctx.raise_if_any_failed(error)  # also the barrier before the merge
    except RankFailedError as err:  # a peer stopped by SIGTERM: this rank's work is stored, same status
        if f": {EvalInterrupted.__name__}: " in str(err):
            raise EvalInterrupted(str(err)) from None
        raise

    # ---------------------------------------------------------------- rank 0 merges
    metrics = summary = None
    error = None
    if ctx.is_main:
        try:
            records_by_index = store.read_all()
            missing = [i for i in range(n_eval) if i not in records_by_index]
            if missing:
                raise RuntimeError(
                    f"{len(missing)} samples (first {missing[:5]}) have no record after every rank finished: a rank "
                    "stopped early. Run the same command again to score them."
                )
            records = [records_by_index[i] for i in range(n_eval)]
            metrics = classification_metrics(records, len(dataset.classes))
            summary = cost_summary(records)
            header = json.dumps({"dc_zoo_samples": identity.store_format, "identity": identity.to_dict()},
                                separators=(",", ":"))
            write_atomic(samples_file, header + "\n" + "".join(r.to_json() + "\n" for r in records))
            dump = {
                "dataset": config.dataset, "model": CLIP_BENCHMARK_MODEL, "pretrained": model_name,
                "task": TASK, "metrics": metrics, "language": config.language, "revision": revision or "local",
                "split": config.split, "n_samples_schedule": ",".join(map(str, scoring.n_samples)),
                "to_keep": ",".join(map(str, scoring.to_keep)), "loss": scoring.loss, "seed": scoring.seed,
                "n_trials": scoring.n_trials, "templates": list(templates), "images": summary["n_samples"],
                "failed_images": summary["n_failed"], "evaluations_per_image": summary["evaluations_per_image"],
                "samples_file": str(samples_file.relative_to(output)),
            }
            write_atomic(results_file, json.dumps(dump, indent=2) + "\n")
            if summary["n_failed"]:
                logger.warning("%d samples could not be read or scored (unreadable image, non-finite network output) "
                               "and count as wrong; see 'error' in %s", summary["n_failed"], samples_file)
            logger.info("%s on %s: acc1 %.4f acc5 %.4f mean_per_class_recall %.4f -> %s", model_name, config.dataset,
                        metrics["acc1"], metrics["acc5"], metrics["mean_per_class_recall"], results_file)
        except Exception as err:  # noqa: BLE001
            error = err
    ctx.raise_if_any_failed(error)
    return EvalResult(metrics=metrics, results_file=results_file, samples_file=samples_file,
                      store_dir=store.directory, scored=len(my_indices), resumed=resumed, summary=summary)
