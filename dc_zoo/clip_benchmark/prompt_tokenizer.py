"""The tokenizer clip_benchmark calls: texts become row ids, so the model gets the exact strings back.

A Diffusion Classifier tokenizes prompts itself (Stable Diffusion's CLIP tokenizer, inside its
backend). clip_benchmark only needs ``tokenizer(texts).to(device)`` to give a tensor it can hand
to ``model.encode_text``; an id per distinct text is that tensor, and ``decode`` recovers the
strings without the lossy round trip through BPE tokens.
"""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["PromptTokenizer"]


class PromptTokenizer:
    """``tokenizer(["a photo of a cat.", ...]) -> LongTensor[n]`` of ids into its text table."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self._ids: dict[str, int] = {}

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        ids = []
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"The tokenizer takes strings; got {type(text).__name__} {text!r}.")
            if text not in self._ids:
                self._ids[text] = len(self.texts)
                self.texts.append(text)
            ids.append(self._ids[text])
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, tokens: torch.Tensor) -> list[str]:
        """The texts behind ``tokens`` (ids made by this tokenizer)."""
        ids = [int(i) for i in torch.as_tensor(tokens).reshape(-1).tolist()]
        bad = [i for i in ids if not 0 <= i < len(self.texts)]
        if bad:
            raise ValueError(
                f"Token ids {bad[:3]} were not made by this model's tokenizer; tokenize with the "
                "tokenizer returned together with the Diffusion Classifier model."
            )
        return [self.texts[i] for i in ids]
