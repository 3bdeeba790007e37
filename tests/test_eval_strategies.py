"""``dc-zoo eval`` with a strategy, a budget, a prefilter and an error cache: recorded in the
run identity, and a second run answered from the cache gives the same records."""
from __future__ import annotations

import json

from _eval_fixtures import digits_root, eval_args, eval_in_process, read_results, run_eval  # noqa: F401 - fixtures

SEQUENTIAL = json.dumps({"name": "sequential", "alpha": 0.05, "chunk": 5, "max_timesteps": 50})


def test_strategy_prefilter_budget_and_cache_through_dc_zoo_eval(digits_root, tmp_path, capsys):
    """The first run as a user types it (a process of its own); the rerun and the refusal in process
    (one thread, as the subprocess: CPU scores, hence the cache's namespace, depend on the thread count)."""

    cache = tmp_path / "errors.sqlite"
    extra = ["--strategy", SEQUENTIAL, "--prefilter", "clip-digits-mini:3", "--max-evaluations", "120",
             "--n-samples", "50", "--to-keep", "1", "--error-cache", str(cache), "--timestep-weights", "sine",
             "--timestep-range", "0.02", "0.98"]
    first = run_eval(eval_args("dit-digits-mini", digits_root, tmp_path / "a", *extra))
    assert first.returncode == 0, first.stderr
    results, samples = read_results(tmp_path / "a")
    header = json.loads((next(p for p in (tmp_path / "a").iterdir() if p.is_dir()) / "samples.jsonl")
                        .read_text().splitlines()[0])
    identity = header["identity"]
    assert identity["strategy"]["name"] == "sequential" and identity["prefilter"] == {"model": "clip-digits-mini", "k": 3}
    assert identity["max_evaluations"] == 120 and identity["store_format"] == 4
    assert identity["timestep_weights"] == {"name": "sine"} and identity["timestep_range"] == [0.02, 0.98]
    assert all(s["evaluations"] <= 120 for s in samples)
    assert all(sum(stage >= 0 for stage in s["stage_reached"]) <= 3 for s in samples)  # only CLIP's top-3 scored
    assert results["metrics"]["acc1"] >= 0.75
    from dc_zoo.error_cache import ErrorCache

    def rows():
        with ErrorCache(cache, "probe") as probe:
            return sum(probe.namespaces().values())

    stored = rows()
    assert stored > 0
    # the same run into another folder: every error comes from the cache (no new row), the records agree
    assert eval_in_process(eval_args("dit-digits-mini", digits_root, tmp_path / "b", *extra)) == 0
    _, again = read_results(tmp_path / "b")
    assert [(s["prediction"], s["evaluations"]) for s in again] == [(s["prediction"], s["evaluations"]) for s in samples]
    assert [s["errors"] for s in again] == [s["errors"] for s in samples]
    assert rows() == stored
    # another strategy in the first folder is another run: refused, naming the field
    capsys.readouterr()
    assert eval_in_process(eval_args("dit-digits-mini", digits_root, tmp_path / "a", "--n-samples", "50", "--to-keep",
                                     "1", "--prefilter", "clip-digits-mini:3", "--max-evaluations", "120")) == 2
    assert "strategy" in capsys.readouterr().err


def test_bad_strategy_and_prefilter_options_are_one_line_errors(digits_root, tmp_path, capsys):
    """In process (the command's main, as ``python -m dc_zoo.evaluation`` calls it): one line, status 2."""
    import pytest

    main = eval_in_process
    assert main(eval_args("dit-digits-mini", digits_root, tmp_path / "c", "--strategy", "bandit")) == 2
    err = capsys.readouterr().err
    assert "Unknown strategy 'bandit'" in err and "Traceback" not in err
    assert main(eval_args("dit-digits-mini", digits_root, tmp_path / "c", "--timestep-weights", "cosine")) == 2
    err = capsys.readouterr().err
    assert "Unknown timestep weighting 'cosine'" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as stop:
        main(eval_args("dit-digits-mini", digits_root, tmp_path / "c", "--prefilter", "clip-digits-mini"))
    assert stop.value.code == 2 and "MODEL:K" in capsys.readouterr().err
