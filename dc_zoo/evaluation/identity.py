"""The identity of an evaluation run: what must match before stored results are reused.

Resuming a run under another schedule, seed, prompt set or model revision would average
incomparable numbers, so every per-sample store carries this identity in its header and a
mismatch is refused field by field. The batch layout (``batch_size``, ``image_batch_size``)
and the speed levers (channels_last, torch.compile, TF32) are part of it because they change
scores in their last float bits: with them fixed, a resumed or re-sharded run reproduces an
uninterrupted one bit for bit (on the same kind of device). So is the CPU thread count of a
run scored on the CPU (``cpu_threads``; ``None`` on a GPU): it changes the reduction order,
hence the last bits, and ``dc-zoo eval`` (all cores) differs from ``torchrun`` (which sets
``OMP_NUM_THREADS=1`` per process unless told otherwise). What cannot change a result
(world size, device count, the dataset's location on disk) is deliberately left out, so a run
may resume on other machines with another number of processes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["RunIdentity", "IdentityMismatchError", "STORE_FORMAT"]

# Bump when the record layout changes; stores of another format are then refused.
# 2: noise keyed by image content, as classify(); 3: a CRC-32 per record, cpu_threads in the identity;
# 4: eps keyed by (seed, image, t, trial), the strategy, budget and prefilter in the identity.
STORE_FORMAT = 4

# How to match a stored field that the command line does not set directly.
_HINTS = {
    "cpu_threads": "CPU scores depend on the thread count in their last bits: run with the stored count "
                   "(OMP_NUM_THREADS=<stored> before the command, torchrun's default is 1; "
                   "torch.set_num_threads(<stored>) in library use)",
    "store_format": "the store was written by another dc_zoo version, whose records this one does not read",
}


class IdentityMismatchError(ValueError):
    """A store was written under a different configuration than the run trying to resume it."""


@dataclass(frozen=True)
class RunIdentity:
    """Everything that fixes the per-sample numbers of an evaluation run."""

    model: str  # zoo entry name (or the path / hub id given to --model)
    revision: str | None  # the weights revision the entry resolved to
    dtype: str  # network dtype (float16 and float32 give different scores)
    preprocess: dict[str, Any]  # PreprocessConfig fields: size, interpolation, crop, mean, std
    n_samples: tuple[int, ...]  # timesteps per adaptive stage
    to_keep: tuple[int, ...]  # candidates kept after each stage
    loss: str
    n_trials: int
    seed: int  # with each image's content hash (its sample key), fixes its noise
    batch_size: int  # network evaluations per forward pass
    image_batch_size: int  # consecutive dataset samples scored together (one chunk)
    templates: tuple[str, ...]  # the prompt templates (or class-specific prompts) actually used
    class_names: tuple[str, ...]
    dataset: str
    split: str
    dataset_size: int  # samples in the split (a --limit only evaluates a prefix of them)
    speed_levers: tuple[str, ...] = ()  # channels_last / compile / tf32: they change float rounding
    strategy: dict | None = None  # dc_zoo.strategies spec (None: the paper's stages)
    max_evaluations: int | None = None  # per-image budget
    prefilter: dict | None = None  # contrastive prefilter spec
    timestep_weights: dict | None = None  # timestep weighting spec (None: uniform, the paper)
    timestep_range: tuple[float, float] | None = None  # the part of [0, T) the plan spreads over
    cpu_threads: int | None = None  # torch.get_num_threads() when scored on the CPU, None on a GPU
    store_format: int = STORE_FORMAT

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key, value in d.items():
            if isinstance(value, tuple):
                d[key] = list(value)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunIdentity":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise IdentityMismatchError(
                f"The store header has fields {unknown} this dc_zoo does not know: it was written by a "
                "newer version. Upgrade dc_zoo, or choose another --output directory."
            )
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)

    def differences(self, other: "RunIdentity") -> list[tuple[str, Any, Any]]:
        """``(field, value here, value in other)`` for every field that differs."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [(k, mine[k], theirs[k]) for k in mine if mine[k] != theirs[k]]

    def check_same_run(self, stored: "RunIdentity", where: str) -> None:
        """Raise ``IdentityMismatchError`` naming each differing field when ``stored`` is another run.

        Args:
            stored: the identity read from a store header.
            where: the file the header came from, for the message.
        """
        diffs = stored.differences(self)
        if not diffs:
            return
        if stored.store_format != self.store_format:
            raise IdentityMismatchError(
                f"{where} was written in store format {stored.store_format} by another dc_zoo version (this one writes "
                f"format {self.store_format}: noise keyed by timestep, records with checksums). Finish "
                "that run with the dc_zoo version that started it (its records are kept), or write this run to "
                "another --output directory."
            )
        listed = "; ".join(f"{name}: stored {_short(old)}, this run {_short(new)}" for name, old, new in diffs)
        hints = "".join(f" {name}: {_HINTS[name]}.".replace("<stored>", str(old))
                        for name, old, _ in diffs if name in _HINTS)
        raise IdentityMismatchError(
            f"{where} was written by a different configuration ({listed}).{hints} Resume it with the "
            "original settings, or write this run to another --output directory."
        )


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
