"""Long evaluations of Diffusion Classifier (Li et al., ICCV 2023, arXiv 2303.16203) on
clip_benchmark datasets: sharded over torch.distributed ranks, crash-safe per-sample records,
resume that loses nothing, clip_benchmark's result format, and runs that fail or collide
handled (a second launch refused, SIGTERM stops cleanly, a full disk said in one line, an
undecodable image recorded as a failed sample). The command is ``dc-zoo eval``.
"""
from .distributed import DistributedContext, RankFailedError, init_distributed, shard
from .identity import IdentityMismatchError, RunIdentity
from .lock import OutputLockedError
from .metrics import classification_metrics
from .result_store import OutputWriteError, ResultStore, SampleRecord, StoreCorruptError
from .run import SIGTERM_EXIT_STATUS, EvalConfig, EvalInterrupted, EvalResult, run_evaluation

__all__ = [
    "EvalConfig", "EvalResult", "run_evaluation", "RunIdentity", "IdentityMismatchError", "ResultStore",
    "SampleRecord", "StoreCorruptError", "classification_metrics", "DistributedContext", "RankFailedError",
    "init_distributed", "shard", "OutputLockedError", "OutputWriteError", "EvalInterrupted", "SIGTERM_EXIT_STATUS",
]
