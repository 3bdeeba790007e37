"""Damaged files, repo code and `dc-zoo info` on hf-hub names and folders, offline.

A truncated or empty safetensors file or a half-written JSON file must be named, with the
reason and how to fetch it again, whether the model is a local folder or an ``hf-hub:`` name
in a Hub-format cache; a model_index.json that asks for code from the repo is refused before
anything is imported; ``dc-zoo info`` describes what ``dc-zoo classify`` accepts.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from dc_zoo import _hub
from dc_zoo._factory import create_model, resolve_model
from dc_zoo.cli import main

FAST = {"n_samples": (2, 4), "to_keep": (2, 1)}
REPO = "dc-zoo-test/damaged"


def _cut(path: Path, keep: float | int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])


# damage: (file relative to the pipeline folder, how much to keep, what the message must say)
DAMAGE = {
    "truncated unet weights": ("unet/diffusion_pytorch_model.safetensors", 0.5, "truncated"),
    "empty text encoder weights": ("text_encoder/model.safetensors", 0, "empty (0 bytes)"),
    "weights shorter than the header length": ("vae/diffusion_pytorch_model.safetensors", 5, "truncated (5 bytes"),
    "half-written model_index.json": ("model_index.json", 0.5, "not valid JSON"),
    "empty model_index.json": ("model_index.json", 0, "empty (0 bytes)"),
    "half-written unet config": ("unet/config.json", 0.5, "not valid JSON"),
    "half-written text encoder config": ("text_encoder/config.json", 0.5, "not valid JSON"),
    "empty tokenizer.json": ("tokenizer/tokenizer.json", 0, "empty (0 bytes)"),
}


@pytest.fixture
def damaged(tiny_pipelines, tmp_path):
    """``damage(case) -> (folder, damaged file)``: a copy of the tiny SD pipeline with one file cut."""

    def damage(case: str, root: Path | None = None) -> tuple[Path, Path]:
        relative, keep, _ = DAMAGE[case]
        folder = shutil.copytree(tiny_pipelines.sd_dir, (root or tmp_path) / "model")
        _cut(folder / relative, keep)
        return folder, folder / relative

    return damage


def _assert_damage_message(text: str, path: Path, reason: str) -> None:
    assert str(path) in text or str(path.resolve()) in text, text
    assert "damaged or incomplete" in text and reason in text, text


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_local_folder_names_the_file_reason_and_fix(case, damaged):
    folder, path = damaged(case)
    with pytest.raises(_hub.DamagedFileError) as info:
        create_model(str(folder), scoring=FAST)
    _assert_damage_message(str(info.value), path, DAMAGE[case][2])
    assert f"save_pretrained('{folder.resolve()}')" in str(info.value)


@pytest.mark.parametrize("case", ["truncated unet weights", "empty text encoder weights", "half-written model_index.json",
                                  "empty tokenizer.json"])
def test_damaged_hub_snapshot_says_how_to_fetch_it_again(case, damaged, tmp_path):
    from conftest import write_hub_cache

    folder, _ = damaged(case, tmp_path / "src")
    cache = tmp_path / "cache"
    commit = write_hub_cache(folder, cache, REPO)
    snapshot = cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / commit
    with pytest.raises(_hub.DamagedFileError) as info:
        create_model(f"hf-hub:{REPO}", cache_dir=cache, scoring=FAST)
    text = str(info.value)
    _assert_damage_message(text, snapshot / DAMAGE[case][0], DAMAGE[case][2])
    assert f"hf download {REPO} --revision {commit} --cache-dir {cache} --force-download" in text
    assert f"delete the snapshot folder {snapshot}" in text


def test_damage_found_only_by_the_library_still_names_the_folder(tiny_pipelines, tmp_path):
    """A header whose JSON parses but holds an unknown dtype: only safetensors itself can tell."""
    folder = shutil.copytree(tiny_pipelines.sd_dir, tmp_path / "model")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    assert b'"F32"' in data[:4096]
    weights.write_bytes(data.replace(b'"F32"', b'"Q32"', 1))
    with pytest.raises(_hub.DamagedFileError) as info:
        create_model(str(folder), scoring=FAST)
    text = str(info.value)
    assert str(folder / "unet") in text and "damaged or incomplete" in text and "save_pretrained" in text
    assert "UNet2DConditionModel.from_pretrained" in text


def test_bundled_miniature_damage_says_reinstall(tmp_path, monkeypatch):
    snapshot = _hub.Snapshot(path=tmp_path, repo_id="dc-zoo/sd-digits-mini", revision="main", commit=None,
                             source="bundled")
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiff')
    with pytest.raises(_hub.DamagedFileError, match="reinstall"):
        _hub.read_model_index(snapshot)


def _png(tmp_path: Path) -> Path:
    from PIL import Image

    path = tmp_path / "digit.png"
    Image.new("RGB", (16, 16), (255, 255, 255)).save(path)
    return path


@pytest.mark.parametrize("case", ["truncated unet weights", "half-written model_index.json"])
def test_dc_zoo_classify_reports_a_damaged_file_in_one_line(case, damaged, tmp_path, capsys):
    folder, path = damaged(case)
    status = main(["classify", "--model", str(folder), "--classes", "cat", "dog", "--no-progress", "--",
                   str(_png(tmp_path))])
    err = capsys.readouterr().err.strip()
    assert status == 2 and "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.startswith("dc-zoo: error: ")
    _assert_damage_message(err, path, DAMAGE[case][2])


# --------------------------------------------------------------------------- no code from the repo
MARKER_CODE = "import pathlib; pathlib.Path(__file__).with_name('RAN').write_text('repo code ran')\nclass {cls}: pass\n"


def _with_repo_code(tiny_pipelines, tmp_path, module: str, cls: str) -> Path:
    folder = shutil.copytree(tiny_pipelines.sd_dir, tmp_path / "model")
    (folder / f"{module}.py").write_text(MARKER_CODE.format(cls=cls))
    (folder / "unet" / f"{module}.py").write_text(MARKER_CODE.format(cls=cls))
    return folder


def _edit_index(folder: Path, **changes) -> None:
    index = json.loads((folder / "model_index.json").read_text())
    index.update(changes)
    (folder / "model_index.json").write_text(json.dumps(index))


REPO_CODE = {
    "custom pipeline class": ({"_class_name": ["my_pipeline", "MyPipeline"]}, ["custom pipeline", "'MyPipeline'",
                                                                            "my_pipeline.py"]),
    "custom_pipeline key": ({"custom_pipeline": "my_pipeline"}, ["'custom_pipeline'"]),
    "component from a repo module": ({"unet": ["my_pipeline", "MyUNet"]}, ["component 'unet'", "library 'my_pipeline'"]),
    "component of the wrong kind": ({"unet": ["diffusers", "DDPMScheduler"]},
                                    ["component 'unet'", "not a diffusers.ModelMixin subclass"]),
    "Auto tokenizer": ({"tokenizer": ["transformers", "AutoTokenizer"]},
                       ["component 'tokenizer'", "not a transformers.PreTrainedTokenizerBase subclass"]),
    "private name": ({"unet": ["diffusers", "__builtins__"]}, ["'__builtins__' is not a class name"]),
}


@pytest.mark.parametrize("case", list(REPO_CODE))
def test_model_index_asking_for_repo_code_is_refused_before_any_import(case, tiny_pipelines, tmp_path):
    changes, fragments = REPO_CODE[case]
    folder = _with_repo_code(tiny_pipelines, tmp_path, "my_pipeline", "MyPipeline")
    _edit_index(folder, **changes)
    with pytest.raises(_hub.RemoteCodeError) as info:
        create_model(str(folder), scoring=FAST)
    text = str(info.value)
    assert str(folder.resolve() / "model_index.json") in text
    for fragment in fragments:
        assert fragment in text, text
    if case != "component of the wrong kind" and case != "Auto tokenizer":
        assert "never imports or runs code from a model repo" in text
    assert not (folder / "RAN").exists() and not (folder / "unet" / "RAN").exists()
    assert "my_pipeline" not in sys.modules


def test_unknown_class_of_a_known_library_is_refused(tiny_pipelines, tmp_path):
    folder = shutil.copytree(tiny_pipelines.sd_dir, tmp_path / "model")
    _edit_index(folder, unet=["diffusers", "NoSuchUNet2DModel"])
    with pytest.raises(_hub.UnsupportedPipelineError, match="diffusers.NoSuchUNet2DModel, which the installed"):
        create_model(str(folder), scoring=FAST)


def test_auto_map_in_a_component_config_runs_no_code_and_remote_code_is_never_trusted(tiny_pipelines, tmp_path,
                                                                                    monkeypatch):
    import dc_zoo._factory as factory

    folder = shutil.copytree(tiny_pipelines.sd_dir, tmp_path / "model")
    (folder / "text_encoder" / "evil.py").write_text(MARKER_CODE.format(cls="EvilModel"))
    config = json.loads((folder / "text_encoder" / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "evil.EvilModel"}
    (folder / "text_encoder" / "config.json").write_text(json.dumps(config))
    calls = []
    real = factory._component_class

    class Recorder:
        def __init__(self, cls):
            self.cls = cls

        def from_pretrained(self, *args, **kwargs):
            calls.append((self.cls.__name__, kwargs))
            return self.cls.from_pretrained(*args, **kwargs)

    monkeypatch.setattr(factory, "_component_class", lambda *a: Recorder(real(*a)))
    create_model(str(folder), scoring=FAST)
    assert not (folder / "text_encoder" / "RAN").exists() and "evil" not in sys.modules
    assert {name for name, _ in calls} == {"UNet2DConditionModel", "AutoencoderKL", "CLIPTextModel", "CLIPTokenizer",
                                           "DDPMScheduler"}
    assert not any(kwargs.get("trust_remote_code") for _, kwargs in calls)
    assert all(kwargs.get("use_safetensors") is True for name, kwargs in calls
               if name in ("UNet2DConditionModel", "AutoencoderKL", "CLIPTextModel"))
    sources = Path(factory.__file__).parent.rglob("*.py")
    assert not [p for p in sources if "trust_remote_code=True" in p.read_text(encoding="utf-8")]


# --------------------------------------------------------------------------- dc-zoo info
def test_info_describes_a_pipeline_folder_from_its_files(tiny_pipelines, capsys):
    assert main(["info", str(tiny_pipelines.sd_dir)]) == 0
    out = capsys.readouterr().out
    for fragment in ("family:       stable_diffusion (StableDiffusionPipeline, epsilon prediction)",
                     f"local folder {tiny_pipelines.sd_dir}", "16 px", "unet diffusers.UNet2DConditionModel",
                     "tokenizer transformers.CLIPTokenizer", "schedule:     n_samples 50/500, to_keep 5/1",
                     "cost:         2,750 network evaluations per image for 10 classes",
                     f"weights here: local folder: {tiny_pipelines.sd_dir}"):
        assert fragment in out, out
    assert main(["info", f"local-dir:{tiny_pipelines.dit_dir}", "--json", "--num-classes", "3"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["family"] == "dit" and data["num_classes"] == 10 and data["resolution"] == 16
    assert data["components"]["transformer"] == "diffusers.DiTTransformer2DModel"
    assert data["weights"]["source"] == "local-dir" and data["cost_for_num_classes"]["num_classes"] == 3


def test_info_describes_an_hf_hub_name_from_the_offline_cache(tiny_pipelines, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tiny_pipelines.cache_dir))
    assert main(["info", f"hf-hub:{tiny_pipelines.sd_repo}"]) == 0
    out = capsys.readouterr().out
    assert f"weights from: {tiny_pipelines.sd_repo} (not in the registry" in out
    assert "revision:     main  (UNPINNED" in out and f"(commit {tiny_pipelines.sd_commit})" in out
    assert f"weights here: cached: {tiny_pipelines.cache_dir}" in out
    assert main(["info", f"hf-hub:{tiny_pipelines.dit_repo}@{tiny_pipelines.dit_commit}", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["weights"]["commit"] == tiny_pipelines.dit_commit and data["weights"]["source"] == "cache"
    assert data["pipeline_class"] == "DiTPipeline" and data["prediction_type"] == "epsilon"


def test_info_of_an_uncached_repo_says_how_to_fetch_it(capsys):
    assert main(["info", "hf-hub:dc-zoo-test/absent"]) == 2
    err = capsys.readouterr().err
    assert "not in the Hugging Face cache" in err and "hf download dc-zoo-test/absent" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_info_of_a_registry_repo_by_hf_hub_name_shows_the_entry(capsys):
    assert main(["info", "hf-hub:dc-zoo/sd-digits-mini"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("sd-digits-mini") and "weights here: bundled" in out and "accuracy:" in out
    assert main(["info", "hf-hub:dc-zoo/clip-digits-mini"]) == 0
    assert "open_clip.create_model_and_transforms" in capsys.readouterr().out


def test_info_reports_damaged_files_and_repo_code(damaged, tiny_pipelines, tmp_path, capsys):
    folder, path = damaged("truncated unet weights")
    assert main(["info", str(folder)]) == 2
    err = capsys.readouterr().err
    _assert_damage_message(err, path, "truncated")
    custom = shutil.copytree(tiny_pipelines.sd_dir, tmp_path / "custom")
    _edit_index(custom, _class_name=["my_pipeline", "MyPipeline"])
    assert main(["info", str(custom)]) == 2
    assert "never imports or runs code from a model repo" in capsys.readouterr().err
