"""Relations: an embedded compositional benchmark in Winoground's form (data side).

Why: the digits benchmark measures recognition; Winoground (Thrush et al., CVPR 2022) measures
*composition*: two images and two captions made of the same words in another order ("a red
circle to the left of a blue square" / "a blue square to the left of a red circle"), where a
model must match each caption to its image. The real dataset is gated and far too large for a
CPU-trained miniature, so this module generates a small one offline: two coloured shapes in a
clear spatial relation, 32x32 RGB, seeded and bit-reproducible, with a grammar short enough for
a 16-token text encoder (every caption is at most 12 CLIP tokens with start/end, see
``MAX_CAPTION_TOKENS``).

Scenes. Two objects, each a colour from ``COLOURS`` and a shape from ``SHAPES``; the two always
differ in colour *and* in shape (so every caption names its objects unambiguously and every swap
changes the image). The relation is one of ``RELATIONS`` (``"to the left of"``, ``"to the right
of"``, ``"above"``, ``"below"``), read from the first object (the subject): "a red circle above
a blue square" has the red circle higher. Along the relation's axis the centres are at least
``sizes / 2 + 2`` px apart with a visible gap; across it they differ by at most 4 px, so exactly
one relation holds. Objects are drawn with PIL ImageDraw at ``SUPERSAMPLE`` x resolution and
box-filtered down to 32 px, on a plain dark-grey background (level jittered per image) with
light Gaussian pixel noise; size and position are jittered per object.

Captions. ``"a {colour} {shape} {relation} a {colour} {shape}"``. Each training image has one
caption, its ``Scene.caption``. The converse description ("a blue square to the right of a red
circle" for "a red circle to the left of a blue square") is equally true of the image;
``Scene.converse()`` gives it, but the splits do not use it: the subject and relation are drawn
uniformly, so both phrasings of every arrangement occur across the training set.

Splits (``SEED`` 0; every record is drawn from ``np.random.default_rng([seed, split code,
index])``, so records do not depend on the order, number or size of requests):

- ``train``: ``N_TRAIN`` (6,000) image-caption pairs; ``val``: ``N_VAL`` (500) new draws of the
  same distribution.
- ``test``: ``N_TEST`` (200) Winoground-form examples ``(image_0, caption_0, image_1,
  caption_1)``. Even ids are *object* swaps (caption_1 exchanges the two object phrases: "a blue
  square to the left of a red circle"), odd ids are *attribute* swaps (caption_1 exchanges the
  colours: "a blue circle to the left of a red square"). image_i depicts caption_i; each image
  has its own layout draw. ``load_relations_split("test")`` flattens them to 400 pairs.

Held out (composition, not recall). A scene's *combination* is its unordered colour pair and
unordered shape pair (15 x 10 = 150); both swaps keep it, so an example's two images share one.
``HELD_OUT_COMBINATIONS`` (30, i.e. 20%: colour pair k in ``itertools.combinations`` order with
shape pairs 2k and 2k+1 mod 10, so every colour pair and every shape pair is held out equally
often) never occur in train or val, and every test example uses one of them. Every single
object (colour + shape), every colour, shape and relation still occurs in train; what the test
asks for is a pairing of colours with shapes, in an order, that training never showed together.

Stock evaluation paths:

- ``write_winoground_cache(root)`` stores the test set in Winoground's own schema
  (``WINOGROUND_COLUMNS``) as a prepared ``datasets`` cache, so the stock ``clip_benchmark eval
  --dataset winoground --dataset_root <root>`` (whose reader calls ``load_dataset(
  "facebook/winoground", cache_dir=root)["test"]``) reads it offline. See that function for the
  mechanism and its limits.
- ``write_sugar_crepe(root)`` writes SugarCrepe-style ``swap_att`` / ``swap_obj`` /
  ``replace_rel`` files from the same test images for ``--dataset sugar_crepe/<task>``.

Pixels depend on Pillow's rasteriser: ``CONTENT_SHA256`` (per split; the test one is
``TEST_CONTENT_SHA256``) was pinned with ``PINNED_PILLOW_VERSION``.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
import shutil
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

__all__ = [
    "COLOURS", "SHAPES", "RELATIONS", "IMAGE_SIZE", "SUPERSAMPLE", "SEED", "SPLITS", "N_TRAIN", "N_VAL",
    "N_TEST", "MAX_CAPTION_TOKENS", "HELD_OUT_COMBINATIONS", "WINOGROUND_COLUMNS", "SUGAR_CREPE_TASKS",
    "WINOGROUND_REPO_ID", "CONTENT_SHA256", "TEST_CONTENT_SHA256", "PINNED_PILLOW_VERSION",
    "Thing", "Scene", "Layout", "parse_caption", "render_scene", "combination_of",
    "relation_records", "winoground_records", "load_relations_split", "load_winoground_examples",
    "split_content_hash", "winoground_features", "write_winoground_cache", "write_sugar_crepe",
]

# name -> RGB; none starts with a vowel, so "a {colour} ..." is always grammatical.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (40, 185, 55),
    "blue": (45, 95, 240),
    "yellow": (240, 215, 30),
    "purple": (165, 55, 215),
    "white": (245, 245, 245),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "star")
RELATIONS: tuple[str, ...] = ("to the left of", "to the right of", "above", "below")
_CONVERSE = {"to the left of": "to the right of", "to the right of": "to the left of", "above": "below", "below": "above"}
IMAGE_SIZE = 32
SUPERSAMPLE = 4  # drawn at 128 px, box-filtered to 32 px
SEED = 0
SPLITS: tuple[str, ...] = ("train", "val", "test")
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
N_TRAIN, N_VAL, N_TEST = 6000, 500, 200
MAX_CAPTION_TOKENS = 12  # CLIP BPE tokens including start and end; the longest caption has exactly 12
WINOGROUND_REPO_ID = "facebook/winoground"
# facebook/winoground's columns and feature types (its loading script's datasets.Features).
WINOGROUND_COLUMNS: dict[str, str] = {
    "id": "int32", "image_0": "image", "image_1": "image", "caption_0": "string", "caption_1": "string",
    "tag": "string", "secondary_tag": "string", "num_main_preds": "int32", "collapsed_tag": "string",
}
SUGAR_CREPE_TASKS: tuple[str, ...] = ("swap_att", "swap_obj", "replace_rel")
# sha256 of each split (see split_content_hash), pinned with PINNED_PILLOW_VERSION.
CONTENT_SHA256: dict[str, str] = {
    "train": "b187e5075b08fa098559c879de46fb14b3d10c388cb388e421f22ae3ab1189cc",
    "val": "c30f447a18fed1237fab07f5a8268745b4a9abdcccb47f56c9a33ac8c2aacaa3",
    "test": "b300cb890392f8c1251d09bda81fea381c9f29e59e7d4b289271ac83ccc64228",
}
TEST_CONTENT_SHA256 = CONTENT_SHA256["test"]
PINNED_PILLOW_VERSION = "13.0.0"

_BACKGROUND_LEVEL = (25, 60)  # uniform grey level range of the background (0..255)
_NOISE_STD = 3.0  # Gaussian pixel noise (0..255 scale) added after downsampling
_SIZE_RANGE = (9.0, 12.0)  # object extent in output pixels
_GAP_RANGE = (2.0, 6.0)  # empty pixels between the two objects along the relation's axis
_CROSS_JITTER = 2.0  # each object's offset across the relation's axis, +- px
_MARGIN = 1.0  # min distance of an object's bounding box from the image border, px


@dataclass(frozen=True)
class Thing:
    """One object: a colour name from ``COLOURS`` and a shape name from ``SHAPES``."""

    colour: str
    shape: str

    @property
    def phrase(self) -> str:
        return f"a {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """``subject`` is ``relation`` ``obj``; the structured description behind every caption."""

    subject: Thing
    relation: str
    obj: Thing

    @property
    def caption(self) -> str:
        return f"{self.subject.phrase} {self.relation} {self.obj.phrase}"

    def swap_objects(self) -> "Scene":
        """The two object phrases exchanged: same words, another scene."""
        return Scene(self.obj, self.relation, self.subject)

    def swap_attributes(self) -> "Scene":
        """The two colours exchanged (shapes stay): same words, another scene."""
        return Scene(Thing(self.obj.colour, self.subject.shape), self.relation,
                     Thing(self.subject.colour, self.obj.shape))

    def converse(self) -> "Scene":
        """The same picture described from the other object ("left of" <-> "right of")."""
        return Scene(self.obj, _CONVERSE[self.relation], self.subject)

    def replace_relation(self, relation: str) -> "Scene":
        return replace(self, relation=relation)


@dataclass(frozen=True)
class Layout:
    """Everything besides the scene that fixes an image's pixels (centres and sizes in output px)."""

    subject_center: tuple[float, float]
    object_center: tuple[float, float]
    subject_size: float
    object_size: float
    background: int
    noise_seed: int


_CAPTION_RE = re.compile(
    r"^a (?P<c0>\w+) (?P<s0>\w+) (?P<rel>to the left of|to the right of|above|below) a (?P<c1>\w+) (?P<s1>\w+)$"
)


def parse_caption(caption: str) -> Scene:
    """The ``Scene`` a caption of this grammar describes (inverse of ``Scene.caption``)."""
    m = _CAPTION_RE.match(caption)
    if m is None or not {m["c0"], m["c1"]} <= set(COLOURS) or not {m["s0"], m["s1"]} <= set(SHAPES):
        raise ValueError(f"Not a relations caption: {caption!r}")
    return Scene(Thing(m["c0"], m["s0"]), m["rel"], Thing(m["c1"], m["s1"]))


Combination = tuple[tuple[str, str], tuple[str, str]]  # (sorted colour pair, sorted shape pair)


def combination_of(scene: Scene) -> Combination:
    """The unordered colour pair and unordered shape pair of a scene (kept by both swaps)."""
    colours = tuple(sorted((scene.subject.colour, scene.obj.colour), key=list(COLOURS).index))
    shapes = tuple(sorted((scene.subject.shape, scene.obj.shape), key=SHAPES.index))
    return colours, shapes  # type: ignore[return-value]


def _held_out() -> tuple[Combination, ...]:
    colour_pairs = list(itertools.combinations(COLOURS, 2))
    shape_pairs = list(itertools.combinations(SHAPES, 2))
    return tuple(
        (colour_pairs[k], shape_pairs[j % len(shape_pairs)])
        for k in range(len(colour_pairs)) for j in (2 * k, 2 * k + 1)
    )


HELD_OUT_COMBINATIONS: tuple[Combination, ...] = _held_out()
_ALL_COMBINATIONS: tuple[Combination, ...] = tuple(
    itertools.product(itertools.combinations(COLOURS, 2), itertools.combinations(SHAPES, 2))
)
_TRAIN_COMBINATIONS: tuple[Combination, ...] = tuple(c for c in _ALL_COMBINATIONS if c not in set(HELD_OUT_COMBINATIONS))


# ---------------------------------------------------------------- drawing

def _shape_polygon(shape: str, cx: float, cy: float, size: float) -> list[tuple[float, float]] | None:
    r = size / 2
    if shape == "triangle":  # upright, equilateral-ish, filling the box
        return [(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            ang = -np.pi / 2 + k * np.pi / 5
            pts.append((cx + rad * float(np.cos(ang)), cy + rad * float(np.sin(ang))))
        return pts
    if shape == "cross":  # a plus sign, arm thickness size / 3
        t = size / 6
        return [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t), (cx + r, cy + t),
                (cx + t, cy + t), (cx + t, cy + r), (cx - t, cy + r), (cx - t, cy + t), (cx - r, cy + t),
                (cx - r, cy - t), (cx - t, cy - t)]
    return None


def _draw_thing(draw: ImageDraw.ImageDraw, thing: Thing, center: tuple[float, float], size: float) -> None:
    s = SUPERSAMPLE
    cx, cy, sz = center[0] * s, center[1] * s, size * s
    fill = COLOURS[thing.colour]
    if thing.shape == "circle":
        r = sz / 2
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif thing.shape == "square":  # slightly smaller than the box: similar area to a circle
        r = sz * 0.43
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(_shape_polygon(thing.shape, cx, cy, sz), fill=fill)


def render_scene(scene: Scene, layout: Layout, image_size: int = IMAGE_SIZE) -> Image.Image:
    """Draw ``scene`` with ``layout`` as an RGB PIL image (deterministic for a Pillow version).

    ``layout`` is in 32 px units; other ``image_size`` values scale it.
    """
    scale = image_size / IMAGE_SIZE
    big = image_size * SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), (layout.background,) * 3)
    draw = ImageDraw.Draw(canvas)
    for thing, center, size in ((scene.subject, layout.subject_center, layout.subject_size),
                                (scene.obj, layout.object_center, layout.object_size)):
        _draw_thing(draw, thing, (center[0] * scale, center[1] * scale), size * scale)
    small = canvas.resize((image_size, image_size), resample=Image.Resampling.BOX)
    noise = np.random.default_rng(layout.noise_seed).normal(0.0, _NOISE_STD, (image_size, image_size, 3))
    pixels = np.round(np.asarray(small, np.float64) + noise).clip(0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def _draw_layout(rng: np.random.Generator, relation: str) -> Layout:
    """Sizes and positions such that exactly ``relation`` holds, with a visible gap."""
    sa, sb = (float(v) for v in rng.uniform(*_SIZE_RANGE, size=2))
    gap = float(rng.uniform(*_GAP_RANGE))
    distance = sa / 2 + gap + sb / 2
    # along the axis: first (lower-coordinate) object anywhere that keeps both inside the margins
    first_size, second_size = (sa, sb) if relation in ("to the left of", "above") else (sb, sa)
    lo = _MARGIN + first_size / 2
    hi = IMAGE_SIZE - _MARGIN - second_size / 2 - distance
    first = float(rng.uniform(lo, hi))
    along_a, along_b = (first, first + distance) if relation in ("to the left of", "above") else (first + distance, first)
    # across the axis: a shared coordinate plus a small offset per object
    reach = max(sa, sb) / 2 + _CROSS_JITTER + _MARGIN
    mid = float(rng.uniform(reach, IMAGE_SIZE - reach))
    off_a, off_b = (float(v) for v in rng.uniform(-_CROSS_JITTER, _CROSS_JITTER, size=2))
    if relation in ("to the left of", "to the right of"):
        ca, cb = (along_a, mid + off_a), (along_b, mid + off_b)
    else:
        ca, cb = (mid + off_a, along_a), (mid + off_b, along_b)
    background = int(rng.integers(_BACKGROUND_LEVEL[0], _BACKGROUND_LEVEL[1] + 1))
    return Layout(ca, cb, sa, sb, background, int(rng.integers(0, 2**63 - 1)))


def _draw_scene(rng: np.random.Generator, combinations: Sequence[Combination]) -> Scene:
    colours, shapes = combinations[int(rng.integers(len(combinations)))]
    c = [colours[i] for i in rng.permutation(2)]
    s = [shapes[i] for i in rng.permutation(2)]
    relation = RELATIONS[int(rng.integers(len(RELATIONS)))]
    return Scene(Thing(c[0], s[0]), relation, Thing(c[1], s[1]))


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _SPLIT_CODE[split], int(index)])


# ---------------------------------------------------------------- splits

def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"Unknown relations split {split!r}; choose one of {SPLITS}.")


@lru_cache(maxsize=8)
def relation_records(split: str, seed: int = SEED) -> tuple[tuple[Scene, Layout], ...]:
    """The structured (scene, layout) of every train/val image (test: both images of each example)."""
    _check_split(split)
    if split == "test":
        return tuple(rec for ex in winoground_records(seed) for rec in ex["scenes"])
    n = N_TRAIN if split == "train" else N_VAL
    out = []
    for i in range(n):
        rng = _rng(seed, split, i)
        scene = _draw_scene(rng, _TRAIN_COMBINATIONS)
        out.append((scene, _draw_layout(rng, scene.relation)))
    return tuple(out)


@lru_cache(maxsize=4)
def _winoground_records(seed: int) -> tuple[dict[str, Any], ...]:
    out = []
    for i in range(N_TEST):
        rng = _rng(seed, "test", i)
        kind = "object" if i % 2 == 0 else "attribute"
        scene0 = _draw_scene(rng, HELD_OUT_COMBINATIONS)
        scene1 = scene0.swap_objects() if kind == "object" else scene0.swap_attributes()
        layouts = (_draw_layout(rng, scene0.relation), _draw_layout(rng, scene1.relation))
        out.append({"id": i, "kind": kind, "scenes": ((scene0, layouts[0]), (scene1, layouts[1]))})
    return tuple(out)


def winoground_records(seed: int = SEED) -> list[dict[str, Any]]:
    """The structured test examples: ``{"id", "kind" ("object"/"attribute"), "scenes": ((scene, layout) x 2)}``."""
    return list(_winoground_records(int(seed)))


def load_relations_split(split: str, seed: int = SEED) -> list[tuple[Image.Image, str]]:
    """``split`` ("train", "val" or "test") as (32 px RGB PIL image, caption) pairs.

    "test" gives image_0, image_1 of every Winoground example in id order (2 * ``N_TEST`` pairs).
    """
    return [(render_scene(scene, layout), scene.caption) for scene, layout in relation_records(split, seed)]


# Winoground's visual tag for non-photographic images; every image here is a drawing.
_SECONDARY_TAG = "Symbolic"
# tag: the kind of swap (this set's analogue of Winoground's fine-grained linguistic tag);
# collapsed_tag: Winoground's rule, noun phrases swapped = "Object", modifiers swapped = "Relation".
_TAGS = {"object": ("Object", "Object"), "attribute": ("Attribute", "Relation")}


def load_winoground_examples(seed: int = SEED) -> list[dict[str, Any]]:
    """The test set as rows of facebook/winoground's schema (``WINOGROUND_COLUMNS``).

    ``id`` (int), ``image_0``/``image_1`` (PIL), ``caption_0``/``caption_1``, ``tag`` ("Object"
    for an object swap, "Attribute" for a colour swap), ``secondary_tag`` ("Symbolic", Winoground's
    tag for drawn rather than photographed images), ``num_main_preds`` (1: one relation),
    ``collapsed_tag`` (Winoground's collapsing: "Object" for swapped noun phrases, "Relation" for
    swapped modifiers, here the colours).
    """
    rows = []
    for ex in winoground_records(seed):
        (s0, l0), (s1, l1) = ex["scenes"]
        tag, collapsed = _TAGS[ex["kind"]]
        rows.append({
            "id": ex["id"], "image_0": render_scene(s0, l0), "image_1": render_scene(s1, l1),
            "caption_0": s0.caption, "caption_1": s1.caption, "tag": tag, "secondary_tag": _SECONDARY_TAG,
            "num_main_preds": 1, "collapsed_tag": collapsed,
        })
    return rows


def _image_digest(h: "hashlib._Hash", image: Image.Image) -> None:
    h.update(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    h.update(image.tobytes())


def split_content_hash(split: str, seed: int = SEED) -> str:
    """sha256 over every caption, tag and raw pixel of ``split`` (pins the data bit for bit)."""
    _check_split(split)
    h = hashlib.sha256(f"dc_zoo.relations:{split}:{seed}\n".encode())
    if split == "test":
        for row in load_winoground_examples(seed):
            h.update(f"{row['id']}\0{row['caption_0']}\0{row['caption_1']}\0{row['tag']}\0".encode())
            _image_digest(h, row["image_0"])
            _image_digest(h, row["image_1"])
    else:
        for image, caption in load_relations_split(split, seed):
            h.update(caption.encode() + b"\0")
            _image_digest(h, image)
    return h.hexdigest()


# ---------------------------------------------------------------- stock readers

def winoground_features():
    """facebook/winoground's ``datasets.Features`` (needs the ``winoground`` extra: datasets)."""
    import datasets

    kinds = {"int32": lambda: datasets.Value("int32"), "string": lambda: datasets.Value("string"),
             "image": datasets.Image}
    return datasets.Features({name: kinds[kind]() for name, kind in WINOGROUND_COLUMNS.items()})


def _winoground_rows(seed: int, limit: int | None = None) -> Iterator[dict[str, Any]]:
    yield from load_winoground_examples(seed)[:limit]


def _check_limit(limit: int | None) -> int | None:
    if limit is not None and not (isinstance(limit, int) and 1 <= limit <= N_TEST):
        raise ValueError(f"limit must be a number of examples from 1 to {N_TEST}, got {limit!r}.")
    return limit


def write_winoground_cache(root: str | Path, seed: int = SEED, limit: int | None = None) -> Path:
    """Write the test set where ``load_dataset("facebook/winoground", cache_dir=root)`` finds it offline.

    Mechanism (datasets 2.14 - 5.x): with ``HF_HUB_OFFLINE=1`` (or ``HF_DATASETS_OFFLINE=1``),
    or when the Hub cannot be reached, ``load_dataset`` falls back to
    ``CachedDatasetModuleFactory``: it looks for a *prepared* dataset under
    ``<cache_dir>/facebook___winoground/<config>/<version>/<hash>/`` and, logging "Using the
    latest cached version of the dataset", loads it with the packaged ``cache`` builder (the
    most recently modified such folder whose ``dataset_info.json`` names its config folder).
    That is the folder an online ``load_dataset`` of the real repo prepares, so this function
    prepares one with datasets' own builder API: the packaged ``Generator`` builder with
    ``repo_id="facebook/winoground"``, ``dataset_name="winoground"``, ``config_id="default"``,
    Winoground's ``Features``, ``hash`` = the test split's content hash (with ``limit``, only the
    first ``limit`` examples, a slice for quick runs, and the hash says so; a real download uses
    the repo's commit), and ``download_and_prepare()``. The result is
    ``root/facebook___winoground/default/0.0.0/<hash>/{dataset_info.json,winoground-test.arrow}``
    (images PNG-encoded in the Arrow file). clip_benchmark's ``WinoGround(root)`` then reads it.

    Limits: only the offline / unreachable-Hub path finds it. Online with access to the gated
    repo, ``load_dataset`` resolves the real dataset instead (and would prepare it under the
    same root, next to this one, after which the newest folder wins offline); so keep a
    dedicated root per dataset and run with ``HF_HUB_OFFLINE=1``. Without that variable and
    without network, datasets first tries the Hub (connection errors, possibly retries) and
    then falls back here. Rewriting replaces this hash's folder; other folders are left alone.
    """
    import datasets
    from datasets.packaged_modules.generator.generator import Generator

    limit = _check_limit(limit)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    content_hash = split_content_hash("test", seed)[:40]
    if limit is not None and limit < N_TEST:
        content_hash = hashlib.sha256(f"{content_hash}:first-{limit}".encode()).hexdigest()[:40]
    target = root / "facebook___winoground" / "default" / "0.0.0" / content_hash
    if target.exists():
        shutil.rmtree(target)
    builder = Generator(
        cache_dir=str(root), dataset_name=WINOGROUND_REPO_ID.split("/")[1], repo_id=WINOGROUND_REPO_ID,
        config_id="default", hash=content_hash, features=winoground_features(), generator=_winoground_rows,
        gen_kwargs={"seed": int(seed), "limit": limit}, split=datasets.Split.TEST,
    )
    builder.download_and_prepare()
    prepared = Path(builder.cache_dir)
    if prepared.resolve() != target.resolve():  # the layout the offline fallback globs for
        raise RuntimeError(f"datasets prepared the cache at {prepared}, not at {target}: layout changed.")
    logger.info("wrote %d Winoground-form relations examples to %s", limit or N_TEST, prepared)
    return root


def _sugar_crepe_negative(task: str, scene: Scene, rng: np.random.Generator) -> Scene:
    if task == "swap_att":
        return scene.swap_attributes()
    if task == "swap_obj":
        return scene.swap_objects()
    if task == "replace_rel":
        others = [r for r in RELATIONS if r != scene.relation]
        return scene.replace_relation(others[int(rng.integers(len(others)))])
    raise ValueError(f"Unknown SugarCrepe task {task!r}; choose from {SUGAR_CREPE_TASKS}.")


def write_sugar_crepe(root: str | Path, tasks: Sequence[str] = SUGAR_CREPE_TASKS, seed: int = SEED,
                      limit: int | None = None) -> Path:
    """Write SugarCrepe-style files from the test images; returns ``root``.

    Layout (what clip_benchmark's ``sugar_crepe/<task>`` reads, and since both exist, it
    downloads nothing): ``root/val2017/relations_test_{id:04d}_{0|1}.png`` (the 2 * ``N_TEST``
    test images) and ``root/<task>.json`` = ``{"<n>": {"filename", "caption",
    "negative_caption"}}``. Negatives: ``swap_att`` exchanges the colours, ``swap_obj`` the object
    phrases, ``replace_rel`` puts another relation (drawn per image from
    ``default_rng([seed, 3, n])``; each relation is exclusive, so any other one is false).
    ``limit``: only the images of the first ``limit`` test examples (a slice for quick runs).
    """
    limit = _check_limit(limit)
    for task in tasks:
        if task not in SUGAR_CREPE_TASKS:
            raise ValueError(f"Unknown SugarCrepe task {task!r}; choose from {SUGAR_CREPE_TASKS}.")
    root = Path(root)
    images_dir = root / "val2017"
    images_dir.mkdir(parents=True, exist_ok=True)
    entries: list[tuple[str, Scene]] = []
    for row, ex in list(zip(load_winoground_examples(seed), winoground_records(seed)))[:limit]:
        for j in (0, 1):
            name = f"relations_test_{row['id']:04d}_{j}.png"
            row[f"image_{j}"].save(images_dir / name, format="PNG", optimize=False)
            entries.append((name, ex["scenes"][j][0]))
    for task in tasks:
        ann = {}
        for n, (name, scene) in enumerate(entries):
            negative = _sugar_crepe_negative(task, scene, np.random.default_rng([int(seed), 3, n]))
            ann[str(n)] = {"filename": name, "caption": scene.caption, "negative_caption": negative.caption}
        (root / f"{task}.json").write_text(json.dumps(ann, indent=1) + "\n", encoding="utf-8")
    logger.info("wrote %d SugarCrepe-style relations images and tasks %s to %s", len(entries), list(tasks), root)
    return root
