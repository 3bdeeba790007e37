"""Stable Diffusion family (SD 1.x, 2.x base and 768 px v-prediction) through diffusers.

Components are the pipeline's own (``UNet2DConditionModel``, ``CLIPTextModel`` +
``CLIPTokenizer``, ``AutoencoderKL``, the scheduler's training schedule), never forked. The
prediction target follows ``scheduler.config.prediction_type``, so v-prediction checkpoints,
which the original code could not score, work unchanged. Prompts are tokenized to the
tokenizer's 77 tokens and encoded once; no classifier-free guidance (w = 0 was best).
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import torch

from ..config import PreprocessConfig
from ..noise_schedules import schedule_from_scheduler
from .base import DiffusionBackend
from .latent import encode_with_vae, vae_scale_factor

__all__ = ["StableDiffusionBackend", "warn_truncated_prompts"]

logger = logging.getLogger(__name__)


def warn_truncated_prompts(tokenizer, prompts: Sequence[str], already_warned: set | None = None) -> list[str]:
    """Warn, as diffusers pipelines do, naming the prompts the text encoder will cut (each prompt
    once when the caller keeps ``already_warned``).

    The text encoder sees ``tokenizer.model_max_length`` tokens (77 for SD's CLIP, 16 for the
    digits miniature) including the start and end tokens; words past them are ignored.

    Returns:
        The prompts that are too long.
    """
    limit = int(tokenizer.model_max_length)
    fresh = [p for p in dict.fromkeys(prompts) if already_warned is None or p not in already_warned]
    if not fresh:
        return []
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # its own "sequence length" warning would repeat ours
    try:
        lengths = [len(ids) for ids in tokenizer(fresh, truncation=False).input_ids]
    finally:
        transformers_logging.set_verbosity(verbosity)
    long = [(p, n) for p, n in zip(fresh, lengths) if n > limit]
    if already_warned is not None:
        already_warned.update(fresh)
    if long:
        shown = "; ".join(f"{p!r} ({n} tokens)" for p, n in long[:5])
        more = f" and {len(long) - 5} more" if len(long) > 5 else ""
        logger.warning("%d prompt(s) are longer than the text encoder's limit of %d tokens and will be truncated "
                       "(the words past the limit do not count): %s%s", len(long), limit, shown, more)
    return [p for p, _ in long]


class StableDiffusionBackend(DiffusionBackend):
    """Text-conditional latent diffusion: scores prompts by epsilon/v prediction error."""

    conditioning = "text"

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler,
                 preprocess: PreprocessConfig | None = None, text_chunk_size: int = 64):
        super().__init__()
        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.schedule = schedule_from_scheduler(scheduler)
        size = getattr(unet.config, "sample_size", 64) * vae_scale_factor(vae)
        self.preprocess = preprocess or PreprocessConfig(size=int(size))
        self.text_chunk_size = text_chunk_size
        self._prompts_checked: set[str] = set()  # prompts already checked against the token limit

    @classmethod
    def from_pipeline(cls, pipe, preprocess: PreprocessConfig | None = None) -> "StableDiffusionBackend":
        """Take the components of a loaded ``StableDiffusionPipeline``."""
        return cls(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler, preprocess)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return encode_with_vae(self.vae, pixels)

    @torch.inference_mode()
    def encode_conditions(self, conditions: Sequence[Any]) -> torch.Tensor:
        prompts = list(conditions)
        bad = [p for p in prompts if not isinstance(p, str)]
        if bad:
            raise TypeError(
                f"Stable Diffusion candidates are prompts (str); got {type(bad[0]).__name__} {bad[0]!r}."
            )
        warn_truncated_prompts(self.tokenizer, prompts, self._prompts_checked)
        device = next(self.text_encoder.parameters()).device
        use_mask = bool(getattr(self.text_encoder.config, "use_attention_mask", False))
        out = []
        for start in range(0, len(prompts), self.text_chunk_size):
            tokens = self.tokenizer(
                prompts[start : start + self.text_chunk_size],
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            )
            mask = tokens.attention_mask.to(device) if use_mask else None
            out.append(self.text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0])
        return torch.cat(out).to(self.unet.dtype)

    def unconditional(self) -> torch.Tensor:
        return self.encode_conditions([""])

    def denoise(self, x_t: torch.Tensor, timesteps: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        return self.unet(x_t.to(self.unet.dtype), timesteps, encoder_hidden_states=conditions).sample
