"""The engine against an independent, plain loop written from ../shared/REFERENCE.md.

The reference below knows nothing of the engine: it builds the plan from the paper's
formula, noises by hand with the scheduler's alphas_cumprod, calls the networks one
(candidate, timestep) at a time and prunes with the paper's topk rule. Same plan and
noise in, the engine must give the same errors (float32 tolerance) and predictions.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dc_zoo
from dc_zoo.noise import sample_noise
from dc_zoo.preprocess import to_pixels

from tiny_models import tiny_dit_components, tiny_sd_components


def reference_plan(T, n_samples):
    max_n = max(n_samples)
    start = T // max_n // 2
    t_to_eval = list(range(start, T, T // max_n))[:max_n]
    stages, evaluated = [], set()
    for n in n_samples:
        ts = t_to_eval[len(t_to_eval) // n // 2 :: len(t_to_eval) // n][:n]
        ts = [t for t in ts if t not in evaluated]
        evaluated.update(ts)
        stages.append(ts)
    return t_to_eval, stages


def reference_error(pred, target, loss):
    fn = {"l2": F.mse_loss, "l1": F.l1_loss, "huber": F.huber_loss}[loss]
    return fn(target.float(), pred.float(), reduction="none").mean().item()


def reference_classify(net, latent, conds, abar, n_samples, to_keep, loss, noise, target_kind="epsilon"):
    """One image. noise[j, r] is the eps of the j-th timestep of the plan (trial r)."""
    T = abar.numel()
    t_to_eval, stages = reference_plan(T, n_samples)
    errors = {c: [] for c in range(len(conds))}
    remaining = list(range(len(conds)))
    evals = 0
    for stage_ts, keep in zip(stages, to_keep):
        for c in remaining:
            for t in stage_ts:
                j = t_to_eval.index(t)
                for r in range(noise.shape[1]):
                    eps = noise[j, r][None]
                    a = abar[t].sqrt()
                    s = (1 - abar[t]).sqrt()
                    x_t = (a * latent + s * eps).float()
                    pred = net(x_t, torch.tensor([t]), conds[c : c + 1])
                    target = eps if target_kind == "epsilon" else a * eps - s * latent
                    errors[c].append(reference_error(pred, target, loss))
                    evals += 1
        means = torch.tensor([-torch.tensor(errors[c]).mean() for c in remaining])
        best = torch.topk(means, k=min(keep, len(remaining))).indices.tolist()
        remaining = [remaining[i] for i in best]
    mean_errors = {c: float(torch.tensor(v).mean()) for c, v in errors.items()}
    return remaining[0], mean_errors, evals


@pytest.mark.parametrize("loss", ["l2", "l1", "huber"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_stable_diffusion_engine_matches_reference_loop(loss, prediction_type):
    comps = tiny_sd_components(seed=1, prediction_type=prediction_type)
    backend = dc_zoo.StableDiffusionBackend(**comps)
    scoring = dc_zoo.ScoringConfig(n_samples=(4, 12), to_keep=(2, 1), loss=loss, n_trials=2, seed=3, batch_size=5)
    clf = dc_zoo.DiffusionClassifier(backend, scoring)
    classes = ["zero", "one", "two", "three"]
    torch.manual_seed(0)
    images = torch.rand(2, 3, 16, 16)
    out = clf.classify(images, classes, templates=["a photo of the number: '{}'."], sample_keys=["a", "b"])

    tok, te, vae, unet = comps["tokenizer"], comps["text_encoder"], comps["vae"], comps["unet"]
    ids = tok([f"a photo of the number: '{c}'." for c in classes], padding="max_length",
              max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        embeds = te(ids)[0]
        pixels = to_pixels(images, backend.preprocess)
        latents = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
        abar = comps["scheduler"].alphas_cumprod.double()
        net = lambda x, t, c: unet(x, t, encoder_hidden_states=c).sample  # noqa: E731
        for i, key in enumerate(["a", "b"]):
            noise = sample_noise(3, key, reference_plan(1000, (4, 12))[0], 2, latents.shape[1:])
            pred, mean_errors, evals = reference_classify(
                net, latents[i : i + 1].double(), embeds, abar, (4, 12), (2, 1), loss, noise.double(),
                target_kind=prediction_type,
            )
            assert int(out.predictions[i]) == pred
            assert int(out.evaluations[i]) == evals
            for c, err in mean_errors.items():
                assert float(out.candidate_errors[i, c]) == pytest.approx(err, rel=1e-4, abs=1e-6)


def test_dit_engine_matches_reference_loop_on_epsilon_half():
    comps = tiny_dit_components(seed=2)
    backend = dc_zoo.DiTBackend(**comps)
    scoring = dc_zoo.ScoringConfig(n_samples=(5, 20), to_keep=(3, 1), seed=7, batch_size=16)
    clf = dc_zoo.DiffusionClassifier(backend, scoring)
    torch.manual_seed(1)
    images = torch.rand(1, 3, 16, 16)
    labels = [0, 3, 5, 7, 9]
    out = clf.classify(images, labels, sample_keys=[11])
    vae, dit = comps["vae"], comps["transformer"]
    with torch.no_grad():
        latents = vae.encode(to_pixels(images, backend.preprocess)).latent_dist.mean * vae.config.scaling_factor
        conds = torch.tensor(labels)
        net = lambda x, t, c: dit(x, timestep=t, class_labels=c).sample[:, :4]  # noqa: E731
        noise = sample_noise(7, 11, reference_plan(1000, (5, 20))[0], 1, latents.shape[1:])
        pred, mean_errors, evals = reference_classify(
            net, latents.double(), conds, comps["scheduler"].alphas_cumprod.double(), (5, 20), (3, 1), "l2",
            noise.double(),
        )
    assert int(out.predictions[0]) == pred and int(out.evaluations[0]) == evals
    for c, err in mean_errors.items():
        assert float(out.candidate_errors[0, c]) == pytest.approx(err, rel=1e-4, abs=1e-6)


def test_caller_supplied_noise_is_used_and_read_back():
    backend = dc_zoo.StableDiffusionBackend(**tiny_sd_components(seed=0))
    scoring = dc_zoo.ScoringConfig(n_samples=(4, 8), to_keep=(2, 1))
    clf = dc_zoo.DiffusionClassifier(backend, scoring)
    candidates = clf.candidates(["a", "b", "c"])
    pixels = to_pixels(torch.rand(1, 3, 16, 16), backend.preprocess)
    keys = ["img"]
    drawn = clf.score_pixels(pixels, candidates, keys)
    own = torch.randn(1, 8, 1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    supplied = clf.score_pixels(pixels, candidates, keys, noise=own)
    regenerated = sample_noise(0, "img", drawn.plan.timesteps, 1, (4, 8, 8))[None]
    again = clf.score_pixels(pixels, candidates, keys, noise=regenerated)
    assert torch.allclose(again.timestep_errors, drawn.timestep_errors, equal_nan=True)
    assert not torch.allclose(supplied.candidate_errors, drawn.candidate_errors)
    assert drawn.plan.timesteps == tuple(reference_plan(1000, (4, 8))[0])
