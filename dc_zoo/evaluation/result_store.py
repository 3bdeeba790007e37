"""Crash-safe per-sample results: one JSON line per sample, one append-only file per rank.

Each rank appends the records of a chunk (``image_batch_size`` consecutive dataset samples
scored together) with a single write, then flush and fsync, so a crash at any instant leaves
every file readable: at worst its last chunk is torn (a partial last line, or fewer records
than the chunk holds). Opening the store repairs that tail by truncating it; those samples are
then scored again, with the same chunk composition, hence the same numbers. A sample is thus
never lost and never counted twice. Every file starts with a header holding the
``RunIdentity``, so a store is refused when a different configuration tries to resume it.

Every record line ends with a CRC-32 of the rest of its bytes (``"crc32"``, also in the merged
``samples.jsonl``), verified whenever a store is read: a record edited so that it still parses
is refused, naming the file, the line and the sample, instead of being averaged in silently.

A write that fails (disk full, quota, I/O error) is undone before the error is raised, so the
file ends at its last whole chunk, and is reported as one ``OutputWriteError`` naming the file
and the fix; ``write_atomic`` removes its temporary file when it fails. Freeing space and
re-running the same command then resumes.

Layout under the run directory: ``rank-00000.jsonl``, ``rank-00001.jsonl``, ... (the rank that
wrote it; a resumed run with another world size simply reads them all).
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .identity import IdentityMismatchError, RunIdentity

logger = logging.getLogger(__name__)

__all__ = ["SampleRecord", "ResultStore", "RecordWriter", "StoreCorruptError", "OutputWriteError", "chunk_bounds",
           "complete_chunks", "num_chunks", "fsync_directory", "stored_batch_size", "write_atomic", "write_failure"]

_HEADER_KEY = "dc_zoo_result_store"
_CHECK_KEY = "crc32"
_CHECK_PREFIX = b',"' + _CHECK_KEY.encode() + b'":"'
_CHECK_SUFFIX_LEN = len(_CHECK_PREFIX) + 8 + 2  # ,"crc32":"<8 hex digits>"}


class StoreCorruptError(RuntimeError):
    """A store file is damaged in a way a crash cannot produce (not just a torn tail)."""


class OutputWriteError(RuntimeError):
    """A record or result file could not be written (disk full, quota, I/O error).

    What was stored before stays valid (the failed write is undone), so the fix is to free
    space and run the same command again: it resumes.
    """

    def __init__(self, message: str, path: Path, errno_: int | None):
        super().__init__(message)
        self.path, self.errno = path, errno_


def write_failure(path: str | Path, err: OSError) -> OutputWriteError:
    """The one-line error for a failed write of ``path``: the folder, the problem, the fix."""
    path = Path(path)
    folder = path.parent
    if err.errno == errno.ENOSPC:
        problem, fix = f"no space left on the device holding {folder}", "Free space there"
    elif err.errno == getattr(errno, "EDQUOT", -1):
        problem, fix = f"disk quota exceeded in {folder}", "Free space (or raise the quota) there"
    else:
        problem, fix = f"{err.strerror or err} (in {folder})", "Fix the cause"
    return OutputWriteError(
        f"Could not write {path}: {problem}. {fix}, then re-run the same command to resume: the records already "
        "stored are kept.", path, err.errno,
    )


def write_fully(fd: int, payload: bytes) -> None:
    """``os.write`` until every byte is written (a nearly full disk accepts part of a write)."""
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view):]


def write_atomic(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` all at once (temp file, fsync, rename): a reader sees the old
    file or the new one, never a part; on failure the temp file is removed and ``OutputWriteError``
    raised."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            write_fully(fd, text.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise write_failure(path, err) from None
    fsync_directory(path.parent)


def _checksum(body: bytes) -> str:
    return f"{zlib.crc32(body):08x}"


def checksum_ok(line: bytes) -> bool:
    """Whether a record line (without its newline) ends with the CRC-32 of the rest of it."""
    if len(line) <= _CHECK_SUFFIX_LEN or not line.endswith(b'"}'):
        return False
    head, tail = line[:-_CHECK_SUFFIX_LEN], line[-_CHECK_SUFFIX_LEN:]
    return tail.startswith(_CHECK_PREFIX) and tail[len(_CHECK_PREFIX):-2] == _checksum(head + b"}").encode()


@dataclass(frozen=True)
class SampleRecord:
    """The result of one dataset sample.

    Attributes:
        index: position in the dataset split; also the sample's noise key.
        label: the true class index.
        prediction: the predicted class index (-1 when the sample could not be scored).
        errors: per class, the mean denoising error of its best prompt (lower is better); NaN
            for a class never evaluated (a prefilter dropped it), stored as null.
        stage_reached: per class, the last adaptive stage that evaluated it.
        evaluations: network evaluations spent on this sample.
        error: why the sample could not be scored, else None: an unreadable image
            (``"<shard>:<key>: <reason>"``, the shard relative to the dataset root) or a
            non-finite network output.
    """

    index: int
    label: int
    prediction: int
    errors: tuple[float, ...] | None
    stage_reached: tuple[int, ...] | None
    evaluations: int
    error: str | None = None

    def to_json(self) -> str:
        d = asdict(self)
        d["errors"] = [None if v != v else v for v in self.errors] if self.errors is not None else None
        d["stage_reached"] = list(self.stage_reached) if self.stage_reached is not None else None
        body = json.dumps(d, separators=(",", ":"), allow_nan=False)  # ASCII: non-ASCII is escaped
        return f'{body[:-1]},"{_CHECK_KEY}":"{_checksum(body.encode())}"}}'

    @classmethod
    def from_dict(cls, d: dict) -> "SampleRecord":
        return cls(
            index=int(d["index"]), label=int(d["label"]), prediction=int(d["prediction"]),
            errors=tuple(float("nan") if v is None else float(v) for v in d["errors"]) if d.get("errors") is not None else None,
            stage_reached=tuple(int(v) for v in d["stage_reached"]) if d.get("stage_reached") is not None else None,
            evaluations=int(d["evaluations"]), error=d.get("error"),
        )


def chunk_bounds(chunk: int, image_batch_size: int, dataset_size: int) -> range:
    """The dataset indices of ``chunk``: fixed by the identity, never by world size or resume."""
    return range(chunk * image_batch_size, min((chunk + 1) * image_batch_size, dataset_size))


def fsync_directory(path: Path) -> None:
    """Make a file's creation or rename durable (POSIX needs the directory entry synced too)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not permitted on some platforms / filesystems: the data itself is synced
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def header_line(identity: RunIdentity, rank: int) -> str:
    return json.dumps({_HEADER_KEY: identity.store_format, "rank": rank, "identity": identity.to_dict()},
                      separators=(",", ":")) + "\n"


class RecordWriter:
    """Appends chunks of records to one rank's file; each chunk is durable when ``append`` returns."""

    def __init__(self, path: Path, identity: RunIdentity, rank: int):
        self.path = path
        try:
            self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        except OSError as err:
            raise write_failure(path, err) from None
        if os.fstat(self._fd).st_size == 0:
            try:
                self._write(header_line(identity, rank).encode())
            except OutputWriteError:
                self.close()
                raise
            fsync_directory(path.parent)

    def _write(self, payload: bytes) -> None:
        """Append, fsync; a failed write (disk full) is cut off again so the file ends at a whole chunk."""
        start = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            write_fully(self._fd, payload)
            os.fsync(self._fd)
        except OSError as err:
            with contextlib.suppress(OSError):  # else the next open repairs the torn tail
                os.ftruncate(self._fd, start)
                os.fsync(self._fd)
            raise write_failure(self.path, err) from None

    def append(self, records: Sequence[SampleRecord]) -> None:
        """Write a whole chunk with one write, flush and fsync."""
        if records:
            self._write("".join(r.to_json() + "\n" for r in records).encode())

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ResultStore:
    """The per-rank record files of one run directory.

    Args:
        directory: the run directory (created if missing).
        identity: the configuration of the run that opens the store.
    """

    def __init__(self, directory: str | Path, identity: RunIdentity):
        self.directory = Path(directory)
        self.identity = identity

    def rank_path(self, rank: int) -> Path:
        return self.directory / f"rank-{rank:05d}.jsonl"

    def files(self) -> list[Path]:
        return sorted(self.directory.glob("rank-*.jsonl"))

    def writer(self, rank: int) -> RecordWriter:
        self.directory.mkdir(parents=True, exist_ok=True)
        return RecordWriter(self.rank_path(rank), self.identity, rank)

    # ------------------------------------------------------------------ reading
    def open_and_repair(self) -> dict[int, SampleRecord]:
        """Check every file's header, cut torn tails, return the finished records by index.

        Run by one process (rank 0) before any rank writes.

        Raises:
            IdentityMismatchError: a file was written under another configuration (names the field).
            StoreCorruptError: damage a crash cannot explain (a bad line before good ones).
        """
        finished: dict[int, SampleRecord] = {}
        for path in self.files():
            records = self._repair_file(path)
            for record in records:
                _add_unique(finished, record, path)
        return finished

    def read_all(self) -> dict[int, SampleRecord]:
        """Every record of every file, by index (no repair; for the final merge)."""
        finished: dict[int, SampleRecord] = {}
        for path in self.files():
            _, records, _ = self._parse(path)
            for record, _end in records:
                _add_unique(finished, record, path)
        return finished

    def _parse(self, path: Path) -> tuple[int, list[tuple[SampleRecord, int]], int | None]:
        """(header end offset, [(record, end offset)], offset where a torn tail starts or None)."""
        data = path.read_bytes()
        if not data:
            return 0, [], None
        first_newline = data.find(b"\n")
        if first_newline < 0:
            return 0, [], 0  # the header itself is torn: nothing was ever recorded
        try:
            header = json.loads(data[:first_newline])
            stored = RunIdentity.from_dict(header["identity"])
            if header.get(_HEADER_KEY) is None:
                raise KeyError(_HEADER_KEY)
        except (ValueError, KeyError, TypeError) as err:
            if isinstance(err, IdentityMismatchError):
                raise IdentityMismatchError(f"{path}: {err}") from None
            raise StoreCorruptError(
                f"{path} does not start with a dc_zoo result-store header ({err}). It is not a store of "
                "this run: move it away, or write this run to another --output directory."
            ) from None
        self.identity.check_same_run(stored, str(path))
        records: list[tuple[SampleRecord, int]] = []
        offset, torn_at, bad_line = first_newline + 1, None, None
        line_number = 1
        while offset < len(data):
            line_number += 1
            end = data.find(b"\n", offset)
            if end < 0:  # no newline: the write stopped part-way
                torn_at = offset if bad_line is None else torn_at
                break
            line = data[offset:end]
            try:
                record = SampleRecord.from_dict(json.loads(line))
            except (ValueError, KeyError, TypeError):
                if bad_line is None:
                    bad_line, torn_at = line_number, offset
                offset = end + 1
                continue
            if not checksum_ok(line):
                raise StoreCorruptError(
                    f"{path} line {line_number} (sample {record.index}) does not match its checksum: the record was "
                    "edited or the disk is damaged. Delete that line (the sample is then scored again), or delete "
                    "the file to recompute its samples."
                )
            if bad_line is not None:
                raise StoreCorruptError(
                    f"{path} line {bad_line} is unreadable but later lines are fine: the file was edited or the "
                    "disk is damaged (a crash only tears the last write). Delete that line (its sample is then "
                    "scored again) or delete the file to recompute its samples."
                )
            records.append((record, end + 1))
            offset = end + 1
        return first_newline + 1, records, torn_at

    def _repair_file(self, path: Path) -> list[SampleRecord]:
        header_end, records, torn_at = self._parse(path)
        keep_until = torn_at
        # The last chunk of a file may have been cut between its records: drop the chunk whole.
        B, n = self.identity.image_batch_size, self.identity.dataset_size
        if records:
            last_chunk = records[-1][0].index // B
            run_start = len(records)
            while run_start > 0 and records[run_start - 1][0].index // B == last_chunk:
                run_start -= 1
            members = chunk_bounds(last_chunk, B, n)
            if len(records) - run_start < len(members):
                keep_until = records[run_start - 1][1] if run_start > 0 else header_end
                logger.warning("%s: the last chunk (samples %s) was only partly written (%d of %d records); it "
                               "will be scored again.", path, list(members), len(records) - run_start, len(members))
                records = records[:run_start]
        if keep_until is not None:
            size = path.stat().st_size
            logger.warning("%s: truncating a torn write (%d of %d bytes kept); the samples it held are scored again.",
                           path, keep_until, size)
            with open(path, "r+b") as f:
                f.truncate(keep_until)
                f.flush()
                os.fsync(f.fileno())
        return [r for r, _ in records]


def _add_unique(finished: dict[int, SampleRecord], record: SampleRecord, path: Path) -> None:
    old = finished.get(record.index)
    if old is None:
        finished[record.index] = record
    elif old != record:
        raise StoreCorruptError(
            f"Sample {record.index} is recorded twice with different results (again in {path}): two runs wrote "
            "to this output at once. Delete one of the rank files (its samples are scored again)."
        )


def complete_chunks(finished: Iterable[int], image_batch_size: int, dataset_size: int) -> set[int]:
    """Chunks whose every sample has a record."""
    counts: dict[int, int] = {}
    for index in finished:
        counts[index // image_batch_size] = counts.get(index // image_batch_size, 0) + 1
    return {c for c, k in counts.items() if k == len(chunk_bounds(c, image_batch_size, dataset_size))}


def num_chunks(n: int, image_batch_size: int) -> int:
    return math.ceil(n / image_batch_size)


def stored_batch_size(directory: str | Path) -> int | None:
    """The batch size a previous session of the run in ``directory`` recorded (so that
    ``batch_size="auto"`` resumes with the same number); ``None`` when no readable header exists."""
    for path in sorted(Path(directory).glob("rank-*.jsonl")):
        with open(path, "rb") as f:
            line = f.readline()
        try:
            return int(json.loads(line)["identity"]["batch_size"])
        except (ValueError, KeyError, TypeError):
            continue  # torn or foreign: open_and_repair reports it
    return None
