"""Calibrated probabilities: temperature fitting, ECE / NLL, and the prediction kept as argmax."""
from __future__ import annotations

import json
import math

import pytest
import torch

from dc_zoo.calibration import (
    Calibration,
    brier_score,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    probabilities,
    reliability_table,
)
from dc_zoo.candidates import ranking_logits


def synthetic(n: int, k: int, temperature: float, seed: int, scale: float = 0.1):
    """Errors uniform in ``[0, scale)`` and labels drawn from ``softmax(-errors / temperature)``."""
    g = torch.Generator().manual_seed(seed)
    errors = torch.rand(n, k, generator=g, dtype=torch.float64) * scale
    truth = torch.softmax(-errors / temperature, dim=1)
    labels = torch.multinomial(truth, 1, generator=g).squeeze(1)
    return errors.float(), labels, truth


def test_rows_sum_to_one_and_order_follows_errors():
    errors, _, _ = synthetic(64, 7, 0.01, seed=0)
    for t in (1e-3, 0.01, 1.0, 100.0):
        p = probabilities(errors, t)
        assert p.dtype == torch.float32 and p.shape == errors.shape
        torch.testing.assert_close(p.sum(dim=1).double(), torch.ones(64, dtype=torch.float64), atol=1e-6, rtol=0)
        assert torch.equal(p.argmax(dim=1), errors.argmin(dim=1))
    expected = torch.softmax(-errors.double() / 0.01, dim=1).float()
    torch.testing.assert_close(probabilities(errors, 0.01), expected)


def test_nan_errors_get_zero_probability():
    errors = torch.tensor([[0.1, float("nan"), 0.2], [float("nan"), 0.3, float("inf")]])
    p = probabilities(errors, 0.1)
    assert p[0, 1] == 0 and p[1, 0] == 0 and p[1, 2] == 0
    assert p[1, 1] == 1
    torch.testing.assert_close(p.sum(dim=1), torch.ones(2))
    with pytest.raises(ValueError, match="row 1 has no finite error"):
        probabilities(torch.tensor([[0.1, 0.2], [float("nan"), float("nan")]]))


def test_ranking_top_is_argmax_when_the_lowest_error_was_pruned():
    # Class 1 was pruned after stage 0 with a (noisy) lower error than the finalist, class 0.
    errors = torch.tensor([[0.10, 0.05, 0.20], [0.30, 0.20, 0.10]])
    stage = torch.tensor([[1, 0, 0], [0, 0, 1]])
    ranking = ranking_logits(errors, stage)
    plain = probabilities(errors, 0.05)
    p = probabilities(errors, 0.05, ranking=ranking)
    assert plain.argmax(dim=1).tolist() == [1, 2]
    assert p.argmax(dim=1).tolist() == [0, 2]
    # Row 0: the two classes' probabilities are swapped, the third untouched; row 1 unchanged.
    assert p[0, 0] == plain[0, 1] and p[0, 1] == plain[0, 0] and p[0, 2] == plain[0, 2]
    assert torch.equal(p[1], plain[1])


def test_ranking_argmax_exact_on_random_stages_and_ties():
    g = torch.Generator().manual_seed(3)
    errors = torch.rand(500, 10, generator=g) * 0.05
    stage = torch.randint(0, 3, (500, 10), generator=g)
    errors[:50, 4] = errors[:50, 2]  # exact ties in the errors
    errors[50:100, 6] = errors[50:100, 5] + 1e-9  # ties once rounded to float32 probabilities
    stage[:100, 2], stage[:100, 4], stage[:100, 5], stage[:100, 6] = 0, 3, 0, 3  # the later tied class wins
    ranking = ranking_logits(errors, stage)
    for t in (1e-3, 0.01, 1.0):
        p = probabilities(errors, t, ranking=ranking)
        assert torch.equal(p.argmax(dim=1), ranking.argmax(dim=1))
        torch.testing.assert_close(p.sum(dim=1), torch.ones(500), atol=1e-5, rtol=0)
        assert bool((p >= 0).all())
    assert bool((errors.argmin(dim=1) != ranking.argmax(dim=1)).any())  # the swap was exercised


def test_fit_recovers_known_temperature():
    t_true = 0.01
    errors, labels, _ = synthetic(4000, 10, t_true, seed=1)
    t = fit_temperature(errors, labels)
    assert abs(t - t_true) / t_true < 0.15
    assert fit_temperature(errors, labels) == t  # deterministic
    # The fitted T minimises the NLL: nudging it either way is worse.
    nll = negative_log_likelihood(probabilities(errors, t), labels)
    assert nll <= negative_log_likelihood(probabilities(errors, t * 1.2), labels)
    assert nll <= negative_log_likelihood(probabilities(errors, t / 1.2), labels)


def test_fit_recovers_large_temperature_and_works_with_ranking():
    errors, labels, _ = synthetic(4000, 5, 3.0, seed=2, scale=20.0)
    t = fit_temperature(errors, labels)
    assert abs(t - 3.0) / 3.0 < 0.15
    ranking = ranking_logits(errors, torch.zeros_like(errors, dtype=torch.long))  # same order as the errors
    assert fit_temperature(errors, labels, ranking=ranking) == pytest.approx(t, rel=1e-6)


def test_fitted_temperature_halves_ece_of_overconfident_scores():
    # At T = 1 these scores are overconfident: the labels follow T = 5.
    fit_errors, fit_labels, _ = synthetic(3000, 10, 5.0, seed=4, scale=40.0)
    cal = Calibration.fit(fit_errors, fit_labels, fitted_on="synthetic T=5")
    assert cal.ece_after <= cal.ece_before / 2
    assert cal.nll_after < cal.nll_before
    assert cal.n_images == 3000 and cal.fitted_on == "synthetic T=5"
    # And on held-out data drawn from the same model.
    test_errors, test_labels, _ = synthetic(3000, 10, 5.0, seed=5, scale=40.0)
    ece_raw = expected_calibration_error(probabilities(test_errors, 1.0), test_labels)
    ece_cal = expected_calibration_error(cal.apply(test_errors), test_labels)
    assert ece_raw > 0.1 and ece_cal <= ece_raw / 2


def test_ece_small_for_calibrated_probabilities_and_large_for_overconfident():
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(20000, 5, generator=g, dtype=torch.float64) * 2
    p = torch.softmax(logits, dim=1)
    labels = torch.multinomial(p, 1, generator=g).squeeze(1)
    assert expected_calibration_error(p, labels) < 0.02
    assert expected_calibration_error(torch.softmax(logits * 4, dim=1), labels) > 0.1


def test_nll_brier_and_ece_hand_computed():
    p = torch.tensor([[0.8, 0.2], [0.3, 0.7]])
    labels = torch.tensor([0, 0])
    assert negative_log_likelihood(p, labels) == pytest.approx(-(math.log(0.8) + math.log(0.3)) / 2, rel=1e-6)
    assert brier_score(p, labels) == pytest.approx(((0.2**2 + 0.2**2) + (0.7**2 + 0.7**2)) / 2, rel=1e-6)
    # Confidences 0.8 (correct) and 0.7 (wrong) fall in different bins of 10: (0.2 + 0.7) / 2.
    assert expected_calibration_error(p, labels, n_bins=10) == pytest.approx(0.45, rel=1e-6)
    # A zero probability on the label is clamped, not infinite.
    assert negative_log_likelihood(torch.tensor([[1.0, 0.0]]), torch.tensor([1])) == pytest.approx(-math.log(1e-12))


def test_reliability_table_bins():
    p = torch.tensor([[0.95, 0.05], [0.92, 0.08], [0.55, 0.45], [0.5, 0.5]])
    labels = torch.tensor([0, 1, 0, 0])
    table = reliability_table(p, labels, n_bins=10)
    assert len(table) == 10 and table[0]["lower"] == 0.0 and table[-1]["upper"] == 1.0
    assert sum(row["count"] for row in table) == 4
    top = table[9]
    assert top["count"] == 2 and top["confidence"] == pytest.approx(0.935) and top["accuracy"] == 0.5
    assert table[4]["count"] == 1 and table[4]["confidence"] == pytest.approx(0.5)  # 0.5 is in (0.4, 0.5]
    assert table[5]["count"] == 1 and table[5]["accuracy"] == 1.0
    assert table[0]["count"] == 0 and table[0]["confidence"] is None and table[0]["accuracy"] is None
    json.dumps(table)


def test_calibration_round_trip_and_bad_dicts():
    errors, labels, _ = synthetic(500, 4, 0.02, seed=7)
    cal = Calibration.fit(errors, labels, fitted_on="held-out")
    data = json.loads(json.dumps(cal.to_dict()))
    assert Calibration.from_dict(data) == cal
    torch.testing.assert_close(Calibration.from_dict(data).apply(errors), probabilities(errors, cal.temperature))
    with pytest.raises(ValueError, match="temperature"):
        Calibration.from_dict({**data, "temperature": -1.0})
    with pytest.raises(ValueError, match="ece_after"):
        Calibration.from_dict({**data, "ece_after": "small"})
    with pytest.raises(ValueError, match="n_images"):
        Calibration.from_dict({**data, "n_images": 0})
    with pytest.raises(ValueError, match="nll_before"):
        Calibration.from_dict({k: v for k, v in data.items() if k != "nll_before"})
    with pytest.raises(ValueError, match="temprature"):
        Calibration.from_dict({**data, "temprature": 1.0})


def test_bad_input_raises_clear_errors():
    errors = torch.rand(4, 3)
    labels = torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match="temperature must be a finite positive number"):
        probabilities(errors, 0.0)
    with pytest.raises(ValueError, match="temperature"):
        probabilities(errors, float("nan"))
    with pytest.raises(ValueError, match="ranking has shape"):
        probabilities(errors, 1.0, ranking=torch.rand(4, 2))
    with pytest.raises(ValueError, match=r"errors must be \[N images, K classes\]"):
        probabilities(torch.rand(3))
    with pytest.raises(ValueError, match="label 3 at position 1 is out of range"):
        fit_temperature(errors, torch.tensor([0, 3, 1, 0]))
    with pytest.raises(ValueError, match="out of range"):
        negative_log_likelihood(probabilities(errors), torch.tensor([0, 1, -1, 0]))
    with pytest.raises(ValueError, match="labels must be"):
        fit_temperature(errors, labels[:3])
    with pytest.raises(ValueError, match="empty"):
        fit_temperature(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 2 classes"):
        fit_temperature(torch.rand(4, 1), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="bounds"):
        fit_temperature(errors, labels, bounds=(0.0, 1.0))
    with pytest.raises(ValueError, match="probabilities"):
        expected_calibration_error(errors * 10, labels)  # raw errors, not probabilities
    with pytest.raises(ValueError, match="n_bins"):
        reliability_table(probabilities(errors), labels, n_bins=0)
