"""A persistent cache of network errors: (namespace, sample, condition, t, trial) -> error.

Diffusion Classifier spends nearly all of its time on network evaluations, and each one is a
deterministic function of what produced it: the model identity (weights revision, dtype,
speed levers: anything that changes the last bits), the preprocessing, the loss and the noise
seed (together the *namespace*, an opaque string the caller builds, e.g. with
``namespace_for``), the sample, the candidate condition, the timestep and the noise trial.
Storing every error under that key means a sweep of schedules and strategies over the same
images costs the union of their evaluations, not the sum, and an interrupted run that is
started again recomputes only what had not been stored yet.

The store is one SQLite file (stdlib ``sqlite3``; lm-evaluation-harness's request cache is the
model). It is safe under interruptions and several writers at once:

- every ``put`` is one transaction, so a crash or a SIGKILL at any instant loses at most the
  rows of the call in flight and never damages rows committed before (``synchronous=FULL``:
  also not on power loss);
- WAL journal mode lets readers go on while a writer writes, and writers (torchrun ranks on
  one file) queue on SQLite's lock: ``busy_timeout`` plus a retry with backoff on
  ``database is locked``, up to ``timeout`` seconds;
- rows are inserted with ``INSERT OR IGNORE``: the first writer of a key wins; values are
  deterministic, so a duplicate carries the same number anyway.

Errors are stored exactly: a float32 (or any float64) value comes back bit for bit. The
``error`` column is declared without a type on purpose: SQLite's REAL affinity writes
integral values as integers, which turns ``-0.0`` into ``0.0``; a CHECK keeps the column to
floats. Non-finite errors are refused (they mean a broken evaluation, not a score).

Open one ``ErrorCache`` per process (after any fork): an SQLite connection must not cross one.
On network filesystems without working locks (some NFS, Lustre setups) SQLite cannot be made
safe for concurrent writers; put the cache on a local or properly locking filesystem.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import operator
import os
import random
import sqlite3
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

logger = logging.getLogger(__name__)

__all__ = ["ErrorCache", "ErrorCacheError", "namespace_for", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1
_FORMAT = "dc_zoo.error_cache"
_KEYS_PER_QUERY = 500  # bound parameters per IN query stay under SQLite's oldest limit (999)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    # A namespace is a long string (a hash): stored once, rows refer to it by a small integer.
    "CREATE TABLE IF NOT EXISTS namespaces (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)",
    "CREATE TABLE IF NOT EXISTS errors ("
    " namespace INTEGER NOT NULL REFERENCES namespaces (id), sample_key TEXT NOT NULL, condition TEXT NOT NULL,"
    " t INTEGER NOT NULL, trial INTEGER NOT NULL,"
    " error NOT NULL CHECK (typeof(error) = 'real'),"  # no type affinity: -0.0 stays -0.0
    " PRIMARY KEY (namespace, sample_key, condition, t, trial)) WITHOUT ROWID",
)
_TABLES = {"meta", "namespaces", "errors"}

# SQLite primary result codes (the ``sqlite3`` constants only exist from Python 3.11).
_BUSY, _LOCKED, _READONLY, _CORRUPT, _FULL, _CANTOPEN, _NOTADB = 5, 6, 8, 11, 13, 14, 26

_T = TypeVar("_T")
Row = tuple[str, str, int, int, float]


class ErrorCacheError(RuntimeError):
    """The cache file cannot be opened, read or written; the message names the file and the fix."""


def namespace_for(mapping: dict) -> str:
    """A stable namespace string for a JSON-able ``mapping`` (key order does not matter).

    ``"sha256:"`` plus the SHA-256 of the mapping's canonical JSON (sorted keys, no spaces), so
    equal mappings give equal namespaces in every process and Python version.

    Raises:
        TypeError: a value is not JSON-able (or ``mapping`` is not a dict).
        ValueError: a float is NaN or infinite.
    """
    if not isinstance(mapping, dict):
        raise TypeError(f"namespace_for takes a dict, got {type(mapping).__name__}")
    try:
        text = json.dumps(mapping, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except TypeError as err:
        raise TypeError(f"namespace_for: the mapping must be JSON-able (str, int, float, bool, None, "
                        f"list, dict with str keys): {err}") from None
    return "sha256:" + hashlib.sha256(text.encode("ascii")).hexdigest()


def _is_busy(err: sqlite3.Error) -> bool:
    code = getattr(err, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_BUSY, _LOCKED)
    text = str(err).lower()
    return "locked" in text or "busy" in text


def _check_row(row) -> Row:
    """``row`` as (str, str, int, int, float), or a ValueError/TypeError naming it."""
    try:
        sample_key, condition, t, trial, error = row
    except (TypeError, ValueError):
        raise ValueError(f"ErrorCache.put: a row is (sample_key, condition, t, trial, error), got {row!r}") from None
    if not isinstance(sample_key, str) or not isinstance(condition, str):
        raise TypeError(f"ErrorCache.put: sample_key and condition must be str in row {row!r}")
    try:
        t, trial = operator.index(t), operator.index(trial)
    except TypeError:
        raise TypeError(f"ErrorCache.put: t and trial must be integers in row {row!r}") from None
    try:
        value = float(error)
    except (TypeError, ValueError):
        raise TypeError(f"ErrorCache.put: error must be a float in row {row!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"ErrorCache.put: non-finite error {value} in row {(sample_key, condition, t, trial, value)!r}"
                         ": a NaN or infinite error is a failed evaluation and is not cached")
    return sample_key, condition, t, trial, value


class ErrorCache:
    """The errors of one namespace in an SQLite file shared by all namespaces and processes.

    Args:
        path: the database file, created if missing (its folder must exist).
        namespace: what fixes the numbers besides the key (model identity, dtype, speed levers,
            preprocessing, loss, seed); see ``namespace_for``.
        timeout: seconds to wait for another process's write lock before giving up.

    Raises:
        ErrorCacheError: the folder is missing or read-only, the file is not an SQLite
            database or not an error cache, or it was written by a newer dc_zoo.
    """

    def __init__(self, path: str | os.PathLike, namespace: str, *, timeout: float = 60.0):
        if not isinstance(namespace, str) or not namespace:
            raise ValueError(f"ErrorCache: namespace must be a non-empty str, got {namespace!r}")
        if not timeout > 0:
            raise ValueError(f"ErrorCache: timeout must be > 0 seconds, got {timeout!r}")
        self.path = Path(path)
        self.namespace = namespace
        self.timeout = float(timeout)
        self._ns_id: int | None = None  # looked up on first use, created by the first put
        folder = self.path.parent
        if not folder.is_dir():
            raise ErrorCacheError(f"Cannot open the error cache {self.path}: its folder {folder} does not exist. "
                                  "Create the folder or choose another path.")
        if self.path.is_dir():
            raise ErrorCacheError(f"Cannot open the error cache {self.path}: it is a directory. Choose a file path.")
        if not os.access(folder, os.W_OK | os.X_OK) or (self.path.exists() and not os.access(self.path, os.W_OK)):
            raise self._read_only()
        try:
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                str(self.path), timeout=self.timeout, isolation_level=None, check_same_thread=True)
        except sqlite3.Error as err:
            raise self._failure(err, "open") from None
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            mode = self._retry("open", lambda: self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            if str(mode).lower() != "wal":
                logger.warning("Error cache %s: SQLite could not switch to WAL mode (got %r); concurrent readers "
                               "will wait for writers.", self.path, mode)
            self._conn.execute("PRAGMA synchronous = FULL")
            self._retry("open", self._init_schema)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ plumbing
    def _read_only(self) -> ErrorCacheError:
        return ErrorCacheError(f"Cannot write the error cache {self.path}: the file or its folder {self.path.parent} "
                               "is read-only (SQLite also needs to create the -wal and -shm files beside it). Make it "
                               "writable or choose another path.")

    def _failure(self, err: sqlite3.Error, what: str) -> ErrorCacheError:
        """The one-line error for an SQLite failure: the file, the problem, the fix."""
        code = (getattr(err, "sqlite_errorcode", None) or -1) & 0xFF
        text = str(err)
        if code in (_NOTADB, _CORRUPT) or "not a database" in text or "malformed" in text:
            return ErrorCacheError(f"{self.path} is not a readable SQLite database ({text}), so it cannot be used as an "
                                   "error cache. Delete it (the cache is rebuilt as errors are computed again) or "
                                   "choose another path.")
        if code == _READONLY or "readonly" in text:
            return self._read_only()
        if code == _FULL or "disk is full" in text:
            return ErrorCacheError(f"Could not {what} the error cache {self.path}: no space left on the device holding "
                                   f"{self.path.parent}. Free space there and run again: rows stored before are kept.")
        if code == _CANTOPEN or "unable to open" in text:
            return ErrorCacheError(f"Could not open the error cache {self.path} ({text}). Check that the path is a "
                                   "writable file on a local filesystem, or choose another path.")
        return ErrorCacheError(f"Could not {what} the error cache {self.path}: {text}.")

    def _retry(self, what: str, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` (one statement or transaction), retrying while another process holds the lock."""
        deadline = time.monotonic() + self.timeout
        delay = 0.002
        while True:
            try:
                return fn()
            except sqlite3.Error as err:
                if self._conn is not None and self._conn.in_transaction:
                    try:
                        self._conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                if not _is_busy(err):
                    if isinstance(err, sqlite3.IntegrityError):
                        raise
                    raise self._failure(err, what) from None
                if time.monotonic() >= deadline:
                    raise ErrorCacheError(
                        f"Could not {what} the error cache {self.path}: another process held its lock for more than "
                        f"{self.timeout:g} s. Wait for it, or pass a larger timeout.") from None
            except BaseException:  # KeyboardInterrupt mid-transaction: undo it, nothing half-written
                if self._conn is not None and self._conn.in_transaction:
                    try:
                        self._conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.25)

    def _check_meta(self, tables: set[str]) -> bool:
        """Check an existing schema; False when the file has none yet (and must be initialised)."""
        if not tables:
            return False
        if "meta" not in tables:
            raise ErrorCacheError(f"{self.path} is an SQLite database but not a dc_zoo error cache (tables: "
                                  f"{', '.join(sorted(tables))}). Choose another path, or delete it if it is unused.")
        meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("format") != _FORMAT or not _TABLES <= tables:
            raise ErrorCacheError(f"{self.path} is an SQLite database but not a dc_zoo error cache (meta: {meta}). "
                                  "Choose another path, or delete it if it is unused.")
        try:
            version = int(meta.get("schema_version", ""))
        except ValueError:
            version = -1
        if version > SCHEMA_VERSION:
            raise ErrorCacheError(f"The error cache {self.path} has schema version {version}, newer than this dc_zoo "
                                  f"understands ({SCHEMA_VERSION}). Upgrade dc_zoo, or choose another path.")
        if version < 1:
            raise ErrorCacheError(f"The error cache {self.path} has an invalid schema version "
                                  f"{meta.get('schema_version')!r}. Delete it or choose another path.")
        return True

    def _tables(self) -> set[str]:
        return {name for (name,) in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def _init_schema(self) -> None:
        """Check the schema, or create it (under the write lock, so concurrent first opens agree)."""
        if self._check_meta(self._tables()):
            return
        self._conn.execute("BEGIN IMMEDIATE")
        if not self._check_meta(self._tables()):
            for statement in _SCHEMA:
                self._conn.execute(statement)
            self._conn.executemany("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                                   [("format", _FORMAT), ("schema_version", str(SCHEMA_VERSION))])
        self._conn.execute("COMMIT")

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ErrorCacheError(f"The error cache {self.path} is closed.")
        return self._conn

    # ------------------------------------------------------------------ API
    def _lookup_namespace(self) -> int | None:
        if self._ns_id is None:
            row = self._connection().execute("SELECT id FROM namespaces WHERE name = ?", (self.namespace,)).fetchone()
            self._ns_id = row[0] if row else None
        return self._ns_id

    def get(self, sample_keys: Sequence[str]) -> dict[str, dict[tuple[str, int, int], float]]:
        """Every cached ``(condition, t, trial) -> error`` of each requested sample, in this namespace.

        Every requested key is in the result (an empty dict when nothing is cached for it). One
        read snapshot: rows committed meanwhile by other processes are seen all or not at all.
        """
        conn = self._connection()
        keys = list(dict.fromkeys(sample_keys))
        for key in keys:
            if not isinstance(key, str):
                raise TypeError(f"ErrorCache.get: sample keys must be str, got {key!r}")

        def read() -> dict[str, dict[tuple[str, int, int], float]]:
            out: dict[str, dict[tuple[str, int, int], float]] = {key: {} for key in keys}
            conn.execute("BEGIN")
            ns = self._lookup_namespace()
            for start in range(0, len(keys) if ns is not None else 0, _KEYS_PER_QUERY):
                chunk = keys[start:start + _KEYS_PER_QUERY]
                cursor = conn.execute(
                    "SELECT sample_key, condition, t, trial, error FROM errors WHERE namespace = ? AND sample_key IN "
                    f"({','.join('?' * len(chunk))})", (ns, *chunk))
                for sample_key, condition, t, trial, error in cursor:
                    out[sample_key][(condition, t, trial)] = error
            conn.execute("COMMIT")
            return out

        return self._retry("read", read)

    def put(self, rows: Iterable[Row]) -> int:
        """Store ``(sample_key, condition, t, trial, error)`` rows in one transaction.

        All of them or none are stored, even under SIGKILL. A key already stored keeps its first
        value (``INSERT OR IGNORE``). Every row is checked before anything is written.

        Returns:
            how many rows were new.

        Raises:
            ValueError: a row has a NaN or infinite error, or the wrong shape (named in the message).
            TypeError: a field has the wrong type.
        """
        conn = self._connection()
        checked = [_check_row(row) for row in rows]
        if not checked:
            return 0

        def write() -> int:
            conn.execute("BEGIN IMMEDIATE")
            ns = self._lookup_namespace()
            if ns is None:
                conn.execute("INSERT OR IGNORE INTO namespaces (name) VALUES (?)", (self.namespace,))
                ns = conn.execute("SELECT id FROM namespaces WHERE name = ?", (self.namespace,)).fetchone()[0]
            before = conn.total_changes
            conn.executemany("INSERT OR IGNORE INTO errors (namespace, sample_key, condition, t, trial, error) "
                             "VALUES (?, ?, ?, ?, ?, ?)", [(ns, *row) for row in checked])
            added = conn.total_changes - before
            conn.execute("COMMIT")
            self._ns_id = ns  # only once committed: a rolled-back namespace row is looked up again
            return added

        return self._retry("write", write)

    def count(self) -> int:
        """The number of rows stored in this namespace."""
        conn = self._connection()

        def read() -> int:
            ns = self._lookup_namespace()
            return 0 if ns is None else conn.execute("SELECT COUNT(*) FROM errors WHERE namespace = ?",
                                                     (ns,)).fetchone()[0]

        return self._retry("read", read)

    def namespaces(self) -> dict[str, int]:
        """Every namespace in the file that holds rows, with its number of rows."""
        conn = self._connection()
        return dict(self._retry("read", lambda: conn.execute(
            "SELECT n.name, c.rows FROM (SELECT namespace, COUNT(*) AS rows FROM errors GROUP BY namespace) AS c "
            "JOIN namespaces AS n ON n.id = c.namespace ORDER BY n.name").fetchall()))

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def __enter__(self) -> "ErrorCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ErrorCache({str(self.path)!r}, namespace={self.namespace!r})"
