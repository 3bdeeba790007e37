"""The error cache returns exactly what was stored, under concurrent writers and SIGKILL.

Child processes load ``dc_zoo/error_cache.py`` by its file path (it needs only the standard
library) instead of importing the ``dc_zoo`` package, whose import pulls in torch and takes
seconds per process on a busy machine.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dc_zoo import error_cache
from dc_zoo.error_cache import ErrorCache, ErrorCacheError, namespace_for

MODULE_PATH = str(Path(error_cache.__file__).resolve())

# Shared by the test and its children: the deterministic float32 "error" of a key.
_VALUE_SRC = '''
import struct, zlib
def value(sample_key, condition, t, trial):
    """A float32 in [0, 2) with an arbitrary mantissa, a function of the key alone."""
    bits = zlib.crc32(f"{sample_key}|{condition}|{t}|{trial}".encode()) & 0x3FFFFFFF
    return struct.unpack("<f", struct.pack("<I", bits))[0]
'''
_value_namespace: dict = {}
exec(_VALUE_SRC, _value_namespace)
value = _value_namespace["value"]

_CHILD_PRELUDE = '''
import importlib.util, os, sys, time
spec = importlib.util.spec_from_file_location("_error_cache", sys.argv[1])
ec = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ec)
''' + _VALUE_SRC

_WRITER = _CHILD_PRELUDE + '''
path, worker, go = sys.argv[2], int(sys.argv[3]), sys.argv[4]
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.005)
with ec.ErrorCache(path, "shared-ns", timeout=30) as cache:  # first opens race on an absent file
    for b in range(40):
        rows = [(f"w{worker}-b{b}", f"c{i}", i % 7, 0, value(f"w{worker}-b{b}", f"c{i}", i % 7, 0)) for i in range(20)]
        # rows every worker writes too: first writer wins, all values identical
        rows += [(f"shared-b{b}", f"c{i}", 0, 1, value(f"shared-b{b}", f"c{i}", 0, 1)) for i in range(5)]
        cache.put(rows)
'''

_BATCH_ROWS = 2000
_KILLED_WRITER = _CHILD_PRELUDE + '''
path, first = sys.argv[2], int(sys.argv[3])
with ec.ErrorCache(path, "kill-ns") as cache:
    b = first
    while True:
        key = f"batch{b}"
        cache.put([(key, f"c{i % 100}", i // 100, b % 3, value(key, f"c{i % 100}", i // 100, b % 3))
                   for i in range(BATCH_ROWS)])
        print(b, flush=True)  # reported only once put() has returned: committed
        b += 1
'''.replace("BATCH_ROWS", str(_BATCH_ROWS))


def _bits32(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).view(np.int32)


def _bits64(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).view(np.int64)


def test_float32_round_trip_is_bit_exact(tmp_path):
    rng = np.random.default_rng(0)
    random32 = rng.integers(0, 2**32, size=4000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    random32 = random32[np.isfinite(random32)]
    specials = np.array([0.0, -0.0, 1.0, -1.0, np.finfo(np.float32).max, -np.finfo(np.float32).max,
                         np.finfo(np.float32).tiny, np.finfo(np.float32).eps], dtype=np.float32)
    smallest_subnormal = np.array([1, 0x80000001], dtype=np.uint32).view(np.float32)
    values = np.concatenate([specials, smallest_subnormal, random32])
    assert np.signbit(values[1]) and values[8] > 0 and values[8] < np.finfo(np.float32).tiny
    doubles = rng.standard_normal(500) * 10.0 ** rng.integers(-300, 300, size=500)  # float64 too

    path = tmp_path / "cache.sqlite"
    with ErrorCache(path, "ns") as cache:
        assert cache.put([("img", "cond", t, 0, v) for t, v in enumerate(values)]) == len(values)
        assert cache.put([("img", "double", t, 0, float(v)) for t, v in enumerate(doubles)]) == len(doubles)
    with ErrorCache(path, "ns") as cache:  # a fresh connection reads what is on disk
        got = cache.get(["img"])["img"]
    stored32 = [got[("cond", t, 0)] for t in range(len(values))]
    assert all(type(v) is float for v in stored32)
    np.testing.assert_array_equal(_bits32(stored32), values.view(np.int32))
    np.testing.assert_array_equal(_bits64(stored32), values.astype(np.float64).view(np.int64))  # not even rounded
    np.testing.assert_array_equal(_bits64([got[("double", t, 0)] for t in range(len(doubles))]), doubles.view(np.int64))


def test_namespaces_are_isolated_and_first_value_wins(tmp_path):
    path = tmp_path / "cache.sqlite"
    with ErrorCache(path, "model-a") as a, ErrorCache(path, "model-b") as b:
        assert a.get(["x", "y"]) == {"x": {}, "y": {}} and a.count() == 0 and a.namespaces() == {}
        assert a.put([("x", "cat", 10, 0, 0.25), ("x", "dog", 10, 0, 0.5), ("y", "cat", 20, 1, 0.125)]) == 3
        assert b.put([("x", "cat", 10, 0, 0.75)]) == 1
        assert a.get(["x", "y", "z"]) == {"x": {("cat", 10, 0): 0.25, ("dog", 10, 0): 0.5},
                                          "y": {("cat", 20, 1): 0.125}, "z": {}}
        assert b.get(["x", "y"]) == {"x": {("cat", 10, 0): 0.75}, "y": {}}
        # INSERT OR IGNORE: a second value for a stored key is dropped, new keys of the call are kept
        assert a.put([("x", "cat", 10, 0, 99.0), ("x", "cat", 11, 0, 1.5)]) == 1
        assert a.get(["x"])["x"] == {("cat", 10, 0): 0.25, ("dog", 10, 0): 0.5, ("cat", 11, 0): 1.5}
        assert (a.count(), b.count()) == (4, 1)
        assert a.namespaces() == b.namespaces() == {"model-a": 4, "model-b": 1}
        assert a.put([]) == 0
    with ErrorCache(path, "model-c") as c:
        assert c.count() == 0 and c.get(["x"]) == {"x": {}}
        assert c.namespaces() == {"model-a": 4, "model-b": 1}


def test_get_many_keys_spans_several_queries(tmp_path):
    keys = [f"img{i}" for i in range(1203)]  # > the keys bound per IN query
    rows = [(k, c, 5, 0, value(k, c, 5, 0)) for k in keys for c in ("a", "b")]
    with ErrorCache(tmp_path / "cache.sqlite", "ns") as cache:
        cache.put(rows)
        got = cache.get(keys[::-1] + ["missing", keys[0]])  # order and duplicates do not matter
        assert set(got) == set(keys) | {"missing"} and got["missing"] == {}
        assert got == {**{k: {(c, 5, 0): value(k, c, 5, 0) for c in ("a", "b")} for k in keys}, "missing": {}}
        assert cache.count() == len(rows)


def test_concurrent_writers_store_every_row_once(tmp_path):
    path, go = tmp_path / "cache.sqlite", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, MODULE_PATH, str(path), str(w), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for w in range(4)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        go.touch()  # all four start together
        for p in procs:
            out, err = p.communicate(timeout=90)
            assert p.returncode == 0, err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    expected = {}
    for b in range(40):
        for w in range(4):
            for i in range(20):
                expected[(f"w{w}-b{b}", f"c{i}", i % 7, 0)] = value(f"w{w}-b{b}", f"c{i}", i % 7, 0)
        for i in range(5):
            expected[(f"shared-b{b}", f"c{i}", 0, 1)] = value(f"shared-b{b}", f"c{i}", 0, 1)
    with ErrorCache(path, "shared-ns") as cache:
        got = cache.get(sorted({k[0] for k in expected}))
        assert cache.count() == len(expected) == 40 * (4 * 20 + 5)
    stored = {(key, *rest): v for key, by_key in got.items() for rest, v in by_key.items()}
    assert stored == expected
    with sqlite3.connect(path) as db:  # exactly once: no duplicate of a primary key anywhere
        assert db.execute("SELECT COUNT(*) FROM errors").fetchone()[0] == len(expected)
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def _run_and_kill(path: Path, first: int, after: int, delay: float) -> set[int]:
    """Start a writer at batch ``first``, SIGKILL it ``delay`` s after its ``after``-th commit; the batches it reported."""
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, MODULE_PATH, str(path), str(first)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reported = set()
    try:
        deadline = time.monotonic() + 60
        while len(reported) < after:
            line = proc.stdout.readline()
            assert line, f"the writer died early: {proc.stderr.read()}"
            reported.add(int(line))
            assert time.monotonic() < deadline
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    reported |= {int(line) for line in out.split()}
    return reported


def test_sigkill_keeps_every_committed_batch_and_no_partial_one(tmp_path):
    path = tmp_path / "cache.sqlite"
    committed: set[int] = set()
    starts = (0, 1000, 2000, 3000)
    for first, after, delay in zip(starts, (3, 5, 2, 4), (0.0, 0.004, 0.011, 0.023)):
        reported = _run_and_kill(path, first, after, delay)  # the next round reopens a killed writer's file
        assert reported == set(range(first, first + len(reported)))
        committed |= reported
    maybe = {max(b for b in committed if first <= b < first + 1000) + 1 for first in starts}  # in flight when killed

    with ErrorCache(path, "kill-ns") as cache:
        keys = [f"batch{b}" for b in sorted(committed | maybe)]
        got = cache.get(keys)
        assert cache.count() == sum(len(rows) for rows in got.values())  # nothing outside these batches
    for b in sorted(committed | maybe):
        rows = got[f"batch{b}"]
        if b in maybe and not rows:
            continue  # killed before its commit: absent as a whole
        assert len(rows) == _BATCH_ROWS, f"batch {b} is partial: {len(rows)} of {_BATCH_ROWS} rows"
        key = f"batch{b}"
        expected = [value(key, f"c{i % 100}", i // 100, b % 3) for i in range(_BATCH_ROWS)]
        stored = [rows[(f"c{i % 100}", i // 100, b % 3)] for i in range(_BATCH_ROWS)]
        np.testing.assert_array_equal(_bits32(stored), _bits32(expected))
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -np.float32("inf"), np.float32("nan")])
def test_non_finite_error_is_refused_and_nothing_of_the_call_is_stored(tmp_path, bad):
    with ErrorCache(tmp_path / "cache.sqlite", "ns") as cache:
        with pytest.raises(ValueError, match=r"non-finite error .*'img7', 'a dog', 400, 2"):
            cache.put([("img1", "a dog", 400, 0, 0.5), ("img7", "a dog", 400, 2, bad)])
        assert cache.count() == 0
        assert cache.put([("img1", "a dog", 400, 0, 0.5)]) == 1


def test_malformed_rows_are_refused(tmp_path):
    with ErrorCache(tmp_path / "cache.sqlite", "ns") as cache:
        with pytest.raises(TypeError, match="t and trial must be integers"):
            cache.put([("img", "c", 1.5, 0, 0.5)])
        with pytest.raises(TypeError, match="sample_key and condition must be str"):
            cache.put([(3, "c", 1, 0, 0.5)])
        with pytest.raises(ValueError, match=r"a row is \(sample_key, condition, t, trial, error\)"):
            cache.put([("img", "c", 1, 0.5)])
        with pytest.raises(TypeError, match="sample keys must be str"):
            cache.get([3])
        assert cache.put([("img", "c", np.int64(1), np.int32(0), np.float32(0.5))]) == 1  # numpy scalars are fine
        assert cache.get(["img"]) == {"img": {("c", 1, 0): 0.5}}
    with pytest.raises(ErrorCacheError, match="is closed"):
        cache.count()


def test_text_file_is_refused_naming_it_and_left_alone(tmp_path):
    path = tmp_path / "errors.sqlite"
    text = "this is a text file, not a database\n" * 50
    path.write_text(text)
    with pytest.raises(ErrorCacheError) as info:
        ErrorCache(path, "ns")
    message = str(info.value)
    assert str(path) in message and "not a readable SQLite database" in message
    assert "Delete it" in message and "choose another path" in message
    assert path.read_text() == text


def test_missing_folder_and_foreign_database_are_refused(tmp_path):
    with pytest.raises(ErrorCacheError, match=r"folder .*no-such-dir does not exist"):
        ErrorCache(tmp_path / "no-such-dir" / "cache.sqlite", "ns")
    assert not (tmp_path / "no-such-dir").exists()
    with pytest.raises(ErrorCacheError, match="is a directory"):
        ErrorCache(tmp_path, "ns")
    foreign = tmp_path / "other.sqlite"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE results (x)")
    with pytest.raises(ErrorCacheError, match=r"other\.sqlite is an SQLite database but not a dc_zoo error cache"):
        ErrorCache(foreign, "ns")


def test_newer_schema_version_is_refused(tmp_path):
    path = tmp_path / "cache.sqlite"
    with ErrorCache(path, "ns") as cache:
        cache.put([("img", "c", 1, 0, 0.5)])
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(error_cache.SCHEMA_VERSION),)
    with db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(error_cache.SCHEMA_VERSION + 1),))
    db.close()
    with pytest.raises(ErrorCacheError, match=rf"schema version {error_cache.SCHEMA_VERSION + 1}, newer .*Upgrade dc_zoo"):
        ErrorCache(path, "ns")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_folder_is_refused(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    with ErrorCache(folder / "cache.sqlite", "ns") as cache:
        cache.put([("img", "c", 1, 0, 0.5)])
    folder.chmod(0o555)
    try:
        with pytest.raises(ErrorCacheError, match=r"cache\.sqlite: the file or its folder .* is read-only"):
            ErrorCache(folder / "cache.sqlite", "ns")
        with pytest.raises(ErrorCacheError, match="read-only"):
            ErrorCache(folder / "new.sqlite", "ns")
    finally:
        folder.chmod(0o755)


def test_namespace_for_is_stable_and_canonical():
    a = namespace_for({"model": "sd-2-base", "revision": "abc123", "dtype": "float16", "levers": {"sdpa": True, "tf32": False}})
    b = namespace_for({"levers": {"tf32": False, "sdpa": True}, "dtype": "float16", "revision": "abc123", "model": "sd-2-base"})
    assert a == b
    canonical = '{"dtype":"float16","levers":{"sdpa":true,"tf32":false},"model":"sd-2-base","revision":"abc123"}'
    assert a == "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
    assert json.loads(canonical)["levers"] == {"sdpa": True, "tf32": False}
    assert namespace_for({"dtype": "bfloat16"}) != namespace_for({"dtype": "float16"})
    assert namespace_for({"seed": 0}) != namespace_for({"seed": "0"})
    with pytest.raises(TypeError, match="JSON-able"):
        namespace_for({"dtype": np.float16})
    with pytest.raises(ValueError):
        namespace_for({"threshold": math.nan})
    with pytest.raises(TypeError):
        namespace_for([("seed", 0)])
