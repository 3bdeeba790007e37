"""The timestep plan equals the reference formula, including the non-nesting of stages."""
from __future__ import annotations

import pytest

from dc_zoo.timestep_plan import TimestepPlan, validate_stages

from test_engine_equivalence import reference_plan

# (to_keep, n_samples, classes, evaluations/image as the official code spends them)
PAPER_SCHEDULES = {
    "food101": ((20, 10, 5, 1), (20, 50, 100, 500), 101, 5570),
    "cifar10": ((5, 1), (50, 500), 10, 2750),
    "fgvc_aircraft": ((20, 10, 5, 1), (20, 50, 100, 500), 100, 5550),
    "pets": ((5, 1), (25, 250), 37, 2050),
    "flowers102": ((20, 10, 5, 1), (20, 50, 100, 500), 102, 5590),
    "stl10": ((5, 1), (100, 500), 10, 3000),
    "imagenet": ((500, 50, 10, 1), (50, 100, 500, 1000), 1000, 124500),
    "objectnet": ((25, 10, 5, 1), (50, 100, 500, 1000), 113, 14400),
}


@pytest.mark.parametrize("name", sorted(PAPER_SCHEDULES))
def test_plan_matches_reference_formula_and_paper_costs(name):
    to_keep, n_samples, classes, evals = PAPER_SCHEDULES[name]
    plan = TimestepPlan.from_stages(n_samples, 1000)
    all_t, stages = reference_plan(1000, n_samples)
    assert list(plan.timesteps) == all_t
    assert [plan.stage_timesteps(k) for k in range(len(n_samples))] == stages
    assert plan.evaluations(classes, to_keep) == evals


def test_paper_examples():
    plan = TimestepPlan.from_stages((50, 500), 1000)
    assert plan.timesteps == tuple(range(1, 1000, 2))
    assert plan.stage_timesteps(0) == list(range(11, 1000, 20))
    # the 500-stage drops the 50 already evaluated: 450 new timesteps
    assert len(plan.stage_positions[1]) == 450
    assert set(plan.stage_timesteps(0)).isdisjoint(plan.stage_timesteps(1))


def test_stages_do_not_nest():
    plan = TimestepPlan.from_stages((20, 50, 100, 500), 1000)
    s20, s50 = set(plan.stage_timesteps(0)), set(plan.stage_timesteps(1))
    assert not s20 <= s50 and len(s50) == 50  # the 50-stage shares nothing with the 20-stage
    assert len(plan.stage_timesteps(2)) == 80  # 20 of its 100 were evaluated by stage 0
    assert sum(len(p) for p in plan.stage_positions) == 500


def test_dit_plan_is_every_fourth_timestep():
    plan = TimestepPlan.from_stages((250,), 1000)
    assert plan.timesteps == tuple(range(2, 1000, 4))


def test_n_trials_multiplies_evaluations():
    plan = TimestepPlan.from_stages((25, 250), 1000)
    assert plan.evaluations(37, (5, 1), n_trials=2) == 2 * 2050


@pytest.mark.parametrize(
    "n_samples, to_keep, message",
    [
        ((), (), "at least one stage"),
        ((50, 500), (1,), "same length"),
        ((50, 500), (5, 2), "last to_keep must be 1"),
        ((50, 500), (1, 5), "last to_keep must be 1"),
        ((10, 20, 30), (2, 5, 1), "must not increase"),
        ((0, 500), (5, 1), "positive integers"),
        ((50, 2000), (5, 1), "at most 1000"),
    ],
)
def test_bad_stage_schedules_are_named(n_samples, to_keep, message):
    with pytest.raises(ValueError, match=message):
        validate_stages(n_samples, to_keep, 1000)


def test_stage_with_nothing_new_is_refused():
    with pytest.raises(ValueError, match="no timestep"):
        TimestepPlan.from_stages((500, 50), 1000)
