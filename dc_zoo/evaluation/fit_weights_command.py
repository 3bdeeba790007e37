"""``dc-zoo fit-weights``: a timestep weight table for a model, fitted on held-out labelled images.

    dc-zoo fit-weights --model dit-glyphs-mini --dataset glyphs --split val --pool 20 --out dit-glyphs-weights.json
    dc-zoo eval ... --timestep-weights dit-digits-weights.json

Scores every class at every timestep of a ``--pool``-timestep plan on the images (one error
cache, so a re-run or a later curve on the same images costs nothing), then fits
``dc_zoo.strategies.weighting.fit_weight_table``: per bin of t / T, the mean paired margin over
its variance. Fit on the ``val`` split and evaluate on ``test``, so the weights are held out
(digits has no val split: fit on the test images a curve leaves out, ``--limit 180 --offset 1``).
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
from pathlib import Path

from ..cli import batch_size_type

logger = logging.getLogger(__name__)

__all__ = ["add_subparser", "run_command"]


def add_subparser(subparsers) -> argparse.ArgumentParser:
    from .curve_command import LAB_DATASETS

    parser = subparsers.add_parser(
        "fit-weights", help="fit a timestep weight table on held-out images (for --timestep-weights)",
        description=__doc__.split("\n\n")[0] + ".", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="zoo name of a diffusion model, e.g. dit-digits-mini")
    parser.add_argument("--dataset", choices=LAB_DATASETS, required=True, help="a bundled lab dataset")
    parser.add_argument("--split", default=None, choices=("train", "val", "test"),
                        help="which split to fit on (default: val where the lab has one, else test)")
    parser.add_argument("--limit", type=int, default=None, help="N images of the split, spread over its classes")
    parser.add_argument("--offset", type=int, default=0,
                        help="shift the spread by this many images: with --limit half the split, --offset 1 takes "
                             "the images a `dc-zoo curve --limit` of the same size leaves out (digits has no val)")
    parser.add_argument("--pool", type=int, default=100, help="timesteps every class is scored at (default: 100)")
    parser.add_argument("--bins", type=int, default=None, help="bins of the table (default: 10, fewer for a small pool)")
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    parser.add_argument("--cache", type=Path, default=None, help="error cache file (default: OUT with .sqlite)")
    parser.add_argument("--batch-size", type=batch_size_type, default=256, help="evaluations per forward pass")
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run_command)
    return parser


def run_command(args: argparse.Namespace) -> int:
    from .. import create_model
    from ..strategies.weighting import fit_weight_table
    from .curve_command import lab_classes, lab_split
    from .curves import pool_errors, weight_bins

    for name in ("limit", "pool", "bins"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be a positive integer, got {value}.")
    if args.split is None:
        args.split = "val" if "val" in importlib.import_module(f"dc_zoo.{args.dataset}").SPLITS else "test"
    if args.split == "train":
        logger.warning("Fitting on the train split: the model has seen these images, so their margins are larger "
                       "than on new images; prefer val (or test with --offset).")
    clf = create_model(args.model)
    lab, images, labels = lab_split(args.dataset, args.split, args.limit, args.offset)
    classes = lab_classes(clf, lab)
    clf.use_error_cache(args.cache or args.out.with_suffix(".sqlite"))
    try:
        out = pool_errors(clf, images, classes, args.pool, batch_size=args.batch_size, seed=args.seed,
                          progress=not args.no_progress)
    finally:
        clf.use_error_cache(None)
    bins = args.bins or weight_bins(args.pool)
    source = (f"{args.model} on {args.dataset}/{args.split} (limit {args.limit}, offset {args.offset}): "
              f"{len(images)} images, all classes at {args.pool} timesteps")
    table = fit_weight_table(out.timestep_errors, labels, out.timesteps, clf.backend.schedule.num_train_timesteps,
                             bins=bins, source=source)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"timestep_weights": table.to_dict(), "model": args.model,
                                    "dataset": f"{args.dataset}/{args.split}", "images": len(images),
                                    "pool": args.pool, "seed": args.seed}, indent=2) + "\n")
    print("| t / T | weight |")
    print("|---|---|")
    for lo, hi, w in zip(table.edges, table.edges[1:], table.values):
        print(f"| [{lo:.2f}, {hi:.2f}) | {w:.3f} |")
    print(f"written: {args.out} (use: --timestep-weights {args.out})")
    return 0
