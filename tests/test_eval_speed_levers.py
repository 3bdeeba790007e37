"""``dc-zoo eval`` with speed levers: batch_size 'auto' (measured once, kept on resume) and a pinned
attention kernel; both are recorded in the run identity and change scores only in float rounding."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from _eval_fixtures import digits_root, eval_args, eval_in_process, eval_model, read_results, result_files  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore:WebDataset\\(shardshuffle")


def _header(output: Path) -> dict:
    _, _, store = result_files(output)
    (first,) = sorted(store.glob("rank-*.jsonl"))
    return json.loads(first.read_text().splitlines()[0])["identity"]


def _assert_same_decisions(output: Path, reference: Path) -> None:
    _, samples = read_results(output)
    _, expected = read_results(reference)
    assert [s["prediction"] for s in samples] == [s["prediction"] for s in expected]
    for s, e in zip(samples, expected):
        assert s["errors"] == pytest.approx(e["errors"], rel=1e-4, abs=1e-6)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, eval_model, digits_root) -> Path:
    output = tmp_path_factory.mktemp("reference")
    assert eval_in_process(eval_args(eval_model, digits_root, output)) == 0
    return output


def test_auto_batch_size_is_measured_recorded_and_kept_on_resume(eval_model, digits_root, reference, tmp_path,
                                                                   caplog, capsys):
    with caplog.at_level(logging.INFO):
        assert eval_in_process(eval_args(eval_model, digits_root, tmp_path, "--batch-size", "auto")) == 0
    chosen = _header(tmp_path)["batch_size"]
    assert isinstance(chosen, int) and chosen >= 8 and "batch_size='auto': batch size" in caplog.text
    _assert_same_decisions(tmp_path, reference)

    caplog.clear()
    with caplog.at_level(logging.INFO):  # a second session resumes with the stored number, no new search
        assert eval_in_process(eval_args(eval_model, digits_root, tmp_path, "--batch-size", "auto")) == 0
    assert f"resuming with the stored batch size {chosen}" in caplog.text
    assert "evaluations/s by batch size" not in caplog.text

    other = 7 if chosen != 7 else 9  # an explicit, different number is another run
    capsys.readouterr()
    assert eval_in_process(eval_args(eval_model, digits_root, tmp_path, "--batch-size", str(other))) != 0
    assert f"batch_size: stored {chosen}, this run {other}" in capsys.readouterr().err


def test_pinned_attention_is_part_of_the_identity(eval_model, digits_root, reference, tmp_path, capsys):
    assert eval_in_process(eval_args(eval_model, digits_root, tmp_path, "--attention", "math")) == 0
    assert _header(tmp_path)["speed_levers"] == ["attention=math"]
    _assert_same_decisions(tmp_path, reference)
    capsys.readouterr()  # resuming without the pin is another configuration
    assert eval_in_process(eval_args(eval_model, digits_root, tmp_path)) != 0
    assert "speed_levers: stored ['attention=math'], this run []" in capsys.readouterr().err
