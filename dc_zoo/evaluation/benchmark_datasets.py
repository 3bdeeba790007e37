"""Datasets through clip_benchmark's own builders, class names and templates (never copied).

``dc-zoo eval`` accepts exactly the names ``clip_benchmark eval`` accepts, read from
clip_benchmark's ``build_dataset`` itself so a new clip_benchmark release brings its new
datasets. Images are taken untransformed (PIL): the diffusion model's entry owns its
preprocessing. Before any work starts the name, the task and the root are checked, and the
errors say what is expected where.

A local WebDataset (``wds/<name>`` with a folder as root) is read here, shard by shard, in the
order and with the sample grouping of clip_benchmark's reader (webdataset's), but each image is
decoded on its own: a corrupt or empty image becomes an ``UnreadableSample`` in its place (shard,
key, reason), recorded as a failed sample, instead of a ``DecodingError`` that ends the stream
and the run. Every other sample keeps its index.
"""
from __future__ import annotations

import difflib
import inspect
import logging
import re
import tarfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..image_io import ImageReadError, decode_image_bytes
from ..image_io import load_image as decode_image_file

logger = logging.getLogger(__name__)

__all__ = ["BenchmarkDataset", "UnreadableSample", "known_dataset_names", "check_dataset_name", "check_dataset_root",
           "load_benchmark_dataset", "read_local_wds"]

# Families whose members are named by the user (wds/<name>, tfds/<name>): any suffix is valid.
_OPEN_PREFIXES = ("wds/", "tfds/")
_IMAGE_EXTENSIONS = ("webp", "png", "jpg", "jpeg")  # what clip_benchmark's WebDataset reader decodes

WDS_LAYOUT = """\
  <root>/<split>/nshards.txt      number of shards N
  <root>/<split>/0.tar ... N-1.tar  samples: <key>.png|.jpg|.webp image and <key>.cls label
  <root>/classnames.txt           one class name per line
  <root>/zeroshot_classification_templates.txt   one template per line, '{c}' for the class
(clip_benchmark_export_wds or dc_zoo.digits.write_digits_webdataset write this layout)"""


@lru_cache(maxsize=1)
def known_dataset_names() -> tuple[str, ...]:
    """Every dataset name clip_benchmark's ``build_dataset`` knows (``wds/``, ``tfds/`` take any suffix)."""
    from clip_benchmark.datasets import builder

    literal = re.compile(r"dataset_name\s*==\s*[\"']([^\"']+)[\"']")
    names = set(literal.findall(inspect.getsource(builder.build_dataset)))
    names.update("vtab/" + n for n in literal.findall(inspect.getsource(builder.build_vtab_dataset)))
    for members in builder.dataset_collection.values():
        names.update(members)
    names.discard("dummy")
    return tuple(sorted(names))


def check_dataset_name(name: str) -> str:
    """Return clip_benchmark's task for ``name`` after checking it is a zero-shot classification set.

    Raises:
        ValueError: unknown name (lists close matches) or a retrieval / multi-label dataset.
    """
    from clip_benchmark.datasets.builder import dataset_collection, get_dataset_default_task

    if name in dataset_collection:
        raise ValueError(
            f"{name!r} is a clip_benchmark collection of {len(dataset_collection[name])} datasets; dc-zoo eval "
            f"takes one dataset per run: {', '.join(dataset_collection[name][:5])}, ..."
        )
    known = known_dataset_names()
    open_family = name.startswith(_OPEN_PREFIXES) and len(name.split("/", 1)[1]) > 0
    if name not in known and not open_family:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        hint = f"close matches: {', '.join(close)}" if close else f"known: {', '.join(known)}"
        raise ValueError(
            f"Unknown dataset {name!r}: clip_benchmark does not know it ({hint}). A WebDataset folder of your "
            "own is named wds/<name> (see clip_benchmark_export_wds)."
        )
    short = name.replace("wds/", "", 1)
    task = get_dataset_default_task(short)
    if task != "zeroshot_classification" or name.endswith("_multilabel"):
        raise ValueError(
            f"Dataset {name!r} is a {task if task != 'zeroshot_classification' else 'multi-label'} dataset; "
            "dc-zoo eval does single-label zero-shot classification. Pick a classification dataset."
        )
    return task


def _is_url(root: str) -> bool:
    return "://" in root


def _wds_shards(root: Path, split: str) -> list[Path]:
    split_dir = root / split
    nshards_file = split_dir / "nshards.txt"
    if not nshards_file.is_file():
        raise FileNotFoundError(
            f"Dataset root {root} has no {split}/nshards.txt, so it is not a clip_benchmark WebDataset for "
            f"split {split!r}. Expected:\n{WDS_LAYOUT}"
        )
    try:
        n = int(nshards_file.read_text().strip())
    except ValueError:
        raise FileNotFoundError(f"{nshards_file} must hold the number of shards, got {nshards_file.read_text()[:40]!r}.")
    missing = [str(split_dir / f"{i}.tar") for i in range(n) if not (split_dir / f"{i}.tar").is_file()]
    if missing:
        raise FileNotFoundError(
            f"Dataset root {root} is incomplete: nshards.txt says {n} shards but {missing[:3]} "
            f"{'(and more) ' if len(missing) > 3 else ''}are missing. Expected:\n{WDS_LAYOUT}"
        )
    for required in ("classnames.txt", "zeroshot_classification_templates.txt"):  # clip_benchmark needs both
        if not (root / required).is_file():
            raise FileNotFoundError(f"Dataset root {root} has no {required}. Expected:\n{WDS_LAYOUT}")
    return [split_dir / f"{i}.tar" for i in range(n)]


def check_dataset_root(name: str, root: str, split: str, download: bool = False) -> None:
    """Fail early when ``root`` cannot hold ``name``; say what is expected there.

    Raises:
        FileNotFoundError: the root is missing or incomplete.
    """
    if name.startswith("wds/"):
        if not _is_url(root):
            if not Path(root).is_dir():
                raise FileNotFoundError(f"Dataset root {root} does not exist. For {name} it must hold:\n{WDS_LAYOUT}")
            _wds_shards(Path(root), split)
        return
    if not download and not Path(root).exists():
        raise FileNotFoundError(
            f"Dataset root {root} does not exist. Point --dataset_root at the folder where clip_benchmark keeps "
            f"{name!r} (the same --dataset_root you give `clip_benchmark eval`), or pass --download to let "
            "clip_benchmark fetch it there."
        )


def _count_wds_samples(shards: Sequence[Path]) -> int:
    """Samples in local shards, counted from the tar index without decoding an image."""
    total = 0
    for shard in shards:
        keys = set()
        with tarfile.open(shard) as tar:
            for member in tar:
                match = _KEY_AND_SUFFIX.match(member.name) if member.isreg() else None
                if match and match.group(2).lower() in _IMAGE_EXTENSIONS and not _META.match(member.name):
                    keys.add(match.group(1))
        total += len(keys)
    return total


@dataclass(frozen=True)
class UnreadableSample:
    """Stands in for a sample's image that could not be decoded: the sample is recorded as failed.

    Attributes:
        shard: the shard, relative to the dataset root (the same wherever the dataset is moved).
        key: the sample's key in the shard.
        reason: why its image could not be decoded.
    """

    shard: str
    key: str
    reason: str

    def __str__(self) -> str:
        return f"{self.shard}:{self.key}: {self.reason}"


# webdataset's grouping (tariterators.base_plus_ext): the key ends at the first dot of the file name.
_KEY_AND_SUFFIX = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_META = re.compile(r"__[^/]*__($|/)")


def _tar_samples(shard: Path) -> Iterator[dict[str, Any]]:
    """The samples of one shard as webdataset groups them: consecutive files with one key."""
    current: dict[str, Any] | None = None
    try:
        with tarfile.open(shard, mode="r|*") as tar:
            for member in tar:
                if not member.isreg() or _META.match(member.name) or (
                        "/" not in member.name and member.name.startswith("__") and member.name.endswith("__")):
                    continue
                match = _KEY_AND_SUFFIX.match(member.name)
                if not match:
                    continue
                key, suffix = match.group(1), match.group(2).lower()
                data = tar.extractfile(member).read()
                if current is None or key != current["__key__"]:
                    if current is not None:
                        yield current
                    current = {"__key__": key}
                current.setdefault(suffix, data)
    except tarfile.TarError as err:
        after = f" after sample {current['__key__']!r}" if current else ""
        raise ValueError(f"Shard {shard} is damaged{after} ({err}): re-create it (the samples it holds cannot be "
                         "read).") from None
    if current is not None:
        yield current


def _decode_reason(err: ImageReadError) -> str:
    """The reason, naming no memory address (records must not depend on the process)."""
    return re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "the image data", err.reason)


def read_local_wds(root: Path, shards: Sequence[Path]) -> Iterator[tuple[Any, int]]:
    """``(PIL image or UnreadableSample, label)`` for every sample of local shards, in order.

    Raises:
        ValueError: a sample without a readable ``.cls`` label, or a damaged tar (named).
    """
    for shard in shards:
        where = shard.relative_to(root).as_posix() if shard.is_relative_to(root) else str(shard)
        for sample in _tar_samples(shard):
            ext = next((e for e in _IMAGE_EXTENSIONS if e in sample), None)
            if ext is None:  # not counted as a sample either (_count_wds_samples)
                continue
            key = sample["__key__"]
            try:
                label = int(sample["cls"])
            except (KeyError, ValueError):
                raise ValueError(f"{shard}: sample {key!r} has no readable .cls label (an integer class index); "
                                 "fix or remove that sample.") from None
            try:  # the same decoding as classify() and dc-zoo classify (dc_zoo.image_io)
                image = decode_image_bytes(sample[ext])
            except ImageReadError as err:  # a decoding failure is this sample's, not the run's
                image = UnreadableSample(where, f"{key}.{ext}", _decode_reason(err))
            yield image, label


@dataclass
class BenchmarkDataset:
    """A clip_benchmark dataset, untransformed, addressed by sample index.

    Attributes:
        name: the clip_benchmark name (``cifar10``, ``wds/digits``, ...).
        split: the split it was built for.
        classes: class names in label order.
        templates: clip_benchmark's templates for it (list with ``{c}``, or class-specific dict).
        size: number of samples in the split.
        source: the object clip_benchmark built.
        wds_root, wds_shards: a local WebDataset's root and shards, read sample by sample
            (``read_local_wds``) so that one corrupt image fails alone.
    """

    name: str
    split: str
    classes: list[str]
    templates: Any
    size: int
    source: Any
    wds_root: Path | None = None
    wds_shards: tuple[Path, ...] = field(default_factory=tuple)

    def samples(self, indices: Sequence[int]) -> Iterator[tuple[int, Any, int]]:
        """``(index, PIL image or UnreadableSample, label)`` for ``indices`` (ascending), in that order."""
        wanted = sorted(set(int(i) for i in indices))
        if not wanted:
            return
        if hasattr(self.source, "__getitem__") and hasattr(self.source, "__len__"):
            for i in wanted:
                yield (i, *self._indexed_sample(i))
            return
        # A stream (WebDataset): read in order, keep the wanted ones, stop after the last.
        stream = read_local_wds(self.wds_root, self.wds_shards) if self.wds_shards else self.source
        position, i = 0, -1
        for i, (image, label) in enumerate(stream):
            if i == wanted[position]:
                yield i, image, int(label)
                position += 1
                if position == len(wanted):
                    return
        raise IndexError(f"{self.name} ended after {i + 1} samples but sample {wanted[position]} was asked for.")


    def _indexed_sample(self, i: int) -> tuple[Any, int]:
        """Sample ``i`` of an indexable dataset; an image that cannot be read is this sample's
        failure (an ``UnreadableSample`` naming its file), never the run's. Image folders
        (torchvision's ``DatasetFolder``: ``samples`` of (path, label)) are decoded by
        ``dc_zoo.image_io``, like ``classify()`` and the WebDataset reader."""
        files = getattr(self.source, "samples", None)
        if isinstance(files, list) and files and isinstance(files[0], tuple) and len(files[0]) == 2:
            path, label = files[i]
            try:
                return decode_image_file(path), int(label)
            except ImageReadError as err:
                where = Path(path)
                return UnreadableSample(str(where.parent), where.name, err.reason), int(label)
        try:
            image, label = self.source[i]
        except (OSError, ValueError, SyntaxError) as err:  # decoding inside a dataset we do not read ourselves
            targets = getattr(self.source, "targets", None)
            if targets is None:
                raise ValueError(f"Sample {i} of {self.name} cannot be read ({type(err).__name__}: {err}) and the "
                                 "dataset does not expose its label, so it cannot be recorded as failed: repair or "
                                 "remove that sample.") from err
            return UnreadableSample(self.name, f"sample {i}", f"{type(err).__name__}: {err}"), int(targets[i])
        return image, int(label)


def load_benchmark_dataset(name: str, root: str, split: str = "test", download: bool = False,
                           language: str = "en") -> BenchmarkDataset:
    """Build ``name`` with clip_benchmark's ``build_dataset`` (no transform) and measure its size.

    Raises:
        ValueError: unknown or non-classification dataset name.
        FileNotFoundError: the root does not hold the dataset (says what is expected).
    """
    from clip_benchmark.datasets.builder import build_dataset

    check_dataset_name(name)
    check_dataset_root(name, root, split, download)
    try:
        source = build_dataset(name, root=root, transform=None, split=split, download=download,
                               language=language, task="zeroshot_classification")
    except (RuntimeError, FileNotFoundError, OSError) as err:
        raise FileNotFoundError(
            f"clip_benchmark could not read {name!r} (split {split!r}) from {root}: {err}. Put the dataset there "
            "in the layout torchvision / clip_benchmark expects, or pass --download to fetch it."
        ) from err
    except AssertionError as err:
        raise ValueError(f"clip_benchmark refused {name!r} split {split!r}: {err}") from err
    classes = list(getattr(source, "classes", None) or [])
    if not classes:
        raise ValueError(f"Dataset {name!r} came without class names; zero-shot classification needs them "
                         "(for a WebDataset: classnames.txt in the root).")
    wds_shards: tuple[Path, ...] = ()
    if name.startswith("wds/") and not _is_url(root):
        wds_shards = tuple(_wds_shards(Path(root), split))
        size = _count_wds_samples(wds_shards)
    elif hasattr(source, "__len__"):
        size = len(source)
    else:
        size = sum(1 for _ in source)
    if size == 0:
        raise ValueError(f"Dataset {name!r} split {split!r} under {root} is empty.")
    logger.info("dataset %s/%s: %d samples, %d classes", name, split, size, len(classes))
    return BenchmarkDataset(name=name, split=split, classes=classes, templates=getattr(source, "templates", None),
                            size=size, source=source, wds_root=Path(root) if wds_shards else None,
                            wds_shards=wds_shards)
