"""``dc-zoo eval`` refuses bad input before any work starts, and says what to do instead.

Each case runs the real command in this process and checks the one-line error and that no
result or record was written. (A world size larger than the dataset needs two ranks: see
test_eval_runs.py.)
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from _eval_fixtures import digits_root, eval_args, eval_in_process, eval_model  # noqa: F401


# clip_benchmark's WebDataset reader leaves shardshuffle unset; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:WebDataset\\(shardshuffle")


def _fails(args: list[str], capsys) -> str:
    assert eval_in_process(args) == 2
    return capsys.readouterr().err


def test_unknown_dataset_lists_close_matches(eval_model, digits_root, tmp_path, capsys):
    args = eval_args(eval_model, digits_root, tmp_path)
    args[args.index("wds/digits")] = "cifar-10"
    err = _fails(args, capsys)
    assert "Unknown dataset 'cifar-10'" in err and "close matches: cifar10" in err
    assert not any(tmp_path.iterdir())


def test_unknown_dataset_names_come_from_clip_benchmark():
    from dc_zoo.evaluation.benchmark_datasets import check_dataset_name, known_dataset_names

    names = known_dataset_names()
    assert {"cifar10", "imagenet1k", "vtab/pets", "food101", "objectnet"} <= set(names)
    assert check_dataset_name("wds/anything") == "zeroshot_classification"
    with pytest.raises(ValueError, match="single-label zero-shot classification"):
        check_dataset_name("flickr30k")
    with pytest.raises(ValueError, match="collection"):
        check_dataset_name("vtab")


def test_unknown_model_is_refused_before_any_sample(digits_root, tmp_path, capsys):
    err = _fails(eval_args("sd-digits-mni", digits_root, tmp_path), capsys)
    assert "sd-digits-mni" in err
    assert not list(tmp_path.rglob("*.jsonl"))


def test_missing_dataset_root_says_what_is_expected(eval_model, tmp_path, capsys):
    err = _fails(eval_args(eval_model, tmp_path / "nowhere", tmp_path / "out"), capsys)
    assert "nowhere does not exist" in err and "nshards.txt" in err and "classnames.txt" in err


def test_incomplete_dataset_root_names_the_missing_shards(eval_model, digits_root, tmp_path, capsys):
    root = tmp_path / "digits"
    shutil.copytree(digits_root, root)
    (root / "test" / "nshards.txt").write_text("3\n")
    err = _fails(eval_args(eval_model, root, tmp_path / "out"), capsys)
    assert "incomplete" in err and "1.tar" in err and "2.tar" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_webdataset_without_templates_is_reported(eval_model, digits_root, tmp_path, capsys):
    root = tmp_path / "digits"
    shutil.copytree(digits_root, root)
    (root / "zeroshot_classification_templates.txt").unlink()
    err = _fails(eval_args(eval_model, root, tmp_path / "out"), capsys)
    assert "has no zeroshot_classification_templates.txt" in err and "'{c}' for the class" in err


def test_wrong_split_is_reported_with_the_layout(eval_model, digits_root, tmp_path, capsys):
    err = _fails(eval_args(eval_model, digits_root, tmp_path / "out") + ["--split", "validation"], capsys)
    assert "no validation/nshards.txt" in err


def test_unwritable_output_is_refused(eval_model, digits_root, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    err = _fails(eval_args(eval_model, digits_root, blocker / "results"), capsys)
    assert "is not writable" in err and "choose a writable --output" in err


def test_schedule_keeping_more_candidates_than_classes_is_refused(eval_model, digits_root, tmp_path, capsys):
    err = _fails(eval_args(eval_model, digits_root, tmp_path) + ["--to-keep", "20", "1"], capsys)
    assert "to_keep=(20, 1)" in err and "at most 10" in err
    assert not list(tmp_path.rglob("*.jsonl"))


def test_template_without_placeholder_is_refused(eval_model, digits_root, tmp_path, capsys):
    template_file = tmp_path / "templates.txt"
    template_file.write_text("a photo of a digit.\n")
    err = _fails(eval_args(eval_model, digits_root, tmp_path / "out") + ["--templates", str(template_file)], capsys)
    assert "no class placeholder" in err
