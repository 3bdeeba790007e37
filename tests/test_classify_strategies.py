"""Strategies, the prefilter, the error cache and probabilities through ``classify``, on the
bundled digits miniatures (loaded by name, offline)."""
from __future__ import annotations

import math

import pytest
import torch

import dc_zoo
from dc_zoo import digits

N_IMAGES = 6


@pytest.fixture(scope="module")
def data():
    images, labels = digits.load_digits_split("test")
    return images[:N_IMAGES], labels[:N_IMAGES]


@pytest.fixture(scope="module")
def dit():
    return dc_zoo.create_model("dit-digits-mini")


def scoring(**kwargs):
    return dc_zoo.ScoringConfig(**{"n_samples": (4, 16), "to_keep": (3, 1), "batch_size": 256, **kwargs})


def test_the_prefilter_keeps_clip_top_k_and_spends_only_on_them(dit, data):
    images, labels = data
    k = 3
    out = dit.classify(images, list(range(10)), scoring=scoring(prefilter={"model": "clip-digits-mini", "k": k}))
    from dc_zoo.strategies.prefilter import ContrastivePrefilter
    from dc_zoo.preprocess import to_pixels

    clip = ContrastivePrefilter("clip-digits-mini", k)  # the entry's own template, as the classifier uses
    kept = clip.keep(to_pixels(images, dit.preprocess), list(digits.CLASS_NAMES))
    assert torch.equal(out.stage_reached >= 0, kept)  # exactly CLIP's top-k were scored
    assert bool(kept[torch.arange(N_IMAGES), out.predictions].all())
    assert out.evaluations.tolist() == [k * 4 + 3 * 12] * N_IMAGES
    assert bool(torch.isnan(out.errors[~kept]).all())
    assert torch.equal(out.logits.argmax(1), out.predictions)


def test_the_error_cache_answers_a_second_schedule_and_a_rerun_exactly(dit, data, tmp_path):
    images, _ = data
    classes = list(range(10))
    cache = tmp_path / "errors.sqlite"
    fresh_b = dit.classify(images, classes, scoring=scoring(n_samples=(16,), to_keep=(1,)))
    dit.use_error_cache(cache)
    try:
        a = dit.classify(images, classes, scoring=scoring(), return_timestep_errors=True)
        assert int(a.extras["cached_evaluations"].sum()) == 0
        b = dit.classify(images, classes, scoring=scoring(n_samples=(16,), to_keep=(1,)))
        # (4, 16) keep 3/1 evaluated all 10 classes at 4 timesteps and 3 at 12 more, all of them in (16,)'s plan
        assert b.extras["cached_evaluations"].tolist() == [10 * 4 + 3 * 12] * N_IMAGES
        assert torch.equal(b.predictions, fresh_b.predictions)
        torch.testing.assert_close(b.errors, fresh_b.errors, rtol=1e-5, atol=1e-6)
        again = dit.classify(images, classes, scoring=scoring(), return_timestep_errors=True)
        assert torch.equal(again.extras["cached_evaluations"], again.evaluations)  # no network call
        assert torch.equal(again.timestep_errors.isnan(), a.timestep_errors.isnan())
        done = ~a.timestep_errors.isnan()
        assert torch.equal(again.timestep_errors[done], a.timestep_errors[done])  # exactly what was computed
        other_seed = dit.classify(images, classes, scoring=scoring(seed=1))
        assert int(other_seed.extras["cached_evaluations"].sum()) == 0  # another seed is another namespace
    finally:
        dit.use_error_cache(None)


def test_sequential_strategy_and_budget_through_classify(dit, data):
    images, labels = data
    spec = {"name": "sequential", "alpha": 0.05, "chunk": 8, "max_timesteps": 64}
    seq = dit.classify(images, list(range(10)), scoring=scoring(n_samples=(64,), to_keep=(1,), strategy=spec))
    full = dit.classify(images, list(range(10)), scoring=scoring(n_samples=(64,), to_keep=(1,)))
    assert seq.extras["strategy"]["name"] == "sequential"
    assert float(seq.evaluations.float().mean()) < float(full.evaluations.float().mean())
    assert int((seq.predictions == full.predictions).sum()) >= N_IMAGES - 1
    budget = dit.classify(images, list(range(10)),
                          scoring=scoring(n_samples=(64,), to_keep=(1,), strategy=spec, max_evaluations=100))
    assert int(budget.evaluations.max()) <= 100


def test_probabilities_follow_the_prediction_and_the_temperature(dit, data):
    images, labels = data
    out = dit.classify(images, list(range(10)), scoring=scoring())
    p = out.probabilities
    assert p.shape == (N_IMAGES, 10)
    torch.testing.assert_close(p.sum(1), torch.ones(N_IMAGES), rtol=0, atol=1e-5)
    assert torch.equal(p.argmax(1), out.predictions)
    from dc_zoo.calibration import Calibration

    dit.calibration = Calibration(temperature=0.001, n_images=1, nll_before=1.0, nll_after=1.0,
                                  ece_before=0.1, ece_after=0.1)
    try:
        sharp = dit.classify(images, list(range(10)), scoring=scoring()).probabilities
    finally:
        dit.calibration = None
    assert float(sharp.max(1).values.mean()) > float(p.max(1).values.mean())
    assert not math.isnan(float(sharp.sum()))


def test_the_recommended_preset_comes_from_the_registry_with_its_temperature():
    from dc_zoo import get_entry

    entry = get_entry("dit-digits-mini")
    assert entry.recommended and entry.calibration
    clf = dc_zoo.create_model("dit-digits-mini", scoring="recommended")
    rec = entry.recommended["scoring"]
    assert clf.scoring.strategy == rec.get("strategy") and clf.scoring.prefilter == rec.get("prefilter")
    assert clf.calibration.temperature == entry.calibration["recommended"]["temperature"]
    default = dc_zoo.create_model("dit-digits-mini")
    assert default.scoring.strategy is None and default.scoring.prefilter is None  # the paper's stays the default
    assert default.calibration.temperature == entry.calibration["default"]["temperature"]
    assert dc_zoo.create_model("dit-digits-mini", scoring={"seed": 1}).calibration is None  # another scoring
    with pytest.raises(ValueError, match="no recommended scoring"):
        dc_zoo.create_model("dit-glyphs-mini" if not get_entry("dit-glyphs-mini").recommended else "sd-relations-mini",
                            scoring="recommended")
    with pytest.raises(ValueError, match="Unknown scoring preset"):
        dc_zoo.create_model("dit-digits-mini", scoring="cheapest")


def test_dc_zoo_scoring_env_accepts_the_recommended_preset(monkeypatch):
    from dc_zoo.clip_benchmark.registration import SCORING_ENV, _scoring_overrides

    monkeypatch.setenv(SCORING_ENV, '"recommended"')
    assert _scoring_overrides() == {"preset": "recommended"}
    monkeypatch.setenv(SCORING_ENV, '{"strategy": {"name": "sequential"}, "max_evaluations": 300}')
    assert _scoring_overrides()["max_evaluations"] == 300
