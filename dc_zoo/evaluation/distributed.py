"""torch.distributed for evaluation: one process per device, launched by torchrun or accelerate.

The launcher sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``
(torchrun, ``accelerate launch`` and ``torchrun`` inside ``srun`` alike). Ranks never exchange
scores: each writes its own result file and rank 0 merges them, so the collectives here carry
only small control messages (the list of finished samples, "did any rank fail?"), through gloo
on CPU and NCCL on GPU. Because noise depends only on (seed, image content) and the chunks of
samples scored together are fixed by the run identity, any sharding gives the same numbers.
"""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

import torch

logger = logging.getLogger(__name__)

__all__ = ["DistributedContext", "init_distributed", "shard", "RankFailedError"]

T = TypeVar("T")


class RankFailedError(RuntimeError):
    """Another rank failed; this one stops too, with that rank's message."""


@dataclass
class DistributedContext:
    """Where this process stands in the job.

    Attributes:
        rank: global rank (0 merges and writes the final results).
        world_size: number of processes.
        local_rank: rank on this node (picks the GPU).
        device: the device this rank scores on.
        owns_group: whether this context initialised the process group (and so destroys it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.is_distributed:
            torch.distributed.barrier()

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank."""
        if not self.is_distributed:
            return obj
        box = [obj if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.is_distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def raise_if_any_failed(self, error: BaseException | None) -> None:
        """Collective: if any rank has an error, every rank raises (the failing rank its own).

        Keeps the ranks in step at the checks made before work starts, so a bad input stops
        the whole job with its message instead of leaving the other ranks waiting.
        """
        messages = self.gather(None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        for rank, message in enumerate(messages):
            if message is not None:
                raise RankFailedError(f"rank {rank} failed: {message}")

    def close(self) -> None:
        if self.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self.owns_group = False


def _env_int(*names: str, default: int) -> int:
    for name in names:
        if os.environ.get(name, "") != "":
            return int(os.environ[name])
    return default


def init_distributed(device: str | None = None, timeout_hours: float = 24.0) -> DistributedContext:
    """Join the process group the launcher described, or run as a single process.

    Args:
        device: force a device (``"cpu"``, ``"cuda"``); default: this rank's GPU when there is
            one (``cuda:LOCAL_RANK``), else the CPU.
        timeout_hours: how long a rank may wait for the others at a barrier (the end of a long
            run waits for the slowest rank).

    Raises:
        RuntimeError: a multi-process launch without the rendezvous variables, or more
            processes on a node than it has GPUs.
    """
    world_size = _env_int("WORLD_SIZE", default=1)
    rank = _env_int("RANK", default=0)
    local_rank = _env_int("LOCAL_RANK", default=0)
    if world_size == 1 and _env_int("SLURM_NTASKS", default=1) > 1 and "RANK" not in os.environ:
        logger.warning(
            "SLURM started %s tasks but no torch.distributed launcher set RANK/WORLD_SIZE: every task "
            "would evaluate the whole dataset. Run `srun torchrun ...` (see scripts/slurm_eval.sh).",
            os.environ["SLURM_NTASKS"],
        )
    use_cuda = torch.cuda.is_available() if device is None else str(device).startswith("cuda")
    if use_cuda:
        if device is None or str(device) == "cuda":
            if local_rank >= torch.cuda.device_count():
                raise RuntimeError(
                    f"LOCAL_RANK {local_rank} but this node has {torch.cuda.device_count()} GPU(s): start at most "
                    "that many processes per node (torchrun --nproc-per-node)."
                )
            device = f"cuda:{local_rank}"
        torch.cuda.set_device(torch.device(device))
    else:
        device = str(device or "cpu")
    ctx = DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=str(device))
    if world_size > 1 and not torch.distributed.is_initialized():
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
        if missing:
            raise RuntimeError(
                f"WORLD_SIZE={world_size} but {missing} are not set: launch with torchrun or accelerate launch, "
                "which set the rendezvous variables."
            )
        backend = "nccl" if use_cuda else "gloo"
        torch.distributed.init_process_group(
            backend=backend, timeout=datetime.timedelta(hours=timeout_hours),
            **({"device_id": torch.device(device)} if use_cuda else {}),
        )
        ctx.owns_group = True
        logger.info("rank %d/%d (local %d) joined the %s group on %s", rank, world_size, local_rank, backend, device)
    return ctx


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Round-robin share of ``items`` for ``rank``: balanced, and every item on exactly one rank."""
    return list(items[rank::world_size])
