"""Timestep weighting and ranges: uniform is exactly the paper, weights move only the ranking, a
fitted table puts its weight where the evidence is, and a range keeps the plan inside it."""
from __future__ import annotations

import json

import pytest
import torch

import dc_zoo
from dc_zoo.cli import main
from dc_zoo.engine import score_candidates
from dc_zoo.noise_schedules import DiscreteDiffusionSchedule
from dc_zoo.strategies import RoundState, SequentialPairedTest, mean_errors
from dc_zoo.strategies.weighting import TimestepWeighting, build_weighting, fit_weight_table
from dc_zoo.timestep_plan import TimestepPlan

SCHEDULE = DiscreteDiffusionSchedule.linear()


def step_denoiser(x0: torch.Tensor, early: torch.Tensor, late: torch.Tensor, split: int = 500):
    """eps prediction = truth + ``early[c]`` below ``split`` and ``late[c]`` above: each candidate's
    error at t is known, so which one a weighting prefers is known."""
    abar = SCHEDULE.alphas_cumprod

    def denoise(x_t, t, cond):
        a = abar[t].view(-1, 1, 1, 1).to(x_t.dtype)
        eps = (x_t - a.sqrt() * x0[:1].expand_as(x_t)) / (1 - a).sqrt()
        bump = torch.where(t.view(-1, 1, 1, 1) < split, early[cond].view(-1, 1, 1, 1), late[cond].view(-1, 1, 1, 1))
        return eps + bump.to(x_t.dtype)

    return denoise


def run(config, early=(0.0, 0.3), late=(0.4, 0.0)):
    torch.manual_seed(0)
    x0 = torch.randn(1, 2, 4, 4)
    denoise = step_denoiser(x0, torch.tensor(early), torch.tensor(late))
    return score_candidates(denoise, SCHEDULE, x0, torch.arange(len(early)), config, sample_keys=["img"])


def test_uniform_weighting_is_the_papers_mean_bit_for_bit():
    paper = run(dc_zoo.ScoringConfig(n_samples=(10, 40), to_keep=(2, 1), batch_size=8))
    uniform = run(dc_zoo.ScoringConfig(n_samples=(10, 40), to_keep=(2, 1), batch_size=8, timestep_weights="uniform"))
    assert dc_zoo.ScoringConfig(timestep_weights="uniform").timestep_weights is None
    assert torch.equal(paper.candidate_errors, uniform.candidate_errors)
    errors = paper.timestep_errors
    torch.testing.assert_close(paper.candidate_errors, errors.nanmean(dim=(2, 3)), rtol=0, atol=0)


def test_weights_change_the_ranking_not_the_errors():
    """Candidate 0 is worse late (0.4 against 0), candidate 1 worse early (0.3 against 0): the plain mean
    prefers 1; a table that counts only early timesteps prefers 0. The (t, eps) errors are the same."""
    base = dict(n_samples=(20,), to_keep=(1,), batch_size=8)
    plain = run(dc_zoo.ScoringConfig(**base))
    early = {"name": "table", "edges": [0, 0.5, 1], "values": [1.0, 0.01]}
    weighted = run(dc_zoo.ScoringConfig(**base, timestep_weights=early))
    assert int(plain.prediction[0]) == 1 and int(weighted.prediction[0]) == 0
    assert torch.equal(plain.timestep_errors, weighted.timestep_errors)
    w = TimestepWeighting(**early).weights(plain.plan.timesteps, 1000)
    expected = (plain.timestep_errors[0, :, :, 0] * w).sum(1) / w.sum()
    torch.testing.assert_close(weighted.candidate_errors[0], expected, rtol=1e-6, atol=0)


def test_sine_and_table_weights_and_their_validation():
    assert build_weighting("sine").weights([0, 499, 999], 1000).tolist() == pytest.approx(
        [0.00157, 1.0, 0.00157], abs=1e-4)
    table = build_weighting({"edges": [0, 0.25, 1], "values": [2, 1], "source": "x"})
    assert table.weights([0, 249, 250, 999], 1000).tolist() == [2, 2, 1, 1]
    assert build_weighting(table.to_dict()) == table
    for bad, words in [("cosine", "choose one of"), ("table", "fit-weights"),
                       ({"edges": [0, 1], "values": [1, 2]}, r"len\(values\) \+ 1"),
                       ({"edges": [0, 0.6, 0.5, 1], "values": [1, 1, 1]}, "increase from 0 to 1"),
                       ({"edges": [0, 0.5, 1], "values": [1, 0]}, "timestep_range"),
                       ({"edges": [0, 1], "values": [1], "bins": 3}, "no option")]:
        with pytest.raises(ValueError, match=words):
            dc_zoo.ScoringConfig(timestep_weights=bad)


def test_weighted_mean_skips_unevaluated_pairs():
    errors = torch.tensor([[[[1.0], [3.0], [float("nan")]], [[2.0], [2.0], [2.0]]]])  # [1, 2, 3, 1]
    w = torch.tensor([1.0, 3.0, 100.0])
    assert mean_errors(errors, w)[0].tolist() == pytest.approx([(1 + 9) / 4, 2.0])


def test_the_fitted_table_weighs_the_informative_bins_most():
    """Synthetic errors: the true class is 0.3 lower in t/T < 0.5 with little noise, indistinguishable
    above it, and the wrong way round in the last tenth: weights high, then low, then the floor."""
    g = torch.Generator().manual_seed(0)
    N, C, n_t = 40, 4, 20
    timesteps = list(range(25, 1000, 50))
    errors = 1 + 0.05 * torch.randn(N, C, n_t, 1, generator=g)
    labels = torch.arange(N) % C
    u = (torch.tensor(timesteps) + 0.5) / 1000
    shift = torch.where(u < 0.5, -0.3, torch.where(u > 0.9, 0.2, 0.0)).view(1, n_t, 1)
    errors[torch.arange(N), labels] += shift
    table = fit_weight_table(errors, labels.tolist(), timesteps, 1000, bins=10, source="synthetic")
    v = table.values
    assert min(v[:5]) > 20 * max(v[5:])  # the informative half dominates
    assert v[9] == pytest.approx(0.01 * max(v))  # wrong-way bin: the floor
    assert sum(v) / len(v) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no gaps"):
        fit_weight_table(torch.full((2, 2, 4, 1), float("nan")), [0, 1], [0, 1, 2, 3], 1000)
    with pytest.raises(ValueError, match="has no timestep"):
        fit_weight_table(errors[:, :, :2], labels.tolist(), timesteps[:2], 1000, bins=10)


def test_the_weighted_paired_test_drops_on_the_weighted_evidence():
    """Candidate 1 is worse by 0.2 on the first half of the timesteps and better by 0.1 on the
    second: unweighted it is no worse (kept, and it leads); weighted to the first half it is dropped."""
    g = torch.Generator().manual_seed(1)
    n_t = 40
    base = 1 + torch.rand(n_t, generator=g)
    gap = torch.where(torch.arange(n_t) < n_t // 2, 0.2, -0.1) + 0.01 * torch.randn(n_t, generator=g)
    errors = torch.stack([base, base + gap]).view(1, 2, n_t, 1)
    strategy = SequentialPairedTest(alpha=0.05, chunk=n_t, min_timesteps=10)
    plan = TimestepPlan(timesteps=tuple(range(n_t)), stage_positions=(tuple(range(n_t)),))

    def decide(weights):
        return strategy.decide(RoundState(round=0, timestep_errors=errors, alive=torch.ones(1, 2, dtype=torch.bool),
                                          active=torch.ones(1, dtype=torch.bool), evaluations=torch.zeros(1, dtype=torch.long),
                                          plan=plan, max_evaluations=None, n_trials=1, weights=weights))

    assert decide(None).alive.tolist() == [[True, True]]
    first_half = torch.where(torch.arange(n_t) < n_t // 2, 1.0, 0.01)
    assert decide(first_half).alive.tolist() == [[True, False]]


def test_a_timestep_range_keeps_the_plan_inside_it_and_the_default_is_the_papers():
    assert TimestepPlan.from_stages((50, 500), 1000, window=(0.0, 1.0)) == TimestepPlan.from_stages((50, 500), 1000)
    plan = TimestepPlan.from_stages((5, 20), 1000, window=(0.1, 0.5))
    assert min(plan.timesteps) >= 100 and max(plan.timesteps) < 500 and len(plan.timesteps) == 20
    out = run(dc_zoo.ScoringConfig(n_samples=(5, 20), to_keep=(2, 1), batch_size=8, timestep_range=(0.1, 0.5)))
    assert out.plan == plan
    # inside [0.1, 0.5) only the early offsets count: candidate 0 (0 early) wins although it is worse late
    assert int(out.prediction[0]) == 0
    for bad in [(0.5, 0.5), (-0.1, 0.5), (0.2,), "0.1,0.5"]:
        with pytest.raises(ValueError, match="timestep_range"):
            dc_zoo.ScoringConfig(timestep_range=bad)
    with pytest.raises(ValueError, match="window"):
        TimestepPlan.from_stages((500,), 1000, window=(0.0, 0.2))


def test_fit_weights_command_writes_a_table_that_eval_reads(tmp_path, capsys):
    out = tmp_path / "w.json"
    assert main(["fit-weights", "--model", "dit-digits-mini", "--dataset", "digits", "--limit", "10", "--offset", "1",
                 "--pool", "8", "--out", str(out), "--no-progress"]) == 0
    assert "| [0.00, 0.25) |" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["images"] == 10 and data["pool"] == 8 and "digits/test (limit 10, offset 1)" in data["timestep_weights"]["source"] and len(data["timestep_weights"]["values"]) == 4
    from dc_zoo.evaluation.command import weights_spec

    spec = weights_spec(str(out))
    assert dc_zoo.ScoringConfig(timestep_weights=spec).timestep_weights["values"] == data["timestep_weights"]["values"]
    assert weights_spec("sine") == "sine"
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="cannot read"):
        weights_spec(str(tmp_path / "missing.json"))
