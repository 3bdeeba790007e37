"""Scoring strategies: each does what it promises, on synthetic errors and through the engine.

The engine knows no model, so a synthetic denoiser pins the strategies exactly: its prediction
is the true eps plus a class offset that varies with t, so candidate c's error at (t, eps) is a
known function and "worse on the evidence" can be checked against it.
"""
from __future__ import annotations

import math

import pytest
import torch

import dc_zoo
from dc_zoo.engine import score_candidates
from dc_zoo.noise_schedules import DiscreteDiffusionSchedule
from dc_zoo.strategies import (RoundState, SequentialPairedTest, StageSchedule, apply_budget, build_strategy,
                               spread_order, student_t_quantile)
from dc_zoo.timestep_plan import TimestepPlan

SCHEDULE = DiscreteDiffusionSchedule.linear()


def offset_denoiser(x0: torch.Tensor, offsets: torch.Tensor, wobble: float = 0.5):
    """A denoiser that knows x0: its eps prediction is the truth plus ``offsets[c] * (1 + wobble * sin(t))``."""
    abar = SCHEDULE.alphas_cumprod

    def denoise(x_t, t, cond):
        a = abar[t].view(-1, 1, 1, 1).to(x_t.dtype)
        # each item's own image: the engine packs images; x0 has one image in these tests
        eps = (x_t - a.sqrt() * x0[:1].expand_as(x_t)) / (1 - a).sqrt()
        bump = offsets[cond].view(-1, 1, 1, 1) * (1 + wobble * torch.sin(t.double() / 37).view(-1, 1, 1, 1))
        return eps + bump.to(x_t.dtype)

    return denoise


def run(offsets, config, **kwargs):
    torch.manual_seed(0)
    x0 = torch.randn(1, 2, 4, 4)
    conditions = torch.arange(len(offsets))
    return score_candidates(offset_denoiser(x0, torch.tensor(offsets)), SCHEDULE, x0, conditions, config,
                            sample_keys=["img"], **kwargs)


# ----------------------------------------------------------------------------- the paper's stages
def test_default_strategy_is_the_papers_stages():
    config = dc_zoo.ScoringConfig(n_samples=(5, 20), to_keep=(3, 1), batch_size=16)
    default = run([0.0, 0.3, 0.1, 0.5, 0.2], config)
    explicit = run([0.0, 0.3, 0.1, 0.5, 0.2], dc_zoo.ScoringConfig(n_samples=(5, 20), to_keep=(3, 1), batch_size=16,
                                                                  strategy={"name": "stages"}))
    assert default.strategy == {"name": "stages"}
    assert torch.equal(default.prediction, explicit.prediction) and int(default.prediction[0]) == 0
    torch.testing.assert_close(default.timestep_errors, explicit.timestep_errors, equal_nan=True, rtol=0, atol=0)
    # paper's counts: 5 candidates x 5 timesteps, then 3 x the 15 new ones
    assert int(default.evaluations[0]) == 5 * 5 + 3 * 15
    assert TimestepPlan.from_stages((5, 20), 1000).evaluations(5, (3, 1)) == int(default.evaluations[0])


# ----------------------------------------------------------------------------- sequential paired test
def test_spread_order_keeps_every_prefix_spread():
    order = spread_order(16)
    assert sorted(order) == list(range(16))
    assert order[:4] == [0, 8, 4, 12]  # each power-of-two prefix is an even grid
    for k in (2, 4, 8):
        prefix = sorted(order[:k])
        gaps = {b - a for a, b in zip(prefix, prefix[1:])}
        assert gaps == {16 // k}
    assert sorted(spread_order(10)) == list(range(10))


def test_student_t_quantile_matches_known_values():
    # quantiles from the t table, far tails included (where an expansion would be anti-conservative)
    for df, p, exact in ((5, 0.025, 2.570582), (10, 0.025, 2.228139), (30, 0.025, 2.042272), (1000, 0.025, 1.962339),
                         (20, 0.0005, 3.849516), (2, 0.001, 22.327125), (1, 0.05, 6.313752)):
        q = float(student_t_quantile(torch.tensor(p), torch.tensor(df)))
        assert q == pytest.approx(exact, rel=1e-5)
    from dc_zoo.strategies.sequential import student_t_sf

    assert student_t_sf(24.771029733, 5) == pytest.approx(1e-6, rel=1e-5)


def state_from(errors: torch.Tensor, strategy: SequentialPairedTest, round_index: int) -> RoundState:
    N, C, n_t, R = errors.shape
    plan = TimestepPlan(timesteps=tuple(range(n_t)), stage_positions=tuple(
        tuple(range(i, min(i + strategy.chunk, n_t))) for i in range(0, n_t, strategy.chunk)))
    return RoundState(round=round_index, timestep_errors=errors, alive=torch.ones(N, C, dtype=torch.bool),
                      active=torch.ones(N, dtype=torch.bool), evaluations=torch.zeros(N, dtype=torch.long),
                      plan=plan, max_evaluations=None, n_trials=R)


def test_the_paired_test_drops_a_clearly_worse_candidate_and_keeps_an_equal_one():
    g = torch.Generator().manual_seed(0)
    base = 1.0 + torch.rand(20, generator=g)  # errors vary a lot with t; the pairs share it
    errors = torch.stack([base, base + 0.2 + 0.01 * torch.randn(20, generator=g),
                          base + 0.01 * torch.randn(20, generator=g)]).view(1, 3, 20, 1)
    strategy = SequentialPairedTest(alpha=0.05, chunk=10, min_timesteps=10)
    decision = strategy.decide(state_from(errors, strategy, 1))
    assert decision.alive.tolist() == [[True, False, True]]
    assert bool(decision.active[0])
    # an unpaired look (the t-to-t spread, not the pair difference) would not have dropped it:
    assert float((errors[0, 1] - errors[0, 0]).mean()) < float(base.std())


def test_false_drops_stay_below_alpha_over_every_look():
    """Under the null (two candidates of equal mean), the chance of ever dropping one over all
    looks is at most alpha: the alpha-spending rule holds under repeated looks."""
    alpha, chunk, n_t, runs = 0.1, 5, 100, 400
    strategy = SequentialPairedTest(alpha=alpha, chunk=chunk, min_timesteps=10)
    g = torch.Generator().manual_seed(1)
    errors = (1.0 + torch.rand(runs, 1, n_t, 1, generator=g)) + 0.05 * torch.randn(runs, 2, n_t, 1, generator=g)
    dropped = torch.zeros(runs, dtype=torch.bool)
    for r in range(n_t // chunk):
        seen = torch.full_like(errors, float("nan"))
        seen[:, :, : (r + 1) * chunk] = errors[:, :, : (r + 1) * chunk]
        dropped |= ~strategy.decide(state_from(seen, strategy, r)).alive.all(1)
    assert float(dropped.float().mean()) <= alpha
    # and it is not vacuous: a real difference of 0.04 (0.57 sd of a pair difference) is found in most runs
    errors[:, 1] += 0.04
    found = torch.zeros(runs, dtype=torch.bool)
    for r in range(n_t // chunk):
        seen = torch.full_like(errors, float("nan"))
        seen[:, :, : (r + 1) * chunk] = errors[:, :, : (r + 1) * chunk]
        found |= ~strategy.decide(state_from(seen, strategy, r)).alive[:, 1]
    assert float(found.float().mean()) > 0.5


def test_the_best_of_many_candidates_is_dropped_at_most_at_rate_alpha_over_2():
    """The documented guarantee with m = 10: candidate 0 is best by a hair, the nine others equal;
    over all looks candidate 0 is dropped in at most alpha / 2 of the runs."""
    alpha, chunk, n_t, runs, m = 0.2, 5, 60, 300, 10
    strategy = SequentialPairedTest(alpha=alpha, chunk=chunk, min_timesteps=10)
    g = torch.Generator().manual_seed(2)
    errors = (1.0 + torch.rand(runs, 1, n_t, 1, generator=g)) + 0.05 * torch.randn(runs, m, n_t, 1, generator=g)
    errors[:, 1:] += 0.002
    lost = torch.zeros(runs, dtype=torch.bool)
    alive = torch.ones(runs, m, dtype=torch.bool)
    for r in range(n_t // chunk):
        seen = torch.full_like(errors, float("nan"))
        seen[:, :, : (r + 1) * chunk] = errors[:, :, : (r + 1) * chunk]
        state = state_from(seen, strategy, r)
        state.alive = alive.clone()
        state.n_candidates = torch.full((runs,), m)
        alive = strategy.decide(state).alive
        lost |= ~alive[:, 0]
    assert float(lost.float().mean()) <= alpha / 2
    assert int((~alive).sum()) > 0  # the test did drop candidates on the way


def test_sequential_through_the_engine_drops_only_worse_candidates_and_spends_less():
    offsets = [0.0, 0.6, 0.05, 0.9, 0.3, 1.2]
    spec = {"name": "sequential", "alpha": 0.05, "chunk": 5, "min_timesteps": 10, "max_timesteps": 100}
    config = dc_zoo.ScoringConfig(n_samples=(100,), to_keep=(1,), batch_size=64, strategy=spec)
    out = run(offsets, config)
    full = run(offsets, dc_zoo.ScoringConfig(n_samples=(100,), to_keep=(1,), batch_size=64))
    assert int(out.prediction[0]) == int(full.prediction[0]) == 0
    assert int(out.evaluations[0]) < int(full.evaluations[0]) // 2
    assert out.plan.timesteps == full.plan.timesteps  # the same pool, another order
    # every dropped candidate was worse than the winner on the pairs it had when dropped
    errs = out.timestep_errors[0, :, :, 0]
    winner_seen = ~torch.isnan(errs[0])
    for c in range(1, len(offsets)):
        seen = ~torch.isnan(errs[c])
        assert bool((winner_seen | ~seen).all()) and int(seen.sum()) >= 10  # min_timesteps before any drop
        assert float((errs[c][seen] - errs[0][seen]).mean()) > 0
    assert int(out.stage_reached[0].argmax()) == 0  # the winner raced longest
    # errors at the pairs both evaluated are the ones the full run computed (noise keyed by t)
    done = ~torch.isnan(out.timestep_errors)
    torch.testing.assert_close(out.timestep_errors[done], full.timestep_errors[done], rtol=1e-6, atol=1e-7)


def test_sequential_spec_is_validated_with_a_clear_message():
    with pytest.raises(ValueError, match="no option"):
        dc_zoo.ScoringConfig(strategy={"name": "sequential", "aplha": 0.1})
    with pytest.raises(ValueError, match="alpha must be in"):
        build_strategy({"name": "sequential", "alpha": 1.5}, (1,))
    with pytest.raises(ValueError, match="Unknown strategy"):
        dc_zoo.ScoringConfig(strategy={"name": "bandit"})


# ----------------------------------------------------------------------------- budget
def test_a_budget_stops_at_the_leader_without_overspending():
    offsets = [0.02, 0.0, 0.03, 0.01]  # close: the test cannot decide quickly
    spec = {"name": "sequential", "alpha": 0.01, "chunk": 5, "max_timesteps": 200}
    config = dc_zoo.ScoringConfig(n_samples=(200,), to_keep=(1,), batch_size=64, strategy=spec, max_evaluations=60)
    out = run(offsets, config)
    assert int(out.evaluations[0]) <= 60
    means = out.candidate_errors[0]
    alive_last = out.stage_reached[0] == out.stage_reached[0].max()
    best = int(torch.where(alive_last, means, torch.full_like(means, math.inf)).argmin())
    assert int(out.prediction[0]) == best
    # the paper's stages under a budget too: the second stage does not fit, the leader of stage 0 answers
    stages = dc_zoo.ScoringConfig(n_samples=(5, 50), to_keep=(2, 1), batch_size=64, max_evaluations=25)
    out = run(offsets, stages)
    assert int(out.evaluations[0]) == 4 * 5 and int(out.prediction[0]) == int(out.candidate_errors[0].argmin())


def test_apply_budget_leaves_unbudgeted_decisions_alone():
    strategy = StageSchedule((2, 1))
    errors = torch.rand(2, 3, 4, 1)
    state = RoundState(round=0, timestep_errors=errors, alive=torch.ones(2, 3, dtype=torch.bool),
                       active=torch.ones(2, dtype=torch.bool), evaluations=torch.full((2,), 6),
                       plan=TimestepPlan(timesteps=(1, 2, 3, 4), stage_positions=((0, 1), (2, 3))),
                       max_evaluations=None, n_trials=1)
    decision = strategy.decide(state)
    assert apply_budget(state, decision) is decision
    assert decision.alive.sum(1).tolist() == [2, 2]


# ----------------------------------------------------------------------------- candidate mask (prefilter)
def test_a_candidate_mask_limits_the_race_and_unscored_classes_rank_last():
    offsets = [0.3, 0.0, 0.2, 0.1]
    config = dc_zoo.ScoringConfig(n_samples=(5, 20), to_keep=(2, 1), batch_size=64)
    mask = torch.tensor([[True, False, True, True]])
    out = run(offsets, config, candidate_mask=mask)
    assert int(out.prediction[0]) == 3  # the best of those kept
    assert int(out.evaluations[0]) == 3 * 5 + 2 * 15
    assert math.isnan(float(out.candidate_errors[0, 1])) and int(out.stage_reached[0, 1]) == -1
    from dc_zoo.candidates import ranking_logits

    logits = ranking_logits(out.candidate_errors, out.stage_reached)
    assert int(logits.argmax(1)[0]) == 3 and float(logits[0, 1]) == -1.0
    with pytest.raises(ValueError, match="no candidate"):
        run(offsets, config, candidate_mask=torch.zeros(1, 4, dtype=torch.bool))
