"""CI runs the throughput benchmark at tiny size as a smoke test (never a timed assertion)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

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
