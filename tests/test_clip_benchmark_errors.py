"""The stock ``clip_benchmark eval`` reports dc_zoo's user errors and corrupt samples in one line.

In subprocesses, as in ``test_clip_benchmark_cli``: the installed console script with dc_zoo's
``.pth`` hook processed at start, and ``python -m dc_zoo.clip_benchmark`` (no hook). A bad
``DC_ZOO_SCORING``, an unknown ``--pretrained`` or a bad schedule exit with status 2 and
``clip_benchmark: error: <message>``; a WebDataset sample that cannot be decoded exits with
status 1 and a line naming the shard, the key and the reason; none shows a traceback, while
errors that are not dc_zoo's keep theirs.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import dc_zoo.clip_benchmark as dc_cb
from dc_zoo.clip_benchmark.registration import CorruptSampleError, _user_error_message
from dc_zoo.digits import write_digits_webdataset

N_IMAGES = 16
CLIP_BENCHMARK = Path(sys.executable).parent / "clip_benchmark"
RUN_STOCK_SCRIPT = ("import runpy, site, sys; site.addsitedir(sys.argv[1]); sys.argv = sys.argv[2:];"
                    "runpy.run_path(sys.argv[0], run_name='__main__')")
GOOD_SCORING = {"n_samples": [2, 4], "to_keep": [2, 1]}
TRUNCATED, EMPTY = "s0000003", "s0000005"  # the two damaged samples of the corrupt copy


def _bundled(name: str) -> bool:
    from dc_zoo._hub import BUNDLED_CACHE

    return (BUNDLED_CACHE / f"models--dc-zoo--{name}").is_dir()


pytestmark = pytest.mark.skipif(not _bundled("sd-digits-mini"), reason="sd-digits-mini is not in dc_zoo/hub_cache")


def _rewrite_shard(src: Path, dst: Path, damage: dict[str, bytes | None]) -> None:
    """Copy a tar shard member by member, replacing the named members' bytes (None: keep half)."""
    with tarfile.open(src) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(dst, "w", format=tarfile.USTAR_FORMAT) as out:
        for member, data in members:
            if member.name in damage:
                data = data[: len(data) // 2] if damage[member.name] is None else damage[member.name]
            info = tarfile.TarInfo(member.name)
            info.size, info.mtime, info.mode = len(data), member.mtime, member.mode
            out.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip-benchmark-errors")
    write_digits_webdataset(root / "wds", "test", samples_per_shard=N_IMAGES)
    (root / "wds" / "test" / "nshards.txt").write_text("1\n")
    for name, damage in (("truncated", {f"{TRUNCATED}.png": None}), ("empty", {f"{EMPTY}.png": b""})):
        shutil.copytree(root / "wds", root / name)
        _rewrite_shard(root / "wds" / "test" / "0.tar", root / name / "test" / "0.tar", damage)
    (root / "results").mkdir()
    (root / "site").mkdir()
    shutil.copy(Path(dc_cb.__file__).parent / "dc_zoo_clip_benchmark.pth", root / "site")
    return root


def _run(how: str, args: list[str], cwd: Path, scoring: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DC_ZOO_NO_CLIP_BENCHMARK_HOOK", "DC_ZOO_SCORING")}
    env.update(HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore", DC_ZOO_SCORING=scoring or json.dumps(GOOD_SCORING))
    if how == "stock":
        argv = [sys.executable, "-c", RUN_STOCK_SCRIPT, str(cwd / "site"), str(CLIP_BENCHMARK), *args]
    else:
        argv = [sys.executable, "-m", "dc_zoo.clip_benchmark", *args]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _eval(root: str = "wds", pretrained: str = "sd-digits-mini", workers: str = "1",
          output: str = "results/{pretrained}_{task}.json") -> list[str]:
    return ["eval", "--dataset", "wds/digits", "--dataset_root", root, "--batch_size", "8", "--num_workers", workers,
            "--quiet", "--model", "diffusion-classifier", "--pretrained", pretrained, "--output", output]


def _error_line(out: subprocess.CompletedProcess, status: int) -> str:
    assert out.returncode == status, (out.returncode, out.stderr[-3000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("clip_benchmark: error: ")]
    assert len(errors) == 1, out.stderr[-3000:]
    assert out.stderr.rstrip().endswith(errors[0])  # the last thing printed
    return errors[0]


@pytest.mark.parametrize("how, scoring, fragments", [
    ("stock", "{n_samples: 10}", ["DC_ZOO_SCORING must be a JSON object", "'{n_samples: 10}'"]),
    ("module", '{"n_sample": [10, 50]}', ["DC_ZOO_SCORING has unknown keys ['n_sample']", "valid keys"]),
])
def test_bad_scoring_ends_in_one_line_and_usage_status(workdir, how, scoring, fragments):
    line = _error_line(_run(how, _eval(), workdir, scoring=scoring), 2)
    for fragment in fragments:
        assert fragment in line, line


def test_a_scoring_the_stages_refuse_is_named_before_any_image(monkeypatch):
    """The same path in process: the loader that clip_benchmark calls turns DC_ZOO_SCORING into the
    entry's ScoringConfig, whose message names both fields (the CLI prints it as the two cases above)."""
    from dc_zoo.clip_benchmark.registration import SCORING_ENV, load_diffusion_classifier

    monkeypatch.setenv(SCORING_ENV, '{"n_samples": [10, 50], "to_keep": [3]}')
    with pytest.raises(ValueError, match=r"n_samples \(10, 50\) and to_keep \(3,\).*same length"):
        load_diffusion_classifier(pretrained="sd-digits-mini")


@pytest.mark.parametrize("how", ["stock", "module"])
def test_unknown_pretrained_lists_close_matches(workdir, how):
    line = _error_line(_run(how, _eval(pretrained="sd-digit-mini"), workdir), 2)
    assert "Unknown model 'sd-digit-mini'" in line and "close matches: ['sd-digits-mini'" in line


def test_uncached_hub_model_says_how_to_fetch_it(workdir):
    line = _error_line(_run("stock", _eval(pretrained="hf-hub:dc-zoo-test/absent", output="results/{task}.json"), workdir), 2)
    assert "not in the Hugging Face cache" in line and "hf download dc-zoo-test/absent" in line


def test_output_that_the_model_name_would_put_in_a_missing_folder_stops_before_the_evaluation(workdir):
    out = _run("stock", _eval(pretrained="hf-hub:dc-zoo/sd-digits-mini"), workdir)
    line = _error_line(out, 2)
    assert "'results/hf-hub:dc-zoo'" in line and "does not exist" in line and "Create the folder" in line
    assert "Loading weights" not in out.stderr  # stopped before the model was loaded


@pytest.mark.parametrize("how, root, key, workers, reason", [
    ("stock", "truncated", TRUNCATED, "1", "image file is truncated"),   # raised in a DataLoader worker
    ("module", "empty", EMPTY, "0", "is empty (0 bytes)"),  # raised in the main process
])
def test_corrupt_sample_names_shard_key_and_reason(workdir, how, root, key, workers, reason):
    line = _error_line(_run(how, _eval(root=root, workers=workers), workdir), 1)
    assert f"shard {root}/test/0.tar, sample {key}: its 'png' field cannot be decoded" in line, line
    assert reason in line and "`dc-zoo eval`" in line and "would change its metrics silently" in line, line
    assert not (workdir / "results" / "sd-digits-mini_zeroshot_classification.json").exists()


def test_errors_that_are_not_dc_zoos_keep_their_traceback(workdir):
    out = _run("stock", ["eval", "--dataset", "wds/digits", "--dataset_root", "wds", "--model", "NoSuchArch",
                         "--pretrained", "none", "--output", "results/x.json"], workdir)
    assert out.returncode == 1 and "Traceback" in out.stderr and "clip_benchmark: error:" not in out.stderr


def test_only_dc_zoo_errors_are_reported_as_user_errors():
    from dc_zoo._hub import ModelNotCachedError
    from dc_zoo.clip_benchmark import UnsupportedTaskError

    assert _user_error_message(ValueError("clip_benchmark's own")) is None
    assert _user_error_message(KeyError("x")) is None
    assert _user_error_message(ModelNotCachedError("not cached")) == ("not cached", 2)
    assert _user_error_message(UnsupportedTaskError("captioning", "no"))[1] == 2
    marked = KeyError("Unknown model 'x'")
    marked._dc_zoo_user_error = True
    assert _user_error_message(marked) == ("Unknown model 'x'", 2)
    # torch's DataLoader re-raises a worker's error as type(err)(<its traceback text>)
    wrapped = CorruptSampleError("Caught CorruptSampleError in DataLoader worker process 0.\nOriginal Traceback "
                                 "(most recent call last):\n  File \"x.py\", line 1\n"
                                 "dc_zoo.clip_benchmark.registration.CorruptSampleError: shard a.tar, sample k: bad\n")
    assert _user_error_message(wrapped) == ("shard a.tar, sample k: bad", 1)
