"""The glyphs benchmark data (dc_zoo.glyphs): classes, font split, pinned content, WebDataset.

The content hashes depend on the font files (matplotlib's bundled DejaVu, STIX and Computer
Modern), Pillow and FreeType. They were made with the versions below; where this machine has
others, the pinned-hash tests skip and say which differ (everything else still runs).
"""
from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="the glyphs benchmark renders matplotlib's bundled fonts")

from dc_zoo import glyphs  # noqa: E402
from dc_zoo.glyphs import (  # noqa: E402
    CHARACTERS, CLASS_NAMES, TEMPLATE, TEST_FONTS, TRAIN_FONTS, glyph_arrays, glyph_image, glyph_params,
    load_glyphs_split, split_content_hash, split_size, write_glyphs_webdataset,
)

# Made with matplotlib 3.11.2 (its font files hash to PINNED_FONTS), Pillow 13.0.0, FreeType 2.14.3.
PINNED_PILLOW = "13.0.0"
PINNED_FREETYPE = "2.14.3"
PINNED_FONTS = "b3d3dfdd10187106e21e0f8bbfe45b3513b0dda7e3fb097e322025222fe7ed2c"
PINNED_HASHES = {
    "test": "091d98b68a4bd0c170a5334ba6145f52806e321014b22375b5da711821ce8142",
    "val": "81803b7968a83a867db28f6f0f3a197b5b112170588f8960620a31c2185ce0d6",
}
_LUMA = np.array([0.299, 0.587, 0.114])


def _renderer_differs() -> str | None:
    import PIL
    from PIL import features

    found = (PIL.__version__, features.version("freetype2"), glyphs.font_files_hash())
    pinned = (PINNED_PILLOW, PINNED_FREETYPE, PINNED_FONTS)
    if found == pinned:
        return None
    return (f"the pinned glyph hashes were made with Pillow {PINNED_PILLOW}, FreeType {PINNED_FREETYPE} and font "
            f"files hashing to {PINNED_FONTS[:12]}; here Pillow {found[0]}, FreeType {found[1]}, fonts {found[2][:12]} "
            "(rasterisation may differ in the last bits: re-pin with dc_zoo.glyphs.split_content_hash)")


# ----------------------------------------------------------------------------- classes
def test_classes_tell_case_apart():
    assert CHARACTERS == "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    assert len(CLASS_NAMES) == 62 and len(set(CLASS_NAMES)) == 62
    assert CLASS_NAMES[0] == "the digit 0" and CLASS_NAMES[9] == "the digit 9"
    assert CLASS_NAMES[10] == "the capital letter A" and CLASS_NAMES[36] == "the small letter a"
    assert all(name.endswith(" " + c) for name, c in zip(CLASS_NAMES, CHARACTERS))
    prompts = [TEMPLATE.format(name) for name in CLASS_NAMES]
    assert len(set(p.lower() for p in prompts)) == 62  # distinct even ignoring case: words carry the case
    assert glyphs.captions_for([24, 50, 0]) == ["a picture of the capital letter O.", "a picture of the small letter o.",
                                                "a picture of the digit 0."]


# ----------------------------------------------------------------------------- fonts
def test_whole_fonts_are_held_out():
    assert not set(TRAIN_FONTS) & set(TEST_FONTS)
    # Different families, not just different weights: no test font shares a name stem with a train font.
    assert not {f[:4] for f in TRAIN_FONTS} & {f[:4] for f in TEST_FONTS}
    assert glyphs.SPLIT_FONTS == {"train": TRAIN_FONTS, "val": TRAIN_FONTS, "test": TEST_FONTS}


@pytest.mark.parametrize("name", TRAIN_FONTS + TEST_FONTS)
def test_every_font_has_all_62_glyphs(name):
    assert glyphs.check_font(name) == []


@pytest.mark.parametrize("name", ["LastResortHE-Regular.ttf", "DejaVuSansDisplay.ttf", "STIXNonUni.ttf"])
def test_fonts_without_real_glyphs_are_detected(name):
    assert glyphs.check_font(name)  # a placeholder box for everything, or no ASCII at all


# ----------------------------------------------------------------------------- splits
@pytest.mark.parametrize("split", ["test", "val"])
def test_pinned_content(split):
    reason = _renderer_differs()
    if reason:
        pytest.skip(reason)
    assert split_content_hash(split) == PINNED_HASHES[split]


def test_split_sizes():
    assert (split_size("train"), split_size("val"), split_size("test")) == (64 * 62, 5 * 62, 10 * 62)
    assert split_size("test") <= 620  # the CPU budget of 62-class diffusion classification
    assert split_size("train", per_class=2) == 124
    with pytest.raises(ValueError, match="choose one of"):
        split_size("validation")
    with pytest.raises(ValueError, match="per_class"):
        split_size("train", per_class=0)


@pytest.mark.parametrize("split", ["test", "val"])
def test_every_class_and_font_present(split):
    images, labels = load_glyphs_split(split)
    per_class = glyphs.SAMPLES_PER_CLASS[split]
    assert len(images) == len(labels) == per_class * 62
    assert Counter(labels) == {k: per_class for k in range(62)}
    fonts = Counter(glyph_params(split, i).font for i in range(len(labels)))
    assert set(fonts) == set(glyphs.SPLIT_FONTS[split]) or (split == "val" and set(fonts) <= set(TRAIN_FONTS))
    if split == "test":  # balanced: every class sees every held-out font equally often
        pairs = Counter((labels[i], glyph_params(split, i).font) for i in range(len(labels)))
        assert set(pairs.values()) == {per_class // len(TEST_FONTS)}


def test_train_split_uses_train_fonts_only():
    n = split_size("train")
    fonts = Counter(glyph_params("train", i).font for i in range(n))  # parameters only: no rendering
    assert set(fonts) == set(TRAIN_FONTS) and len(set(fonts.values())) == 1
    assert Counter(glyph_params("train", i).label for i in range(n)) == {k: 64 for k in range(62)}


@pytest.mark.parametrize("split", ["test", "val"])
def test_images_are_32px_rgb_with_contrast(split):
    images, _ = load_glyphs_split(split)
    assert {im.size for im in images} == {(32, 32)} and {im.mode for im in images} == {"RGB"}
    pixels, _ = glyph_arrays(split)
    luma = (pixels.astype(np.float64) @ _LUMA).reshape(len(pixels), -1)
    spread = np.percentile(luma, 99, axis=1) - np.percentile(luma, 1, axis=1)
    assert spread.min() > 40  # a visible glyph on every image, none blank
    assert len({hashlib.sha256(p.tobytes()).digest() for p in pixels}) == len(pixels)


def test_one_sample_regenerates_alone():
    images, labels = load_glyphs_split("test")
    for i in (0, 61, 62, 333, 619):
        image, label = glyph_image("test", i)
        assert label == labels[i] and image.tobytes() == images[i].tobytes()
    # Order independent and size independent: a smaller split is a prefix of a larger one.
    small, small_labels = load_glyphs_split("val", per_class=2)
    full, full_labels = load_glyphs_split("val")
    assert small_labels == full_labels[:124]
    assert all(a.tobytes() == b.tobytes() for a, b in zip(small, full))
    image, _ = glyph_image("train", 3000)  # any train sample without rendering the train split
    assert image.size == (32, 32)
    assert glyph_image("test", 5, image_size=16)[0].size == (16, 16)


def test_splits_are_not_copies():
    # val draws differ from train draws with the same index (another seed), test from both.
    assert glyph_image("val", 7)[0].tobytes() != glyph_image("train", 7)[0].tobytes()
    assert glyph_params("test", 7).font in TEST_FONTS


# ----------------------------------------------------------------------------- webdataset
def test_webdataset_is_read_by_clip_benchmark(tmp_path):
    from clip_benchmark.datasets.builder import build_dataset

    root = write_glyphs_webdataset(tmp_path / "glyphs", split="test", samples_per_shard=256)
    assert (root / "test" / "nshards.txt").read_text() == "3\n"
    dataset = build_dataset("wds/glyphs", root=str(root), split="test", transform=None)
    assert dataset.classes == list(CLASS_NAMES)
    assert [t.format(c="the small letter a") for t in dataset.templates] == ["a picture of the small letter a."]
    samples = list(dataset)
    images, labels = load_glyphs_split("test")
    assert [int(y) for _, y in samples] == labels
    assert all(np.array_equal(np.asarray(x.convert("RGB")), np.asarray(im)) for (x, _), im in zip(samples, images))

    again = write_glyphs_webdataset(tmp_path / "again", split="test", samples_per_shard=256)
    for shard in range(3):  # byte-identical reruns
        assert (root / "test" / f"{shard}.tar").read_bytes() == (again / "test" / f"{shard}.tar").read_bytes()


def test_contact_sheet(tmp_path):
    sheet = glyphs.contact_sheet("test", count=20, columns=10, path=tmp_path / "sheet.png")
    assert sheet.mode == "RGB" and (tmp_path / "sheet.png").stat().st_size > 0
