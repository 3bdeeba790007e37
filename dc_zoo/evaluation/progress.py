"""Progress of a long evaluation, per rank and overall: samples, running accuracy, evaluations
per image and time left.

Each rank shows its own bar. Rank 0 also shows the whole job, read from the growing store
files of all ranks by a background thread, so no collective slows the ranks down and a rank
finishing early keeps reporting the others while it waits. The bars belong to the entry point
(``dc-zoo eval``); library callers get them only when they ask (``progress=True``).
"""
from __future__ import annotations

import json
import logging
import sys
import threading
from pathlib import Path
from typing import Sequence

from .result_store import SampleRecord

logger = logging.getLogger(__name__)

__all__ = ["RankProgress", "OverallProgress", "file_sizes"]


def _refresh_interval() -> float:
    """Live bars on a terminal; in a batch log (SLURM), a line every half minute instead of a flood."""
    return 0.1 if sys.stderr.isatty() else 30.0


class _Tally:
    def __init__(self) -> None:
        self.done = self.correct = self.evaluations = 0

    def add(self, prediction: int, label: int, evaluations: int) -> None:
        self.done += 1
        self.correct += int(prediction == label)
        self.evaluations += int(evaluations)

    def postfix(self) -> dict[str, str]:
        if not self.done:
            return {}
        return {"acc": f"{100.0 * self.correct / self.done:.1f}%", "evals/img": f"{self.evaluations / self.done:.0f}"}


def file_sizes(directory: Path) -> dict[Path, int]:
    """Where each rank file ends now: the point after which records are this session's."""
    return {p: p.stat().st_size for p in Path(directory).glob("rank-*.jsonl")}


class RankProgress:
    """This rank's share: a tqdm bar over the samples it scores in this session."""

    def __init__(self, rank: int, world_size: int, local_rank: int, total: int, enabled: bool = True):
        self.tally = _Tally()
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            desc = "dc-zoo eval" if world_size == 1 else f"rank {rank}/{world_size}"
            self.bar = tqdm(total=total, desc=desc, unit="img", position=(local_rank + 1) if world_size > 1 else 0,
                            dynamic_ncols=True, leave=world_size == 1, mininterval=_refresh_interval())

    def update(self, records: Sequence[SampleRecord]) -> None:
        for r in records:
            self.tally.add(r.prediction, r.label, r.evaluations)
        if self.bar is not None:
            self.bar.set_postfix(self.tally.postfix(), refresh=False)
            self.bar.update(len(records))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class OverallProgress:
    """Rank 0's view of every rank, following the store files' new lines every ``interval`` s.

    Args:
        directory: the store directory holding ``rank-*.jsonl``.
        total: samples the whole job scores in this session.
        resumed: samples already in the store when the session began (shown, not re-counted).
        offsets: each file's size when the session began (default: now); later bytes are new.
    """

    def __init__(self, directory: Path, total: int, resumed: int, enabled: bool = True, interval: float = 2.0,
                 offsets: dict[Path, int] | None = None):
        self.directory = Path(directory)
        self.total = total
        self.tally = _Tally()
        self._offsets = dict(offsets) if offsets is not None else file_sizes(self.directory)
        self._stop = threading.Event()
        self.bar = None
        self._thread = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=f"all ranks (+{resumed} resumed)", unit="img", position=0,
                            dynamic_ncols=True, mininterval=_refresh_interval())
            self._thread = threading.Thread(target=self._follow, args=(interval,), daemon=True,
                                            name="dc-zoo-eval-progress")
            self._thread.start()

    def poll(self) -> int:
        """Read the records appended since the last poll; returns how many were new."""
        new = 0
        for path in sorted(self.directory.glob("rank-*.jsonl")):
            start = self._offsets.get(path, 0)
            try:
                with open(path, "rb") as f:
                    f.seek(start)
                    chunk = f.read()
            except OSError:
                continue
            end = chunk.rfind(b"\n")
            if end < 0:
                continue
            self._offsets[path] = start + end + 1
            for line in chunk[: end + 1].splitlines():
                try:
                    d = json.loads(line)
                except ValueError:
                    continue
                if "index" in d:
                    self.tally.add(d["prediction"], d["label"], d["evaluations"])
                    new += 1
        if new and self.bar is not None:
            self.bar.set_postfix(self.tally.postfix(), refresh=False)
            self.bar.update(new)
        return new

    def _follow(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.poll()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.poll()
        if self.bar is not None:
            self.bar.close()
