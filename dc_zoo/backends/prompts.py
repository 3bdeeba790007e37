"""Prompt candidates of the text-conditional pipelines (SD3, SDXL, FLUX): checked, then encoded by
the pipeline's own ``encode_prompt`` in chunks, so thousands of prompts never form one text batch."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

__all__ = ["encode_prompt_chunks"]


def encode_prompt_chunks(conditions: Sequence[Any], family: str, chunk_size: int,
                         encode: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hidden states [C, L, D], pooled embeddings [C, D])`` of the prompts, ``encode(chunk)`` giving
    both for up to ``chunk_size`` prompts at a time.

    Raises:
        TypeError: a candidate is not a prompt string (named, with the ``family``).
    """
    prompts = list(conditions)
    bad = [p for p in prompts if not isinstance(p, str)]
    if bad:
        raise TypeError(f"{family} candidates are prompts (str); got {type(bad[0]).__name__} {bad[0]!r}.")
    hidden, pooled = zip(*(encode(prompts[start : start + chunk_size]) for start in range(0, len(prompts), chunk_size)))
    return torch.cat(hidden), torch.cat(pooled)
