"""``dc-zoo eval``: the command line of a long, sharded, resumable evaluation.

Run it alone, or under ``torchrun`` / ``accelerate launch`` on one or many nodes (each process
scores its share); re-running the same command resumes. See ``scripts/slurm_eval.sh`` for a
multi-node SLURM example.

Exit status: 0 when the results are written; 2 for an error that is the input's or the
machine's (a bad option, another configuration in the output, another launch holding the
output's lock, a full disk): one line on stderr says what and how to fix it, no traceback,
on every rank; 143 (128 + SIGTERM) when SIGTERM (SLURM preemption, ``scancel``) stopped the
run between two chunks: nothing torn was written and re-running the same command resumes.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from .._hub import ZooHubError
from ..acceleration import ATTENTION_KERNELS, COMPILE_MODES
from ..cli import batch_size_type
from ..losses import LOSSES
from .distributed import RankFailedError
from .identity import IdentityMismatchError
from .lock import OutputLockedError
from .result_store import OutputWriteError, StoreCorruptError
from .run import SIGTERM_EXIT_STATUS, EvalConfig, EvalInterrupted, run_evaluation

logger = logging.getLogger(__name__)

__all__ = ["add_subparser", "add_arguments", "config_from_args", "run_command", "main"]

DESCRIPTION = """\
Evaluate a zoo model as a zero-shot classifier on a clip_benchmark dataset. Writes
clip_benchmark's result JSON (<output>/<stem>.json, merged with CLIP results by
`clip_benchmark build <output>`) and every sample's record (<output>/<stem>/samples.jsonl).
Launch with torchrun or accelerate launch to shard the dataset over processes; re-run the
same command to resume an interrupted run."""

EPILOG = """\
examples:
  dc-zoo eval --model sd-digits-mini --dataset wds/digits --dataset_root data/digits --output results
  torchrun --nproc-per-node 8 -m dc_zoo.evaluation --model sd-2-base --dataset cifar10 \\
      --dataset_root data/cifar10 --output results --loss l1
  accelerate launch --multi_gpu --num_processes 8 -m dc_zoo.evaluation --model sd-2-base ...  (the same)
  (multi-node: scripts/slurm_eval.sh)

runs that fail or collide:
  A second launch on the same --output and configuration is refused (exit 2) while the first
  runs, naming its host, pid and start time (rank 0 holds a flock on <output>/<stem>/eval.lock;
  a killed run holds none, so its resume is never blocked; some network filesystems do not
  enforce flock). SIGTERM (SLURM preemption) finishes the chunk in flight, stores it whole and
  exits with status 143: re-run the same command to resume (a chunk still running when SIGKILL
  follows, ~30 s later under torchrun or SLURM, is dropped and scored again). A full disk stops the run with one
  line naming the folder (exit 2), nothing torn or temporary left: free space, re-run. An image
  that cannot be decoded is recorded as a failed sample (its shard, key and reason) and counted
  in failed_images; the run goes on. Record lines carry a CRC-32; an edited record is refused
  naming its file and line. CPU runs record their thread count (OMP_NUM_THREADS): a resume with
  another count is refused, since it changes the last bits of the scores.

exit status: 0 done; 2 an error said in one line (bad input, refused resume, locked output,
  disk full); 143 stopped by SIGTERM (re-run the same command to resume)."""

# Errors that are the user's input, not a bug: one line, no traceback.
# OSError covers what the machine refuses (I/O errors, a full disk); its message names the file.
USER_ERRORS = (ValueError, KeyError, OSError, ZooHubError, IdentityMismatchError, StoreCorruptError, RankFailedError,
               OutputLockedError, OutputWriteError)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``eval`` options (clip_benchmark's spelling with underscores is accepted too)."""
    what = parser.add_argument_group("what to evaluate")
    what.add_argument("--model", required=True, help="zoo name (dc-zoo list), hf-hub:org/repo[@rev] or a pipeline folder")
    what.add_argument("--revision", default=None, help="weights revision (default: the entry's pinned one)")
    what.add_argument("--dataset", required=True, help="clip_benchmark dataset name: cifar10, imagenet1k, wds/<name>, ...")
    what.add_argument("--dataset_root", "--dataset-root", dest="dataset_root", required=True,
                      help="folder holding the dataset (as for clip_benchmark eval)")
    what.add_argument("--split", default="test", help="dataset split (default: test)")
    what.add_argument("--language", default="en", help="clip_benchmark class-name / template language")
    what.add_argument("--limit", type=int, default=None,
                      help="score only the first N samples (rounded up to whole --image-batch-size chunks)")
    what.add_argument("--download", action="store_true", help="let clip_benchmark download a missing dataset")
    where = parser.add_argument_group("where")
    where.add_argument("--output", required=True,
                       help="directory for <stem>.json and <stem>/ records; the same directory resumes")
    how = parser.add_argument_group("schedule (default: the model entry's)")
    how.add_argument("--n-samples", "--n_samples", dest="n_samples", type=int, nargs="+", default=None,
                     help="timesteps per adaptive stage, e.g. 50 500")
    how.add_argument("--to-keep", "--to_keep", dest="to_keep", type=int, nargs="+", default=None,
                     help="candidates kept after each stage, e.g. 5 1")
    how.add_argument("--loss", choices=LOSSES, default=None)
    how.add_argument("--seed", type=int, default=None, help="noise seed (noise depends only on the seed and the image content)")
    how.add_argument("--n-trials", "--n_trials", dest="n_trials", type=int, default=None, help="eps draws per timestep")
    how.add_argument("--strategy", type=_json_or_name, default=None,
                     help="scoring strategy: 'stages' (the paper's, default), 'sequential', or a JSON spec such as "
                          "'{\"name\": \"sequential\", \"alpha\": 0.05, \"chunk\": 10}' (dc_zoo.strategies)")
    how.add_argument("--max-evaluations", "--max_evaluations", dest="max_evaluations", type=int, default=None,
                     help="per-image budget of network evaluations: stop and answer the leader")
    how.add_argument("--prefilter", type=_prefilter_spec, default=None, metavar="MODEL:K",
                     help="keep an open_clip model's top-K classes before any diffusion evaluation, "
                          "e.g. clip-digits-mini:3 or ViT-B-32/openai:20")
    how.add_argument("--timestep-weights", "--timestep_weights", dest="timestep_weights", type=weights_spec,
                     default=None, metavar="NAME|FILE|JSON",
                     help="how timesteps count in a score: 'uniform' (the paper's, default), 'sine', or a table "
                          "(the JSON file `dc-zoo fit-weights` writes)")
    how.add_argument("--timestep-range", "--timestep_range", dest="timestep_range", type=float, nargs=2,
                     default=None, metavar=("LO", "HI"),
                     help="spread the plan over this part of [0, T), as fractions (e.g. 0.05 0.9); default all")
    how.add_argument("--recommended", action="store_true",
                     help="start from the entry's measured cheaper scoring (its registry 'recommended'; "
                          "other schedule options override it) instead of the paper's schedule")
    how.add_argument("--error-cache", "--error_cache", dest="error_cache", default=None, metavar="FILE",
                     help="SQLite file of network errors reused across runs, schedules and strategies")
    how.add_argument("--templates", default="entry",
                     help="prompt templates: 'entry' (the model's, default), 'clip_benchmark' (the dataset's "
                          "ensemble; cost x templates) or a .txt (one per line, {c} for the class) / .json file")
    run = parser.add_argument_group("execution")
    run.add_argument("--batch-size", "--batch_size", dest="batch_size", type=batch_size_type, default=None,
                     help="network evaluations per forward pass, or 'auto' (measured once; a resumed run "
                          "keeps the stored number)")
    run.add_argument("--image-batch-size", "--image_batch_size", dest="image_batch_size", type=int, default=8,
                     help="samples scored together (one chunk of the store; fixed for a run)")
    run.add_argument("--dtype", default=None, help="float16, bfloat16 or float32 (default: the entry's on GPU, float32 on CPU)")
    run.add_argument("--device", default=None, help="cpu or cuda (default: this rank's GPU when there is one)")
    run.add_argument("--channels-last", dest="channels_last", action="store_true",
                     help="NHWC memory format for the UNet (speed; fixed for a run, like the levers below)")
    run.add_argument("--compile", action="store_true", help="torch.compile the denoising network (eager fallback)")
    run.add_argument("--compile-mode", "--compile_mode", dest="compile_mode", default=None,
                     choices=[m for m in COMPILE_MODES if m],
                     help="implies --compile: reduce-overhead adds CUDA graphs, max-autotune also tunes kernels")
    run.add_argument("--attention", default=None, choices=sorted(ATTENTION_KERNELS),
                     help="pin one scaled-dot-product attention kernel (default: torch's choice)")
    run.add_argument("--tf32", action="store_true", help="TF32 matmuls on Ampere+ GPUs for float32 models")
    run.add_argument("--prefetch", type=int, default=2,
                     help="chunks read and preprocessed ahead on a background thread (0: on the main thread)")
    run.add_argument("--dist-timeout-hours", dest="dist_timeout_hours", type=float, default=24.0,
                     help="how long ranks wait for the slowest one at the end")
    run.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    run.add_argument("--quiet", action="store_true", help="only warnings and errors in the log")
    return parser


def _json_or_name(text: str) -> dict:
    """``--strategy``: a bare name or a JSON object."""
    text = text.strip()
    if not text.startswith("{"):
        return {"name": text}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"--strategy is not valid JSON ({err.msg} at column {err.colno}): {text!r}")
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"--strategy must be a name or a JSON object, got {text!r}")
    return value


def weights_spec(text: str) -> str | dict:
    """``--timestep-weights``: ``uniform`` / ``sine``, a JSON object, or the path of a JSON file holding one."""
    text = text.strip()
    if text.startswith("{"):
        source = "--timestep-weights"
    elif text.endswith(".json") or os.path.sep in text:
        try:
            source, text = text, Path(text).read_text()
        except OSError as err:
            raise argparse.ArgumentTypeError(f"--timestep-weights: cannot read {text!r} ({err.strerror}); give "
                                             "'uniform', 'sine', a JSON table or the file `dc-zoo fit-weights` wrote")
    else:
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"{source} is not valid JSON ({err.msg} at line {err.lineno})")
    if isinstance(value, dict) and isinstance(value.get("timestep_weights"), dict):
        value = value["timestep_weights"]  # the fit-weights file: the table plus how it was fitted
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{source} must hold a JSON object (a weight table)")
    return value


def _prefilter_spec(text: str) -> dict:
    """``--prefilter MODEL:K`` (the model may contain ':' as in hf-hub:org/repo; K is after the last one)."""
    model, sep, k = text.rpartition(":")
    if not sep or not model or not k.isdigit() or int(k) < 1:
        raise argparse.ArgumentTypeError(f"--prefilter takes MODEL:K with K a positive integer, e.g. "
                                         f"clip-digits-mini:3; got {text!r}")
    return {"model": model, "k": int(k)}


def add_subparser(subparsers) -> argparse.ArgumentParser:
    """Register ``eval`` on the ``dc-zoo`` command's subparsers; it runs ``run_command(args)``."""
    parser = subparsers.add_parser("eval", help="evaluate a model on a clip_benchmark dataset (torchrun-ready, resumable)",
                                   description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=run_command)
    return parser


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    return EvalConfig(
        model=args.model, dataset=args.dataset, dataset_root=args.dataset_root, output=args.output, split=args.split,
        revision=args.revision, n_samples=tuple(args.n_samples) if args.n_samples else None,
        to_keep=tuple(args.to_keep) if args.to_keep else None, loss=args.loss, seed=args.seed,
        n_trials=args.n_trials, batch_size=args.batch_size, image_batch_size=args.image_batch_size,
        strategy=args.strategy, max_evaluations=args.max_evaluations, prefilter=args.prefilter,
        timestep_weights=args.timestep_weights,
        timestep_range=tuple(args.timestep_range) if args.timestep_range else None,
        error_cache=args.error_cache, recommended=args.recommended,
        templates=args.templates, dtype=args.dtype, device=args.device, limit=args.limit, download=args.download,
        language=args.language, channels_last=args.channels_last, compile=args.compile, tf32=args.tf32,
        compile_mode=args.compile_mode, attention=args.attention, prefetch=args.prefetch,
        progress=args.progress, dist_timeout_hours=args.dist_timeout_hours,
    )


def _configure_logging(quiet: bool) -> None:
    rank = os.environ.get("RANK")
    prefix = f"[rank {rank}] " if rank is not None and os.environ.get("WORLD_SIZE", "1") != "1" else ""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format=f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s")


def run_command(args: argparse.Namespace) -> int:
    """Run ``dc-zoo eval``; returns the exit status (2 for bad input, said in one line; 143 after SIGTERM)."""
    _configure_logging(getattr(args, "quiet", False))
    try:
        result = run_evaluation(config_from_args(args))
    except EvalInterrupted as err:
        print(f"dc-zoo eval: {err}", file=sys.stderr)
        return SIGTERM_EXIT_STATUS
    except USER_ERRORS as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"dc-zoo eval: error: {message}", file=sys.stderr)
        return 2
    if result.metrics is not None:
        print(json.dumps({"metrics": result.metrics, **(result.summary or {}), "results": str(result.results_file),
                          "samples": str(result.samples_file)}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dc_zoo.evaluation ...`` (also ``torchrun -m dc_zoo.evaluation ...``)."""
    parser = argparse.ArgumentParser(prog="dc-zoo eval", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run_command(parser.parse_args(argv))
