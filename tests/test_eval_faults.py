"""``dc-zoo eval`` runs that fail or collide: a second launch, SIGTERM, a full disk, another CPU
thread count, an edited record.

Each way of failing must say what happened in one line (no traceback), leave a store that needs
no repair, and let the same command, re-run, end with the records of one uninterrupted run, bit
for bit.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from dc_zoo.evaluation.run import launch_lock_path

from _eval_fixtures import (LIMIT, digits_root, eval_args, eval_in_process, eval_model, read_results,  # noqa: F401
                            result_files, run_eval, start_eval)

pytestmark = pytest.mark.filterwarnings("ignore:WebDataset\\(shardshuffle")

STEM = "digits_sd-digits-mini_diffusion-classifier_en_zeroshot_classification"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, eval_model, digits_root) -> Path:
    """One uninterrupted single-process run (one CPU thread, as every compared run)."""
    output = tmp_path_factory.mktemp("reference")
    assert eval_in_process(eval_args(eval_model, digits_root, output)) == 0
    return output


def _rank_file(output: Path) -> Path:
    return output / STEM / "store" / "rank-00000.jsonl"


def _wait_for_records(proc: subprocess.Popen, output: Path, lines: int = 3, timeout: float = 240) -> None:
    """Until the run has stored a chunk (header + ``lines - 1`` records)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        path = _rank_file(output)
        if path.exists() and path.read_bytes().count(b"\n") >= lines:
            return
        time.sleep(0.01)
    pytest.fail(f"the run ended (status {proc.poll()}) before it stored a chunk: {proc.stderr.read()[-2000:]}")


def _assert_whole_chunks(path: Path, reference: Path) -> int:
    """The rank file is a prefix of the uninterrupted one ending at a chunk: no torn write, no repair."""
    data, whole = path.read_bytes(), _rank_file(reference).read_bytes()
    assert whole.startswith(data) and data.endswith(b"\n")
    records = data.count(b"\n") - 1
    assert records % 2 == 0  # chunks of 2
    return records


def _assert_same_as_reference(output: Path, reference: Path) -> None:
    _, samples, _ = result_files(output)
    assert samples.read_bytes() == result_files(reference)[1].read_bytes()
    assert _rank_file(output).read_bytes() == _rank_file(reference).read_bytes()
    assert read_results(output)[0]["metrics"] == read_results(reference)[0]["metrics"]
    assert not [p for p in output.rglob("*") if ".tmp-" in p.name]


def _error_line(stderr: str) -> str:
    """The command's one error line (the weights loader may draw a progress bar in-process)."""
    (line,) = [line for line in stderr.splitlines() if line.startswith("dc-zoo eval:")]
    return line


def _copy_run(reference: Path, tmp_path: Path) -> Path:
    output = tmp_path / "output"
    shutil.copytree(reference, output)
    results, samples, _ = result_files(output)
    results.unlink()
    samples.unlink()
    return output


# ------------------------------------------------------------------ 1. a second launch, a killed one
def test_second_launch_is_refused_naming_the_holder_and_a_killed_run_resumes(reference, eval_model, digits_root,
                                                                           tmp_path, capsys):
    args = eval_args(eval_model, digits_root, tmp_path)
    first = start_eval(args)
    try:
        _wait_for_records(first, tmp_path)
        first.send_signal(signal.SIGSTOP)  # frozen while holding the lock, so it cannot finish meanwhile
        # The launch lock, taken before the model loads, refuses the second launch first.
        lock_file = launch_lock_path(tmp_path, eval_model, "wds/digits", "test")
        holder = json.loads(lock_file.read_text())
        assert (tmp_path / STEM / "eval.lock").exists()  # and the run directory's own lock is held too
        assert holder["pid"] == first.pid and holder["host"] == socket.gethostname() and holder["started"]
        store_before = _rank_file(tmp_path).read_bytes()

        assert eval_in_process(args) == 2
        err = _error_line(capsys.readouterr().err)
        assert f"pid {first.pid} on host {socket.gethostname()}, started {holder['started']}" in err
        assert "another dc-zoo eval" in err and str(lock_file) in err
        assert _rank_file(tmp_path).read_bytes() == store_before  # the refused launch wrote nothing
    finally:
        first.send_signal(signal.SIGKILL)  # a killed run: its lock file stays, the kernel drops its lock
        first.wait()
    assert (tmp_path / STEM / "eval.lock").exists()

    assert eval_in_process(args) == 0  # the resume is not blocked by the dead run's lock
    _assert_same_as_reference(tmp_path, reference)
    assert not (tmp_path / STEM / "eval.lock").exists()  # a finished run removes its lock file


def test_locked_output_stops_every_rank_of_a_torchrun_launch_in_one_line(eval_model, digits_root, tmp_path):
    from dc_zoo.evaluation.lock import RunLock

    with RunLock(tmp_path / STEM / "eval.lock"):  # another launch holds the run
        proc = run_eval(eval_args(eval_model, digits_root, tmp_path), nproc=2, timeout=180)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("dc-zoo eval: error:")]
    assert len(errors) == 2, proc.stderr[-3000:]  # one line per rank
    assert any(f"another dc-zoo eval: pid {os.getpid()}" in line for line in errors)
    assert any("rank 0 failed: OutputLockedError" in line for line in errors)
    assert 'dc_zoo/evaluation/run.py", line' not in proc.stderr  # no traceback from the ranks
    assert not (tmp_path / STEM / "store").exists()


def test_a_lock_is_exclusive_and_names_its_holder(tmp_path):
    from dc_zoo.evaluation import OutputLockedError
    from dc_zoo.evaluation.lock import RunLock

    path = tmp_path / "run" / "eval.lock"
    with RunLock(path):
        with pytest.raises(OutputLockedError, match=rf"pid {os.getpid()} on host .*Lock file: {path}"):
            RunLock(path).acquire()
    assert not path.exists()
    with RunLock(path):  # free again
        assert path.exists()


# ------------------------------------------------------------------ 2. SIGTERM
def test_sigterm_stores_whole_chunks_exits_143_and_the_rerun_equals_uninterrupted(reference, eval_model, digits_root,
                                                                                  tmp_path):
    from dc_zoo.evaluation import SIGTERM_EXIT_STATUS

    args = eval_args(eval_model, digits_root, tmp_path)
    proc = start_eval(args)
    _wait_for_records(proc, tmp_path)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == SIGTERM_EXIT_STATUS == 143, stderr[-3000:]
    assert "Traceback" not in stderr
    (last,) = [line for line in stderr.splitlines() if line.startswith("dc-zoo eval:")]
    assert "stopped by SIGTERM" in last and "re-run the same command to resume" in last
    stored = _assert_whole_chunks(_rank_file(tmp_path), reference)
    assert 0 < stored < LIMIT
    assert not (tmp_path / STEM / "samples.jsonl").exists() and not (tmp_path / STEM / "eval.lock").exists()

    before = signal.getsignal(signal.SIGTERM)
    assert eval_in_process(args) == 0
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back
    _assert_same_as_reference(tmp_path, reference)


# ------------------------------------------------------------------ 3. a full disk
class _SmallDisk:
    """``result_store.write_fully`` on a disk with ``free`` bytes left: what fits is written, then ENOSPC."""

    def __init__(self, free: int):
        import dc_zoo.evaluation.result_store as result_store

        self.free, self._write = free, result_store.write_fully

    def __call__(self, fd: int, payload: bytes) -> None:
        fits = payload[: max(0, self.free)]
        self._write(fd, fits)
        self.free -= len(fits)
        if len(fits) < len(payload):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_while_scoring_undoes_the_write_and_the_rerun_resumes(reference, eval_model, digits_root, tmp_path,
                                                                      monkeypatch, capsys):
    import dc_zoo.evaluation.result_store as result_store

    whole = _rank_file(reference).read_bytes()
    lines = whole.splitlines(keepends=True)
    room = len(b"".join(lines[:7])) + 100  # header and 3 chunks, then 100 bytes of the 4th: a torn write
    monkeypatch.setattr(result_store, "write_fully", _SmallDisk(room))
    args = eval_args(eval_model, digits_root, tmp_path)
    assert eval_in_process(args) == 2
    err = _error_line(capsys.readouterr().err)
    store_dir = tmp_path / STEM / "store"
    assert f"no space left on the device holding {store_dir}" in err
    assert "Free space there, then re-run the same command to resume" in err
    assert _rank_file(tmp_path).read_bytes() == b"".join(lines[:7])  # cut back to the last whole chunk
    assert not (tmp_path / STEM / "eval.lock").exists()

    monkeypatch.undo()  # space freed
    assert eval_in_process(args) == 0
    _assert_same_as_reference(tmp_path, reference)


def test_disk_full_at_the_merge_leaves_no_temp_file(reference, eval_model, digits_root, tmp_path, monkeypatch, capsys):
    import dc_zoo.evaluation.result_store as result_store

    monkeypatch.setattr(result_store, "write_fully", _SmallDisk(len(_rank_file(reference).read_bytes()) + 500))
    args = eval_args(eval_model, digits_root, tmp_path)
    assert eval_in_process(args) == 2
    err = _error_line(capsys.readouterr().err)
    samples = tmp_path / STEM / "samples.jsonl"
    assert f"Could not write {samples}: no space left on the device holding {samples.parent}" in err
    assert sorted(p.name for p in (tmp_path / STEM).iterdir()) == ["store"]  # no .samples.jsonl.tmp-<pid>
    assert _rank_file(tmp_path).read_bytes() == _rank_file(reference).read_bytes()

    monkeypatch.undo()
    capsys.readouterr()
    assert eval_in_process(args) == 0
    _assert_same_as_reference(tmp_path, reference)


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        pytest.skip(f"cannot mount a tmpfs here ({err}); the size-limited writer tests cover a full disk")
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); the size-limited writer tests cover it")


def _leave_free(disk: Path, pages: int) -> None:
    """Fill ``disk`` so that ``pages`` 4 KiB pages are left."""
    filler = disk / "filler"
    filler.unlink(missing_ok=True)
    stat = os.statvfs(disk)
    filler.write_bytes(b"\0" * ((stat.f_bavail - pages) * stat.f_frsize))
    assert os.statvfs(disk).f_bavail == pages


def test_a_real_full_disk_is_one_line_and_the_rerun_after_freeing_space_resumes(reference, eval_model, digits_root,
                                                                                 tmp_path, capsys):
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "1m")
    try:
        output = disk / "results"
        args = eval_args(eval_model, digits_root, output)
        _leave_free(disk, 3)  # the two lock files and one page of records: full part-way through scoring
        assert eval_in_process(args) == 2
        err = _error_line(capsys.readouterr().err)
        assert f"no space left on the device holding {output / STEM / 'store'}" in err
        stored = _assert_whole_chunks(_rank_file(output), reference)
        assert 0 < stored < LIMIT

        _leave_free(disk, 4)  # room for every record, not for samples.jsonl: full at the merge
        assert eval_in_process(args) == 2
        err = _error_line(capsys.readouterr().err)
        assert f"Could not write {output / STEM / 'samples.jsonl'}: no space left" in err
        assert sorted(p.name for p in (output / STEM).iterdir()) == ["store"]

        (disk / "filler").unlink()  # space freed
        assert eval_in_process(args) == 0
        _assert_same_as_reference(output, reference)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


# ------------------------------------------------------------------ 4. the CPU thread count
def test_another_cpu_thread_count_is_refused_on_resume(reference, eval_model, digits_root, tmp_path, capsys):
    import torch

    from dc_zoo.evaluation.command import main

    header = json.loads(_rank_file(reference).read_text().splitlines()[0])
    assert header["identity"]["cpu_threads"] == 1 and header["identity"]["store_format"] == 4
    output = _copy_run(reference, tmp_path)
    before = {p: p.read_bytes() for p in output.rglob("*") if p.is_file()}
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert main(eval_args(eval_model, digits_root, output)) == 2
    finally:
        torch.set_num_threads(saved)
    err = capsys.readouterr().err
    assert "cpu_threads: stored 1, this run 2" in err and "OMP_NUM_THREADS=1" in err
    assert {p: p.read_bytes() for p in output.rglob("*") if p.is_file()} == before


# ------------------------------------------------------------------ 5. an edited record
def test_an_edited_record_is_refused_naming_file_line_and_sample(reference, eval_model, digits_root, tmp_path, capsys):
    from dc_zoo.evaluation.result_store import checksum_ok

    assert all(checksum_ok(line) for line in result_files(reference)[1].read_bytes().splitlines()[1:])
    output = _copy_run(reference, tmp_path)
    rank_file = _rank_file(output)
    lines = rank_file.read_bytes().split(b"\n")
    record = json.loads(lines[5])
    other = (record["prediction"] + 1) % 10
    edited = lines[5].replace(b'"prediction":%d' % record["prediction"], b'"prediction":%d' % other)
    assert edited != lines[5] and json.loads(edited)  # still parses
    lines[5] = edited
    rank_file.write_bytes(b"\n".join(lines))
    assert eval_in_process(eval_args(eval_model, digits_root, output)) == 2
    err = capsys.readouterr().err
    assert f"{rank_file} line 6 (sample {record['index']}) does not match its checksum" in err
    assert "Delete that line (the sample is then scored again)" in err

    del lines[5]  # the fix the message gives: that sample's chunk is scored again, identically
    rank_file.write_bytes(b"\n".join(lines))
    assert eval_in_process(eval_args(eval_model, digits_root, output)) == 0
    assert result_files(output)[1].read_bytes() == result_files(reference)[1].read_bytes()


def test_store_checksums_without_a_model(tmp_path):
    from dc_zoo.evaluation import ResultStore, SampleRecord, StoreCorruptError
    from test_eval_store import IDENTITY, record, write_chunks

    store = ResultStore(tmp_path / "store", IDENTITY)
    write_chunks(store, [0, 1], [2, 3])
    path = store.rank_path(0)
    whole = path.read_bytes()
    assert SampleRecord.from_dict(json.loads(record(2).to_json())) == record(2)
    for edit in (lambda line: line.replace(b'"evaluations":12', b'"evaluations":13'),  # a number changed
                 lambda line: line[: line.rindex(b',"crc32"')] + b"}"):  # the checksum removed
        lines = whole.split(b"\n")
        lines[2] = edit(lines[2])
        path.write_bytes(b"\n".join(lines))
        with pytest.raises(StoreCorruptError, match=r"line 3 \(sample 1\) does not match its checksum"):
            store.open_and_repair()
    path.write_bytes(whole[:-7])  # a torn last line stays the repairable case
    assert set(store.open_and_repair()) == {0, 1}
