"""FLUX.1 backend: the engine against a plain rectified-flow loop, diffusers' conventions, loading, levers, the entry.

Tiny random FluxPipeline components (``dc_zoo.architectures`` ``tiny-flux``: 16 px, 4-channel VAE
latents packed into 16 tokens of 16 channels, CLIP with the real CLIP tokenizer, a tiny T5 with a
T5 tokenizer built in code), in a schnell layout (no guidance embedding, static shift) and a dev
layout (guidance embedding, dynamic shifting). Random weights: the tests check that scores are
what a plain loop over diffusers' own components computes, never that they are accurate.
"""
from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F

import dc_zoo
from test_engine_equivalence import reference_plan  # the paper's plan, written from the paper
from dc_zoo._factory import FAMILIES, create_model
from dc_zoo._registry import RegistryValidationError, get_entry, list_models, validate_entry
from dc_zoo.acceleration import denoising_network, optimize_backend
from dc_zoo.architectures import build_backend, build_flux
from dc_zoo.noise_schedules import FlowMatchingSchedule
from dc_zoo.preprocess import to_pixels
from dc_zoo.timestep_plan import TimestepPlan

from tiny_models import clip_tokenizer

CLASSES = ["cat", "dog", "bird"]
PROMPTS = [f"a photo of a {c}." for c in CLASSES]
SIZE = dc_zoo.PreprocessConfig(size=16)
FAST = {"n_samples": (2, 4), "to_keep": (2, 1)}
VARIANTS = {"schnell": dict(guidance_embeds=False, dynamic_shifting=False),
            "dev": dict(guidance_embeds=True, dynamic_shifting=True)}


def tiny_flux(seed: int = 0, variant: str = "schnell") -> dict:
    return build_flux("tiny-flux", seed, tokenizer=clip_tokenizer(), **VARIANTS[variant])


def pipeline_of(components):
    from diffusers import FluxPipeline

    return FluxPipeline(**components)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The tiny schnell-layout pipeline saved with save_pretrained, and in a Hub cache under two repo ids:
    a test repo and the registry entry's (so the zoo name resolves offline to the tiny weights)."""
    from conftest import write_hub_cache

    root = tmp_path_factory.mktemp("tiny-flux")
    folder = root / "flux"
    pipeline_of(tiny_flux()).save_pretrained(folder, safe_serialization=True)
    cache = root / "hub-cache"
    repo = "dc-zoo-test/tiny-flux"
    commit = write_hub_cache(folder, cache, repo)
    write_hub_cache(folder, cache, get_entry("flux-1-schnell").hub_id)
    return {"folder": folder, "cache": cache, "repo": repo, "commit": commit}


# --------------------------------------------------------------------------- the engine against a plain loop
def reference_flux_classify(transformer, sigma_of, x0, embeds, pooled, text_ids, image_ids, guidance, noise,
                            t_to_eval, stages, to_keep):
    """One image, one (candidate, timestep) at a time: x_t = (1 - s) x0 + s eps on the packed latent,
    the transformer given s (FluxPipeline passes timestep / 1000 = s), mean squared error to eps - x0."""
    errors = {c: [] for c in range(embeds.shape[0])}
    remaining = list(errors)
    for stage_ts, keep in zip(stages, to_keep):
        for c in remaining:
            for t in stage_ts:
                eps = noise[t_to_eval.index(t), 0][None]
                s = sigma_of(t)
                x_t = (1 - s) * x0 + s * eps
                pred = transformer(hidden_states=x_t, timestep=s.reshape(1), guidance=guidance,
                                   pooled_projections=pooled[c : c + 1], encoder_hidden_states=embeds[c : c + 1],
                                   txt_ids=text_ids, img_ids=image_ids).sample
                errors[c].append(F.mse_loss(pred, eps - x0).item())
        means = torch.tensor([-torch.tensor(errors[c]).mean() for c in remaining])
        remaining = [remaining[i] for i in torch.topk(means, k=min(keep, len(remaining))).indices.tolist()]
    return remaining[0], {c: float(torch.tensor(v).mean()) for c, v in errors.items()}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_engine_matches_a_plain_flux_loop(variant):
    components = tiny_flux(seed=1, variant=variant)
    backend = dc_zoo.FluxBackend(**components, preprocess=SIZE)
    scoring = dc_zoo.ScoringConfig(n_samples=(2, 4), to_keep=(2, 1), seed=5, batch_size=4)
    clf = dc_zoo.DiffusionClassifier(backend, scoring, templates=("a photo of a {}.",))
    torch.manual_seed(0)
    images = torch.rand(2, 3, 16, 16)
    out = clf.classify(images, CLASSES, sample_keys=["a", "b"])

    pipe = pipeline_of(components)
    vae, transformer = components["vae"], components["transformer"]
    with torch.no_grad():
        embeds, pooled, text_ids = pipe.encode_prompt(PROMPTS, max_sequence_length=256 if variant == "schnell" else 512)
        assert embeds.shape == (3, backend.max_sequence_length, 32) and pooled.shape == (3, 16)
        latents = vae.encode(to_pixels(images, backend.preprocess)).latent_dist.mean
        latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor  # [2, 4, 8, 8]
        packed = pipe._pack_latents(latents, 2, 4, 8, 8)
        assert tuple(packed.shape[1:]) == backend.latent_shape == out.latent_shape == (16, 16)
        image_ids = pipe._prepare_latent_image_ids(1, 4, 4, "cpu", embeds.dtype)
        guidance = torch.full([1], 1.0) if variant == "dev" else None
        t_to_eval, stages = reference_plan(1000, (2, 4))
        assert list(out.timesteps) == t_to_eval
        noise = out.noise()  # the classifier's own eps, [N, n_timesteps, n_trials, 16, 16]
        assert noise.shape == (2, len(t_to_eval), 1, 16, 16)
        for i in range(2):
            pred, errors = reference_flux_classify(
                transformer, lambda t: backend.schedule.sigma(torch.tensor([t]))[0], packed[i : i + 1], embeds,
                pooled, text_ids, image_ids, guidance, noise[i], t_to_eval, stages, (2, 1))
            assert int(out.predictions[i]) == pred
            for c, err in errors.items():
                assert float(out.candidate_errors[i, c]) == pytest.approx(err, rel=1e-5, abs=1e-7)


def test_diffusers_conventions_time_shift_target_and_ids(caplog):
    """The schedule is diffusers' FLUX schedule: sigma (not sigma x 1000) as the network's time,
    the static shift equal to the dynamic one at this resolution, the velocity as target."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    t = torch.tensor([0, 250, 500, 999])
    u = (t.float() + 1) / 1000
    # schnell layout: a static-shift scheduler; the network is given its sigma table, i.e. timestep / 1000.
    schnell = tiny_flux()
    backend = dc_zoo.FluxBackend(**schnell, preprocess=SIZE)
    scheduler = schnell["scheduler"]
    assert isinstance(backend.schedule, FlowMatchingSchedule) and backend.schedule.timestep_scale == 1.0
    assert backend.schedule.shift == 1.0 and backend.max_sequence_length == 256 and not backend.guidance_embeds
    torch.testing.assert_close(backend.schedule.model_timestep(t), scheduler.timesteps[999 - t] / 1000)
    torch.testing.assert_close(backend.schedule.sigma(t), scheduler.sigmas[999 - t])
    # dev layout: dynamic shifting; mu from the 16 image tokens, diffusers' exponential time shift.
    with caplog.at_level(logging.INFO, logger="dc_zoo.backends.flux"):
        dev = dc_zoo.FluxBackend(**tiny_flux(variant="dev"), preprocess=SIZE)
    mu = calculate_shift(16, 256, 4096, 0.5, 1.15)
    assert dev.schedule.shift == pytest.approx(math.exp(mu)) and "exp(mu)" in caplog.text
    torch.testing.assert_close(dev.schedule.sigma(t), dev.scheduler.time_shift(mu, 1.0, u))
    assert dev.max_sequence_length == 512 and dev.guidance_embeds
    # the sign of the target: diffusers' Euler step with model_output = eps - x0 stays on the line.
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 16, 16, generator=gen), torch.randn(2, 16, 16, generator=gen)
    scheduler.set_timesteps(4)
    s, s_next = scheduler.sigmas[1], scheduler.sigmas[2]
    x_t = (1 - s) * x0 + s * eps
    stepped = scheduler.step(eps - x0, scheduler.timesteps[1], x_t, return_dict=False)[0]
    torch.testing.assert_close(stepped, (1 - s_next) * x0 + s_next * eps)
    assert torch.equal(backend.schedule.target(x0, eps, t[:2]), eps - x0)
    # denoise is the transformer's output with the pipeline's ids (and, for dev, guidance 1.0 per row).
    conditions = dev.encode_conditions(PROMPTS[:2])
    sigma = dev.schedule.model_timestep(t[1:3])
    txt_ids = torch.zeros(512, 3)
    img_ids = dev._pipeline._prepare_latent_image_ids(1, 4, 4, "cpu", torch.float32)
    with torch.inference_mode():
        direct = dev.transformer(hidden_states=x_t, timestep=sigma, guidance=torch.ones(2),
                                 pooled_projections=conditions["pooled_projections"],
                                 encoder_hidden_states=conditions["encoder_hidden_states"], txt_ids=txt_ids,
                                 img_ids=img_ids).sample
        assert torch.equal(dev.denoise(x_t, sigma, conditions), direct)
    unconditional = backend.unconditional()
    assert unconditional["encoder_hidden_states"].shape == (1, 256, 32)
    with pytest.raises(TypeError, match="prompts"):
        backend.encode_conditions([3])
    with pytest.raises(ValueError, match="multiple of 4"):
        dc_zoo.FluxBackend(**schnell, preprocess=dc_zoo.PreprocessConfig(size=18))


# --------------------------------------------------------------------------- loading
def test_local_dir_hub_cache_and_zoo_name_load_the_saved_pipeline(saved):
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    local = create_model(f"local-dir:{saved['folder']}", scoring=FAST, preprocess=SIZE)
    hub = create_model(f"hf-hub:{saved['repo']}", cache_dir=saved["cache"], scoring=FAST, preprocess=SIZE)
    zoo = create_model("flux-1-schnell", cache_dir=saved["cache"], scoring=FAST, preprocess=SIZE)
    assert isinstance(local.backend, dc_zoo.FluxBackend) and isinstance(zoo.backend, dc_zoo.FluxBackend)
    assert type(local.backend.text_encoder_2).__name__ == "T5EncoderModel"
    entry = local.entry
    # outside the registry: FluxPipeline's default image (128 latent pixels x the VAE factor 2)
    assert (entry.family, entry.prediction_type, entry.resolution, entry.template, entry.default_dtype) == (
        "flux", "flow_prediction", 256, "a photo of a {}.", "bfloat16")
    assert hub.source.commit == saved["commit"] and hub.source.source == "cache"
    assert zoo.entry == get_entry("flux-1-schnell") and zoo.source.repo_id == "black-forest-labs/FLUX.1-schnell"
    components = tiny_flux()
    in_memory = dc_zoo.DiffusionClassifier(dc_zoo.FluxBackend(**components, preprocess=SIZE), local.scoring,
                                           templates=local.templates)
    errors = [c.classify(images, CLASSES).candidate_errors for c in (local, hub, zoo, in_memory)]
    assert all(torch.equal(errors[0], e) for e in errors[1:])
    # DiffusionClassifier.from_pipeline picks the FLUX backend (default: the pipeline's 1024-px-style size)
    from_pipe = dc_zoo.DiffusionClassifier.from_pipeline(pipeline_of(components))
    assert isinstance(from_pipe.backend, dc_zoo.FluxBackend) and from_pipe.backend.latent_shape == (4096, 16)


# --------------------------------------------------------------------------- speed levers
def test_speed_levers_leave_the_scores_unchanged():
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    scoring = dc_zoo.ScoringConfig(n_samples=(2, 4), to_keep=(2, 1), batch_size=3)
    eager_backend = build_backend("tiny-flux", seed=3, tokenizer=clip_tokenizer())
    eager = dc_zoo.DiffusionClassifier(eager_backend, scoring).classify(images, CLASSES)
    backend = optimize_backend(build_backend("tiny-flux", seed=3, tokenizer=clip_tokenizer()), channels_last=True,
                               attention="math")
    assert denoising_network(backend)[0] == "transformer" and backend.preprocess.size == 16
    assert backend.speed_levers == ("channels_last", "attention=math")
    fast = dc_zoo.DiffusionClassifier(backend, scoring).classify(images, CLASSES)
    assert torch.equal(fast.predictions, eager.predictions)
    torch.testing.assert_close(fast.candidate_errors, eager.candidate_errors, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- the registry entry
def test_flux_1_schnell_entry():
    entry = get_entry("flux-1-schnell")
    assert (entry.family, entry.pipeline_class, entry.prediction_type) == ("flux", "FluxPipeline", "flow_prediction")
    assert (entry.hub_id, entry.license, entry.resolution, entry.default_dtype, entry.template) == (
        "black-forest-labs/FLUX.1-schnell", "apache-2.0", 1024, "bfloat16", "a photo of a {}.")
    assert entry.revision == "main" and not entry.revision_pinned and not entry.accuracy
    assert (entry.n_samples, entry.to_keep, entry.loss) == ((50, 500), (5, 1), "l2")
    plan = TimestepPlan.from_stages(entry.n_samples, entry.cost["num_train_timesteps"])
    assert entry.cost == {"num_classes": 10, "num_train_timesteps": 1000, "evaluations_per_image": 2750}
    assert plan.evaluations(entry.cost["num_classes"], entry.to_keep) == entry.cost["evaluations_per_image"]
    text = " ".join(entry.notes + entry.limitations)
    for fragment in ("timestep-distilled", "1-4 step", "unmeasured", "No published Diffusion Classifier accuracy",
                     "T5-XXL", "exp(mu)", "unpinned"):
        assert fragment in text
    assert list_models(family="flux") == ["flux-1-schnell"] and "flux" in FAMILIES
    with pytest.raises(RegistryValidationError, match="set prediction_type to 'flow_prediction'"):
        validate_entry(dict(entry.to_dict(), prediction_type="epsilon"), entry.name)


def test_the_benchmark_counts_flux_flops_on_the_meta_device():
    """FLUX.1-schnell at 1024 px: ~6.5B parameters applied to each token (each double-stream token
    goes through one stream; the modulation layers act once per image) x 2 FLOPs x (4096 image +
    256 text tokens) ~ 56 TFLOP of matrix work, plus ~13 TFLOP of attention; the meta count must
    equal a real forward pass on the tiny model."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import throughput

    backend = dc_zoo.architectures.build_backend("tiny-flux")
    x0 = backend.encode_images(torch.zeros(1, 3, 16, 16))
    real = throughput.flops_per_eval(backend, x0, backend.encode_conditions(["a photo of a cat."]))
    assert throughput.meta_flops_per_eval("tiny-flux") == real > 0
    assert 6e13 < throughput.meta_flops_per_eval("flux-1-schnell") < 8e13


def test_a_resolution_shifted_scheduler_follows_the_classifiers_size_or_refuses():
    """FLUX.1 [dev]'s noise levels depend on the image's token count: a backend fixed for 16 px must
    not silently score 32 px images, and from_pipeline hands the classifier's size to the backend."""
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    scoring = dc_zoo.ScoringConfig(n_samples=(2,), to_keep=(1,), batch_size=8)
    big = dc_zoo.PreprocessConfig(size=32)
    fixed = dc_zoo.DiffusionClassifier(dc_zoo.FluxBackend(**tiny_flux(variant="dev")), scoring, preprocess=big)
    with pytest.raises(ValueError, match=r"PreprocessConfig\(size=32\)"):
        fixed.classify(images, CLASSES)
    clf = dc_zoo.DiffusionClassifier.from_pipeline(pipeline_of(tiny_flux(variant="dev")), scoring=scoring,
                                                   preprocess=big)
    assert clf.backend.preprocess.size == 32 and clf.backend.image_seq_len == clf.latent_shape[0] == 64
    assert clf.classify(images, CLASSES).predictions.shape == (1,)
    schnell = dc_zoo.DiffusionClassifier(dc_zoo.FluxBackend(**tiny_flux()), scoring, preprocess=big)
    assert schnell.classify(images, CLASSES).predictions.shape == (1,)  # a static shift fits every size


def test_hub_downloads_skip_the_single_file_checkpoints_beside_the_diffusers_folders():
    from fnmatch import fnmatch

    from dc_zoo._hub import _IGNORE

    def skipped(path):
        return any(fnmatch(path, pattern) for pattern in _IGNORE)

    for path in ("flux1-schnell.safetensors", "ae.safetensors", "sd_xl_base_1.0.safetensors",
                 "sd3.5_large.safetensors", "text_encoders/t5xxl_fp16.safetensors"):
        assert skipped(path), path
    for path in ("transformer/diffusion_pytorch_model-00001-of-00003.safetensors", "vae/diffusion_pytorch_model.safetensors",
                 "text_encoder_2/model-00001-of-00002.safetensors", "text_encoder/model.safetensors", "model_index.json"):
        assert not skipped(path), path
