"""The ``dc-zoo`` command: list the zoo, inspect an entry, classify images.

    dc-zoo list [PATTERN]                 what models exist, their cost, whether their weights are here
    dc-zoo info NAME                      one entry: location, revision, schedule, cost, accuracy, cache
    dc-zoo classify --model NAME --classes cat dog IMAGE...

Each subcommand lives in a module with ``add_subparser(subparsers)``, which adds its parser and
sets ``func`` (called with the parsed args, returns the exit status); ``SUBCOMMAND_MODULES``
lists the modules beyond this one (``dc-zoo eval`` lives in ``dc_zoo.evaluation.command``).

Paper: Li et al., "Your Diffusion Model is Secretly a Zero-Shot Classifier", ICCV 2023
(https://arxiv.org/abs/2303.16203).
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from . import _hub
from ._registry import RegistryEntry, default_model, get_entry, list_models
from .config import parse_batch_size
from .losses import LOSSES
from .timestep_plan import TimestepPlan

logger = logging.getLogger(__name__)

__all__ = ["main", "build_parser", "SUBCOMMAND_MODULES"]

# Modules that add further subcommands through add_subparser(subparsers).
SUBCOMMAND_MODULES: tuple[str, ...] = ("dc_zoo.evaluation.command",)

# Errors that are the user's input or environment, not a bug: one line on stderr, exit 2.
USER_ERRORS = (ValueError, KeyError, OSError)

DESCRIPTION = """\
Diffusion Classifier (Li et al., ICCV 2023) as a model zoo: a text-to-image diffusion model
classifies an image by how well it denoises it under each class prompt.
Models are named like timm / open_clip models (see `dc-zoo list`); their weights come from
the Hugging Face cache (run `hf download REPO` where there is network), except the small
*-digits-mini models, which ship with dc_zoo and work offline."""

EPILOG = """\
examples:
  dc-zoo list                      all models
  dc-zoo list 'sd-2*'              wildcards select names
  dc-zoo info sd-2-base            location, cost per image, accuracy, cache status
  dc-zoo classify --model sd-digits-mini --classes zero one two three four five six seven eight nine digit.png
run `dc-zoo COMMAND --help` for the options of a command."""


# --------------------------------------------------------------------------- helpers
def _configure_logging(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


def _weights_status(entry: RegistryEntry) -> tuple[str, _hub.Snapshot | None]:
    """("bundled" | "cached" | "cached (paper id)" | "not cached", snapshot) without network access."""
    for repo in entry.repo_ids:
        revision = entry.revision if repo == entry.hub_id else "main"
        try:
            snapshot = _hub.cached_snapshot(repo, revision)
        except _hub.ZooHubError:
            snapshot = None
        if snapshot is not None:
            if snapshot.source == "bundled":
                return "bundled", snapshot
            return ("cached" if repo == entry.hub_id else "cached (paper id)"), snapshot
    return "not cached", None


def _cost(entry: RegistryEntry, num_classes: int | None = None) -> tuple[int, int]:
    k = int(num_classes or entry.cost["num_classes"])
    plan = TimestepPlan.from_stages(entry.n_samples, int(entry.cost["num_train_timesteps"]))
    return k, plan.evaluations(k, entry.to_keep)


def _schedule_text(entry: RegistryEntry) -> str:
    return (f"n_samples {'/'.join(map(str, entry.n_samples))}, to_keep {'/'.join(map(str, entry.to_keep))}, "
            f"loss {entry.loss}")


# --------------------------------------------------------------------------- list
def run_list(args: argparse.Namespace) -> int:
    _configure_logging(args)
    names = list_models(args.pattern or "", family=args.family)
    if not names:
        print(f"No model matches {args.pattern!r}; `dc-zoo list` shows all.", file=sys.stderr)
        return 1
    rows = []
    for name in names:
        entry = get_entry(name)
        cost = "1 forward pass (CLIP)"
        if entry.schedule is not None:
            k, evals = _cost(entry)
            cost = f"{evals:,} for {k} classes"
        where = entry.hub_id + ("" if entry.official_location else " (unofficial mirror)")
        rows.append((name + (" *" if entry.default else ""), entry.family, f"{entry.resolution}px", where, cost,
                     _weights_status(entry)[0]))
    header = ("name", "family", "size", "weights from", "evaluations/image", "weights here")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    print("* default model. `dc-zoo info NAME` for details.")
    return 0


def add_list_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("list", help="list the zoo's models", description="List the zoo's models: family, "
                                   "input size, Hub location, cost per image and whether the weights are on this machine.")
    parser.add_argument("pattern", nargs="?", default="", help="wildcard on names, e.g. 'sd-*' or '*mini'")
    parser.add_argument("--family", choices=("stable_diffusion", "dit", "open_clip"), default=None,
                        help="only models of this family")
    parser.set_defaults(func=run_list)
    return parser


# --------------------------------------------------------------------------- info
def run_info(args: argparse.Namespace) -> int:
    _configure_logging(args)
    entry = get_entry(args.name)
    status, snapshot = _weights_status(entry)
    k, evals = _cost(entry, args.num_classes) if entry.schedule is not None else (None, None)
    if args.json:
        data = entry.to_dict()
        data["weights"] = {"status": status, "path": str(snapshot.path) if snapshot else None,
                           "commit": snapshot.commit if snapshot else None}
        data["cost_for_num_classes"] = {"num_classes": k, "evaluations_per_image": evals} if k else None
        print(json.dumps(data, indent=2))
        return 0
    lines = [f"{entry.name}{'  (default model)' if entry.default else ''}", f"  {entry.description}",
             f"  family:       {entry.family} ({entry.pipeline_class}, {entry.prediction_type or 'n/a'} prediction)",
             f"  weights from: {entry.hub_id} ({'official' if entry.official_location else 'unofficial mirror'})"]
    if entry.original_id:
        lines.append(f"  paper's id:   {entry.original_id} (still accepted as a name)")
    if entry.location_note:
        lines.append(f"  location:     {entry.location_note}")
    lines.append(f"  revision:     {entry.revision}" + ("" if entry.revision_pinned else "  (UNPINNED: a branch, can change)"))
    if entry.vae_id:
        lines.append(f"  VAE:          {entry.vae_id}")
    lines += [f"  input:        {entry.resolution} px, {entry.interpolation} resize, {entry.crop} crop, mean/std 0.5",
              f"  dtype:        {entry.default_dtype} on GPU, float32 on CPU"]
    if entry.template:
        lines.append(f"  template:     {entry.template!r}")
    if entry.num_classes:
        lines.append(f"  classes:      {entry.num_classes} labels")
    if entry.schedule is not None:
        lines += [f"  schedule:     {_schedule_text(entry)}  ({entry.schedule['source']})",
                  f"  cost:         {evals:,} network evaluations per image for {k} classes (--num-classes K for others)"]
    else:
        lines.append(f"  use with:     {_hub.open_clip_load_hint(entry.hub_id)}")
    lines.append(f"  license:      {entry.license}")
    for acc in entry.accuracy:
        how = f", {acc['schedule']}" if acc.get("schedule") else ""
        lines.append(f"  accuracy:     {acc['dataset']}: {acc['top1']}% top-1 ({acc['kind']}{how}; {acc['source']})")
        if acc.get("command"):
            lines.append(f"                reproduce: {acc['command']}")
    if snapshot is not None:
        lines.append(f"  weights here: {status}: {snapshot.path}")
    else:
        lines.append(f"  weights here: not cached under {_hub.hub_cache_dir()}; fetch with "
                     f"`hf download {entry.hub_id} --revision {entry.revision}`")
    lines.append(f"  intended use: {entry.intended_use}")
    lines += [f"  limitation:   {text}" for text in entry.limitations]
    lines += [f"  note:         {text}" for text in entry.notes]
    print("\n".join(lines))
    return 0


def add_info_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("info", help="show one model's entry, cost and cache status",
                                   description="Show a model's registry entry, its cost per image for the default "
                                   "schedule and where its weights are cached (or how to fetch them).")
    parser.add_argument("name", help="zoo name, e.g. sd-2-base (see `dc-zoo list`)")
    parser.add_argument("--num-classes", type=int, default=None, help="report the cost for K classes")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run_info)
    return parser


# --------------------------------------------------------------------------- classify
def _parse_classes(classes: Sequence[str] | None, class_conditional: bool) -> list[Any] | None:
    if classes is None:
        return None
    if class_conditional:
        return [int(c) if c.lstrip("-").isdigit() else c for c in classes]
    return list(classes)


def _split_trailing_files(values: Sequence[str] | None) -> tuple[list[str] | None, list[str]]:
    """``--classes cat dog a.png`` -> (["cat", "dog"], ["a.png"]).

    argparse cannot tell where a list option ends and the IMAGE arguments begin, so it gives
    the images to the last list option; they are its trailing values that name existing files.
    """
    if values is None:
        return None, []
    values, files = list(values), []
    while values and Path(values[-1]).is_file():
        files.insert(0, values.pop())
    return values, files


def _integers(values: Sequence[str] | None, option: str) -> tuple[int, ...] | None:
    if not values:
        return None
    try:
        return tuple(int(v) for v in values)
    except ValueError:
        raise ValueError(f"{option} takes integers, got {' '.join(values)}; image files go at the end "
                         "(they must exist) or after `--`.") from None


def _load_images(paths: Sequence[str]):
    from PIL import Image

    images = []
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"Image {path!r} does not exist; give paths of image files (PNG, JPEG, ...).")
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    return images


def batch_size_type(text: str) -> int | str:
    """argparse type of ``--batch-size``: a positive integer or ``auto``."""
    try:
        return parse_batch_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def run_classify(args: argparse.Namespace) -> int:
    _configure_logging(args)
    from ._factory import create_model

    paths = list(args.images)
    for option in ("classes", "template", "n_samples", "to_keep"):
        values, files = _split_trailing_files(getattr(args, option))
        setattr(args, option, values)
        paths = files + paths
    if not paths:
        raise ValueError("No image files given: list them at the end of the command (or after `--`).")
    overrides = {k: v for k, v in dict(
        n_samples=_integers(args.n_samples, "--n-samples"), to_keep=_integers(args.to_keep, "--to-keep"),
        loss=args.loss, seed=args.seed, batch_size=args.batch_size, n_trials=args.n_trials).items() if v is not None}
    images = _load_images(paths)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # the classification bar is the one that matters here
    classifier = create_model(args.model, revision=args.revision, device=args.device, dtype=args.dtype,
                              scoring=overrides, allow_pickle=args.allow_pickle)
    entry = classifier.entry
    classes = _parse_classes(args.classes, entry.class_conditional)
    if classes is None:
        if not entry.class_conditional:
            raise ValueError(f"{entry.name} is text-conditional: give the class names with --classes a b c.")
        classes = list(range(int(entry.num_classes)))
    output = classifier.classify(images, classes, templates=args.template or None, progress=not args.no_progress)
    top_k = max(1, min(args.top_k, len(output.class_names)))
    ranked = output.topk(top_k)
    results = []
    for i, path in enumerate(paths):
        top = [{"class": output.class_names[int(j)], "error": float(output.errors[i, j]),
                "stage": int(output.stage_reached[i, j])} for j in ranked[i]]
        results.append({"image": path, "prediction": output.predicted_names[i], "top": top,
                        "evaluations": int(output.evaluations[i])})
    if args.json:
        print(json.dumps({"model": entry.name, "source": classifier.source.describe(), "results": results}, indent=2))
        return 0
    print(f"model {entry.name} from {classifier.source.describe()}")
    print("score = mean denoising error, lower is better; a class dropped after an earlier stage ranks below the "
          "survivors whatever its error")
    last = len(classifier.scoring.n_samples) - 1
    for r in results:
        ranking = ", ".join(f"{t['class']} {t['error']:.4f}" + (f" (dropped after stage {t['stage'] + 1})"
                                                               if t["stage"] < last else "") for t in r["top"])
        print(f"{r['image']}: {r['prediction']}  [{ranking}]  ({r['evaluations']} evaluations)")
    return 0


def add_classify_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "classify", help="classify image files", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Classify images zero-shot: every class is scored by the model's denoising error on the image "
                    "(lower is better) and the best one wins. Text models take class names, which fill the prompt "
                    "template; class-conditional models (DiT) take their labels (numbers or names) or all of them.",
        epilog="examples:\n"
               "  dc-zoo classify --model sd-digits-mini --classes zero one two three four five six seven eight nine d.png\n"
               "  dc-zoo classify --model sd-2-base --classes cat dog --template 'a photo of a {}.' --loss l1 pet.jpg\n"
               "  dc-zoo classify --model dit-xl-2-256 --n-samples 25 250 --to-keep 10 1 photo.jpg")
    model = parser.add_argument_group("model")
    model.add_argument("--model", default=default_model(),
                       help=f"zoo name (dc-zoo list), hf-hub:org/repo[@rev] or a pipeline folder (default {default_model()})")
    model.add_argument("--revision", default=None, help="weights revision (default: the entry's)")
    model.add_argument("--allow-pickle", action="store_true", help="accept .bin pickle weights (only if you trust the repo)")
    task = parser.add_argument_group("classes")
    task.add_argument("--classes", nargs="+", default=None,
                      help="class names (text models) or labels (DiT; default all of its labels)")
    task.add_argument("--template", nargs="+", default=None,
                      help="prompt template(s) with {} for the class, e.g. 'a photo of a {}.' (default: the entry's); "
                           "each template multiplies the cost")
    how = parser.add_argument_group("schedule (default: the entry's)")
    how.add_argument("--n-samples", nargs="+", default=None, help="timesteps per adaptive stage, e.g. 50 500")
    how.add_argument("--to-keep", nargs="+", default=None, help="classes kept after each stage, e.g. 5 1")
    how.add_argument("--loss", choices=LOSSES, default=None, help="error between noise and prediction")
    how.add_argument("--seed", type=int, default=None, help="noise seed (results are reproducible for a seed)")
    how.add_argument("--n-trials", type=int, default=None, help="noise draws per timestep")
    run = parser.add_argument_group("execution")
    run.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    run.add_argument("--dtype", default=None, help="float32, float16 or bfloat16 (default: the entry's on GPU, float32 on CPU)")
    run.add_argument("--batch-size", type=batch_size_type, default=None,
                     help="network evaluations per forward pass, or 'auto' (measured: largest that pays)")
    run.add_argument("--top-k", type=int, default=3, help="classes shown per image (default 3)")
    run.add_argument("--json", action="store_true", help="machine-readable output")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("images", nargs="*", metavar="IMAGE",
                        help="image files, at the end of the command (or after `--`)")
    parser.set_defaults(func=run_classify)
    return parser


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dc-zoo", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is loaded from where")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in (add_list_parser, add_info_parser, add_classify_parser):
        add(subparsers)
    for module_name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            logger.debug("subcommand module %s is not installed", module_name)
            continue
        module.add_subparser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dc-zoo`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"dc-zoo: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
