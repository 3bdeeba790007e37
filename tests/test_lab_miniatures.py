"""The lab miniatures (glyphs: sd/dit/clip; relations: sd/clip): loaded by name offline from the
bundled Hub cache, above floors a few points under what was measured when they were committed
(MODEL_CARD.md, benchmarks/RESULTS.md), and through the stock clip_benchmark command on a small
slice of each test set. Nothing is trained here."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

import dc_zoo
from dc_zoo._registry import get_entry, list_models

pytest.importorskip("matplotlib", reason="the glyph lab draws with matplotlib's bundled fonts (pip install dc_zoo[lab])")

LAB_MODELS = ("sd-glyphs-mini", "dit-glyphs-mini", "clip-glyphs-mini", "sd-relations-mini", "clip-relations-mini")
# Glyph slice: every 20th test image (31 images, held-out fonts; 62 classes), one stage of
# SLICE_TIMESTEPS timesteps. Measured at commit time on this slice (see MEASURED); floors below.
# (Every 10th image, 62: sd 29, dit 22 correct; the first glyph miniatures, 1,200 steps on 64
# images per class, scored 1 and 11 there.)
SLICE_TIMESTEPS = 10
MEASURED = {"sd-glyphs-mini": 12, "dit-glyphs-mini": 10}  # correct of 31 (chance: 0.5)
GLYPH_FLOORS = {"sd-glyphs-mini": 9, "dit-glyphs-mini": 7}  # correct of 31
CLIP_GLYPHS_FLOOR = 0.26  # measured 0.2984 on the 620 test images
# Winoground-form text score (chance: 0.25): clip 0.55 on the 200 examples; sd 0.39 at 50 timesteps.
WINOGROUND_SLICE = 60
RELATIONS_FLOORS = {"sd-relations-mini": 0.35, "clip-relations-mini": 0.45}  # slice: sd 0.4167, clip 0.5333


def test_every_lab_miniature_is_in_the_registry_and_bundled():
    from dc_zoo._hub import BUNDLED_CACHE

    assert set(LAB_MODELS) <= set(list_models("*-mini"))
    for name in LAB_MODELS:
        entry = get_entry(name)
        assert (BUNDLED_CACHE / f"models--dc-zoo--{name}" / "snapshots" / entry.revision).is_dir()
        size = sum(p.stat().st_size for p in (BUNDLED_CACHE / f"models--dc-zoo--{name}").rglob("*") if p.is_file())
        assert size < 12e6, f"{name} is {size / 1e6:.1f} MB: the package must stay small"


def _glyph_slice():
    from dc_zoo.glyphs import load_glyphs_split

    images, labels = load_glyphs_split("test")
    return images[::20], labels[::20]


@pytest.mark.parametrize("name", ["sd-glyphs-mini", "dit-glyphs-mini"])
def test_glyph_diffusion_miniatures_load_by_name_and_classify_held_out_fonts(name):
    from dc_zoo.glyphs import CLASS_NAMES

    clf = dc_zoo.create_model(name, scoring={"n_samples": (SLICE_TIMESTEPS,), "to_keep": (1,)})
    assert clf.source.source == "bundled" and clf.preprocess.size == 32
    images, labels = _glyph_slice()
    classes = list(CLASS_NAMES) if clf.backend.conditioning == "text" else list(range(len(CLASS_NAMES)))
    out = clf.classify(images, classes)
    correct = int((out.predictions == torch.tensor(labels)).sum())  # counts: no float rounding at the floor
    assert correct >= GLYPH_FLOORS[name], (name, correct, MEASURED[name])


def _open_clip(name):
    import open_clip

    from dc_zoo._hub import BUNDLED_CACHE

    model, _, preprocess = open_clip.create_model_and_transforms(f"hf-hub:dc-zoo/{name}", cache_dir=str(BUNDLED_CACHE))
    return model.eval(), preprocess, open_clip.get_tokenizer("ViT-B-32")


def test_clip_glyphs_mini_classifies_held_out_fonts():
    from dc_zoo.glyphs import CLASS_NAMES, TEMPLATE, load_glyphs_split

    model, preprocess, tokenizer = _open_clip("clip-glyphs-mini")
    images, labels = load_glyphs_split("test")
    with torch.no_grad():
        text = torch.nn.functional.normalize(model.encode_text(tokenizer([TEMPLATE.format(c) for c in CLASS_NAMES])), dim=-1)
        feats = torch.nn.functional.normalize(model.encode_image(torch.stack([preprocess(i) for i in images])), dim=-1)
    accuracy = float(((feats @ text.T).argmax(-1) == torch.tensor(labels)).float().mean())
    assert accuracy >= CLIP_GLYPHS_FLOOR, accuracy


def _text_score(score) -> float:
    """Winoground's text score over the slice: ``score(images, captions) -> [2, 2]`` (higher = better)."""
    from dc_zoo.relations import load_winoground_examples

    wins = 0
    for ex in load_winoground_examples()[:WINOGROUND_SLICE]:
        s = score([ex["image_0"], ex["image_1"]], [ex["caption_0"], ex["caption_1"]])
        wins += bool(s[0, 0] > s[0, 1] and s[1, 1] > s[1, 0])
    return wins / WINOGROUND_SLICE


def test_relations_miniatures_beat_chance_on_the_winoground_text_score():
    clf = dc_zoo.create_model("sd-relations-mini")
    assert clf.scoring.n_samples == (50,)
    dc = _text_score(lambda images, captions: -clf.classify(images, prompts={"0": [captions[0]], "1": [captions[1]]}).errors)
    model, preprocess, tokenizer = _open_clip("clip-relations-mini")

    def clip_score(images, captions):
        with torch.no_grad():
            image = torch.nn.functional.normalize(model.encode_image(torch.stack([preprocess(i) for i in images])), dim=-1)
            text = torch.nn.functional.normalize(model.encode_text(tokenizer(captions)), dim=-1)
        return image @ text.T

    clip = _text_score(clip_score)
    assert dc >= RELATIONS_FLOORS["sd-relations-mini"] and clip >= RELATIONS_FLOORS["clip-relations-mini"], (dc, clip)


# ----------------------------------------------------------------------------- the stock command
@pytest.fixture(scope="module")
def site(tmp_path_factory):
    import dc_zoo.clip_benchmark as dc_cb

    folder = tmp_path_factory.mktemp("site")
    shutil.copy(Path(dc_cb.__file__).parent / "dc_zoo_clip_benchmark.pth", folder)
    return folder


def _stock(args, cwd, site, scoring):
    script = Path(sys.executable).parent / "clip_benchmark"
    env = {k: v for k, v in os.environ.items() if k != "DC_ZOO_NO_CLIP_BENCHMARK_HOOK"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONWARNINGS="ignore", DC_ZOO_SCORING=scoring,
               OMP_NUM_THREADS="1")
    run_with_hook = ("import runpy, site, sys; site.addsitedir(sys.argv[1]); sys.argv = sys.argv[2:];"
                     "runpy.run_path(sys.argv[0], run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", run_with_hook, str(site), str(script), "eval", *args], cwd=cwd,
                         env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _results(folder: Path) -> dict[tuple[str, str], dict]:
    found = {}
    for path in folder.glob("*.json"):
        data = json.loads(path.read_text())
        found[(data["dataset"], data["model"])] = data["metrics"]
    return found


@pytest.mark.slow
def test_stock_clip_benchmark_runs_the_glyph_lab_dc_beside_clip(tmp_path, site):
    from dc_zoo.glyphs import CLASS_NAMES, write_glyphs_webdataset

    write_glyphs_webdataset(tmp_path / "glyphs", "test", per_class=1)  # {dataset_cleaned} of wds/glyphs
    (tmp_path / "models.txt").write_text("diffusion-classifier,sd-glyphs-mini\nclip-glyphs-mini,dc-zoo\n")
    (tmp_path / "results").mkdir()
    _stock(["--dataset", "wds/glyphs", "--dataset_root", "{dataset_cleaned}", "--pretrained_model", "models.txt",
            "--num_workers", "0", "--output", "results/{dataset}_{pretrained}_{model}_{task}.json"],
           tmp_path, site, '{"n_samples": [2], "to_keep": [1]}')
    results = _results(tmp_path / "results")
    assert set(results) == {("wds/glyphs", "diffusion-classifier"), ("wds/glyphs", "clip-glyphs-mini")}
    dc = results[("wds/glyphs", "diffusion-classifier")]
    assert dc["dc_evaluations_per_image"] == 2 * len(CLASS_NAMES) and 0 <= dc["acc1"] <= 1


@pytest.mark.slow
def test_stock_clip_benchmark_runs_winoground_and_sugar_crepe_offline(tmp_path, site):
    from dc_zoo.relations import write_sugar_crepe, write_winoground_cache

    write_winoground_cache(tmp_path / "winoground", limit=4)
    write_sugar_crepe(tmp_path / "sugar_crepe-swap_att", tasks=("swap_att",), limit=4)
    (tmp_path / "models.txt").write_text("diffusion-classifier,sd-relations-mini\nclip-relations-mini,dc-zoo\n")
    (tmp_path / "results").mkdir()
    _stock(["--dataset", "winoground", "sugar_crepe/swap_att", "--dataset_root", "{dataset_cleaned}",
            "--pretrained_model", "models.txt", "--batch_size", "1", "--num_workers", "0",
            "--output", "results/{dataset}_{pretrained}_{model}_{task}.json"], tmp_path, site, '{"n_samples": [4], "to_keep": [1]}')
    results = _results(tmp_path / "results")
    assert len(results) == 4
    for (dataset, model), metrics in results.items():
        assert {"text_acc", "image_acc", "acc"} <= set(metrics), (dataset, model)
    dc = results[("winoground", "diffusion-classifier")]
    assert dc["dc_caption_score"] == "normalized" and dc["dc_evaluations_per_image"] == 4 * 3
