"""Input images: one documented convention per type, checked instead of clamped, and one
conversion (EXIF, alpha, 16-bit) for the API and ``dc-zoo classify`` alike."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

import dc_zoo
from dc_zoo.image_io import ImageInputError, ImageReadError, load_image, to_rgb
from dc_zoo.preprocess import to_pixels

from tiny_models import label_shift_classifier, tiny_sd_backend

CONFIG = dc_zoo.PreprocessConfig(size=16)


@pytest.fixture
def counting_clf():
    clf = label_shift_classifier(n_samples=(2, 4), to_keep=(2, 1), image_batch_size=2)
    return clf, clf.backend.model


def _rgb(seed=0, h=20, w=24):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


# ----------------------------------------------------------------------------- value ranges
@pytest.mark.parametrize("image, hint", [
    (torch.rand(3, 16, 16) * 2 - 1, r"value_range=\(-1, 1\)"),            # diffusers' convention
    (torch.rand(3, 16, 16) * 255, r"value_range=\(0, 255\)"),             # floats in 0..255
    (np.random.default_rng(0).random((16, 16, 3)).astype(np.float32) * 255, r"value_range=\(0, 255\)"),
    (torch.rand(3, 16, 16) * 1000, r"value_range=\(low, high\)"),
])
def test_out_of_range_pixels_are_refused_with_the_range_found_and_the_fix(image, hint):
    with pytest.raises(ImageInputError, match=r"image 0: has values in \[.*\], outside \[0, 1\]") as info:
        to_pixels(image, CONFIG)
    assert info.value.index == 0
    assert __import__("re").search(hint, str(info.value)), str(info.value)


def test_value_range_maps_other_conventions_onto_the_same_pixels():
    unit = torch.rand(3, 16, 16)
    expected = to_pixels(unit, CONFIG)
    torch.testing.assert_close(to_pixels(unit * 2 - 1, CONFIG, value_range=(-1, 1)), expected)
    torch.testing.assert_close(to_pixels(unit * 255, CONFIG, value_range=(0, 255)), expected)
    array = _rgb()
    from_uint8 = to_pixels(array, CONFIG)
    assert torch.equal(to_pixels(array.astype(np.float32), CONFIG, value_range=(0, 255)), from_uint8)
    assert torch.equal(to_pixels(array.astype(np.uint16) * 257, CONFIG), from_uint8)  # uint16: 0..65535
    with pytest.raises(ImageInputError, match=r"value_range=\(0, 1\) that was given does not cover it"):
        to_pixels(unit * 3, CONFIG, value_range=(0, 1))
    with pytest.raises(ValueError, match="value_range must be two finite numbers"):
        to_pixels(unit, CONFIG, value_range=(1, 0))


def test_classify_takes_value_range(counting_clf):
    clf, _ = counting_clf
    unit = torch.rand(2, 3, 8, 8)
    a = clf.classify(unit, [0, 1])
    b = clf.classify(unit * 2 - 1, [0, 1], value_range=(-1, 1))
    assert torch.equal(a.predictions, b.predictions)
    torch.testing.assert_close(a.errors, b.errors)


def test_channels_first_uint8_array_is_refused_with_the_fix_and_the_tensor_route_works():
    array = _rgb()
    chw = np.ascontiguousarray(array.transpose(2, 0, 1))
    with pytest.raises(ImageInputError, match=r"looks channels-first.*np\.moveaxis\(image, 0, -1\)"):
        to_pixels(chw, CONFIG)  # [3, H, W] might be three grey images: not guessed
    assert torch.equal(to_pixels(np.moveaxis(chw, 0, -1), CONFIG), to_pixels(array, CONFIG))
    torch.testing.assert_close(to_pixels(torch.from_numpy(chw), CONFIG), to_pixels(array, CONFIG), atol=0.05, rtol=0)


def test_value_range_for_files_only_is_an_error(counting_clf, tmp_path):
    clf, _ = counting_clf
    path = tmp_path / "a.png"
    Image.fromarray(_rgb()).save(path)
    with pytest.raises(ValueError, match="value_range=.*applies to numpy arrays and tensors"):
        clf.classify([path], [0, 1], value_range=(-1, 1))


def test_32_bit_integer_images_are_not_guessed():
    image = Image.fromarray(np.full((8, 8), 200, np.int32))
    assert image.mode == "I"
    with pytest.raises(ImageInputError, match=r"32-bit integer \(mode I\) image.*value_range"):
        to_pixels(image, CONFIG)


def test_alpha_of_arrays_and_tensors_is_composited_on_white_like_pil():
    rgba = np.concatenate([_rgb(h=16, w=16), np.random.default_rng(1).integers(0, 256, (16, 16, 1)).astype(np.uint8)],
                          -1)  # at the model's size: no resize, so PIL and tensor paths agree to rounding
    from_pil = to_pixels(Image.fromarray(rgba, "RGBA"), CONFIG)
    assert torch.equal(to_pixels(rgba, CONFIG), from_pil)
    from_tensor = to_pixels(torch.from_numpy(rgba).permute(2, 0, 1).contiguous(), CONFIG)
    torch.testing.assert_close(from_tensor, from_pil, atol=2.01 / 255, rtol=0)  # PIL rounds to 8 bits


# ----------------------------------------------------------------------------- non-finite
@pytest.mark.parametrize("fill, kind", [(float("inf"), "inf"), (float("nan"), "NaN")])
def test_non_finite_pixels_are_refused_before_any_network_call_naming_image_and_key(counting_clf, fill, kind):
    clf, model = counting_clf
    images = [torch.rand(3, 8, 8), torch.full((3, 8, 8), fill), torch.rand(3, 8, 8)]
    with pytest.raises(ImageInputError, match=rf"image 1 \('photo-b'\): holds {kind} values") as info:
        clf.classify(images, [0, 1], sample_keys=["photo-a", "photo-b", "photo-c"])
    assert (info.value.index, info.value.name) == (1, "photo-b")
    assert model.calls == 0


def test_preprocessed_pixels_with_nan_are_refused_before_the_network(counting_clf):
    clf, model = counting_clf
    pixels = torch.zeros(2, 3, 8, 8)
    pixels[1, 0, 0, 0] = float("nan")
    with pytest.raises(ImageInputError, match="image 1 .*NaN/inf"):
        clf.classify_pixels(pixels, clf.candidates([0, 1]), sample_keys=["a", "b"])
    assert model.calls == 0


# ----------------------------------------------------------------------------- files
def test_sixteen_bit_png_is_scaled_from_its_depth_not_clipped(tmp_path):
    eight = _rgb()[..., 0]
    sixteen = eight.astype(np.uint16) * 257
    path = tmp_path / "sixteen.png"
    Image.fromarray(sixteen).save(path)
    image = load_image(path)
    assert image.mode.startswith("I")
    assert torch.equal(to_pixels(path, CONFIG), to_pixels(Image.fromarray(eight), CONFIG))
    assert np.array_equal(np.asarray(to_rgb(image))[..., 0], eight)
    assert float(to_pixels(path, CONFIG).mean()) < 0.5  # the model does not see white


def test_exif_orientation_is_applied(tmp_path):
    upright = Image.fromarray(_rgb(h=12, w=30))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera writes, with orientation 6
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.png"
    stored.save(path, exif=exif)
    assert load_image(path).size == upright.size
    assert torch.equal(to_pixels(path, CONFIG), to_pixels(upright, CONFIG))
    with Image.open(path) as opened:  # a PIL image passed to the API is uprighted too
        assert torch.equal(to_pixels(opened, CONFIG), to_pixels(upright, CONFIG))


def test_rgba_file_gets_the_same_pixels_from_the_api_and_the_command(tmp_path):
    from dc_zoo.cli import _load_images

    rgba = np.concatenate([_rgb(), np.full((20, 24, 1), 90, np.uint8)], -1)
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    loaded, failed = _load_images([str(path)])
    assert not failed
    assert torch.equal(to_pixels(loaded[0][1], CONFIG), to_pixels(str(path), CONFIG))
    assert torch.equal(to_pixels(path, CONFIG), to_pixels(Image.fromarray(rgba, "RGBA"), CONFIG))


def _bad_files(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(_rgb()).save(good)
    data = good.read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    (tmp_path / "link.png").symlink_to(good)
    return good


@pytest.mark.parametrize("name, reason", [
    ("truncated.png", "is damaged or truncated"),
    ("empty.png", r"is empty \(0 bytes\)"),
    ("notes.png", "is not an image file PIL can read"),
    ("folder.png", "is a directory, not an image file"),
    ("dangling.png", "is a broken symbolic link"),
    ("missing.png", "does not exist"),
])
def test_unreadable_files_are_named_with_their_reason(tmp_path, name, reason):
    _bad_files(tmp_path)
    path = str(tmp_path / name)
    with pytest.raises(ImageReadError, match=reason) as info:
        to_pixels([str(tmp_path / "good.png"), path], CONFIG)
    assert info.value.index == 1 and info.value.name == path and path in str(info.value)


def test_a_symlink_to_an_image_is_read(tmp_path):
    good = _bad_files(tmp_path)
    assert torch.equal(to_pixels(tmp_path / "link.png", CONFIG), to_pixels(good, CONFIG))


def test_decompression_bomb_is_refused_by_name(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageReadError, match=r"bomb.png.*4,096 pixels, more than PIL's safety limit.*MAX_IMAGE_PIXELS"):
        load_image(path)


def test_classify_accepts_paths_and_keeps_work_done_before_a_damaged_file(counting_clf, tmp_path):
    clf, model = counting_clf
    good = _bad_files(tmp_path)
    # Paths are checked before any network call: a missing one costs nothing.
    with pytest.raises(ImageReadError, match=r"image 2 \('.*missing.png'\): does not exist"):
        clf.classify([good, good, tmp_path / "missing.png"], [0, 1])
    assert model.calls == 0
    by_path = clf.classify([good], [0, 1])
    assert torch.equal(by_path.errors, clf.classify([Image.open(good)], [0, 1]).errors)
    # A file that exists but cannot be decoded stops at its chunk; the chunks before are kept.
    with pytest.raises(ImageReadError, match=r"image 2 .*truncated.png.*damaged or truncated") as info:
        clf.classify([good, good, tmp_path / "truncated.png"], [0, 1], prefetch=0)
    assert info.value.completed is not None and len(info.value.completed.predictions) == 2


# ----------------------------------------------------------------------------- prompts
def test_prompts_past_the_token_limit_warn_once_and_identical_conditions_are_an_error(caplog):
    backend = tiny_sd_backend(seed=0)
    limit = backend.tokenizer.model_max_length
    clf = dc_zoo.DiffusionClassifier(backend, dc_zoo.ScoringConfig(n_samples=(2,), to_keep=(1,)))
    filler = " ".join(["very"] * limit)
    prompts = {"cat": [f"a {filler} fluffy cat"], "dog": [f"a {filler} fluffy dog"]}
    with caplog.at_level(logging.WARNING, logger="dc_zoo.backends.stable_diffusion"):
        with pytest.raises(ValueError, match=r"Classes 'cat' and 'dog' have identical encoded conditions"):
            clf.classify(torch.rand(3, 16, 16), prompts=prompts)
    warnings = [r.getMessage() for r in caplog.records if "longer than the text encoder's limit" in r.getMessage()]
    assert len(warnings) == 1 and f"limit of {limit} tokens" in warnings[0] and "fluffy cat" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dc_zoo.backends.stable_diffusion"):
        clf.classify(torch.rand(3, 16, 16), ["cat", "dog"], templates=["a photo of a {}."])
    assert not caplog.records  # short prompts: no warning


def test_identical_conditions_within_one_class_are_allowed():
    backend = tiny_sd_backend(seed=0)
    clf = dc_zoo.DiffusionClassifier(backend, dc_zoo.ScoringConfig(n_samples=(2,), to_keep=(1,)))
    out = clf.classify(torch.rand(3, 16, 16), prompts={"cat": ["a cat", "a cat"], "dog": ["a dog"]})
    assert out.class_names == ("cat", "dog")
