"""Stable Diffusion XL backend: the engine against a plain loop for every target, loading, levers, the VAE in fp16.

Tiny random SDXL pipelines (``dc_zoo.architectures`` ``tiny-sdxl``: 16 px, a "text_time" UNet, two
CLIP towers with the real CLIP tokenizer, EulerDiscreteScheduler). Random weights: the tests check
that scores are what a plain loop over diffusers' own components computes, never that they are
accurate.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

import dc_zoo
from test_engine_equivalence import reference_plan  # the paper's plan, written from the paper
from dc_zoo import _hub
from dc_zoo._factory import create_model
from dc_zoo._registry import get_entry, list_models
from dc_zoo.acceleration import denoising_network, optimize_backend
from dc_zoo.architectures import build_sdxl
from dc_zoo.noise import sample_noise
from dc_zoo.preprocess import to_pixels
from dc_zoo.timestep_plan import TimestepPlan

from tiny_models import clip_tokenizer

CLASSES = ["cat", "dog", "bird"]
FAST = {"n_samples": (2, 4), "to_keep": (2, 1)}


def tiny_sdxl(seed: int = 0, prediction_type: str = "epsilon") -> dict:
    return build_sdxl("tiny-sdxl", seed, prediction_type, tokenizer=clip_tokenizer())


def pipeline_of(components):
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline(**components, add_watermarker=False)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The tiny SDXL pipeline saved with save_pretrained, and in a Hub-format cache."""
    from conftest import write_hub_cache

    root = tmp_path_factory.mktemp("tiny-sdxl")
    folder = root / "sdxl"
    pipeline_of(tiny_sdxl()).save_pretrained(folder, safe_serialization=True)
    cache = root / "hub-cache"
    commit = write_hub_cache(folder, cache, "dc-zoo-test/tiny-sdxl")
    return {"dir": folder, "cache": cache, "repo": "dc-zoo-test/tiny-sdxl", "commit": commit}


# --------------------------------------------------------------------------- the engine against a plain loop
def reference_classify(unet, abar, x0, embeds, pooled, time_ids, noise, n_samples, to_keep, target_kind):
    """One image, one (candidate, timestep) at a time, noised by hand with the scheduler's alphas_cumprod."""
    t_to_eval, stages = reference_plan(abar.numel(), n_samples)
    errors = {c: [] for c in range(embeds.shape[0])}
    remaining = list(errors)
    for stage_ts, keep in zip(stages, to_keep):
        for c in remaining:
            for t in stage_ts:
                eps = noise[t_to_eval.index(t), 0][None].double()
                a, s = abar[t].sqrt(), (1 - abar[t]).sqrt()
                x_t = (a * x0 + s * eps).float()
                pred = unet(x_t, torch.tensor([t]), encoder_hidden_states=embeds[c : c + 1],
                            added_cond_kwargs={"text_embeds": pooled[c : c + 1], "time_ids": time_ids}).sample
                target = {"epsilon": eps, "v_prediction": a * eps - s * x0, "sample": x0}[target_kind]
                errors[c].append(F.mse_loss(pred.double(), target).item())
        means = torch.tensor([-torch.tensor(errors[c]).mean() for c in remaining])
        remaining = [remaining[i] for i in torch.topk(means, k=min(keep, len(remaining))).indices.tolist()]
    return remaining[0], {c: float(torch.tensor(v).mean()) for c, v in errors.items()}


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_engine_matches_a_plain_loop_for_every_target(prediction_type):
    components = tiny_sdxl(seed=1, prediction_type=prediction_type)
    backend = dc_zoo.StableDiffusionXLBackend(**components)
    assert backend.schedule.prediction_type == prediction_type
    scoring = dc_zoo.ScoringConfig(n_samples=(2, 6), to_keep=(2, 1), seed=5, batch_size=4)
    clf = dc_zoo.DiffusionClassifier(backend, scoring, templates=("a photo of a {}.",))
    torch.manual_seed(0)
    images = torch.rand(2, 3, 16, 16)
    out = clf.classify(images, CLASSES, sample_keys=["a", "b"])

    vae, unet = components["vae"], components["unet"]
    with torch.no_grad():
        embeds, _, pooled, _ = pipeline_of(components).encode_prompt([f"a photo of a {c}." for c in CLASSES],
                                                                     do_classifier_free_guidance=False)
        time_ids = torch.tensor([[16.0, 16.0, 0.0, 0.0, 16.0, 16.0]])  # original size, crop top-left, target size
        latents = vae.encode(to_pixels(images, backend.preprocess)).latent_dist.mean * vae.config.scaling_factor
        assert tuple(latents.shape[1:]) == backend.latent_shape == (4, 8, 8)
        abar = components["scheduler"].alphas_cumprod.double()
        t_to_eval, _ = reference_plan(1000, (2, 6))
        for i, key in enumerate(["a", "b"]):
            noise = sample_noise(5, key, t_to_eval, 1, latents.shape[1:])  # the engine's shared noise
            pred, errors = reference_classify(unet, abar, latents[i : i + 1].double(), embeds, pooled, time_ids, noise,
                                              (2, 6), (2, 1), prediction_type)
            assert int(out.predictions[i]) == pred
            for c, err in errors.items():
                assert float(out.candidate_errors[i, c]) == pytest.approx(err, rel=1e-4, abs=1e-6)


def test_conditions_time_ids_and_the_null_condition():
    backend = dc_zoo.StableDiffusionXLBackend(**tiny_sdxl(), preprocess=dc_zoo.PreprocessConfig(size=24))
    conditions = backend.encode_conditions(["a photo of a cat.", "a photo of a dog."])
    assert conditions["encoder_hidden_states"].shape == (2, 77, 16 + 24)  # CLIP-L and bigG widths, concatenated
    assert conditions["text_embeds"].shape == (2, 24)
    assert conditions["time_ids"].tolist() == [[24.0, 24.0, 0.0, 0.0, 24.0, 24.0]] * 2  # the preprocess size
    null = backend.unconditional()  # force_zeros_for_empty_prompt, as SDXL's pipeline config says
    assert not null["encoder_hidden_states"].any() and not null["text_embeds"].any()
    assert null["time_ids"].tolist() == [[24.0, 24.0, 0.0, 0.0, 24.0, 24.0]]
    encoded = dc_zoo.StableDiffusionXLBackend(**tiny_sdxl(), force_zeros_for_empty_prompt=False).unconditional()
    assert encoded["encoder_hidden_states"].abs().sum() > 0  # the encoded empty prompt instead
    with pytest.raises(TypeError, match="prompts"):
        backend.encode_conditions([7])


def test_sd_unet_is_refused_with_the_backend_to_use():
    from tiny_models import tiny_sd_components

    sd = tiny_sd_components()
    components = dict(tiny_sdxl(), unet=sd["unet"])
    with pytest.raises(ValueError, match="StableDiffusionBackend"):
        dc_zoo.StableDiffusionXLBackend(**components)


# --------------------------------------------------------------------------- the SDXL VAE in float16
@pytest.mark.parametrize("force_upcast, dtype, vae_dtype", [
    (True, torch.float16, torch.float32),  # the SDXL VAE overflows in float16: kept in float32
    (True, torch.bfloat16, torch.bfloat16),  # bfloat16 has float32's range
    (False, torch.float16, torch.float16),  # a float16-safe VAE (sdxl-vae-fp16-fix) is cast like the rest
])
def test_float16_keeps_the_sdxl_vae_in_float32(force_upcast, dtype, vae_dtype):
    components = tiny_sdxl()
    if not force_upcast:
        from diffusers import AutoencoderKL

        components["vae"] = AutoencoderKL.from_config(components["vae"].config, force_upcast=False)
    backend = dc_zoo.StableDiffusionXLBackend(**components).to(dtype)
    assert backend.dtype == backend.unet.dtype == backend.text_encoder_2.dtype == dtype
    assert backend.vae.dtype == vae_dtype
    x0 = backend.encode_images(torch.rand(1, 3, 16, 16) * 2 - 1)
    assert x0.dtype == torch.float32 and torch.isfinite(x0).all()
    half = {k: v.to(dtype) if isinstance(v, torch.nn.Module) else v for k, v in components.items()}
    assert dc_zoo.StableDiffusionXLBackend(**half).vae.dtype == vae_dtype  # a pipeline loaded in float16


# --------------------------------------------------------------------------- loading
def test_local_dir_and_offline_hub_cache_load_the_saved_pipeline(saved):
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    local = create_model(f"local-dir:{saved['dir']}", scoring=FAST)
    hub = create_model(f"hf-hub:{saved['repo']}", cache_dir=saved["cache"], scoring=FAST)
    assert isinstance(local.backend, dc_zoo.StableDiffusionXLBackend) and local.backend.force_zeros_for_empty_prompt
    entry = local.entry
    assert (entry.family, entry.prediction_type, entry.resolution, entry.template) == (
        "stable_diffusion_xl", "epsilon", 16, "a photo of a {}.")
    assert hub.source.commit == saved["commit"] and hub.source.source == "cache"
    in_memory = dc_zoo.DiffusionClassifier(dc_zoo.StableDiffusionXLBackend.from_pipeline(pipeline_of(tiny_sdxl())),
                                           local.scoring, templates=local.templates)
    errors = [c.classify(images, CLASSES).candidate_errors for c in (local, hub, in_memory)]
    assert torch.equal(errors[0], errors[1]) and torch.equal(errors[0], errors[2])


def test_model_index_settings_reach_the_backend(saved, tmp_path):
    folder = shutil.copytree(saved["dir"], tmp_path / "model")
    index = json.loads((folder / "model_index.json").read_text())
    index["force_zeros_for_empty_prompt"] = False
    (folder / "model_index.json").write_text(json.dumps(index))
    assert not create_model(str(folder), scoring=FAST).backend.force_zeros_for_empty_prompt
    shutil.rmtree(folder / "text_encoder_2")
    with pytest.raises(_hub.MissingComponentsError, match="text_encoder_2"):
        create_model(str(folder), scoring=FAST)


# --------------------------------------------------------------------------- speed levers
def test_speed_levers_leave_the_scores_unchanged():
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    scoring = dc_zoo.ScoringConfig(n_samples=(2, 4), to_keep=(2, 1), batch_size=3)
    eager_backend = dc_zoo.StableDiffusionXLBackend(**tiny_sdxl(seed=3))
    eager = dc_zoo.DiffusionClassifier(eager_backend, scoring).classify(images, CLASSES)
    backend = optimize_backend(dc_zoo.StableDiffusionXLBackend(**tiny_sdxl(seed=3)), channels_last=True,
                               attention="math")
    assert denoising_network(backend)[0] == "unet" and backend.speed_levers == ("channels_last", "attention=math")
    fast = dc_zoo.DiffusionClassifier(backend, scoring).classify(images, CLASSES)
    assert torch.equal(fast.predictions, eager.predictions)
    torch.testing.assert_close(fast.candidate_errors, eager.candidate_errors, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- the registry entries
@pytest.mark.parametrize("name, resolution", [("sdxl-base-1.0", 1024), ("sdxl-turbo", 512)])
def test_sdxl_entries(name, resolution):
    entry = get_entry(name)
    assert entry.family == "stable_diffusion_xl" and entry.pipeline_class == "StableDiffusionXLPipeline"
    assert entry.prediction_type == "epsilon" and entry.resolution == resolution and not entry.accuracy
    assert entry.hub_id.startswith("stabilityai/") and not entry.revision_pinned and entry.revision == "main"
    plan = TimestepPlan.from_stages(entry.n_samples, entry.cost["num_train_timesteps"])
    assert plan.evaluations(entry.cost["num_classes"], entry.to_keep) == entry.cost["evaluations_per_image"]
    assert (entry.n_samples, entry.to_keep) == ((50, 500), (5, 1))
    assert any("float32" in note and "force_upcast" in note for note in entry.notes)  # what happens to the VAE
    assert name in list_models(family="stable_diffusion_xl")


def test_from_pipeline_picks_the_backend_of_each_layout():
    """``DiffusionClassifier.from_pipeline`` tells SDXL (unet + text_encoder_2) from SD 1.x/2.x and SD3."""
    from test_backend_sd3 import pipeline_of as sd3_pipeline, tiny_sd3
    from tiny_models import tiny_sd_components

    from diffusers import StableDiffusionPipeline

    sdxl = dc_zoo.DiffusionClassifier.from_pipeline(pipeline_of(tiny_sdxl()))
    sd3 = dc_zoo.DiffusionClassifier.from_pipeline(sd3_pipeline(tiny_sd3()))
    sd = dc_zoo.DiffusionClassifier.from_pipeline(StableDiffusionPipeline(**tiny_sd_components(), safety_checker=None,
                                                                          feature_extractor=None,
                                                                          requires_safety_checker=False))
    assert isinstance(sdxl.backend, dc_zoo.StableDiffusionXLBackend)
    assert isinstance(sd3.backend, dc_zoo.StableDiffusion3Backend)
    assert type(sd.backend) is dc_zoo.StableDiffusionBackend


def test_half_precision_loads_the_sdxl_vae_in_float32_from_its_weights(saved):
    clf = create_model(f"local-dir:{saved['dir']}", dtype="float16", scoring=FAST)
    assert clf.backend.unet.dtype == torch.float16 and clf.backend.vae.dtype == torch.float32
    from diffusers import AutoencoderKL

    original = AutoencoderKL.from_pretrained(saved["dir"] / "vae")  # float32, never rounded to float16
    assert all(torch.equal(a, b) for a, b in zip(clf.backend.vae.state_dict().values(), original.state_dict().values()))
