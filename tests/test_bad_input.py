"""Bad input gets an error that names the problem and the fix; odd image modes are converted."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import dc_zoo
from dc_zoo.engine import NonFiniteScoreError
from dc_zoo.noise_schedules import DiscreteDiffusionSchedule
from dc_zoo.preprocess import to_pixels

from tiny_models import tiny_sd_backend


@pytest.fixture(scope="module")
def clf():
    return dc_zoo.DiffusionClassifier(tiny_sd_backend(seed=0), dc_zoo.ScoringConfig(n_samples=(2, 4), to_keep=(2, 1)))


IMAGE = torch.rand(3, 16, 16)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(classes=[]), ValueError, "class list is empty"),
        (dict(classes=["cat", "dog", "cat"]), ValueError, r"Duplicate class names \['cat'\]"),
        (dict(classes=["a", "b"], templates=["no placeholder"]), ValueError, "has no placeholder"),
        (dict(classes=["a", "b"], prompts={"a": ["x"]}), ValueError, "exactly one of"),
        (dict(classes=["a", 3]), TypeError, "class names"),
        (dict(classes=["a", "b", "c"], scoring=dc_zoo.ScoringConfig(n_samples=(2, 4), to_keep=(5, 1))),
         ValueError, "keeps more candidates than the 3"),
        (dict(classes=["zero", ""]), ValueError, "Class name 1 is empty"),
        (dict(classes=["zero", "  "]), ValueError, "Class name 1 is empty"),
        (dict(prompts={"a": ["x"], "b": [""]}), ValueError, "empty or non-text prompt"),
    ],
)
def test_bad_candidates_and_schedules(clf, kwargs, error, message):
    with pytest.raises(error, match=message):
        clf.classify(IMAGE, **kwargs)


@pytest.mark.parametrize(
    "images, error, message",
    [
        (torch.rand(16, 16), ValueError, "rank 3"),
        (torch.rand(1, 1, 3, 16, 16), ValueError, "rank 3"),
        (torch.randint(0, 5, (3, 16, 16), dtype=torch.int64), ValueError, r"integer dtype int64.*value_range"),
        (torch.rand(2, 16, 16), ValueError, "1, 3 or 4 channels"),
        (torch.rand(16, 16, 3), ValueError, r"channels-last: use \.permute\(2, 0, 1\)"),
        ([], ValueError, "No images"),
        ("cat.png", ValueError, r"image 0 \('cat.png'\): does not exist"),
        ([IMAGE, 3], TypeError, r"image 1: is a int"),
    ],
)
def test_bad_images(clf, images, error, message):
    with pytest.raises(error, match=message):
        clf.classify(images, ["a", "b"])


def test_bad_config_values_are_refused_when_built():
    with pytest.raises(ValueError, match="same length"):
        dc_zoo.ScoringConfig(n_samples=(2, 4), to_keep=(1,))
    assert dc_zoo.ScoringConfig(n_samples=50, to_keep=1).n_samples == (50,)  # one stage as bare integers
    with pytest.raises(ValueError, match="n_samples must be a positive integer or a sequence"):
        dc_zoo.ScoringConfig(n_samples="50", to_keep=1)
    with pytest.raises(ValueError, match="last to_keep must be 1"):
        dc_zoo.ScoringConfig(n_samples=(5, 10), to_keep=(2, 2))


def test_bad_config_values():
    with pytest.raises(ValueError, match="Unknown loss 'l3'"):
        dc_zoo.ScoringConfig(loss="l3")
    with pytest.raises(ValueError, match="interpolation 'cubic' unknown"):
        dc_zoo.PreprocessConfig(interpolation="cubic")
    with pytest.raises(ValueError, match="prediction_type 'flow'"):
        DiscreteDiffusionSchedule.linear(prediction_type="flow")


def test_grayscale_palette_rgba_and_arrays_are_converted():
    config = dc_zoo.PreprocessConfig(size=16)
    rgb = Image.fromarray((np.random.default_rng(0).random((20, 24, 3)) * 255).astype(np.uint8))
    images = [rgb, rgb.convert("L"), rgb.convert("P"), rgb.convert("RGBA"), np.asarray(rgb),
              torch.rand(1, 20, 24), torch.randint(0, 255, (4, 20, 24), dtype=torch.uint8)]
    pixels = to_pixels(images, config)
    assert pixels.shape == (7, 3, 16, 16)
    assert float(pixels.min()) >= -1 and float(pixels.max()) <= 1
    gray = pixels[1]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    torch.testing.assert_close(pixels[0], pixels[4])  # PIL and numpy give the same pixels


def test_adm_center_crop_follows_dit():
    config = dc_zoo.PreprocessConfig(size=8, crop="adm_center")
    img = Image.fromarray((np.arange(40 * 20 * 3) % 255).astype(np.uint8).reshape(20, 40, 3))
    assert to_pixels(img, config).shape == (1, 3, 8, 8)


class NaNForCandidate(torch.nn.Module):
    """A denoiser that breaks for one class label: the error must name it."""

    def forward(self, x, t, labels):
        out = torch.zeros_like(x)
        return torch.where((labels == 2).view(-1, 1, 1, 1), torch.full_like(x, float("nan")), out)


def test_non_finite_scores_name_candidate_and_timestep_and_keep_partial_work():
    backend = dc_zoo.DenoiserBackend(NaNForCandidate(), DiscreteDiffusionSchedule.linear(),
                                     dc_zoo.PreprocessConfig(size=8))
    clf = dc_zoo.DiffusionClassifier(backend, dc_zoo.ScoringConfig(n_samples=(2, 4), to_keep=(2, 1)), image_batch_size=1)
    good = torch.rand(3, 8, 8)
    with pytest.raises(NonFiniteScoreError, match=r"candidate 2, timestep \d+") as info:
        clf.classify([good], [0, 1, 2])
    partial = info.value.partial
    assert torch.isfinite(partial.timestep_errors[0, :2, list(partial.plan.stage_positions[0])]).all()
