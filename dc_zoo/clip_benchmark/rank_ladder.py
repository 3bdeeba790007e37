"""Rank ladders: scores that survive clip_benchmark's float16/bfloat16 matrix products.

clip_benchmark turns features into scores with ``100 * normalize(image) @ classifier`` under
``torch.autocast``, so every score is rounded to float16 (CUDA) or bfloat16 (CPU) before the
metric reads it. A Diffusion Classifier ranking score (``stage + 1 / (1 + error)``) would lose
its order in 8 mantissa bits. Only the order matters to the metrics (argmax, top-k, argmax
per row and column), so the adapter sends the *rank* instead: rank ``r`` becomes the ``r``-th
value of a ladder of numbers that are exact in float32, float16 and bfloat16 alike (8
significant bits, exponent inside float16's normal range). Rounding to any of those formats
leaves them unchanged, so the order and the ties seen by the metric are the engine's.
"""
from __future__ import annotations

import functools
import math

import torch

__all__ = ["ladder", "ladder_capacity", "encode_ranks", "top_exponent_for_unit_columns"]

_SIGNIFICANDS = range(255, 127, -1)  # 8 significant bits: exact in bfloat16
_MIN_EXPONENT = -14  # float16's smallest normal number is 2**-14


def ladder_capacity(top_exponent: int) -> int:
    """How many distinct ranks a ladder with values below ``2**top_exponent`` can hold."""
    return 2 * len(_SIGNIFICANDS) * (top_exponent - _MIN_EXPONENT) + 1


@functools.lru_cache(maxsize=16)
def _full_ladder(top_exponent: int) -> tuple[float, ...]:
    positive = [m * 2.0 ** (e - 7) for e in range(top_exponent - 1, _MIN_EXPONENT - 1, -1) for m in _SIGNIFICANDS]
    return tuple(positive + [0.0] + [-v for v in reversed(positive)])


def ladder(n: int, top_exponent: int = 1) -> torch.Tensor:
    """``n`` strictly decreasing float32 values below ``2**top_exponent``, exact in fp16 and bf16.

    Raises:
        ValueError: more ranks than the ladder holds.
    """
    capacity = ladder_capacity(top_exponent)
    if n > capacity:
        raise ValueError(
            f"{n} scores cannot be ranked exactly through clip_benchmark's half-precision product "
            f"(at most {capacity} with values below 2**{top_exponent}); evaluate fewer classes or "
            "image-caption pairs per batch (lower --batch_size)."
        )
    return torch.tensor(_full_ladder(top_exponent)[:n], dtype=torch.float32)


def encode_ranks(scores: torch.Tensor, dim: int | None = -1, top_exponent: int = 1) -> torch.Tensor:
    """Replace scores by ladder values of their rank (highest score -> largest value).

    Args:
        scores: float tensor; higher is better.
        dim: rank along this dimension, or over all entries when ``None`` (keeps the order of
            every row and every column at once).
        top_exponent: ladder values stay below ``2**top_exponent``.

    Returns:
        float32 tensor of ``scores.shape``; ties are broken by position (stable sort).
    """
    scores = scores.detach().to(torch.float64).cpu()  # float64 keeps ranking logits' last-bit differences
    if dim is None:
        flat = scores.reshape(-1)
        order = torch.sort(flat, descending=True, stable=True).indices
        out = torch.empty(flat.shape, dtype=torch.float32)
        out[order] = ladder(flat.numel(), top_exponent)
        return out.view(scores.shape)
    moved = scores.movedim(dim, -1)
    order = torch.sort(moved, dim=-1, descending=True, stable=True).indices
    values = ladder(moved.shape[-1], top_exponent).expand_as(moved).contiguous()
    out = torch.empty(moved.shape, dtype=torch.float32).scatter_(-1, order, values)
    return out.movedim(-1, dim)


def top_exponent_for_unit_columns(rows: int) -> int:
    """Largest exponent such that ``rows`` ladder values have a squared sum below 1."""
    return -math.ceil(math.log2(max(rows, 1)) / 2) if rows > 1 else 0
