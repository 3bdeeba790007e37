"""Stable Diffusion 3 / 3.5 backend: the engine against a plain rectified-flow loop, loading, levers, gated repos.

Tiny random SD3 pipelines (``dc_zoo.architectures`` ``tiny-sd3``: 16 px, two CLIP towers with the
real CLIP tokenizer, optionally a tiny T5 with a T5 tokenizer built in code). Random weights: the
tests check that scores are what a plain loop over diffusers' own components computes, never
that they are accurate.
"""
from __future__ import annotations

import http.server
import json
import shutil
import threading

import pytest
import torch
import torch.nn.functional as F

import dc_zoo
from test_engine_equivalence import reference_plan  # the paper's plan, written from the paper
from dc_zoo import _hub
from dc_zoo._factory import create_model, resolve_model
from dc_zoo._registry import RegistryValidationError, get_entry, list_models, validate_entry
from dc_zoo.acceleration import denoising_network, optimize_backend
from dc_zoo.architectures import build_sd3
from dc_zoo.noise import sample_noise
from dc_zoo.noise_schedules import FlowMatchingSchedule
from dc_zoo.preprocess import to_pixels
from dc_zoo.timestep_plan import TimestepPlan

from tiny_models import clip_tokenizer

CLASSES = ["cat", "dog", "bird"]
FAST = {"n_samples": (2, 4), "to_keep": (2, 1)}
SD3_ENTRIES = ["sd-3-medium", "sd-3.5-medium", "sd-3.5-large"]


def tiny_sd3(seed: int = 0, t5: bool = False) -> dict:
    return build_sd3("tiny-sd3", seed, t5=t5, tokenizer=clip_tokenizer())


def pipeline_of(components):
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline(**components)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The tiny SD3 pipeline (no T5) and one with T5, saved with save_pretrained; the first also in a Hub cache."""
    from conftest import write_hub_cache

    root = tmp_path_factory.mktemp("tiny-sd3")
    plain, with_t5 = root / "sd3", root / "sd3-t5"
    pipeline_of(tiny_sd3()).save_pretrained(plain, safe_serialization=True)
    pipeline_of(tiny_sd3(t5=True)).save_pretrained(with_t5, safe_serialization=True)
    cache = root / "hub-cache"
    commit = write_hub_cache(plain, cache, "dc-zoo-test/tiny-sd3")
    return {"plain": plain, "t5": with_t5, "cache": cache, "repo": "dc-zoo-test/tiny-sd3", "commit": commit}


# --------------------------------------------------------------------------- the engine against a plain loop
def reference_flow_classify(transformer, scheduler, x0, embeds, pooled, noise, n_samples, to_keep):
    """One image, one (candidate, timestep) at a time: x_t = (1 - s) x0 + s eps with diffusers' own
    sigma table, the network given diffusers' timestep value, mean squared error to eps - x0."""
    T = scheduler.config.num_train_timesteps
    t_to_eval, stages = reference_plan(T, n_samples)
    errors = {c: [] for c in range(embeds.shape[0])}
    remaining = list(errors)
    for stage_ts, keep in zip(stages, to_keep):
        for c in remaining:
            for t in stage_ts:
                eps = noise[t_to_eval.index(t), 0][None]
                s = scheduler.sigmas[T - 1 - t]  # training index t <-> diffusers' timestep t + 1
                x_t = (1 - s) * x0 + s * eps
                pred = transformer(hidden_states=x_t, timestep=scheduler.timesteps[T - 1 - t][None],
                                   encoder_hidden_states=embeds[c : c + 1], pooled_projections=pooled[c : c + 1]).sample
                errors[c].append(F.mse_loss(pred, eps - x0).item())
        means = torch.tensor([-torch.tensor(errors[c]).mean() for c in remaining])
        remaining = [remaining[i] for i in torch.topk(means, k=min(keep, len(remaining))).indices.tolist()]
    return remaining[0], {c: float(torch.tensor(v).mean()) for c, v in errors.items()}


@pytest.mark.parametrize("t5", [False, True], ids=["clip-only", "with-t5"])
def test_engine_matches_a_plain_rectified_flow_loop(t5):
    components = tiny_sd3(seed=1, t5=t5)
    backend = dc_zoo.StableDiffusion3Backend(**components)
    scoring = dc_zoo.ScoringConfig(n_samples=(2, 6), to_keep=(2, 1), seed=5, batch_size=4)
    clf = dc_zoo.DiffusionClassifier(backend, scoring, templates=("a photo of a {}.",))
    torch.manual_seed(0)
    images = torch.rand(2, 3, 16, 16)
    out = clf.classify(images, CLASSES, sample_keys=["a", "b"])

    vae, transformer = components["vae"], components["transformer"]
    prompts = [f"a photo of a {c}." for c in CLASSES]
    with torch.no_grad():
        embeds, _, pooled, _ = pipeline_of(components).encode_prompt(prompts, None, None,
                                                                     do_classifier_free_guidance=False)
        if t5:  # T5's part of the sequence is really T5's: it differs between prompts
            assert not torch.equal(embeds[0, 77:], embeds[1, 77:])
        latents = vae.encode(to_pixels(images, backend.preprocess)).latent_dist.mean
        latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
        assert tuple(latents.shape[1:]) == backend.latent_shape == (16, 8, 8)
        t_to_eval, _ = reference_plan(1000, (2, 6))
        for i, key in enumerate(["a", "b"]):
            noise = sample_noise(5, key, t_to_eval, 1, latents.shape[1:])  # the engine's shared noise
            pred, errors = reference_flow_classify(transformer, components["scheduler"], latents[i : i + 1], embeds,
                                                   pooled, noise, (2, 6), (2, 1))
            assert int(out.predictions[i]) == pred
            for c, err in errors.items():
                assert float(out.candidate_errors[i, c]) == pytest.approx(err, rel=1e-4, abs=1e-6)


def test_target_is_the_velocity_and_x_t_is_what_diffusers_builds():
    components = tiny_sd3()
    backend = dc_zoo.StableDiffusion3Backend(**components)
    schedule, scheduler = backend.schedule, components["scheduler"]
    assert isinstance(schedule, FlowMatchingSchedule) and schedule.shift == scheduler.config.shift == 3.0
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 16, 8, 8, generator=gen), torch.randn(3, 16, 8, 8, generator=gen)
    t = torch.tensor([0, 400, 999])
    diffusers_t = scheduler.timesteps[999 - t]
    torch.testing.assert_close(schedule.add_noise(x0, eps, t), scheduler.scale_noise(x0, diffusers_t, eps))
    torch.testing.assert_close(schedule.model_timestep(t), diffusers_t)
    assert torch.equal(schedule.target(x0, eps, t), eps - x0)
    conditions = backend.encode_conditions(["a photo of a cat.", "a photo of a dog.", ""])
    assert conditions["encoder_hidden_states"].shape == (3, 77 + 256, 48)  # 77 CLIP + 256 T5 (zeros) tokens
    assert conditions["pooled_projections"].shape == (3, 16 + 24)
    unconditional = backend.unconditional()
    for key in conditions:  # the empty prompt (encoded alone: batch-size rounding only)
        torch.testing.assert_close(unconditional[key], conditions[key][2:])
    with torch.inference_mode():
        direct = components["transformer"](x0, conditions["encoder_hidden_states"], conditions["pooled_projections"],
                                           diffusers_t).sample
        assert torch.equal(backend.denoise(x0, diffusers_t, conditions), direct)
    with pytest.raises(TypeError, match="prompts"):
        backend.encode_conditions([3])


# --------------------------------------------------------------------------- loading
def test_local_dir_and_offline_hub_cache_load_the_saved_pipeline(saved):
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    local = create_model(f"local-dir:{saved['plain']}", scoring=FAST)
    hub = create_model(f"hf-hub:{saved['repo']}", cache_dir=saved["cache"], scoring=FAST)
    assert isinstance(local.backend, dc_zoo.StableDiffusion3Backend) and local.backend.text_encoder_3 is None
    entry = local.entry
    assert (entry.family, entry.prediction_type, entry.resolution, entry.template) == (
        "stable_diffusion_3", "flow_prediction", 16, "a photo of a {}.")
    assert hub.source.commit == saved["commit"] and hub.source.source == "cache"
    in_memory = dc_zoo.DiffusionClassifier(dc_zoo.StableDiffusion3Backend(**tiny_sd3()), local.scoring,
                                           templates=local.templates)
    errors = [c.classify(images, CLASSES).candidate_errors for c in (local, hub, in_memory)]
    assert torch.equal(errors[0], errors[1]) and torch.equal(errors[0], errors[2])


def test_saved_pipeline_with_t5_loads_it(saved):
    clf = create_model(str(saved["t5"]), scoring=FAST)
    backend = clf.backend
    assert type(backend.text_encoder_3).__name__ == "T5EncoderModel" and backend.tokenizer_3 is not None
    reference = dc_zoo.StableDiffusion3Backend.from_pipeline(pipeline_of(tiny_sd3(t5=True)))
    prompts = ["a photo of a cat.", "a photo of a dog."]
    ours, theirs = backend.encode_conditions(prompts), reference.encode_conditions(prompts)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def _edit_index(folder, drop=(), **changes):
    path = folder / "model_index.json"
    index = json.loads(path.read_text())
    index.update(changes)
    for key in drop:
        index.pop(key)
    path.write_text(json.dumps(index))


@pytest.mark.parametrize("case, edit, error, fragments", [
    ("T5 keys absent", lambda d: _edit_index(d, drop=("text_encoder_3", "tokenizer_3")), None, []),
    ("T5 without its tokenizer", lambda d: _edit_index(d, text_encoder_3=["transformers", "T5EncoderModel"]),
     _hub.MissingComponentsError, ["text_encoder_3", "tokenizer_3", "[null, null]"]),
    ("declared T5 without a folder",
     lambda d: _edit_index(d, text_encoder_3=["transformers", "T5EncoderModel"],
                           tokenizer_3=["transformers", "T5Tokenizer"]),
     _hub.MissingComponentsError, ["text_encoder_3 (no text_encoder_3/ folder)"]),
    ("tokenizer_2 of the wrong kind", lambda d: _edit_index(d, tokenizer_2=["transformers", "CLIPTextModel"]),
     _hub.RemoteCodeError, ["'tokenizer_2'", "PreTrainedTokenizerBase"]),
    ("text_encoder_2 from the repo", lambda d: _edit_index(d, text_encoder_2=["my_module", "Encoder"]),
     _hub.RemoteCodeError, ["library 'my_module'"]),
])
def test_optional_t5_and_the_component_safety_checks(saved, tmp_path, case, edit, error, fragments):
    folder = shutil.copytree(saved["plain"], tmp_path / "model")
    edit(folder)
    if error is None:
        resolved = resolve_model(str(folder))
        assert "text_encoder_3" not in resolved.components and resolved.entry.family == "stable_diffusion_3"
        return
    with pytest.raises(error) as info:
        resolve_model(str(folder))
    for fragment in fragments:
        assert fragment in str(info.value)


# --------------------------------------------------------------------------- speed levers
def test_speed_levers_leave_the_scores_unchanged():
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    scoring = dc_zoo.ScoringConfig(n_samples=(2, 4), to_keep=(2, 1), batch_size=3)
    eager_backend = dc_zoo.StableDiffusion3Backend(**tiny_sd3(seed=3))
    eager = dc_zoo.DiffusionClassifier(eager_backend, scoring).classify(images, CLASSES)
    backend = optimize_backend(dc_zoo.StableDiffusion3Backend(**tiny_sd3(seed=3)), channels_last=True, attention="math")
    assert denoising_network(backend)[0] == "transformer"
    assert backend.speed_levers == ("channels_last", "attention=math")
    fast = dc_zoo.DiffusionClassifier(backend, scoring).classify(images, CLASSES)
    assert torch.equal(fast.predictions, eager.predictions)
    torch.testing.assert_close(fast.candidate_errors, eager.candidate_errors, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- the registry entries
@pytest.mark.parametrize("name", SD3_ENTRIES)
def test_sd3_entries(name):
    entry = get_entry(name)
    assert entry.family == "stable_diffusion_3" and entry.pipeline_class == "StableDiffusion3Pipeline"
    assert entry.prediction_type == "flow_prediction" and entry.resolution == 1024 and not entry.accuracy
    assert entry.hub_id.startswith("stabilityai/") and not entry.revision_pinned and entry.revision == "main"
    plan = TimestepPlan.from_stages(entry.n_samples, entry.cost["num_train_timesteps"])
    assert plan.evaluations(entry.cost["num_classes"], entry.to_keep) == entry.cost["evaluations_per_image"]
    assert (entry.n_samples, entry.to_keep) == ((50, 500), (5, 1))
    text = " ".join(entry.notes)
    assert f"https://huggingface.co/{entry.hub_id}" in text and "HF_TOKEN" in text and "Jeong" in text
    assert name in list_models(family="stable_diffusion_3")


@pytest.mark.parametrize("name, changes, fragment", [
    ("sd-3-medium", {"prediction_type": "epsilon"}, "set prediction_type to 'flow_prediction'"),
    ("sdxl-base-1.0", {"prediction_type": "flow_prediction"}, "is for the rectified-flow families"),
    ("sd-3.5-large", {"template": None}, "needs a prompt template"),
])
def test_registry_rules_of_the_new_families(name, changes, fragment):
    with pytest.raises(RegistryValidationError, match=fragment):
        validate_entry(dict(get_entry(name).to_dict(), **changes), name)


class _GatedHub(http.server.BaseHTTPRequestHandler):
    """Answers every request as huggingface.co answers one for a gated repo without an accepted token."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(403)
        self.send_header("X-Error-Code", "GatedRepo")
        self.send_header("X-Error-Message", "Access to this model is restricted.")
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error": "GatedRepo"}')

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def gated_hub(monkeypatch):
    from huggingface_hub import constants

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _GatedHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("name", SD3_ENTRIES)
def test_gated_sd3_repo_names_the_licence_page_and_the_token(gated_hub, tmp_path, name):
    repo = get_entry(name).hub_id
    with pytest.raises(_hub.GatedModelError) as info:
        create_model(name, cache_dir=tmp_path, endpoint=gated_hub, token=False)
    text = str(info.value)
    for fragment in (f"https://huggingface.co/{repo}", "licence", "HF_TOKEN", "huggingface-cli login", "hf auth login"):
        assert fragment in text


# --------------------------------------------------------------------------- benchmarks and clip_benchmark
def test_meta_device_flop_count_equals_the_real_count_and_knows_sd3():
    """The benchmark counts FLOPs of the full-size networks on the meta device; on the tiny model
    that count must equal the one of a real forward pass (attention included)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import throughput

    backend = dc_zoo.StableDiffusion3Backend(**tiny_sd3())
    x0 = backend.encode_images(torch.zeros(1, 3, 16, 16))
    real = throughput.flops_per_eval(backend, x0, backend.encode_conditions(["a photo of a cat."]))
    assert throughput.meta_flops_per_eval("tiny-sd3") == real > 0
    # SD3-medium at 1024 px: ~2 FLOPs x ~1B parameters per stream x (4096 image + 333 text tokens) ~ 9 TFLOP.
    assert 8e12 < throughput.meta_flops_per_eval("sd-3-medium") < 1e13


def test_stock_clip_benchmark_runs_a_tiny_sd3_pipeline():
    """Plumbing only: random weights, so the accuracy means nothing; clip_benchmark's metric code must
    report exactly what the engine predicts for the same images, prompts and schedule."""
    from _clip_benchmark_fixtures import CLIP_TEMPLATES, digits_subset
    from dc_zoo.clip_benchmark import DiffusionClassifierForClipBenchmark, register
    from dc_zoo.digits import CLASS_NAMES

    register()
    from clip_benchmark.metrics import zeroshot_classification

    images, labels = digits_subset(2)
    clf = dc_zoo.DiffusionClassifier(dc_zoo.StableDiffusion3Backend(**tiny_sd3()),
                                     dc_zoo.ScoringConfig(n_samples=(1, 2), to_keep=(2, 1), batch_size=64))
    expected = clf.classify(images, prompts={c: [t.format(c=c) for t in CLIP_TEMPLATES] for c in CLASS_NAMES})
    model = DiffusionClassifierForClipBenchmark(clf, name="tiny-sd3")
    pixels = torch.stack([model.transform(im) for im in images])
    dataset = torch.utils.data.TensorDataset(pixels, torch.tensor(labels))
    dataset.classes = list(CLASS_NAMES)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2)
    metrics = zeroshot_classification.evaluate(model, loader, model.tokenizer, list(CLASS_NAMES), CLIP_TEMPLATES, "cpu")
    assert model.stats.predictions == expected.predictions.tolist()
    assert metrics["acc1"] == pytest.approx(float((expected.predictions == torch.tensor(labels)).float().mean()))
    assert metrics["dc_evaluations_per_image"] == pytest.approx(float(expected.evaluations.float().mean()))


def test_half_precision_loads_t5_with_its_float32_layers(saved):
    """Networks load straight in the run's dtype, so transformers keeps T5's ``wo`` layers in float32
    (T5 overflows in float16 without them) and no float32 copy of the model is ever made."""
    clf = create_model(str(saved["t5"]), dtype="float16", scoring=FAST)
    t5 = clf.backend.text_encoder_3
    kept = [name for name, p in t5.named_parameters() if p.dtype == torch.float32]
    assert kept and all(".wo." in name for name in kept)
    assert clf.backend.transformer.dtype == torch.float16 and clf.backend.text_encoder.dtype == torch.float16
