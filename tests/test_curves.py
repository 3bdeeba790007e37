"""``dc-zoo curve`` at a tiny size on the bundled digits miniature: the files, the counts, and a
re-run answered entirely by the error cache."""
from __future__ import annotations

import json

import pytest
import torch

from dc_zoo.cli import main
from dc_zoo.evaluation.curves import cross_fitted_calibration, default_specs
from dc_zoo.timestep_plan import TimestepPlan


def test_the_tiny_curve_runs_and_a_rerun_computes_nothing(tmp_path, capsys):
    args = ["curve", "--model", "dit-digits-mini", "--dataset", "digits", "--limit", "8", "--size", "tiny",
            "--prefilter", "clip-digits-mini", "--out", str(tmp_path), "--no-progress", "--information-pool", "8"]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "| 8/32 keep 2/1 | paper | 128 | 1.000 |" in table
    data = json.loads((tmp_path / "curve.json").read_text())
    assert [p["name"] for p in data["points"]] == [s.name for s in default_specs(10, "clip-digits-mini", "tiny")]
    ref = data["points"][0]
    assert ref["evaluations_per_image"] == TimestepPlan.from_stages((8, 32), 1000).evaluations(10, (2, 1))
    assert ref["computed_evaluations"] == 8 * ref["evaluations_per_image"]
    pre = next(p for p in data["points"] if p["name"].startswith("prefilter"))
    assert pre["evaluations_per_image"] == 2 * 32  # only CLIP's top-2, both to the end
    assert len(data["timesteps"]["timesteps"]) == 8 and len(data["timesteps"]["accuracy_alone"]) == 8
    for name in ("curve.csv", "curve.png", "timesteps.png", "errors.sqlite"):
        assert (tmp_path / name).stat().st_size > 0
    assert main(args) == 0  # again: every error is in the cache
    again = json.loads((tmp_path / "curve.json").read_text())
    assert [p["computed_evaluations"] for p in again["points"]] == [0] * len(again["points"])
    assert [p["correct"] for p in again["points"]] == [p["correct"] for p in data["points"]]


def test_cross_fitted_calibration_lowers_the_ece_of_overconfident_scores():
    """Errors on a diffusion-sized scale (softmax at T = 1 is nearly uniform), labels drawn from
    softmax(-errors / 0.002): the cross-fitted temperature finds the scale on the other half."""
    g = torch.Generator().manual_seed(0)
    errors = 0.01 * torch.rand(1000, 5, generator=g)
    labels = torch.multinomial(torch.softmax(-errors / 0.002, dim=1), 1, generator=g).view(-1)
    ranking = -errors.double()
    out = cross_fitted_calibration(errors, ranking, labels)
    assert out["ece_after"] <= out["ece_before"] / 2 and out["nll_after"] < out["nll_before"]
    assert all(0.0015 < t < 0.0027 for t in out["temperatures"])
    assert cross_fitted_calibration(errors[:4], ranking[:4], labels[:4]) is None


def test_curve_refuses_a_bad_limit(tmp_path):
    with pytest.raises(SystemExit):
        main(["curve", "--model", "dit-digits-mini", "--dataset", "cifar10", "--out", str(tmp_path)])
    assert main(["curve", "--model", "dit-digits-mini", "--dataset", "digits", "--limit", "0",
                 "--out", str(tmp_path)]) == 2
