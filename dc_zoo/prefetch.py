"""Read ahead: prepare the next chunks of images on one background thread while this one is scored.

Decoding and preprocessing (``dc_zoo.preprocess.to_pixels``) run on the CPU; done between
chunks on the main thread, they leave the accelerator idle. ``Prefetcher`` runs ``fn`` over an
iterable on one daemon thread, at most ``ahead`` results in advance (a bounded queue), and
yields them in the original order. A producer exception is raised in the consumer when the item
that failed would have been consumed, after every earlier result, with its own type and
traceback. ``close()`` (or leaving the ``with`` block, on ``break``, an error or Ctrl-C) stops
the thread within about one item's work. ``ahead=0`` computes each item on the caller's thread
(no thread at all: for debugging). ``pin_for`` pins a CPU tensor bound for a CUDA device, so the
copy in ``DiffusionClassifier.score_pixels`` can be asynchronous.
"""
from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable, Iterable, Iterator, TypeVar

import torch

logger = logging.getLogger(__name__)

__all__ = ["Prefetcher", "pin_for"]

S = TypeVar("S")
T = TypeVar("T")
_ITEM, _ERROR, _END = "item", "error", "end"
_POLL_S = 0.1  # how often a blocked put/get looks at the stop event / the thread


def pin_for(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` in page-locked memory when it is bound for a CUDA device (else unchanged)."""
    if torch.device(device).type == "cuda" and torch.cuda.is_available() and tensor.device.type == "cpu":
        return tensor.pin_memory()
    return tensor


def _produce(source: Iterable[S], fn: Callable[[S], T], out: queue.Queue, stop: threading.Event) -> None:
    """The thread: put ``(_ITEM, fn(x))`` for each x, then ``(_END, None)`` or ``(_ERROR, exception)``."""

    def put(entry: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                out.put(entry, timeout=_POLL_S)
                return True
            except queue.Full:
                pass
        return False

    iterator = None
    try:
        iterator = iter(source)
        for x in iterator:
            if stop.is_set() or not put((_ITEM, fn(x))):
                return
        put((_END, None))
    except BaseException as err:  # noqa: BLE001 - handed to the consumer, raised there
        put((_ERROR, err))
    finally:
        try:  # a generator source closes (its files) on this thread, not whenever it is collected
            getattr(iterator, "close", lambda: None)()
        except Exception:  # noqa: BLE001
            logger.warning("closing the prefetch source failed", exc_info=True)


class Prefetcher(Iterator[T]):
    """``fn(x) for x in source``, computed up to ``ahead`` items early on one background thread.

    Args:
        source: the items (iterated on the background thread only).
        fn: the work per item (decode, preprocess, pin).
        ahead: results computed in advance; 0 computes each on the caller's thread, no thread.
        name: the thread's name (shown in debuggers and stack dumps).

    Use as ``with Prefetcher(chunks, prepare) as ready: for x in ready: ...``.
    """

    def __init__(self, source: Iterable[S], fn: Callable[[S], T], ahead: int = 2, name: str = "dc-zoo-prefetch"):
        if int(ahead) < 0:
            raise ValueError(f"ahead must be 0 (no thread) or a positive number of items, got {ahead}.")
        self.ahead = int(ahead)
        self._fn = fn
        self._finished = False
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=max(self.ahead, 1))
        self.thread: threading.Thread | None = None
        if self.ahead == 0:
            self._source = iter(source)
        else:  # the thread holds no reference to self, so an abandoned Prefetcher is collected and stops it
            self.thread = threading.Thread(target=_produce, args=(source, fn, self._queue, self._stop),
                                           name=name, daemon=True)
            self.thread.start()

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        if self.thread is None:
            return self._fn(next(self._source))
        while True:
            try:
                kind, value = self._queue.get(timeout=_POLL_S)
                break
            except queue.Empty:
                if not self.thread.is_alive() and self._queue.empty():
                    self._finished = True
                    raise RuntimeError("The prefetch thread stopped without a result (closed?).") from None
        if kind == _ITEM:
            return value
        self.close()
        if kind == _ERROR:
            raise value  # the producer's exception, its traceback kept
        raise StopIteration

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread (it finishes the item in hand first) and drop the results not consumed."""
        self._finished = True
        self._stop.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout)
            if self.thread.is_alive():
                logger.warning("prefetch thread %s still busy after %.0f s; left to finish (daemon)",
                               self.thread.name, timeout)
        while not self._queue.empty():
            self._queue.get_nowait()

    def __enter__(self) -> "Prefetcher[T]":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)  # None when __init__ failed
        if stop is not None:
            stop.set()
