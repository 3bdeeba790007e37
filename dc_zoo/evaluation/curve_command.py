"""``dc-zoo curve``: accuracy against evaluations per image, the paper's schedules beside the strategies.

    dc-zoo curve --model dit-digits-mini --dataset digits --out curves/dit-digits
    dc-zoo curve --model dit-glyphs-mini --dataset glyphs --prefilter clip-glyphs-mini --limit 124 --out ...

Writes curve.json, curve.csv, curve.png (accuracy against mean evaluations per image) and
timesteps.png (where the information is) under ``--out``, with one error cache
(``errors.sqlite``) shared by every point, so a re-run or a longer sweep recomputes nothing.
"""
from __future__ import annotations

import argparse
import importlib
import logging
from pathlib import Path

from ..cli import batch_size_type

logger = logging.getLogger(__name__)

__all__ = ["add_subparser", "run_command"]

LAB_DATASETS = ("digits", "glyphs")


def add_subparser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "curve", help="accuracy against evaluations per image: paper schedules and strategies",
        description=__doc__.split("\n\n")[0] + ". Every point uses the same images and noise; one error cache "
        "makes the sweep cost the union of its evaluations.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="zoo name of a diffusion model, e.g. dit-digits-mini")
    parser.add_argument("--dataset", choices=LAB_DATASETS, required=True, help="a bundled lab dataset")
    parser.add_argument("--split", default="test", choices=("test", "val"), help="which split (default: test)")
    parser.add_argument("--limit", type=int, default=None, help="the first N images of the split (spread over classes)")
    parser.add_argument("--prefilter", default=None,
                        help="an open_clip model for the prefilter points, e.g. clip-digits-mini (default: none)")
    parser.add_argument("--size", choices=("default", "tiny"), default="default",
                        help="the sweep: the paper's schedules and the strategies, or a CI-sized one")
    parser.add_argument("--out", type=Path, required=True, help="folder for curve.json/csv/png and the cache")
    parser.add_argument("--cache", type=Path, default=None, help="error cache file (default: OUT/errors.sqlite)")
    parser.add_argument("--batch-size", type=batch_size_type, default=256, help="evaluations per forward pass")
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    parser.add_argument("--information-pool", type=int, default=100,
                        help="timesteps of the where-is-the-information run (0: skip it)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run_command)
    return parser


def lab_split(dataset: str, split: str, limit: int | None, offset: int = 0):
    """The lab ``dataset``'s ``split``; with ``limit``, an even spread of that many images (every class
    appears), shifted by ``offset`` positions (``offset=1`` with half the split: the other half)."""
    lab = importlib.import_module(f"dc_zoo.{dataset}")
    images, labels = getattr(lab, f"load_{dataset}_split")(split)
    if limit is not None and limit < len(images):
        # the splits are class-interleaved or class-blocked: take an even spread so every class appears
        step = len(images) / limit
        index = [min(int(i * step) + offset, len(images) - 1) for i in range(limit)]
        images, labels = [images[i] for i in index], [labels[i] for i in index]
    return lab, images, labels


def lab_classes(clf, lab) -> list:
    """The lab's candidates for ``clf``: class indices for a class-conditional model, else the class
    names (with the lab's prompt template set on ``clf``)."""
    if clf.backend.conditioning == "class_label":
        return list(range(len(lab.CLASS_NAMES)))
    clf.templates = (lab.TEMPLATE,)
    return list(lab.CLASS_NAMES)


def run_command(args: argparse.Namespace) -> int:
    from .. import create_model
    from .curves import default_specs, run_curve, write_curve

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be a positive number of images, got {args.limit}.")
    clf = create_model(args.model)
    lab, images, labels = lab_split(args.dataset, args.split, args.limit)
    classes = lab_classes(clf, lab)
    specs = default_specs(len(classes), args.prefilter, args.size)
    args.out.mkdir(parents=True, exist_ok=True)
    result = run_curve(clf, images, labels, classes, specs, model=args.model, dataset=f"{args.dataset}/{args.split}",
                       cache_path=args.cache or (args.out / "errors.sqlite"), batch_size=args.batch_size,
                       seed=args.seed, progress=not args.no_progress, information_pool=args.information_pool)
    paths = write_curve(result, args.out)
    ref = result.points[0]
    print(f"| point | kind | evaluations / image | cost vs {ref.name} | top-1 | agreement with it | ECE before -> after |")
    print("|---|---|---|---|---|---|---|")
    for p in result.points:
        ece = f"{p.calibration['ece_before']:.3f} -> {p.calibration['ece_after']:.3f}" if p.calibration else "-"
        print(f"| {p.name} | {p.kind} | {p.evaluations_per_image:,.0f} | {p.evaluations_per_image / ref.evaluations_per_image:.3f} "
              f"| {100 * p.accuracy:.2f}% ({p.correct}/{p.images}) | {100 * p.agreement_with_reference:.1f}% | {ece} |")
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0
