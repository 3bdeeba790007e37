"""The stock ``clip_benchmark eval`` / ``build`` commands, in subprocesses, on a local digits WebDataset.

``sd-digits-mini`` (Diffusion Classifier) and ``clip-digits-mini`` (open_clip) are evaluated side by
side by one command with a ``--pretrained_model`` file, the JSON results are merged by
``clip_benchmark build``, and the DC accuracy must equal the engine's own ``classify()`` on the same
images. The stock console script runs with the ``.pth`` hook processed exactly as at interpreter
start (``site.addsitedir``), as after ``pip install dc_zoo``; ``python -m dc_zoo.clip_benchmark``
runs without it. Only the first shard of the test split is evaluated, to stay fast on a CPU.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dc_zoo.clip_benchmark as dc_cb
from dc_zoo.digits import TEMPLATE, load_digits_split, write_digits_webdataset

N_IMAGES = 16  # first shard of the digits test split
SCORING = {"n_samples": [2, 8], "to_keep": [2, 1]}  # DC_ZOO_SCORING for the run and for classify()
DC_ENTRY, CLIP_ENTRY = "sd-digits-mini", "clip-digits-mini"
CLIP_BENCHMARK = Path(sys.executable).parent / "clip_benchmark"
RUN_STOCK_SCRIPT = ("import runpy, site, sys; site.addsitedir(sys.argv[1]); sys.argv = sys.argv[2:];"
                    "runpy.run_path(sys.argv[0], run_name='__main__')")


def _bundled(name: str) -> bool:
    from dc_zoo._hub import BUNDLED_CACHE

    return (BUNDLED_CACHE / f"models--dc-zoo--{name}").is_dir()


needs_miniatures = pytest.mark.skipif(not (_bundled(DC_ENTRY) and _bundled(CLIP_ENTRY)),
                                      reason="the digits miniatures are not in dc_zoo/hub_cache")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip-benchmark-cli")
    write_digits_webdataset(root / "wds", "test", samples_per_shard=N_IMAGES)
    (root / "wds" / "test" / "nshards.txt").write_text("1\n")
    (root / "results").mkdir()  # clip_benchmark writes into --output's folder but does not create it
    site_dir = root / "site"
    site_dir.mkdir()
    shutil.copy(Path(dc_cb.__file__).parent / "dc_zoo_clip_benchmark.pth", site_dir)
    return root


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DC_ZOO_NO_CLIP_BENCHMARK_HOOK"}
    env.update(HF_HUB_OFFLINE="1", DC_ZOO_SCORING=json.dumps(SCORING), PYTHONWARNINGS="ignore")
    return env


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    out = subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (out.stdout[-1500:], out.stderr[-3000:])
    return out


def stock_clip_benchmark(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """The installed ``clip_benchmark`` console script, with dc_zoo's .pth processed at start."""
    return _run([sys.executable, "-c", RUN_STOCK_SCRIPT, str(cwd / "site"), str(CLIP_BENCHMARK), *args], cwd)


EVAL_ARGS = ["eval", "--dataset", "wds/digits", "--dataset_root", "wds", "--batch_size", "8", "--num_workers", "1",
             "--quiet"]


@pytest.fixture(scope="module")
def side_by_side(workdir):
    """One stock eval of both models from a --pretrained_model file, then the stock build."""
    (workdir / "models.txt").write_text(f"diffusion-classifier,{DC_ENTRY}\n{CLIP_ENTRY},dc-zoo\n")
    stock_clip_benchmark([*EVAL_ARGS, "--pretrained_model", "models.txt", "--output", "results/{model}_{task}.json"],
                         workdir)
    return workdir


@pytest.fixture(scope="module")
def engine_accuracy():
    from sklearn.metrics import balanced_accuracy_score

    from dc_zoo import DiffusionClassifier

    classifier = DiffusionClassifier.from_pretrained(DC_ENTRY, scoring=SCORING)
    images, labels = load_digits_split("test")
    out = classifier.classify(images[:N_IMAGES], list(_classnames()))
    target = torch.tensor(labels[:N_IMAGES])
    return {"acc1": float((out.predictions == target).float().mean()),
            "acc5": float((out.topk(5) == target[:, None]).any(1).float().mean()),
            "mean_per_class_recall": balanced_accuracy_score(target.numpy(), out.predictions.numpy()),
            "dc_evaluations_per_image": float(out.evaluations.float().mean())}


def _classnames() -> list[str]:
    from dc_zoo.digits import CLASS_NAMES

    return list(CLASS_NAMES)


def _result(folder: Path, name: str) -> dict:
    return json.loads((folder / "results" / name).read_text())


@needs_miniatures
def test_side_by_side_results_keep_clip_benchmarks_schema(side_by_side):
    dc = _result(side_by_side, "diffusion-classifier_zeroshot_classification.json")
    clip = _result(side_by_side, f"{CLIP_ENTRY}_zeroshot_classification.json")
    assert set(dc) == set(clip) == {"dataset", "model", "pretrained", "task", "metrics", "language"}
    assert (dc["pretrained"], clip["model"]) == (DC_ENTRY, CLIP_ENTRY)
    for key in ("acc1", "acc5", "mean_per_class_recall"):
        assert 0.0 <= clip["metrics"][key] <= 1.0
    assert clip["metrics"]["acc1"] > 0.5  # a trained CLIP miniature, far above chance (0.1)
    assert not any(k.startswith("dc_") for k in clip["metrics"])


@needs_miniatures
def test_diffusion_classifier_accuracy_equals_the_engines_own(side_by_side, engine_accuracy):
    metrics = _result(side_by_side, "diffusion-classifier_zeroshot_classification.json")["metrics"]
    for key, value in engine_accuracy.items():
        assert metrics[key] == pytest.approx(value), key
    assert metrics["dc_schedule"] == "n_samples=2/8 to_keep=2/1 loss=l2 n_trials=1"
    assert metrics["dc_entry"] == DC_ENTRY and metrics["dc_seconds_per_image"] > 0


@needs_miniatures
def test_build_merges_both_models_into_one_csv(side_by_side):
    stock_clip_benchmark(["build", "results", "--output", "benchmark.csv"], side_by_side)
    with open(side_by_side / "benchmark.csv") as f:
        rows = {row["model_fullname"]: row for row in csv.DictReader(f)}
    assert set(rows) == {f"diffusion-classifier {DC_ENTRY}", f"{CLIP_ENTRY} dc-zoo"}
    dc, clip = rows[f"diffusion-classifier {DC_ENTRY}"], rows[f"{CLIP_ENTRY} dc-zoo"]
    assert float(dc["acc1"]) == pytest.approx(_result(side_by_side, "diffusion-classifier_zeroshot_classification.json")
                                              ["metrics"]["acc1"])
    assert dc["dc_seed"] == "0" and clip["dc_seed"] == ""


@needs_miniatures
def test_module_entry_point_and_model_type_with_the_entrys_template(side_by_side):
    """``python -m dc_zoo.clip_benchmark`` (no hook), ``--model_type``, the entry's template by file."""
    (side_by_side / "templates.json").write_text(json.dumps({"digits": [TEMPLATE.replace("{}", "{c}")]}))
    _run([sys.executable, "-m", "dc_zoo.clip_benchmark", *EVAL_ARGS, "--model_type", "diffusion_classifier",
          "--model", "diffusion-classifier", "--pretrained", DC_ENTRY, "--custom_template_file", "templates.json",
          "--no_amp", "--output", "results/model-type_{task}.json"], side_by_side)
    again = _result(side_by_side, "model-type_zeroshot_classification.json")["metrics"]
    first = _result(side_by_side, "diffusion-classifier_zeroshot_classification.json")["metrics"]
    assert {k: v for k, v in again.items() if k != "dc_seconds_per_image"} == \
        {k: v for k, v in first.items() if k != "dc_seconds_per_image"}
