"""Shared noise: one eps per (timestep, trial), the same for every candidate.

The paired comparison (all candidates of an image see the same (t, eps) pairs) is the
variance reduction that makes Diffusion Classifier work. The official code draws eps fresh
and unseeded per image; here each eps depends only on ``(seed, sample_key, t, trial)``, drawn
on the CPU from a generator seeded by a hash of the four. So scores do not change with batch
composition, image order, process count, device or an interruption in between, and the same
(image, t) gets the same eps under every schedule and strategy: an error computed for one plan
is the error another plan would compute, which is what lets ``dc_zoo.error_cache`` reuse it.
"""
from __future__ import annotations

import hashlib
import numbers
from typing import Hashable, Sequence

import torch

__all__ = ["sample_seed", "pair_seed", "sample_noise", "image_key", "NOISE_VERSION"]

# Part of every seed: bump when the draw changes, so stored errors of another draw are not reused.
# v1 keyed eps by the plan position; v2 by the timestep itself.
NOISE_VERSION = 2


def sample_seed(seed: int, sample_key: Hashable) -> int:
    """A 63-bit seed derived from the run seed and a sample's identity (for per-sample draws)."""
    digest = hashlib.sha256(f"dc_zoo/noise/sample:{int(seed)}:{sample_key!s}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def pair_seed(seed: int, sample_key: Hashable, timestep: int, trial: int) -> int:
    """The 63-bit generator seed of one eps: run seed, sample identity, timestep and trial."""
    text = f"dc_zoo/noise/v{NOISE_VERSION}:{int(seed)}:{int(timestep)}:{int(trial)}:{sample_key!s}"
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def sample_noise(
    seed: int,
    sample_key: Hashable,
    timesteps: Sequence[int],
    n_trials: int,
    shape: Sequence[int],
) -> torch.Tensor:
    """The eps of one sample: float32 CPU tensor ``[len(timesteps), n_trials, *shape]``.

    Row ``j`` belongs to ``timesteps[j]``; each (timestep, trial) has its own N(0, I) draw, so
    the eps of a timestep is the same in every plan that contains it (and trial ``r`` is the
    same whatever ``n_trials`` is).
    """
    if isinstance(timesteps, numbers.Integral):
        raise TypeError(
            f"sample_noise takes the timesteps themselves (eps is keyed by t), got the count {timesteps}; "
            "pass e.g. plan.timesteps or range(n)."
        )
    timesteps = [int(t) for t in timesteps]
    out = torch.empty((len(timesteps), int(n_trials), *shape), dtype=torch.float32)
    generator = torch.Generator(device="cpu")
    for j, t in enumerate(timesteps):
        for r in range(int(n_trials)):
            generator.manual_seed(pair_seed(seed, sample_key, t, r))
            out[j, r] = torch.randn(tuple(shape), generator=generator, dtype=torch.float32)
    return out


def image_key(pixels: torch.Tensor) -> str:
    """Content hash of a preprocessed image: its identity when the caller gives none.

    Keying noise on content (not position) keeps scores independent of image order.
    """
    data = pixels.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return "sha256:" + hashlib.sha256(data).hexdigest()[:32]
