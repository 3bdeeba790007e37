"""CI runs the benchmarks at tiny size as smoke tests (never a timed assertion)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import levers  # noqa: E402
import loading  # noqa: E402
import throughput  # noqa: E402


def test_tiny_throughput_benchmark_prints_its_table(tmp_path, capsys):
    out = tmp_path / "table.md"
    assert throughput.main(["--arch", "tiny-sd", "--images", "2", "--classes", "5", "--seconds", "0.2",
                            "--batch-size", "16", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| reference-like" in text and "| engine, end to end" in text
    assert "predictions equal to the reference-like run: 2/2" in text
    engine_evals, ref_evals = [int(x.split()[-1].strip(",")) for x in text.split("evaluations: ")[1].split(",")]
    assert engine_evals == ref_evals == 2 * (5 * 10 + 3 * 40)
    assert text in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore:WebDataset\\(shardshuffle")  # clip_benchmark's reader; not ours to fix
def test_loading_benchmark_prints_its_table(tmp_path, capsys):
    out = tmp_path / "loading.md"
    assert loading.main(["--images", "3", "--repeats", "1", "--out", str(out)]) == 0
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| digits") or line.startswith("| photos")]
    assert len(rows) == 4 and all(line.count("%") == 2 for line in rows)
    assert "share of SD-2-base time (3.01 s/image)" in text and "share of DiT-XL/2 time (7.20 s/image)" in text
    assert text in capsys.readouterr().out


def test_levers_benchmark_measures_each_lever_and_reports_what_cannot_run(tmp_path, capsys):
    out = tmp_path / "levers.md"
    assert levers.main(["--arch", "tiny-sd", "--no-compile", "--seconds", "0.1", "--batch-size", "16",
                        "--out", str(out)]) == 0
    text = out.read_text()
    rows = {line.split(" | ")[1]: line for line in text.splitlines() if line.startswith("| ") and "---" not in line}
    assert "float32, batch 16, eager" in rows and "float32, batch 32, eager" in rows  # base and one batch row
    assert "float32, batch 16, channels_last, eager" in rows
    for kernel in ("flash", "math"):  # the kernels torch has on the CPU are measured
        assert "x |" in rows[f"float32, batch 16, attention={kernel}, eager"]
    assert "cannot run here" in rows["float32, batch 16, attention=efficient, eager"]  # reported, not hidden
    assert "batch_size='auto' picks batch size" in text
    assert text in capsys.readouterr().out
