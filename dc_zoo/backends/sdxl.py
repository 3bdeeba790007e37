"""Stable Diffusion XL (base 1.0, Turbo) through diffusers' own components.

SDXL (Podell et al., "SDXL: Improving Latent Diffusion Models for High-Resolution Image
Synthesis", ICLR 2024, https://arxiv.org/abs/2307.01952) is a DDPM-family UNet conditioned on
two CLIP towers (penultimate hidden states concatenated, plus bigG's pooled projection) and on
"micro-conditioning" time ids: original size, crop top-left and target size. For a preprocessed
image all three are what the pipeline uses when generating at that size: (S, S), (0, 0), (S, S).
Prompts are encoded by ``StableDiffusionXLPipeline.encode_prompt`` and the time ids by its
``_get_add_time_ids``, without classifier-free guidance. The target follows the scheduler's
``prediction_type`` (SDXL base and Turbo: epsilon).

The SDXL VAE overflows in float16 (NaN latents; its config says ``force_upcast``): when the
backend is cast to float16 it keeps that VAE in float32, as the diffusers pipelines upcast it.
It runs once per image, so the cost is small; a VAE fine-tuned for float16 (e.g.
``madebyollin/sdxl-vae-fp16-fix``, ``force_upcast: false``) stays in float16.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import torch

from ..config import PreprocessConfig
from ..noise_schedules import schedule_from_scheduler
from .base import DiffusionBackend
from .latent import encode_with_vae, vae_latent_shape, vae_scale_factor
from .prompts import encode_prompt_chunks

__all__ = ["StableDiffusionXLBackend"]

logger = logging.getLogger(__name__)


class StableDiffusionXLBackend(DiffusionBackend):
    """Text-conditional latent diffusion with SDXL's added conditions.

    Conditions are ``{"encoder_hidden_states": [C, 77, D], "text_embeds": [C, D_pooled],
    "time_ids": [C, 6]}``, one row per candidate; the time ids say ``preprocess.size``, so give
    the backend the preprocessing the images get (``create_model`` does).
    """

    conditioning = "text"

    def __init__(self, unet, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, scheduler,
                 preprocess: PreprocessConfig | None = None, force_zeros_for_empty_prompt: bool = True,
                 text_chunk_size: int = 64):
        """
        Args:
            force_zeros_for_empty_prompt: the null condition is all zeros (SDXL's trained
                unconditional input; the pipeline's config, true for SDXL base) rather than the
                encoded empty prompt.
            text_chunk_size: prompts encoded per text-encoder call.
        """
        super().__init__()
        from diffusers import StableDiffusionXLPipeline

        if getattr(unet.config, "addition_embed_type", None) != "text_time":
            raise ValueError(f"StableDiffusionXLBackend needs an SDXL UNet (addition_embed_type='text_time'); this "
                             f"one has {getattr(unet.config, 'addition_embed_type', None)!r}. Use "
                             "StableDiffusionBackend for SD 1.x / 2.x UNets.")
        self.unet = unet  # first: the backend's dtype is the network's
        self.vae = vae
        self.text_encoder = text_encoder
        self.text_encoder_2 = text_encoder_2
        self.tokenizer, self.tokenizer_2 = tokenizer, tokenizer_2
        self.scheduler = scheduler
        self.schedule = schedule_from_scheduler(scheduler)
        self._vae_factor = vae_scale_factor(vae)
        size = int(getattr(unet.config, "sample_size", 128)) * self._vae_factor
        self.preprocess = preprocess or PreprocessConfig(size=size)
        self.force_zeros_for_empty_prompt = bool(force_zeros_for_empty_prompt)
        self.text_chunk_size = int(text_chunk_size)
        self._keep_vae_float32()  # a pipeline loaded with torch_dtype=float16 gives a float16 VAE
        # diffusers' pipeline over the same modules (no copies), for encode_prompt and _get_add_time_ids;
        # it keeps the eager UNet even when acceleration.optimize_backend wraps self.unet.
        self._pipeline = StableDiffusionXLPipeline(
            vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
            tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
            force_zeros_for_empty_prompt=self.force_zeros_for_empty_prompt, add_watermarker=False,
        )

    @classmethod
    def from_pipeline(cls, pipe, preprocess: PreprocessConfig | None = None, **kwargs) -> "StableDiffusionXLBackend":
        """Take the components of a loaded ``StableDiffusionXLPipeline``."""
        kwargs.setdefault("force_zeros_for_empty_prompt", pipe.config.get("force_zeros_for_empty_prompt", True))
        return cls(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.text_encoder_2, pipe.tokenizer_2,
                   pipe.scheduler, preprocess, **kwargs)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """The shape of one image's x0: (VAE latent channels, size / 8, size / 8)."""
        return vae_latent_shape(self.vae, self.preprocess.size)

    def _apply(self, fn, recurse=True):
        # Every cast (.to, .half, ...) ends here; the SDXL VAE goes back to float32 (see the module docstring).
        super()._apply(fn, recurse)
        self._keep_vae_float32()
        return self

    def _keep_vae_float32(self) -> None:
        if getattr(self.vae.config, "force_upcast", False) and next(self.vae.parameters()).dtype == torch.float16:
            logger.info("keeping the SDXL VAE in float32 (force_upcast: it overflows in float16)")
            self.vae.float()

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return encode_with_vae(self.vae, pixels)

    def _time_ids(self, n: int, dtype: torch.dtype, device: torch.device, projection_dim: int) -> torch.Tensor:
        size = (self.preprocess.size, self.preprocess.size)
        ids = self._pipeline._get_add_time_ids(size, (0, 0), size, dtype=dtype,
                                               text_encoder_projection_dim=projection_dim)
        return ids.to(device).expand(n, -1).contiguous()

    @torch.inference_mode()
    def encode_conditions(self, conditions: Sequence[Any]) -> dict[str, torch.Tensor]:
        device = next(self.text_encoder_2.parameters()).device

        def encode(chunk: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
            embeds, _, pooled, _ = self._pipeline.encode_prompt(prompt=chunk, device=device,
                                                                do_classifier_free_guidance=False)
            return embeds, pooled

        return self._conditions(*encode_prompt_chunks(conditions, "Stable Diffusion XL", self.text_chunk_size, encode))

    def _conditions(self, hidden: torch.Tensor, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        dtype = self._pipeline.unet.dtype
        time_ids = self._time_ids(hidden.shape[0], dtype, hidden.device, int(pooled.shape[-1]))
        return {"encoder_hidden_states": hidden.to(dtype), "text_embeds": pooled.to(dtype), "time_ids": time_ids}

    def unconditional(self) -> dict[str, torch.Tensor]:
        """The null condition as the pipeline builds its negative one: zeros when
        ``force_zeros_for_empty_prompt`` (SDXL base), else the encoded empty prompt."""
        empty = self.encode_conditions([""])
        if not self.force_zeros_for_empty_prompt:
            return empty
        return {**empty, "encoder_hidden_states": torch.zeros_like(empty["encoder_hidden_states"]),
                "text_embeds": torch.zeros_like(empty["text_embeds"])}

    def denoise(self, x_t: torch.Tensor, timesteps: torch.Tensor, conditions: dict[str, torch.Tensor]) -> torch.Tensor:
        dtype = self._pipeline.unet.dtype
        return self.unet(
            x_t.to(dtype), timesteps, encoder_hidden_states=conditions["encoder_hidden_states"],
            added_cond_kwargs={"text_embeds": conditions["text_embeds"], "time_ids": conditions["time_ids"]},
            return_dict=False,
        )[0]
