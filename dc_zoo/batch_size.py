"""``batch_size="auto"``: the batch of network evaluations that pays, found by measuring.

A Diffusion Classifier's work is thousands of identical forward passes, so the batch size
sets how close to the accelerator's peak it runs. The search doubles the batch from
``start`` while the network still fits and evaluations/s still grow by at least
``min_gain``; an out-of-memory error ends it at the last size that fit (the engine's own
backoff covers a later, rarer one). It measures the eager network even when the backend is
compiled, so the search does not compile once per size.

The chosen size depends on timing, so two machines (or two busy runs) may choose
differently and their scores differ in the last float bits; pass a number for bit-for-bit
reproducibility. ``dc-zoo eval`` records the chosen number and reuses it on resume.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .backends.base import DiffusionBackend
from .engine import is_out_of_memory, num_conditions, select_conditions

logger = logging.getLogger(__name__)

__all__ = ["AUTO", "BatchSizeSearch", "search_batch_size", "batch_size_for_backend"]

AUTO = "auto"


@dataclass(frozen=True)
class BatchSizeSearch:
    """Outcome of a search.

    Attributes:
        batch_size: the chosen number of evaluations per forward pass.
        rates: ``(batch size, evaluations/s)`` for every size that ran.
        stopped: why the search ended: ``"plateau"``, ``"out of memory"``, ``"limit"`` or
            ``"slow pass"`` (one pass took longer than ``max_pass_seconds``).
    """

    batch_size: int
    rates: tuple[tuple[int, float], ...]
    stopped: str

    def describe(self) -> str:
        measured = ", ".join(f"{b}: {r:,.0f}/s" for b, r in self.rates)
        return f"batch size {self.batch_size} ({self.stopped}; evaluations/s by batch size: {measured})"


def search_batch_size(forward: Callable[[int], Any], *, device: torch.device | str = "cpu", start: int = 8,
                      limit: int = 1024, min_gain: float = 0.05, repeats: int = 2,
                      max_pass_seconds: float = 5.0) -> BatchSizeSearch:
    """Find the batch size from which doubling no longer pays.

    Args:
        forward: runs one forward pass of ``batch`` evaluations (``forward(batch)``).
        device: where ``forward`` runs (CUDA is synchronised around timings).
        start: first size tried; sizes are ``start * 2**k``.
        limit: largest size tried.
        min_gain: relative gain in evaluations/s a doubling must bring to be taken.
        repeats: timed passes per size, after one warm-up pass.
        max_pass_seconds: stop once a single pass takes longer than this (compute-bound).

    Returns:
        A ``BatchSizeSearch``.

    Raises:
        RuntimeError: not even ``start`` evaluations fit in memory.
    """
    if not 1 <= start <= limit:
        raise ValueError(f"Need 1 <= start <= limit, got start={start}, limit={limit}.")
    device = torch.device(device)
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    rates: list[tuple[int, float]] = []
    best, best_rate, stopped, batch = None, 0.0, "limit", start
    while batch <= limit:
        try:
            forward(batch)  # warm-up: allocator, kernel selection
            sync()
            began = time.perf_counter()
            for _ in range(repeats):
                forward(batch)
            sync()
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not is_out_of_memory(err):
                raise
            if cuda:
                torch.cuda.empty_cache()
            stopped = "out of memory"
            break
        seconds = (time.perf_counter() - began) / repeats
        rate = batch / seconds
        rates.append((batch, rate))
        if best is not None and rate < best_rate * (1 + min_gain):
            stopped = "plateau"
            break
        best, best_rate = batch, rate
        if seconds > max_pass_seconds:
            stopped = "slow pass"
            break
        batch *= 2
    if best is None:
        raise RuntimeError(
            f"Not even {start} network evaluations fit in {device} memory; pass a smaller batch_size "
            "(e.g. batch_size=1), a smaller dtype (bfloat16) or free the device."
        )
    return BatchSizeSearch(batch_size=best, rates=tuple(rates), stopped=stopped)


def batch_size_for_backend(backend: DiffusionBackend, x0: torch.Tensor, conditions: Any, **search) -> BatchSizeSearch:
    """Search the batch size for ``backend``'s denoising network on real inputs.

    Args:
        backend: the model family wrapper (its eager network is timed, compiled or not).
        x0: ``[N, ...]`` clean latents from ``backend.encode_images`` (tiled to each size).
        conditions: the encoded candidates (tiled to each size).
        **search: passed to ``search_batch_size``.
    """
    from .acceleration import uncompiled

    n = int(x0.shape[0])
    timestep = backend.schedule.model_timestep(
        torch.tensor([backend.schedule.num_train_timesteps // 2], device=x0.device))
    n_conditions = num_conditions(conditions)
    dtype = backend.dtype

    def forward(batch: int) -> None:
        rows = torch.arange(batch, device=x0.device)
        x_t = x0.index_select(0, rows % n).to(dtype).contiguous()
        backend.denoise(x_t, timestep.expand(batch), select_conditions(conditions, rows % n_conditions))

    with uncompiled(backend), torch.inference_mode():
        result = search_batch_size(forward, device=x0.device, **search)
    logger.info("batch_size='auto': %s", result.describe())
    return result
