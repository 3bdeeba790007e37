"""The glyphs benchmark: 62 characters (0-9, A-Z, a-z) rendered from TrueType fonts, many classes.

A harder, many-class companion of the digits benchmark (``dc_zoo.digits``) for Diffusion
Classifier (Li, Prabhudesai, Duggal, Brown, Pathak, *Your Diffusion Model is Secretly a
Zero-Shot Classifier*, ICCV 2023, arXiv 2303.16203): 62 classes whose prompts tell case apart
("the capital letter O", "the small letter o", "the digit 0"), with the natural confusions of
typography (O/0/o, l/1/I, S/5/s, C/c, W/w, ...). The data is generated, not downloaded: every
sample is drawn from a numpy Generator seeded by ``(SPLIT_SEED, split, index)`` alone, so one
sample can be regenerated on its own and generation does not depend on order.

Fonts are the TrueType files matplotlib bundles (``matplotlib.get_data_path()/fonts/ttf``;
matplotlib is imported only to find that folder). Whole fonts are held out of training so the
test split measures generalisation to an unseen typeface, not recall of seen glyph shapes:

- ``TRAIN_FONTS`` (train and val splits, 16 files): DejaVu Sans, DejaVu Serif and DejaVu Sans
  Mono (regular, bold, oblique/italic, bold oblique/italic; Bitstream Vera designs) and
  STIXGeneral (regular, bold, italic, bold italic; a Times-like serif).
- ``TEST_FONTS`` (test split, 5 files): Knuth's Computer Modern, a family absent from training:
  cmr10 (roman), cmb10 (bold), cmti10 (text italic), cmss10 (sans) and cmtt10 (typewriter), so
  each training style (serif, bold, italic, sans, mono) has an unseen counterpart.
- Not used: DejaVu*Display and STIXNonUni*/STIXSiz* (no ASCII letters or digits),
  LastResortHE (one placeholder box for every character), cmex10/cmsy10 (math symbols at the
  ASCII code points) and cmmi10 (math italic: old-style digits, and cmti10 already covers
  italic). The choice was made by looking at every font's 62 glyphs; ``check_font`` then
  verifies, before anything is rendered, that each listed font maps all 62 characters to
  non-empty, pairwise distinct glyphs that are not the missing-glyph box (no tofu). (It cannot
  tell a symbol font from a text font: cmsy10 passes it, hence the explicit lists.)

Per sample (``GlyphParams``): font size (em 55-72 % of the image), rotation (+-15 degrees),
position jitter (+-5 %), stroke (0-2 px at the 4x render resolution, i.e. up to half an output
pixel each side), random foreground and background colours at least ``MIN_CONTRAST`` apart in
luma, Gaussian blur (radius 0-0.6 output px) and uniform pixel noise (up to +-10 levels). The
glyph is drawn as a coverage mask at ``RENDER_SCALE`` x the output size, rotated (bicubic),
area-downsampled (box filter: antialiasing), blurred, and then the two colours are mixed by it.
Images are RGB, ``IMAGE_SIZE`` (32) px by default.

Splits (``SAMPLES_PER_CLASS``): "train" 64 per class (3,968 images) and "val" 5 per class (310;
train fonts, held-out random draws, e.g. for calibration) on TRAIN_FONTS; "test" 10 per class
(620) on TEST_FONTS only. Labels cycle 0..61 along the index, and fonts rotate with the class,
so every shard and every prefix of a split holds many classes and every class sees every font.

Determinism: the images are bit-identical across runs and machines given the same font files,
Pillow and FreeType versions (the text is laid out with Pillow's BASIC engine, not raqm, and the
generator is used only through ``random()``, whose stream numpy keeps stable).
``split_content_hash`` is the sha256 of a split's raw pixels and labels; the tests pin it.

``write_glyphs_webdataset`` writes the layout clip_benchmark reads with ``--dataset wds/glyphs
--dataset_root <root>``, exactly as ``dc_zoo.digits.write_digits_webdataset`` does.
"""
from __future__ import annotations

import hashlib
import logging
import string
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from .class_webdataset import write_class_webdataset

logger = logging.getLogger(__name__)

__all__ = [
    "CHARACTERS", "CLASS_NAMES", "TEMPLATE", "IMAGE_SIZE", "RENDER_SCALE", "SPLIT_SEED", "SPLITS",
    "SAMPLES_PER_CLASS", "EVALUATION_SCHEDULES", "SCHEDULE_TABLE", "TRAIN_FONTS", "TEST_FONTS", "SPLIT_FONTS", "MIN_CONTRAST", "GlyphParams",
    "font_dir", "font_path", "check_font", "font_files_hash", "split_size", "glyph_params", "glyph_image",
    "glyph_arrays", "load_glyphs_split", "split_content_hash", "captions_for", "write_glyphs_webdataset",
    "contact_sheet",
]

CHARACTERS = string.digits + string.ascii_uppercase + string.ascii_lowercase  # label order
CLASS_NAMES: tuple[str, ...] = (
    tuple(f"the digit {c}" for c in string.digits)
    + tuple(f"the capital letter {c}" for c in string.ascii_uppercase)
    + tuple(f"the small letter {c}" for c in string.ascii_lowercase)
)
TEMPLATE = "a picture of {}."  # e.g. "a picture of the small letter a."
IMAGE_SIZE = 32
RENDER_SCALE = 4  # glyphs are drawn at RENDER_SCALE * image_size and area-downsampled
SPLIT_SEED = 0
SPLITS = ("train", "val", "test")
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}  # part of each sample's seed
SAMPLES_PER_CLASS: dict[str, int] = {"train": 64, "val": 5, "test": 10}
# The registry schedule of the glyph miniatures: the paper's many-class shape (a wide first
# stage, then fewer candidates at more timesteps), sized for 62 classes on a CPU.
EVALUATION_SCHEDULES: dict[str, dict] = {
    "sd-glyphs-mini": {"n_samples": (20, 50, 100), "to_keep": (20, 5, 1), "loss": "l2", "batch_size": 512},
    "dit-glyphs-mini": {"n_samples": (20, 50, 100), "to_keep": (20, 5, 1), "loss": "l2", "batch_size": 512},
}
# Accuracy against cost (scripts/train_miniatures.py --lab glyphs --evaluate --table): beside the
# registry's three-stage schedule, a small single stage and the largest single stage the CPU affords.
SCHEDULE_TABLE: tuple[dict, ...] = (
    {"n_samples": (5,), "to_keep": (1,), "loss": "l2", "batch_size": 512},
    {"n_samples": (50,), "to_keep": (1,), "loss": "l2", "batch_size": 512},
)
TRAIN_FONTS: tuple[str, ...] = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
)
TEST_FONTS: tuple[str, ...] = ("cmr10.ttf", "cmb10.ttf", "cmti10.ttf", "cmss10.ttf", "cmtt10.ttf")
SPLIT_FONTS: dict[str, tuple[str, ...]] = {"train": TRAIN_FONTS, "val": TRAIN_FONTS, "test": TEST_FONTS}
MIN_CONTRAST = 0.4  # least |luma(fg) - luma(bg)|, luma in 0..1 (ITU-R BT.601 weights)

# Ranges of the random draws (fractions of the image side unless stated).
_EM_RANGE = (0.55, 0.72)  # font size (em) / image side
_MAX_ANGLE = 15.0  # degrees, uniform in [-MAX, MAX]
_MAX_SHIFT = 0.05  # position jitter, each axis
_MAX_STROKE = 2  # PIL stroke_width at the render resolution: 0, 1 or 2
_MAX_BLUR = 0.6  # Gaussian blur radius in output pixels
_MAX_NOISE = 10.0  # uniform noise amplitude in 0..255 levels
_LUMA = np.array([0.299, 0.587, 0.114])


def font_dir() -> Path:
    """matplotlib's bundled TrueType folder (``mpl-data/fonts/ttf``)."""
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("The glyphs benchmark renders matplotlib's bundled fonts: pip install matplotlib") from exc
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def font_path(name: str) -> Path:
    """The path of the bundled font file ``name`` (e.g. ``"DejaVuSans.ttf"``)."""
    path = font_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f"Font {name!r} is not bundled with this matplotlib (looked in {path.parent}).")
    return path


@lru_cache(maxsize=None)
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    # BASIC layout: raqm (when installed) could shape differently and break bit-identical images.
    return ImageFont.truetype(str(font_path(name)), size, layout_engine=ImageFont.Layout.BASIC)


def check_font(name: str, size: int = 48) -> list[str]:
    """Problems of font ``name`` for the 62 characters; empty when every one has a real glyph.

    A character fails when the font's cmap lacks it, its glyph is empty, or it renders the same
    bitmap (at the same place) as another character or as the missing-glyph box (tofu).
    """
    from fontTools.ttLib import TTFont  # a matplotlib dependency

    problems = []
    with TTFont(str(font_path(name)), lazy=True) as tt:
        cmap = tt.getBestCmap() or {}
    problems += [f"{c!r}: not in the cmap" for c in CHARACTERS if ord(c) not in cmap]
    font = _font(name, size)
    seen: dict[bytes, str] = {}
    tofu = _glyph_bitmap(font, "\U000f0000")  # a code point no font here maps: the .notdef glyph
    for c in CHARACTERS:
        bitmap = _glyph_bitmap(font, c)
        if not np.frombuffer(bitmap, np.uint8).any():
            problems.append(f"{c!r}: empty glyph")
        elif bitmap == tofu:
            problems.append(f"{c!r}: renders the missing-glyph box")
        elif bitmap in seen:
            problems.append(f"{c!r}: same glyph as {seen[bitmap]!r}")
        seen.setdefault(bitmap, c)
    return problems


def _glyph_bitmap(font: ImageFont.FreeTypeFont, char: str) -> bytes:
    side = int(font.size) * 2
    canvas = Image.new("L", (side, side), 0)
    ImageDraw.Draw(canvas).text((side // 4, side * 3 // 4), char, font=font, fill=255, anchor="ls")
    return canvas.tobytes()


@lru_cache(maxsize=None)
def _checked_fonts() -> None:
    bad = {name: problems for name in TRAIN_FONTS + TEST_FONTS if (problems := check_font(name))}
    if bad:
        raise RuntimeError(f"Fonts lack glyphs for the 62 characters (this matplotlib ships other files?): {bad}")


def font_files_hash() -> str:
    """sha256 over the names and bytes of the fonts used (TRAIN_FONTS then TEST_FONTS)."""
    digest = hashlib.sha256()
    for name in TRAIN_FONTS + TEST_FONTS:
        digest.update(name.encode() + b"\0" + font_path(name).read_bytes())
    return digest.hexdigest()


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"Unknown glyphs split {split!r}; choose one of {SPLITS}.")


def split_size(split: str, per_class: int | None = None) -> int:
    """Number of samples of ``split`` (``per_class`` defaults to ``SAMPLES_PER_CLASS[split]``)."""
    _check_split(split)
    per_class = SAMPLES_PER_CLASS[split] if per_class is None else int(per_class)
    if per_class < 1:
        raise ValueError(f"per_class must be a positive integer, got {per_class!r}.")
    return per_class * len(CHARACTERS)


@dataclass(frozen=True)
class GlyphParams:
    """Everything random about one sample (sizes in output pixels unless stated)."""

    label: int
    font: str
    em: float  # font size / image side
    angle: float  # degrees, counter-clockwise
    shift: tuple[float, float]  # (dx, dy) / image side
    stroke: int  # PIL stroke_width at the render resolution
    foreground: tuple[float, float, float]  # RGB in 0..255
    background: tuple[float, float, float]
    blur: float  # Gaussian blur radius, output px
    noise: float  # uniform noise amplitude, 0..255 levels


def glyph_params(split: str, index: int) -> GlyphParams:
    """The random draws of sample ``index`` of ``split``, from its own seeded generator."""
    _check_split(split)
    index = int(index)
    if index < 0:
        raise ValueError(f"index must be non-negative, got {index}.")
    label, round_ = index % len(CHARACTERS), index // len(CHARACTERS)
    fonts = SPLIT_FONTS[split]
    rng = np.random.default_rng([SPLIT_SEED, _SPLIT_CODES[split], index])
    u = rng.random(7)  # only random(): its stream is stable across numpy releases
    for _ in range(1000):  # rejection sampling of a colour pair with enough contrast
        fg, bg = rng.random(3), rng.random(3)
        if abs(float(_LUMA @ fg) - float(_LUMA @ bg)) >= MIN_CONTRAST:
            break
    else:  # pragma: no cover - probability ~0
        fg, bg = np.ones(3), np.zeros(3)
    return GlyphParams(
        label=label,
        font=fonts[(round_ + label) % len(fonts)],
        em=_EM_RANGE[0] + (_EM_RANGE[1] - _EM_RANGE[0]) * float(u[0]),
        angle=_MAX_ANGLE * (2.0 * float(u[1]) - 1.0),
        shift=(_MAX_SHIFT * (2.0 * float(u[2]) - 1.0), _MAX_SHIFT * (2.0 * float(u[3]) - 1.0)),
        stroke=min(_MAX_STROKE, int(float(u[4]) * (_MAX_STROKE + 1))),
        foreground=tuple(float(v) * 255.0 for v in fg),
        background=tuple(float(v) * 255.0 for v in bg),
        blur=_MAX_BLUR * float(u[5]),
        noise=_MAX_NOISE * float(u[6]),
    )


def _render(split: str, index: int, image_size: int) -> tuple[np.ndarray, int]:
    if int(image_size) < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}.")
    _checked_fonts()
    p = glyph_params(split, index)
    side = int(image_size) * RENDER_SCALE
    mask = Image.new("L", (side, side), 0)
    centre = (round(side * (0.5 + p.shift[0])), round(side * (0.5 + p.shift[1])))
    font = _font(p.font, max(1, round(p.em * side)))
    # anchor "mm": the middle between the font's ascender and descender, so the case is kept in
    # the vertical position (x-height letters sit lower than capitals, descenders hang down).
    ImageDraw.Draw(mask).text(centre, CHARACTERS[p.label], font=font, fill=255, anchor="mm",
                              stroke_width=p.stroke, stroke_fill=255)
    mask = mask.rotate(p.angle, resample=Image.BICUBIC, fillcolor=0)
    mask = mask.resize((image_size, image_size), resample=Image.BOX)
    if p.blur >= 0.05:
        mask = mask.filter(ImageFilter.GaussianBlur(p.blur))
    alpha = np.asarray(mask, np.float64)[..., None] / 255.0
    pixels = np.asarray(p.background) * (1.0 - alpha) + np.asarray(p.foreground) * alpha
    noise_rng = np.random.default_rng([SPLIT_SEED, _SPLIT_CODES[split], index, 1])
    pixels = pixels + p.noise * (2.0 * noise_rng.random(pixels.shape) - 1.0)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8), p.label


def glyph_image(split: str, index: int, image_size: int = IMAGE_SIZE) -> tuple[Image.Image, int]:
    """Sample ``index`` of ``split`` alone: (RGB PIL image, label); equals the split's sample."""
    _check_split(split)
    pixels, label = _render(split, index, image_size)
    return Image.fromarray(pixels, "RGB"), label


@lru_cache(maxsize=4)
def _arrays(split: str, image_size: int, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    n = split_size(split, per_class)
    pixels = np.empty((n, image_size, image_size, 3), np.uint8)
    labels = np.empty(n, np.int64)
    for i in range(n):
        pixels[i], labels[i] = _render(split, i, image_size)
    pixels.flags.writeable = labels.flags.writeable = False
    logger.info("rendered %d %s glyphs at %d px", n, split, image_size)
    return pixels, labels


def glyph_arrays(split: str, image_size: int = IMAGE_SIZE, per_class: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The whole ``split`` as (uint8 [N, H, W, 3] pixels, int64 [N] labels); read-only, cached."""
    n = split_size(split, per_class)
    return _arrays(split, int(image_size), n // len(CHARACTERS))


def load_glyphs_split(split: str, image_size: int = IMAGE_SIZE,
                      per_class: int | None = None) -> tuple[list[Image.Image], list[int]]:
    """The glyphs ``split`` ("train", "val" or "test") as (RGB PIL images, integer labels 0..61).

    ``per_class`` (default ``SAMPLES_PER_CLASS[split]``) sets the size; a larger split extends a
    smaller one (sample ``i`` does not depend on the split's size).
    """
    pixels, labels = glyph_arrays(split, image_size, per_class)
    return [Image.fromarray(p, "RGB") for p in pixels], [int(v) for v in labels]


def split_content_hash(split: str, image_size: int = IMAGE_SIZE, per_class: int | None = None) -> str:
    """sha256 hex of ``split``'s raw pixels (uint8 NHWC) and labels (int64 little-endian)."""
    pixels, labels = glyph_arrays(split, image_size, per_class)
    digest = hashlib.sha256(f"glyphs/{split}/{image_size}/{len(labels)}\n".encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    digest.update(labels.astype("<i8").tobytes())
    return digest.hexdigest()


def captions_for(labels, template: str = TEMPLATE) -> list[str]:
    """The training caption of each label, e.g. ``"a picture of the capital letter A."``."""
    return [template.format(CLASS_NAMES[int(v)]) for v in labels]


def write_glyphs_webdataset(root: str | Path, split: str = "test", image_size: int = IMAGE_SIZE,
                            samples_per_shard: int = 1000, per_class: int | None = None) -> Path:
    """Write the glyphs ``split`` as a clip_benchmark WebDataset under ``root``; returns ``root``.

    Read it back with ``clip_benchmark eval --dataset wds/glyphs --dataset_root <root>`` or
    ``clip_benchmark.datasets.builder.build_dataset("wds/glyphs", root=str(root), split=split)``.
    The files are byte-identical across reruns (fixed tar metadata, deterministic PNGs).
    """
    images, labels = load_glyphs_split(split, image_size, per_class)
    return write_class_webdataset(root, split, images, labels, CLASS_NAMES, TEMPLATE, samples_per_shard)


def contact_sheet(split: str = "test", count: int = 62, columns: int = 16, zoom: int = 2,
                  image_size: int = IMAGE_SIZE, path: str | Path | None = None) -> Image.Image:
    """A grid of the first ``count`` samples of ``split``, each zoomed and captioned with its
    character and font; saved as PNG at ``path`` when given."""
    _check_split(split)
    count = min(int(count), split_size(split))
    cell, caption = image_size * zoom, 11
    rows = -(-count // columns)
    sheet = Image.new("RGB", (columns * (cell + 4), rows * (cell + caption + 6)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    label_font = _font("DejaVuSans.ttf", 9)
    for i in range(count):
        image, label = glyph_image(split, i, image_size)
        x, y = (i % columns) * (cell + 4) + 2, (i // columns) * (cell + caption + 6) + 2
        sheet.paste(image.resize((cell, cell), Image.NEAREST), (x, y))
        text = f"{CHARACTERS[label]} {glyph_params(split, i).font.split('.')[0][:9]}"
        draw.text((x, y + cell + 1), text, font=label_font, fill=(0, 0, 0))
    if path is not None:
        sheet.save(path, format="PNG")
    return sheet
