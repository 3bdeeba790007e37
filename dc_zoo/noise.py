"""Shared noise: one eps per (distinct timestep, trial), the same for every candidate.

The paired comparison (all candidates of an image see the same (t, eps) pairs) is the
variance reduction that makes Diffusion Classifier work. The official code draws eps fresh
and unseeded per image; here eps depends only on ``(seed, sample_key)``, drawn on the CPU from
a generator seeded by a hash of the two, so scores do not change with batch composition,
image order, process count, device or an interruption in between.
"""
from __future__ import annotations

import hashlib
from typing import Hashable, Sequence

import torch

__all__ = ["sample_seed", "sample_noise", "image_key"]


def sample_seed(seed: int, sample_key: Hashable) -> int:
    """A 63-bit generator seed derived from the run seed and a sample's identity."""
    digest = hashlib.sha256(f"dc_zoo/noise/v1:{int(seed)}:{sample_key!s}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def sample_noise(
    seed: int,
    sample_key: Hashable,
    num_timesteps: int,
    n_trials: int,
    shape: Sequence[int],
) -> torch.Tensor:
    """The eps of one sample: float32 CPU tensor ``[num_timesteps, n_trials, *shape]``.

    Row ``j`` belongs to the ``j``-th timestep of the plan, so each distinct timestep has its own
    eps (and ``n_trials`` of them), drawn from N(0, I) as in the paper.
    """
    generator = torch.Generator(device="cpu").manual_seed(sample_seed(seed, sample_key))
    return torch.randn((num_timesteps, n_trials, *shape), generator=generator, dtype=torch.float32)


def image_key(pixels: torch.Tensor) -> str:
    """Content hash of a preprocessed image: its identity when the caller gives none.

    Keying noise on content (not position) keeps scores independent of image order.
    """
    data = pixels.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return "sha256:" + hashlib.sha256(data).hexdigest()[:32]
