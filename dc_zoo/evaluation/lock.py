"""One launch per run directory: a second ``dc-zoo eval`` on the same output is refused.

Two identical launches on one output would both score every sample (double the cost, and
rank files written twice). Rank 0 of a launch holds an exclusive ``flock`` on
``<output>/<stem>/eval.lock`` for the whole run; the file names the holder (host, pid, start
time, command), so a refused launch can say who is running. All ranks of one launch are one
job: only rank 0 locks, and a refusal reaches the other ranks as a ``RankFailedError``.

The kernel drops a ``flock`` when its process dies, so a run that was killed (SIGKILL, a node
crash, a preempted job) never blocks its own resume; the stale file is simply taken over. The
holder removes the file when it finishes. ``flock`` is advisory and local filesystems enforce
it; on some network filesystems (older NFS clients, Lustre mounted without ``-o flock``) it is
not enforced or not supported: a lock that cannot be taken at all is logged as a warning and
the run goes on unlocked, so there two launches on one output are not detected.
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import shlex
import socket
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["RunLock", "OutputLockedError", "LOCK_NAME"]

LOCK_NAME = "eval.lock"


class OutputLockedError(RuntimeError):
    """Another live ``dc-zoo eval`` holds the lock of this run directory."""


def _holder_text(path: Path) -> str:
    try:
        holder = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        holder = {}
    if not holder:
        return "a process that has not yet recorded itself"
    return (f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"
            f" ({holder.get('command')})")


class RunLock:
    """An exclusive, non-blocking ``flock`` on ``path``, released on ``release()`` or process death."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock and write who holds it.

        Raises:
            OutputLockedError: a live process holds it (named in the message).
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise OutputLockedError(
                        f"{self.path.parent} is being written by another dc-zoo eval: {_holder_text(self.path)}. Two "
                        "launches on one output would score every sample twice: wait for that run to finish or stop "
                        "it (a stopped or killed run holds no lock, and re-running then resumes), or write this run "
                        f"to another --output directory. Lock file: {self.path}."
                    ) from None
                logger.warning("could not lock %s (%s): this filesystem does not support flock, so a second launch "
                               "on this output would not be detected", self.path, err.strerror or err)
                return
            # The holder removes the file on release: a lock on a file that was unlinked meanwhile is no lock.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._fd = fd
        holder = {"host": socket.gethostname(), "pid": os.getpid(),
                  "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                  "command": shlex.join([os.path.basename(sys.argv[0] or "python"), *sys.argv[1:]])}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        except OSError as err:  # the lock holds without its description; say so, go on
            logger.warning("could not write the lock holder to %s (%s)", self.path, err.strerror or err)

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
