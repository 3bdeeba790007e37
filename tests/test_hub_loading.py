"""Loading by name, ``hf-hub:`` and local directory, through huggingface_hub, offline, with clear errors."""
from __future__ import annotations

import http.server
import json
import logging
import shutil
import threading

import pytest
import torch

from dc_zoo import DiffusionClassifier
from dc_zoo import _hub
from dc_zoo._factory import create_model, resolve_model
from dc_zoo._registry import get_entry, list_models, register_entry, remove_entry

FAST = {"n_samples": (2, 4), "to_keep": (2, 1)}
CLASSES = ["cat", "dog", "bird"]


def _entry(name, hub_id, revision, **changes):
    """A registry entry for a tiny test model, shaped like the real SD entries."""
    data = get_entry("sd-2-base").to_dict()
    data.update(name=name, hub_id=hub_id, original_id=None, revision=revision, revision_pinned=len(revision) == 40,
                resolution=16, default=False, accuracy=[],
                schedule={"n_samples": [2, 4], "to_keep": [2, 1], "loss": "l1", "source": "test schedule"},
                cost={"num_classes": 3, "num_train_timesteps": 1000, "evaluations_per_image": 10})
    data.update(changes)
    return data


@pytest.fixture
def registered():
    names = []

    def add(data):
        names.append(register_entry(data, overwrite=True).name)
        return names[-1]

    yield add
    for name in names:
        remove_entry(name)


def _copy(folder, tmp_path):
    return shutil.copytree(folder, tmp_path / "model")


# --------------------------------------------------------------------------- loading
def test_local_dir_loads_and_classifies_like_the_pipeline(tiny_pipelines, tiny_images):
    from diffusers import StableDiffusionPipeline

    clf = create_model(str(tiny_pipelines.sd_dir), scoring=FAST)
    assert clf.source.source == "local-dir" and clf.entry.family == "stable_diffusion" and not clf.entry.listed
    assert clf.entry.resolution == 16 and clf.preprocess.size == 16
    assert next(clf.backend.parameters()).dtype == torch.float32  # CPU default, whatever the entry says
    reference = DiffusionClassifier.from_pipeline(StableDiffusionPipeline.from_pretrained(tiny_pipelines.sd_dir),
                                                  scoring=clf.scoring, templates=clf.templates)
    ours, theirs = clf.classify(tiny_images, CLASSES), reference.classify(tiny_images, CLASSES)
    assert torch.equal(ours.errors, theirs.errors) and torch.equal(ours.predictions, theirs.predictions)
    same = create_model(f"local-dir:{tiny_pipelines.sd_dir}", scoring=FAST)
    assert torch.equal(same.classify(tiny_images, CLASSES).errors, ours.errors)


def test_local_dit_reads_labels_from_model_index(tiny_pipelines, tiny_images):
    clf = create_model(f"local-dir:{tiny_pipelines.dit_dir}", scoring=FAST)
    assert clf.entry.family == "dit" and clf.entry.num_classes == 10 and clf.preprocess.crop == "adm_center"
    out = clf.classify(tiny_images[:2], ["zero", "seven"])
    assert out.class_names == ("zero", "seven") and out.logits.shape == (2, 2)


def test_hf_hub_name_loads_from_an_offline_cache(tiny_pipelines, tiny_images):
    assert _hub.is_offline()
    pinned = create_model(f"hf-hub:{tiny_pipelines.sd_repo}@{tiny_pipelines.sd_commit}",
                          cache_dir=tiny_pipelines.cache_dir, scoring=FAST)
    branch = create_model(f"hf-hub:{tiny_pipelines.sd_repo}", cache_dir=tiny_pipelines.cache_dir, scoring=FAST)
    assert pinned.source.commit == branch.source.commit == tiny_pipelines.sd_commit
    assert branch.source.revision == "main" and branch.source.source == "cache"
    assert pinned.source.path.parent.name == "snapshots"
    local = create_model(str(tiny_pipelines.sd_dir), scoring=FAST)
    assert torch.equal(branch.classify(tiny_images, CLASSES).errors, local.classify(tiny_images, CLASSES).errors)


def test_default_hf_cache_is_used_without_cache_dir(tiny_pipelines, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from conftest import write_hub_cache

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    commit = write_hub_cache(tiny_pipelines.dit_dir, tmp_path, "someone/tiny-dit")
    resolved = resolve_model("hf-hub:someone/tiny-dit")
    assert resolved.snapshot.commit == commit and resolved.entry.family == "dit"
    assert _hub.cached_snapshot("someone/tiny-dit").path == resolved.snapshot.path
    assert _hub.cached_snapshot("someone/absent") is None


def test_registry_entry_gives_schedule_template_and_preprocessing(tiny_pipelines, registered):
    name = registered(_entry("tiny-sd-test", tiny_pipelines.sd_repo, tiny_pipelines.sd_commit,
                             template="a drawing of a {}.", interpolation="bilinear"))
    clf = create_model(name, cache_dir=tiny_pipelines.cache_dir)
    assert clf.entry.name == name and clf.entry.listed
    assert (clf.scoring.n_samples, clf.scoring.to_keep, clf.scoring.loss) == ((2, 4), (2, 1), "l1")
    assert clf.templates == ("a drawing of a {}.",) and clf.preprocess.interpolation == "bilinear"
    assert clf.source.commit == tiny_pipelines.sd_commit
    tuned = create_model(name, cache_dir=tiny_pipelines.cache_dir, scoring={"loss": "huber", "seed": 3},
                         dtype="bfloat16", device="cpu")
    assert (tuned.scoring.loss, tuned.scoring.seed, tuned.scoring.n_samples) == ("huber", 3, (2, 4))
    assert next(tuned.backend.unet.parameters()).dtype == torch.bfloat16


def test_paper_id_resolves_to_the_current_location(tiny_pipelines, registered, caplog):
    name = registered(_entry("tiny-sd-moved", tiny_pipelines.sd_repo, "main", original_id="old-org/tiny-sd",
                             official_location=False, location_note="unofficial mirror of old-org/tiny-sd"))
    with caplog.at_level(logging.WARNING, logger="dc_zoo._factory"):
        for spelling in ("hf-hub:old-org/tiny-sd", "old-org/tiny-sd"):
            resolved = resolve_model(spelling, cache_dir=tiny_pipelines.cache_dir)
            assert resolved.entry.name == name and resolved.snapshot.repo_id == tiny_pipelines.sd_repo
    assert "old-org/tiny-sd is the paper's id; resolved to its current location dc-zoo-test/tiny-sd" in caplog.text


def test_cached_copy_under_the_paper_id_is_used_when_the_mirror_is_absent(tiny_pipelines, registered, caplog):
    name = registered(_entry("tiny-sd-withdrawn", "new-org/tiny-sd-mirror", "main", original_id=tiny_pipelines.sd_repo,
                             official_location=False, location_note="unofficial mirror"))
    with caplog.at_level(logging.WARNING, logger="dc_zoo._factory"):
        clf = create_model(name, cache_dir=tiny_pipelines.cache_dir)
    assert clf.source.repo_id == tiny_pipelines.sd_repo
    assert "loaded from the paper's id dc-zoo-test/tiny-sd" in caplog.text


def test_registry_prediction_type_wins_over_a_wrong_scheduler_config(tiny_pipelines, registered, caplog):
    name = registered(_entry("tiny-sd-v", tiny_pipelines.sd_repo, "main", prediction_type="v_prediction"))
    with caplog.at_level(logging.WARNING, logger="dc_zoo._factory"):
        clf = create_model(name, cache_dir=tiny_pipelines.cache_dir)
    assert clf.backend.schedule.prediction_type == "v_prediction" and "prediction_type='epsilon'" in caplog.text


# --------------------------------------------------------------------------- bad input, offline
def _edit_index(folder, **changes):
    path = folder / "model_index.json"
    index = json.loads(path.read_text())
    index.update(changes)
    path.write_text(json.dumps(index))


def _to_pickle(folder, component):
    from safetensors.torch import load_file

    weights = folder / component / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), folder / component / "diffusion_pytorch_model.bin")
    weights.unlink()


BROKEN = {
    "no unet folder": (lambda d: shutil.rmtree(d / "unet"), _hub.MissingComponentsError, ["unet", "save_pretrained"]),
    "no model_index": (lambda d: (d / "model_index.json").unlink(), _hub.MissingComponentsError,
                       ["model_index.json", "DenoiserBackend"]),
    "undeclared tokenizer": (lambda d: _edit_index(d, tokenizer=[None, None]), _hub.MissingComponentsError,
                             ["tokenizer (not declared"]),
    "no weights": (lambda d: (d / "vae" / "diffusion_pytorch_model.safetensors").unlink(), _hub.MissingComponentsError,
                   ["'vae'", "no weights"]),
    "upscale pipeline": (lambda d: _edit_index(d, _class_name="StableDiffusionUpscalePipeline"),
                         _hub.UnsupportedPipelineError,
                         ["StableDiffusionUpscalePipeline", "StableDiffusionPipeline", "StableDiffusionXLPipeline",
                          "StableDiffusion3Pipeline", "DiTPipeline", "DenoiserBackend"]),
    "SDXL without its second encoder": (lambda d: _edit_index(d, _class_name="StableDiffusionXLPipeline"),
                                        _hub.MissingComponentsError, ["text_encoder_2"]),
    "foreign library": (lambda d: _edit_index(d, unet=["os", "system"]), _hub.UnsupportedPipelineError,
                        ["library 'os'", "diffusers"]),
    "pickle weights": (lambda d: _to_pickle(d, "unet"), _hub.PickleWeightsError, ["'unet'", "allow_pickle=True"]),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_pipeline_folders_give_distinct_errors(case, tiny_pipelines, tmp_path):
    damage, error, fragments = BROKEN[case]
    folder = _copy(tiny_pipelines.sd_dir, tmp_path)
    damage(folder)
    with pytest.raises(error) as info:
        create_model(str(folder), scoring=FAST)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_pickle_weights_load_when_allowed(tiny_pipelines, tmp_path, tiny_images):
    folder = _copy(tiny_pipelines.sd_dir, tmp_path)
    _to_pickle(folder, "unet")
    pickled = create_model(str(folder), scoring=FAST, allow_pickle=True)
    safe = create_model(str(tiny_pipelines.sd_dir), scoring=FAST)
    assert torch.equal(pickled.classify(tiny_images, CLASSES).errors, safe.classify(tiny_images, CLASSES).errors)


@pytest.mark.parametrize("name, error, fragments", [
    ("hf-hub:dc-zoo-test/absent", _hub.ModelNotCachedError,
     ["dc-zoo-test/absent", "revision 'main'", "hf download dc-zoo-test/absent --revision main", "HF_HUB_OFFLINE"]),
    ("hf-hub:dc-zoo-test/tiny-sd@v9", _hub.RevisionNotCachedError,
     ["not at revision 'v9'", "main ->", "hf download dc-zoo-test/tiny-sd --revision v9"]),
    ("sd-2-bse", KeyError, ["close matches", "sd-2-base"]),
])
def test_offline_errors_say_what_and_how(name, error, fragments, tiny_pipelines):
    with pytest.raises(error) as info:
        create_model(name, cache_dir=tiny_pipelines.cache_dir)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_registry_model_not_cached_names_both_locations(tmp_path):
    with pytest.raises(_hub.ModelNotCachedError) as info:
        create_model("sd-1-5", cache_dir=tmp_path)
    text = str(info.value)
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in text and "runwayml/stable-diffusion-v1-5" in text
    assert "hf download" in text


def test_open_clip_entry_is_not_a_diffusion_classifier(registered):
    name = registered(_entry("tiny-clip-test", "dc-zoo-test/tiny-clip", "main", family="open_clip",
                             pipeline_class="CLIP", prediction_type=None, template="a photo of {}.",
                             schedule=None, cost=None))
    with pytest.raises(ValueError, match="open_clip.create_model_and_transforms"):
        create_model(name)


# --------------------------------------------------------------------------- bad input, online (a fake Hub)
class _FakeHub(http.server.BaseHTTPRequestHandler):
    """Answers like huggingface.co does for a gated repo, a missing revision and a missing repo."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        if "/gated" in self.path:
            status, code = 403, "GatedRepo"
        elif "/revision/no-such-rev" in self.path:
            status, code = 404, "RevisionNotFound"
        else:
            status, code = 404, "RepoNotFound"
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", code)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps({"error": code}).encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_hub(monkeypatch):
    from huggingface_hub import constants

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("repo, revision, error, fragments", [
    ("org/gated-model", "main", _hub.GatedModelError, ["gated", "HF_TOKEN", "token=", "hf auth login"]),
    ("org/some-model", "no-such-rev", _hub.ModelRevisionNotFoundError, ["'no-such-rev' does not exist in org/some-model", "commit"]),
    ("org/gone-model", "main", _hub.ModelRepoNotFoundError, ["no repo org/gone-model", "huggingface.co/org/gone-model"]),
])
def test_hub_refusals_are_distinct_errors(fake_hub, tmp_path, repo, revision, error, fragments):
    with pytest.raises(error) as info:
        _hub.download_snapshot(repo, revision, cache_dir=tmp_path, endpoint=fake_hub, token=False)
    for fragment in fragments:
        assert fragment in str(info.value)
    others = {_hub.GatedModelError, _hub.ModelRevisionNotFoundError, _hub.ModelRepoNotFoundError} - {error}
    assert not isinstance(info.value, tuple(others))


# --------------------------------------------------------------------------- the bundled miniatures
DIFFUSION_MINIATURES = list_models("*-digits-mini", family="stable_diffusion") + list_models("*-digits-mini", family="dit")


@pytest.fixture(scope="module")
def first_test_digits():
    from dc_zoo.digits import load_digits_split

    images, labels = load_digits_split("test")
    return images[:20], labels[:20]


@pytest.mark.parametrize("name", DIFFUSION_MINIATURES)
def test_miniature_loads_by_name_offline_and_classifies_digits(name, first_test_digits):
    from dc_zoo.digits import CLASS_NAMES

    clf = create_model(name)
    entry = clf.entry
    assert clf.source.source == "bundled" and clf.source.commit == entry.revision and entry.revision_pinned
    assert _hub.BUNDLED_CACHE in clf.source.path.parents
    assert (clf.scoring.n_samples, clf.scoring.to_keep) == (entry.n_samples, entry.to_keep)
    images, labels = first_test_digits
    out = clf.classify(images, list(CLASS_NAMES) if entry.family == "stable_diffusion" else list(range(10)))
    assert (out.evaluations == entry.cost["evaluations_per_image"]).all()
    accuracy = float((out.predictions == torch.tensor(labels)).float().mean())
    assert accuracy >= 0.8, f"{name}: {accuracy:.2f} on 20 test digits (full split: {entry.accuracy[0]['top1']}%)"


@pytest.mark.parametrize("name", list_models("*-digits-mini"))
def test_miniature_resolves_from_a_hub_cache_in_a_temporary_directory(name, tmp_path):
    folder = "models--" + get_entry(name).hub_id.replace("/", "--")
    shutil.copytree(_hub.BUNDLED_CACHE / folder, tmp_path / folder)
    snapshot = _hub.download_snapshot(get_entry(name).hub_id, "main", cache_dir=tmp_path)
    assert snapshot.source == "cache" and snapshot.commit == get_entry(name).revision
    assert tmp_path in snapshot.path.parents
    if name in DIFFUSION_MINIATURES:
        resolved = resolve_model(f"hf-hub:{get_entry(name).hub_id}", cache_dir=tmp_path)
        assert resolved.entry.name == name and resolved.snapshot.path == snapshot.path
