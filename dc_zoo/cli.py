"""The ``dc-zoo`` command: list the zoo, inspect an entry, classify images.

    dc-zoo list [PATTERN]                 what models exist, their cost, whether their weights are here
    dc-zoo info NAME                      one model (zoo name, hf-hub:org/repo, folder): files, schedule, cost, cache
    dc-zoo classify --model NAME --classes cat dog IMAGE...
    dc-zoo curve --model NAME --dataset digits --out DIR   accuracy against evaluations per image
    dc-zoo fit-weights --model NAME --dataset glyphs --out FILE   a timestep weight table (held-out images)

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
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from . import _hub
from ._registry import RegistryEntry, default_model, get_entry, list_models
from .config import parse_batch_size
from .image_io import IMAGE_EXTENSIONS, ImageInputError, image_files_in, load_image, to_rgb
from .losses import LOSSES
from .timestep_plan import TimestepPlan

logger = logging.getLogger(__name__)

__all__ = ["main", "build_parser", "SUBCOMMAND_MODULES"]

# Modules that add further subcommands through add_subparser(subparsers).
SUBCOMMAND_MODULES: tuple[str, ...] = ("dc_zoo.evaluation.command", "dc_zoo.evaluation.curve_command",
                                       "dc_zoo.evaluation.fit_weights_command")

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
  dc-zoo info ./my-pipeline        a folder or hf-hub:org/repo, described from its files
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
    parser.add_argument("--family", choices=("stable_diffusion", "stable_diffusion_xl", "stable_diffusion_3", "dit",
                                             "open_clip", "flux"), default=None,
                        help="only models of this family")
    parser.set_defaults(func=run_list)
    return parser


# --------------------------------------------------------------------------- info
_SOURCE_STATUS = {"bundled": "bundled", "cache": "cached", "hub": "cached", "local-dir": "local folder"}


def _resolve_for_info(name: str):
    """``(entry, status, snapshot, resolved)`` for any name `dc-zoo classify` accepts, without network.

    A zoo name is described from its entry (``resolved`` is None); an ``hf-hub:`` name or a folder
    from its files (model_index.json, configs), which must be on disk: an uncached repo raises the
    not-cached error, except a registry repo without ``@revision``, described from its entry.
    """
    from ._factory import FAMILIES, resolve_model
    from ._registry import find_entry_by_repo, parse_model_name

    parsed = parse_model_name(name)
    if parsed.source == "zoo":
        entry = get_entry(parsed.id)
        return (entry, *_weights_status(entry), None)
    known = find_entry_by_repo(parsed.id) if parsed.source == "hf-hub" and not parsed.revision else None
    if known is not None and known.family not in FAMILIES:  # a CLIP baseline: no diffusers files to read
        return (known, *_weights_status(known), None)
    try:
        resolved = resolve_model(name, local_files_only=True)
    except _hub.ModelNotCachedError:
        if known is None:
            raise
        return (known, *_weights_status(known), None)
    spec = FAMILIES[resolved.entry.family]
    _hub.check_files_intact(resolved.snapshot, resolved.components)  # a damaged file is reported, as classify would
    resolved_status = _SOURCE_STATUS.get(resolved.snapshot.source, resolved.snapshot.source)
    if not _hub.check_weight_files(resolved.snapshot, spec.networks, allow_pickle=True):
        resolved_status += " (pickle .bin weights: classify needs --allow-pickle)"
    return resolved.entry, resolved_status, resolved.snapshot, resolved


def run_info(args: argparse.Namespace) -> int:
    """Describe a zoo name, an ``hf-hub:`` repo (from the cache) or a pipeline folder (from its files)."""
    _configure_logging(args)
    entry, status, snapshot, resolved = _resolve_for_info(args.name)
    k, evals = _cost(entry, args.num_classes) if entry.schedule is not None else (None, None)
    components = {c: f"{lib}.{cls}" for c, (lib, cls) in resolved.components.items()} if resolved else None
    if args.json:
        data = entry.to_dict()
        data["weights"] = {"status": status, "path": str(snapshot.path) if snapshot else None,
                           "commit": snapshot.commit if snapshot else None}
        if snapshot is not None:
            data["weights"].update(repo_id=snapshot.repo_id, revision=snapshot.revision, source=snapshot.source)
        data["components"] = components
        data["cost_for_num_classes"] = {"num_classes": k, "evaluations_per_image": evals} if k else None
        print(json.dumps(data, indent=2))
        return 0
    if entry.listed:
        where = f"{entry.hub_id} ({'official' if entry.official_location else 'unofficial mirror'})"
    else:
        where = f"{entry.hub_id or f'local folder {snapshot.path}'} (not in the registry: described from its files)"
    lines = [f"{entry.name}{'  (default model)' if entry.default else ''}", f"  {entry.description}",
             f"  family:       {entry.family} ({entry.pipeline_class}, {entry.prediction_type or 'n/a'} prediction)",
             f"  weights from: {where}"]
    if entry.original_id:
        lines.append(f"  paper's id:   {entry.original_id} (still accepted as a name)")
    if entry.location_note:
        lines.append(f"  location:     {entry.location_note}")
    if entry.listed or entry.hub_id:
        revision = snapshot.revision if (resolved and snapshot.revision) else entry.revision
        pinned = (snapshot.commit == revision) if resolved else entry.revision_pinned
        lines.append(f"  revision:     {revision}" + ("" if pinned else "  (UNPINNED: a branch, can change)"))
    if entry.vae_id:
        lines.append(f"  VAE:          {entry.vae_id}")
    lines += [f"  input:        {entry.resolution} px, {entry.interpolation} resize, {entry.crop} crop, mean/std 0.5",
              f"  dtype:        {entry.default_dtype} on GPU, float32 on CPU"]
    if components:
        lines.append(f"  components:   {', '.join(f'{c} {cls}' for c, cls in components.items())}")
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
        commit = f" (commit {snapshot.commit})" if resolved and snapshot.commit else ""
        lines.append(f"  weights here: {status}: {snapshot.path}{commit}")
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
                                   "schedule and where its weights are cached (or how to fetch them). An hf-hub: "
                                   "repo or a pipeline folder is described from its files (offline: from the cache).")
    parser.add_argument("name", help="zoo name, e.g. sd-2-base (see `dc-zoo list`), hf-hub:org/repo[@rev] or a "
                                     "pipeline folder (what `dc-zoo classify --model` accepts)")
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
    """``--classes cat dog a.png b/`` -> (["cat", "dog"], ["a.png", "b/"]).

    argparse cannot tell where a list option ends and the IMAGE arguments begin, so it gives
    the images to the last list option. Its trailing values that are existing files, end in an
    image file extension (``.png``, ``.jpg``, ...) or end in ``/`` (a folder) are images: a
    missing ``missing.png`` is then reported as a missing image, never taken for a class, and a
    class named like a folder next to it (ImageFolder layouts: ``cat``, ``dog``) stays a class.
    ``--`` ends the list explicitly.
    """
    if values is None:
        return None, []
    values, files = list(values), []
    while values and _looks_like_image_argument(values[-1]):
        files.insert(0, values.pop())
    return values, files


def _looks_like_image_argument(value: str) -> bool:
    if not value.strip():
        return False  # an empty class name, refused as such (Path("") would be the current folder)
    path = Path(value)
    return (path.is_file() or path.is_symlink() or value.endswith(("/", os.sep))
            or path.suffix.lower() in IMAGE_EXTENSIONS)


def _integers(values: Sequence[str] | None, option: str) -> tuple[int, ...] | None:
    if not values:
        return None
    try:
        return tuple(int(v) for v in values)
    except ValueError:
        raise ValueError(f"{option} takes integers, got {' '.join(values)}; image files go at the end "
                         "(they must exist) or after `--`.") from None


def _expand_paths(paths: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Image files (a directory gives its image files, sorted) and ``(argument, reason)`` for the unusable."""
    files, failed = [], []
    for path in paths:
        if Path(path).is_dir():
            inside = image_files_in(path)
            if not inside:
                failed.append((path, f"is a directory with no image files ({', '.join(IMAGE_EXTENSIONS[:6])}, ...)"))
            files.extend(str(p) for p in inside)
        else:
            files.append(path)
    return files, failed


def _load_images(paths: Sequence[str], fail_fast: bool = False):
    """(path, RGB image) of each readable file and (path, reason) of the others, in order.

    Uses the same conversion as ``classify()`` (``dc_zoo.image_io``), so a file gets the same
    prediction from the command and from the Python API.

    Raises:
        ImageInputError: with ``fail_fast``, at the first file that cannot be used.
    """
    loaded, failed = [], []
    for path in paths:
        try:
            loaded.append((path, to_rgb(load_image(path))))
        except ImageInputError as err:
            err = err.at(name=path)
            if fail_fast:
                raise err
            failed.append((path, err.reason))
    return loaded, failed


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
    files, failed = _expand_paths(paths)
    if failed and args.fail_fast:
        raise ImageInputError(failed[0][1], name=failed[0][0])
    loaded, unreadable = _load_images(files, fail_fast=args.fail_fast)
    failed += unreadable
    for path, reason in failed:
        print(f"dc-zoo: cannot classify {path!r}: {reason}", file=sys.stderr)
    if not loaded:
        print(f"dc-zoo: error: none of the {len(failed)} image argument(s) could be read.", file=sys.stderr)
        return 1
    paths = [path for path, _ in loaded]
    images = [image for _, image in loaded]
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
    status = 1 if failed else 0  # 1: some images could not be read (each reported on stderr)
    if args.json:
        print(json.dumps({"model": entry.name, "source": classifier.source.describe(), "results": results,
                          "failed": [{"image": path, "error": reason} for path, reason in failed]}, indent=2))
        return status
    print(f"model {entry.name} from {classifier.source.describe()}")
    print("score = mean denoising error, lower is better; a class dropped after an earlier stage ranks below the "
          "survivors whatever its error")
    last = len(classifier.scoring.n_samples) - 1
    for r in results:
        ranking = ", ".join(f"{t['class']} {t['error']:.4f}" + (f" (dropped after stage {t['stage'] + 1})"
                                                               if t["stage"] < last else "") for t in r["top"])
        print(f"{r['image']}: {r['prediction']}  [{ranking}]  ({r['evaluations']} evaluations)")
    if failed:
        print(f"dc-zoo: {len(failed)} of {len(failed) + len(results)} image argument(s) could not be read (see "
              "above); the others were classified.", file=sys.stderr)
    return status


def add_classify_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "classify", help="classify image files", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Classify images zero-shot: every class is scored by the model's denoising error on the image "
                    "(lower is better) and the best one wins. Text models take class names, which fill the prompt "
                    "template; class-conditional models (DiT) take their labels (numbers or names) or all of them.",
        epilog="examples:\n"
               "  dc-zoo classify --model sd-digits-mini --classes zero one two three four five six seven eight nine d.png\n"
               "  dc-zoo classify --model sd-2-base --classes cat dog --template 'a photo of a {}.' --loss l1 pet.jpg\n"
               "  dc-zoo classify --model dit-xl-2-256 --n-samples 25 250 --to-keep 10 1 photo.jpg\n"
               "  dc-zoo classify --model sd-2-base --classes cat dog -- photos/   (a folder: its image files)\n"
               "\nimages: the values after --classes that are files, end in an image extension (.png, .jpg, ...) or\n"
               "in / (a folder) are images, or put `--` before them. An unreadable file (missing, empty, truncated, not an image) is\n"
               "reported by path with the reason and the others are classified.\n"
               "exit status: 0 all classified; 1 some images could not be read; 2 bad usage or model.")
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
    run.add_argument("--fail-fast", action="store_true",
                     help="stop at the first image that cannot be read (default: report it, classify the others)")
    parser.add_argument("images", nargs="*", metavar="IMAGE",
                        help="image files or folders of them, at the end of the command (or after `--`)")
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
    except ImageInputError as err:  # --fail-fast: the first image that could not be read
        print(f"dc-zoo: error: {err}", file=sys.stderr)
        return 1
    except USER_ERRORS as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"dc-zoo: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
