"""``dc-zoo eval`` end to end: sharding, SIGKILL and resume, torn writes, refused resumes.

The reference is one uninterrupted single-process run; every other way of getting to the end
(two torchrun ranks over gloo, a run killed part-way and re-run, a store with a torn last
record) must produce the same per-sample records and metrics, bit for bit.
"""
from __future__ import annotations

import csv
import json
import re
import shutil
import signal
import time
from pathlib import Path

import pytest

from _eval_fixtures import (LIMIT, digits_root, eval_args, eval_dit_model, eval_in_process, eval_model,  # noqa: F401
                            read_results, result_files, run_eval, start_eval)


# clip_benchmark's WebDataset reader leaves shardshuffle unset; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:WebDataset\\(shardshuffle")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, eval_model, digits_root) -> Path:
    """One uninterrupted single-process run."""
    output = tmp_path_factory.mktemp("reference")
    proc = run_eval(eval_args(eval_model, digits_root, output))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return output


def _records(store: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(store.glob("rank-*.jsonl")) for line in path.read_text().splitlines()[1:]]


def test_reference_run_writes_clip_benchmark_results(reference):
    results, samples = read_results(reference)
    assert results["task"] == "zeroshot_classification" and results["dataset"] == "wds/digits"
    # the names `clip_benchmark eval --model diffusion-classifier --pretrained sd-digits-mini` uses
    assert (results["model"], results["pretrained"]) == ("diffusion-classifier", "sd-digits-mini")
    assert result_files(reference)[0].name == "digits_sd-digits-mini_diffusion-classifier_en_zeroshot_classification.json"
    assert set(results["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert [s["index"] for s in samples] == list(range(LIMIT))
    assert all(len(s["errors"]) == 10 and s["evaluations"] == results["evaluations_per_image"] for s in samples)
    correct = sum(s["prediction"] == s["label"] for s in samples)
    assert results["metrics"]["acc1"] == pytest.approx(correct / LIMIT)
    assert results["metrics"]["acc1"] >= 0.75  # the trained miniature reads digits (98% on the whole split)
    assert results["images"] == LIMIT and results["failed_images"] == 0


def test_clip_benchmark_build_merges_the_result(reference, tmp_path):
    from clip_benchmark.cli import main_build

    class Args:
        files = [str(reference)]
        output = str(tmp_path / "benchmark.csv")

    main_build(Args)
    (row,) = list(csv.DictReader(open(Args.output)))
    assert row["dataset"] == "wds/digits" and float(row["acc1"]) == read_results(reference)[0]["metrics"]["acc1"]


def test_two_torchrun_ranks_match_one_process(reference, eval_model, digits_root, tmp_path):
    proc = run_eval(eval_args(eval_model, digits_root, tmp_path), nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, ref_samples, _ = result_files(reference)
    results, samples, store = result_files(tmp_path)
    assert samples.read_bytes() == ref_samples.read_bytes()
    assert json.loads(results.read_text())["metrics"] == read_results(reference)[0]["metrics"]
    by_rank = [[json.loads(l)["index"] for l in p.read_text().splitlines()[1:]] for p in sorted(store.glob("rank-*"))]
    assert len(by_rank) == 2 and all(len(r) == LIMIT // 2 for r in by_rank)  # both ranks worked, evenly
    assert sorted(by_rank[0] + by_rank[1]) == list(range(LIMIT))  # each sample on exactly one rank


def test_world_size_larger_than_dataset_is_refused_on_every_rank(eval_model, digits_root, tmp_path):
    args = eval_args(eval_model, digits_root, tmp_path) + ["--limit", "1", "--image-batch-size", "1"]
    proc = run_eval(args, nproc=2, timeout=120)
    assert proc.returncode != 0
    assert "World size 2 is larger than the 1 samples" in proc.stderr
    assert not list(tmp_path.glob("*.json"))


def test_sigkill_part_way_then_rerun_equals_uninterrupted(reference, eval_model, digits_root, tmp_path):
    args = eval_args(eval_model, digits_root, tmp_path)
    proc = start_eval(args)
    store_file = None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        found = list(tmp_path.glob("*/store/rank-00000.jsonl"))
        if found and found[0].read_bytes().count(b"\n") >= 3:  # header and at least one chunk
            store_file = found[0]
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed part-way"
    killed_at = len(_records(store_file.parent))
    assert 0 < killed_at < LIMIT

    rerun = run_eval(args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    _, ref_samples, ref_store = result_files(reference)
    results, samples, store = result_files(tmp_path)
    assert samples.read_bytes() == ref_samples.read_bytes()
    assert (store / "rank-00000.jsonl").read_bytes() == (ref_store / "rank-00000.jsonl").read_bytes()
    assert json.loads(results.read_text())["metrics"] == read_results(reference)[0]["metrics"]
    resumed = int(re.search(r"(\d+) already in", rerun.stderr).group(1))
    assert 0 < resumed <= killed_at and resumed % 2 == 0  # whole chunks kept, a torn one scored again


def _copy_run(reference: Path, tmp_path: Path) -> Path:
    output = tmp_path / "output"
    shutil.copytree(reference, output)
    results, samples, _ = result_files(output)
    results.unlink()
    samples.unlink()
    return output


def test_torn_last_record_is_detected_and_that_sample_rescored(reference, eval_model, digits_root, tmp_path, caplog):
    output = _copy_run(reference, tmp_path)
    _, _, store = result_files(reference)
    rank_file = result_files(output)[2] / "rank-00000.jsonl"
    data = rank_file.read_bytes()
    rank_file.write_bytes(data[: len(data) - 40])  # the last write stopped 40 bytes short
    assert json.loads(data.splitlines()[-1])["index"] == LIMIT - 1

    with caplog.at_level("WARNING", logger="dc_zoo.evaluation"):
        assert eval_in_process(eval_args(eval_model, digits_root, output)) == 0
    assert any("torn write" in r.getMessage() for r in caplog.records)
    assert any("samples [22, 23]" in r.getMessage() for r in caplog.records)  # its whole chunk is scored again
    assert rank_file.read_bytes() == (store / "rank-00000.jsonl").read_bytes()
    assert result_files(output)[1].read_bytes() == result_files(reference)[1].read_bytes()


@pytest.mark.parametrize("change, field, message", [
    (["--seed", "1"], "seed", "seed: stored 0, this run 1"),
    (["--loss", "l1"], "loss", "loss: stored 'l2', this run 'l1'"),
    (["--image-batch-size", "4"], "image_batch_size", "image_batch_size: stored 2, this run 4"),
    (["--channels-last"], "speed_levers", "speed_levers: stored [], this run ['channels_last']"),
])
def test_changed_configuration_is_refused_on_resume(reference, eval_model, digits_root, tmp_path, capsys,
                                                    change, field, message):
    output = _copy_run(reference, tmp_path)
    before = {p: p.read_bytes() for p in output.rglob("*") if p.is_file()}
    assert eval_in_process(eval_args(eval_model, digits_root, output) + change) == 2
    err = capsys.readouterr().err
    assert message in err and "another --output directory" in err
    assert {p: p.read_bytes() for p in output.rglob("*") if p.is_file()} == before  # nothing touched


def test_changed_templates_are_refused_on_resume(reference, eval_model, digits_root, tmp_path, capsys):
    output = _copy_run(reference, tmp_path)
    template_file = tmp_path / "templates.txt"
    template_file.write_text("a drawing of the digit {c}.\n")
    assert eval_in_process(eval_args(eval_model, digits_root, output) + ["--templates", str(template_file)]) == 2
    assert "templates: stored" in capsys.readouterr().err


def test_class_conditional_model_scores_labels_not_prompts(eval_dit_model, digits_root, tmp_path):
    args = eval_args(eval_dit_model, digits_root, tmp_path) + ["--limit", "4"]
    assert eval_in_process(args) == 0
    results, samples = read_results(tmp_path)
    header = json.loads(result_files(tmp_path)[1].read_text().splitlines()[0])
    assert header["identity"]["templates"] == [] and results["templates"] == []
    assert header["identity"]["class_names"][3] == "three"
    assert [s["index"] for s in samples] == [0, 1, 2, 3]
    assert all(len(s["errors"]) == 10 and s["evaluations"] == results["evaluations_per_image"] for s in samples)
    assert sum(s["prediction"] == s["label"] for s in samples) >= 3


def test_a_longer_limit_reuses_the_shorter_run(reference, eval_model, digits_root, tmp_path, caplog):
    args = eval_args(eval_model, digits_root, tmp_path)
    assert eval_in_process(args + ["--limit", "3"]) == 0  # rounded up to 2 whole chunks of 2
    assert [s["index"] for s in read_results(tmp_path)[1]] == [0, 1, 2, 3]
    with caplog.at_level("INFO", logger="dc_zoo.evaluation"):
        assert eval_in_process(args + ["--limit", "8"]) == 0
    assert any("8 samples, 4 already in" in r.getMessage() for r in caplog.records)
    assert read_results(tmp_path)[1] == read_results(reference)[1][:8]
