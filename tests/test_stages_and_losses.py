"""Adaptive pruning keeps the lowest-error candidates; losses are the paper's; precision paths."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dc_zoo
from dc_zoo.losses import per_sample_error
from dc_zoo.noise_schedules import DiscreteDiffusionSchedule, FlowMatchingSchedule

from tiny_models import tiny_dit_backend, tiny_sd_backend


def test_losses_match_their_definitions():
    torch.manual_seed(0)
    pred, target = torch.randn(3, 4, 5, 5) * 2, torch.randn(3, 4, 5, 5)
    d = pred - target
    torch.testing.assert_close(per_sample_error(pred, target, "l2"), (d**2).mean(dim=(1, 2, 3)))
    torch.testing.assert_close(per_sample_error(pred, target, "l1"), d.abs().mean(dim=(1, 2, 3)))
    huber = torch.where(d.abs() < 1, 0.5 * d**2, d.abs() - 0.5).mean(dim=(1, 2, 3))
    torch.testing.assert_close(per_sample_error(pred, target, "huber"), huber)
    assert per_sample_error(pred.half(), target.half(), "l2").dtype == torch.float32
    with pytest.raises(ValueError, match="choose one of"):
        per_sample_error(pred, target, "l3")


def test_stage_pruning_keeps_the_lowest_mean_errors():
    backend = tiny_sd_backend(seed=5)
    scoring = dc_zoo.ScoringConfig(n_samples=(4, 8, 16), to_keep=(4, 2, 1), batch_size=9)
    clf = dc_zoo.DiffusionClassifier(backend, scoring)
    candidates = clf.candidates([f"class {i}" for i in range(7)])
    pixels = dc_zoo.preprocess.to_pixels(torch.rand(3, 3, 16, 16), backend.preprocess)
    res = clf.score_pixels(pixels, candidates, ["x", "y", "z"])
    plan = res.plan
    for n in range(3):
        errs = res.timestep_errors[n, :, :, 0]
        stage0 = errs[:, list(plan.stage_positions[0])].mean(dim=1)
        survivors = set(torch.nonzero(res.stage_reached[n] >= 1).flatten().tolist())
        assert survivors == set(stage0.topk(4, largest=False).indices.tolist())
        # stage-1 ranking uses all timesteps evaluated so far
        seen = list(plan.stage_positions[0]) + list(plan.stage_positions[1])
        cumulative = errs[:, seen].mean(dim=1)
        finalists = set(torch.nonzero(res.stage_reached[n] == 2).flatten().tolist())
        assert finalists == {c for c in survivors if cumulative[c] <= sorted(cumulative[list(survivors)])[1]}
        assert int(res.prediction[n]) == min(finalists, key=lambda c: float(res.candidate_errors[n, c]))
        # pruned candidates were never evaluated again
        assert torch.isnan(errs[[c for c in range(7) if c not in survivors]][:, list(plan.stage_positions[1])]).all()
    sizes = [len(p) for p in plan.stage_positions]
    assert sizes == [4, 8, 4]  # the 8-stage shares nothing with the 4-stage; 12 of 16 are done
    assert res.evaluations.tolist() == [7 * 4 + 4 * 8 + 2 * 4] * 3


def test_top_k_respects_the_stages():
    backend = tiny_sd_backend(seed=5)
    clf = dc_zoo.DiffusionClassifier(backend, dc_zoo.ScoringConfig(n_samples=(4, 16), to_keep=(3, 1)))
    out = clf.classify(torch.rand(2, 3, 16, 16), [f"c{i}" for i in range(6)])
    top = out.topk(3)
    assert torch.equal(top[:, 0], out.predictions)
    for n in range(2):
        assert set(top[n].tolist()) == set(torch.nonzero(out.stage_reached[n] >= 1).flatten().tolist())


def test_v_prediction_and_x0_targets():
    sched = DiscreteDiffusionSchedule.scaled_linear(prediction_type="v_prediction")
    x0, eps, t = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3), torch.tensor([10, 900])
    a, s = sched.alphas_cumprod[t].sqrt().float(), (1 - sched.alphas_cumprod[t]).sqrt().float()
    v = a.view(-1, 1, 1, 1) * eps - s.view(-1, 1, 1, 1) * x0
    torch.testing.assert_close(sched.target(x0, eps, t), v)
    x_t = sched.add_noise(x0, eps, t)
    torch.testing.assert_close(x_t, a.view(-1, 1, 1, 1) * x0 + s.view(-1, 1, 1, 1) * eps)
    sample = DiscreteDiffusionSchedule.scaled_linear(prediction_type="sample")
    assert torch.equal(sample.target(x0, eps, t), x0)
    flow = FlowMatchingSchedule()
    torch.testing.assert_close(flow.target(x0, eps, t), eps - x0)
    sigma = (t.float() + 1) / 1000
    torch.testing.assert_close(flow.add_noise(x0, eps, t), (1 - sigma.view(-1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1) * eps)


def test_scheduler_schedule_is_the_training_schedule():
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    ddpm = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction")
    sched = dc_zoo.schedule_from_scheduler(ddpm)
    assert sched.prediction_type == "v_prediction" and sched.num_train_timesteps == 1000
    torch.testing.assert_close(sched.alphas_cumprod.float(), ddpm.alphas_cumprod)
    ref = DiscreteDiffusionSchedule.scaled_linear()
    torch.testing.assert_close(ref.alphas_cumprod.float(), ddpm.alphas_cumprod)
    assert isinstance(dc_zoo.schedule_from_scheduler(FlowMatchEulerDiscreteScheduler(shift=3.0)), FlowMatchingSchedule)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("family", ["sd", "dit"])
def test_half_precision_paths_give_finite_scores(dtype, family):
    backend = tiny_sd_backend(seed=0) if family == "sd" else tiny_dit_backend(seed=0)
    backend = backend.to(dtype)
    clf = dc_zoo.DiffusionClassifier(backend, dc_zoo.ScoringConfig(n_samples=(4, 8), to_keep=(2, 1)))
    classes = ["a", "b", "c"] if family == "sd" else [1, 2, 3]
    out = clf.classify(torch.rand(2, 3, 16, 16), classes)
    assert torch.isfinite(out.candidate_errors).all() and out.candidate_errors.dtype == torch.float32
    ref = dc_zoo.DiffusionClassifier(backend.float(), clf.scoring).classify(torch.rand(2, 3, 16, 16) * 0 + 0.5, classes)
    assert torch.isfinite(ref.candidate_errors).all()
