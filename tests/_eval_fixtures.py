"""Shared pieces of the ``dc-zoo eval`` tests: the digits WebDataset, the miniatures, a runner.

Every compared run scores the same 24 test digits, in chunks of 2, with the miniature's own
registry schedule, on one CPU thread per process: the thread count changes float reduction
order, so bit-identical comparisons need it fixed (torchrun sets OMP_NUM_THREADS=1 for
multi-process runs anyway).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

LIMIT = 24
SCHEDULE = ["--image-batch-size", "2", "--limit", str(LIMIT)]
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory) -> Path:
    """The digits test split as a clip_benchmark WebDataset (``--dataset wds/digits``)."""
    from dc_zoo.digits import write_digits_webdataset

    return write_digits_webdataset(tmp_path_factory.mktemp("digits-wds"), "test")


@pytest.fixture(scope="session")
def eval_model() -> str:
    """The digits miniature (text-conditional) by its zoo name, as users run it."""
    return "sd-digits-mini"


@pytest.fixture(scope="session")
def eval_dit_model() -> str:
    """The class-conditional digits miniature (integer labels, no prompts)."""
    return "dit-digits-mini"


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
    return env


def eval_args(model: str, root: Path, output: Path, *extra: str) -> list[str]:
    return ["--model", model, "--dataset", "wds/digits", "--dataset_root", str(root), "--output", str(output),
            *SCHEDULE, "--no-progress", *extra]


def run_eval(args: list[str], nproc: int = 1, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m dc_zoo.evaluation ARGS`` alone, or under ``torchrun --nproc-per-node NPROC``."""
    if nproc == 1:
        cmd = [sys.executable, "-m", "dc_zoo.evaluation", *args]
    else:  # --standalone: a local rendezvous on a free port (tests may run side by side)
        cmd = [TORCHRUN, "--standalone", f"--nproc-per-node={nproc}", "-m", "dc_zoo.evaluation", *args]
    return subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)


def start_eval(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dc_zoo.evaluation", *args], env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result_files(output: Path) -> tuple[Path, Path, Path]:
    """(clip_benchmark JSON, samples.jsonl, store folder) of the only run in ``output``."""
    (run_dir,) = [p for p in output.iterdir() if p.is_dir()]
    return run_dir.with_suffix(".json"), run_dir / "samples.jsonl", run_dir / "store"


def read_results(output: Path) -> tuple[dict, list[dict]]:
    results, samples, _ = result_files(output)
    lines = samples.read_text().splitlines()
    return json.loads(results.read_text()), [json.loads(line) for line in lines[1:]]


class one_thread:
    """``with one_thread():`` in-process runs use one CPU thread, like the subprocess runs."""

    def __enter__(self):
        import torch

        self.saved = torch.get_num_threads()
        torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.saved)


def eval_in_process(args: list[str]) -> int:
    """``dc-zoo eval ARGS`` in this process (one thread); returns the exit status."""
    from dc_zoo.evaluation.command import main

    with one_thread():
        return main(args)
