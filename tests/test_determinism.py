"""Same seed, same scores: whatever the batch size, the image order or the image grouping."""
from __future__ import annotations

import pytest
import torch

import dc_zoo
from dc_zoo.noise import sample_noise, sample_seed

from tiny_models import tiny_sd_backend

CLASSES = ["zero", "one", "two", "three", "four", "five"]


@pytest.fixture(scope="module")
def backend():
    return tiny_sd_backend(seed=4)


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(2)
    return torch.rand(5, 3, 16, 16)


def run(backend, images, batch_size=32, image_batch_size=8, seed=0, keys=None):
    scoring = dc_zoo.ScoringConfig(n_samples=(6, 24), to_keep=(3, 1), seed=seed, batch_size=batch_size)
    clf = dc_zoo.DiffusionClassifier(backend, scoring, image_batch_size=image_batch_size)
    return clf.classify(images, CLASSES, sample_keys=keys)


@pytest.fixture(scope="module")
def baseline(backend, images):
    return run(backend, images)


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_batch_size_does_not_change_scores(backend, images, baseline, batch_size):
    out = run(backend, images, batch_size=batch_size, image_batch_size=3)
    assert torch.equal(out.predictions, baseline.predictions)
    torch.testing.assert_close(out.candidate_errors, baseline.candidate_errors, rtol=1e-5, atol=1e-6)
    assert torch.equal(out.evaluations, baseline.evaluations)


def test_image_order_does_not_change_scores(backend, images, baseline):
    perm = torch.tensor([3, 0, 4, 2, 1])
    out = run(backend, images[perm], image_batch_size=2)
    assert torch.equal(out.predictions, baseline.predictions[perm])
    torch.testing.assert_close(out.candidate_errors, baseline.candidate_errors[perm], rtol=1e-5, atol=1e-6)
    assert out.sample_keys == [baseline.sample_keys[i] for i in perm]


def test_explicit_keys_follow_the_image_not_its_position(backend, images):
    keys = [f"img{i}" for i in range(5)]
    out = run(backend, images, keys=keys)
    rev = run(backend, images.flip(0), keys=keys[::-1])
    torch.testing.assert_close(rev.candidate_errors.flip(0), out.candidate_errors, rtol=1e-5, atol=1e-6)


def test_another_seed_changes_the_noise_and_the_scores(backend, images, baseline):
    out = run(backend, images, seed=1)
    assert not torch.allclose(out.candidate_errors, baseline.candidate_errors)
    a = sample_noise(0, "k", range(4), 1, (2, 2))
    assert torch.equal(a, sample_noise(0, "k", range(4), 1, (2, 2)))
    assert not torch.equal(a, sample_noise(1, "k", range(4), 1, (2, 2)))
    assert not torch.equal(a, sample_noise(0, "k2", range(4), 1, (2, 2)))
    assert sample_seed(0, 5) == sample_seed(0, "5")  # keys are compared by their text


def test_noise_is_standard_normal_with_one_draw_per_timestep_and_trial():
    eps = sample_noise(0, "stats", range(1, 1000, 2), 2, (4, 8, 8))
    assert eps.shape == (500, 2, 4, 8, 8) and eps.dtype == torch.float32
    assert abs(float(eps.mean())) < 0.01 and abs(float(eps.std()) - 1) < 0.01
    assert not torch.equal(eps[0, 0], eps[1, 0]) and not torch.equal(eps[0, 0], eps[0, 1])


def test_noise_is_keyed_by_timestep_and_trial_not_by_plan_position():
    """The same (image, t, trial) gets the same eps in every plan: errors can be reused across schedules."""
    coarse = sample_noise(0, "img", (10, 30, 50), 1, (2, 2))
    fine = sample_noise(0, "img", (50, 10, 20, 30), 3, (2, 2))
    assert torch.equal(coarse[0, 0], fine[1, 0]) and torch.equal(coarse[1, 0], fine[3, 0])
    assert torch.equal(coarse[2, 0], fine[0, 0])
    assert not torch.equal(fine[1, 0], fine[1, 1])  # another trial, another draw
    with pytest.raises(TypeError, match="timesteps themselves"):
        sample_noise(0, "img", 4, 1, (2, 2))


def test_errors_at_a_shared_timestep_are_equal_under_different_schedules(backend, images):
    """(25,) keep 1 and (5, 25) keep 2/1 share timesteps; their errors there agree (to the
    float rounding of another batch layout), so a cache may answer one from the other."""
    def errors(n_samples, to_keep):
        scoring = dc_zoo.ScoringConfig(n_samples=n_samples, to_keep=to_keep, batch_size=32)
        return dc_zoo.DiffusionClassifier(backend, scoring).classify(images, CLASSES, return_timestep_errors=True)

    one, two = errors((25,), (1,)), errors((5, 25), (2, 1))
    assert one.timesteps == two.timesteps  # the 5 of stage 0 are a subset of the 25
    stage0 = list(two.stage_positions[0])
    torch.testing.assert_close(two.timestep_errors[:, :, stage0], one.timestep_errors[:, :, stage0],
                               rtol=1e-5, atol=1e-6)
