"""Stable Diffusion 3 / 3.5 (rectified flow, MMDiT) through diffusers' own components.

SD3 (Esser et al., "Scaling Rectified Flow Transformers for High-Resolution Image Synthesis",
ICML 2024, https://arxiv.org/abs/2403.03206) is trained on ``x_t = (1 - s) x0 + s eps`` with
the velocity ``eps - x0`` as target, so the classifier scores a prompt by its velocity error
under ``FlowMatchingSchedule`` (the scheduler's ``shift``; the network sees ``s * 1000``, as
in the pipeline). Prompts are encoded by ``StableDiffusion3Pipeline.encode_prompt`` itself
(two CLIP towers, optionally T5; without T5 the pipeline feeds zeros in its place), without
classifier-free guidance. Components are the pipeline's (``SD3Transformer2DModel``,
``AutoencoderKL`` with its shift and scaling factors), never forked.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import torch

from ..config import PreprocessConfig
from ..noise_schedules import FlowMatchingSchedule, schedule_from_scheduler
from .base import DiffusionBackend
from .latent import encode_with_vae, vae_latent_shape, vae_scale_factor
from .prompts import encode_prompt_chunks

__all__ = ["StableDiffusion3Backend"]

logger = logging.getLogger(__name__)


class StableDiffusion3Backend(DiffusionBackend):
    """Text-conditional rectified-flow transformer: scores prompts by velocity error.

    Conditions are ``{"encoder_hidden_states": [C, 77 + max_sequence_length, D],
    "pooled_projections": [C, D_pooled]}``, one row per candidate.
    """

    conditioning = "text"

    def __init__(self, transformer, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, scheduler,
                 text_encoder_3=None, tokenizer_3=None, preprocess: PreprocessConfig | None = None,
                 max_sequence_length: int = 256, text_chunk_size: int = 64):
        """
        Args:
            max_sequence_length: T5 tokens per prompt (the pipeline's default 256); the zeros
                that stand in for an absent T5 have the same length.
            text_chunk_size: prompts encoded per text-encoder call.
        """
        super().__init__()
        from diffusers import StableDiffusion3Pipeline

        if (text_encoder_3 is None) != (tokenizer_3 is None):
            raise ValueError("StableDiffusion3Backend: text_encoder_3 and tokenizer_3 come together; give both "
                             "(T5 prompt encoding) or neither (zeros in T5's place, as diffusers does).")
        self.transformer = transformer  # first: the backend's dtype is the network's
        self.vae = vae
        self.text_encoder = text_encoder
        self.text_encoder_2 = text_encoder_2
        self.text_encoder_3 = text_encoder_3
        self.tokenizer, self.tokenizer_2, self.tokenizer_3 = tokenizer, tokenizer_2, tokenizer_3
        self.scheduler = scheduler
        self.schedule = schedule_from_scheduler(scheduler)
        if not isinstance(self.schedule, FlowMatchingSchedule):
            raise TypeError(f"SD3 is a rectified-flow model; its scheduler must be a FlowMatch scheduler "
                            f"(FlowMatchEulerDiscreteScheduler), got {type(scheduler).__name__}.")
        if scheduler.config.get("use_dynamic_shifting", False):
            logger.warning("The scheduler shifts its noise levels by resolution (use_dynamic_shifting); the classifier "
                           "uses its static shift=%s (SD3 / SD3.5 repos use the static shift).", self.schedule.shift)
        self._vae_factor = vae_scale_factor(vae)
        size = int(transformer.config.sample_size) * self._vae_factor
        self.preprocess = preprocess or PreprocessConfig(size=size)
        self.max_sequence_length = int(max_sequence_length)
        self.text_chunk_size = int(text_chunk_size)
        # diffusers' pipeline object over the same modules (no copies), for its encode_prompt only; it
        # keeps the eager network even when acceleration.optimize_backend wraps self.transformer.
        self._pipeline = StableDiffusion3Pipeline(
            transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
            text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, text_encoder_3=text_encoder_3,
            tokenizer_3=tokenizer_3,
        )

    @classmethod
    def from_pipeline(cls, pipe, preprocess: PreprocessConfig | None = None, **kwargs) -> "StableDiffusion3Backend":
        """Take the components of a loaded ``StableDiffusion3Pipeline``."""
        return cls(pipe.transformer, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.text_encoder_2,
                   pipe.tokenizer_2, pipe.scheduler, pipe.text_encoder_3, pipe.tokenizer_3, preprocess, **kwargs)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """The shape of one image's x0: (VAE latent channels, size / 8, size / 8)."""
        return vae_latent_shape(self.vae, self.preprocess.size)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return encode_with_vae(self.vae, pixels)  # (mean - shift_factor) x scaling_factor

    @torch.inference_mode()
    def encode_conditions(self, conditions: Sequence[Any]) -> dict[str, torch.Tensor]:
        device = next(self.text_encoder.parameters()).device

        def encode(chunk: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
            embeds, _, pooled, _ = self._pipeline.encode_prompt(
                prompt=chunk, prompt_2=None, prompt_3=None, device=device, do_classifier_free_guidance=False,
                max_sequence_length=self.max_sequence_length,
            )
            return embeds, pooled

        hidden, pooled = encode_prompt_chunks(conditions, "Stable Diffusion 3", self.text_chunk_size, encode)
        dtype = self._network_dtype()
        return {"encoder_hidden_states": hidden.to(dtype), "pooled_projections": pooled.to(dtype)}

    def unconditional(self) -> dict[str, torch.Tensor]:
        """The empty prompt, encoded as the pipeline encodes its default negative prompt."""
        return self.encode_conditions([""])

    def denoise(self, x_t: torch.Tensor, timesteps: torch.Tensor, conditions: dict[str, torch.Tensor]) -> torch.Tensor:
        dtype = self._network_dtype()
        return self.transformer(
            hidden_states=x_t.to(dtype), timestep=timesteps,
            encoder_hidden_states=conditions["encoder_hidden_states"],
            pooled_projections=conditions["pooled_projections"], return_dict=False,
        )[0]

    def _network_dtype(self) -> torch.dtype:
        return self._pipeline.transformer.dtype
