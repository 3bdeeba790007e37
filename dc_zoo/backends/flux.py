"""FLUX.1 (rectified flow, double- and single-stream transformer) through diffusers' own components.

FLUX.1 [schnell] / [dev] (Black Forest Labs, 2024) are rectified-flow transformers trained on
``x_t = (1 - s) x0 + s eps`` with the velocity ``eps - x0`` as target (diffusers'
``FlowMatchEulerDiscreteScheduler.step``: ``prev = x + (s_next - s) * model_output``, so
``model_output = d x_t / d s = eps - x0``). The classifier scores a prompt by its velocity error
under a ``FlowMatchingSchedule``. What differs from SD3, each as ``FluxPipeline`` does it:

* **x0 is packed.** The VAE latent (``(mean - shift_factor) x scaling_factor``) ``[C, h, w]`` is cut
  into 2x2 patches, ``FluxPipeline._pack_latents``: ``[(h/2)(w/2), 4C]``; ``latent_shape`` is that
  packed shape, so eps is drawn in it (a permutation of iid Gaussians: the same distribution as an
  unpacked eps packed afterwards).
* **Time is sigma.** The pipeline passes ``timestep / 1000 = s`` and the transformer multiplies by
  1000 inside, so the schedule gives the network ``s`` itself (``timestep_scale=1.0``).
* **Noise levels shift with the resolution.** With ``use_dynamic_shifting`` the scheduler computes
  ``mu`` from the image sequence length (``calculate_shift``) and shifts its sigmas by
  ``time_shift(mu, 1, s)``; with the exponential type that is exactly the static shift
  ``s' = shift u / (1 + (shift - 1) u)`` with ``shift = exp(mu)`` (``mu`` itself for the linear
  type). The classifier uses that static equivalent for the sequence length of the backend's
  preprocess resolution (logged at construction). A scheduler without dynamic shifting keeps its
  config's static ``shift``.
* **Position ids.** ``txt_ids`` (zeros, one row per text token) and ``img_ids``
  (``FluxPipeline._prepare_latent_image_ids``) are built once per sequence length and shared by
  every row of a batch (diffusers takes them unbatched), not carried in the conditions.
* **Distilled guidance.** FLUX.1 [dev] embeds a guidance scale (``transformer.config.guidance_embeds``);
  the backend gives it ``guidance`` (default 1.0: no distilled guidance, the plain conditional
  velocity) as a tensor, one value per batch row. FLUX.1 [schnell] has no such embedding.

Prompts are encoded by ``FluxPipeline.encode_prompt`` itself (CLIP-L's pooled output and T5's hidden
states, ``max_sequence_length`` T5 tokens: 256 for schnell and 512 for dev by default, as Black
Forest Labs' reference code), without classifier-free guidance. Components are the pipeline's
(``FluxTransformer2DModel``, ``AutoencoderKL``), never forked.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import torch

from ..config import PreprocessConfig
from ..noise_schedules import FlowMatchingSchedule
from .base import DiffusionBackend
from .latent import encode_with_vae, vae_scale_factor
from .prompts import encode_prompt_chunks

__all__ = ["FluxBackend", "DEFAULT_SAMPLE_SIZE", "flux_static_shift"]

logger = logging.getLogger(__name__)

DEFAULT_SAMPLE_SIZE = 128  # FluxPipeline.default_sample_size: latent pixels of its default image (1024 px)


def flux_static_shift(scheduler, image_seq_len: int) -> tuple[float, float | None]:
    """``(shift, mu)``: the static shift equal to the scheduler's noise levels for ``image_seq_len``
    packed image tokens (``mu`` is None when the scheduler does not shift dynamically).

    ``FluxPipeline`` computes ``mu = calculate_shift(image_seq_len, base_image_seq_len,
    max_image_seq_len, base_shift, max_shift)`` from the scheduler config; the scheduler's
    ``time_shift(mu, 1.0, s)`` is ``exp(mu) / (exp(mu) + (1 / s - 1))`` (exponential type), i.e.
    ``shift s / (1 + (shift - 1) s)`` with ``shift = exp(mu)``; the linear type gives ``shift = mu``.
    """
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    config = scheduler.config
    get = config.get if hasattr(config, "get") else lambda k, d=None: getattr(config, k, d)
    if not get("use_dynamic_shifting", False):
        return float(get("shift", 1.0) or 1.0), None
    mu = calculate_shift(int(image_seq_len), get("base_image_seq_len", 256), get("max_image_seq_len", 4096),
                         get("base_shift", 0.5), get("max_shift", 1.15))
    kind = get("time_shift_type", "exponential") or "exponential"
    if kind == "exponential":
        return math.exp(mu), float(mu)
    if kind == "linear":
        return float(mu), float(mu)
    raise ValueError(f"Unknown time_shift_type {kind!r} in the scheduler config; diffusers knows 'exponential' and "
                     "'linear'.")


class FluxBackend(DiffusionBackend):
    """Text-conditional FLUX.1 rectified-flow transformer: scores prompts by velocity error.

    Conditions are ``{"encoder_hidden_states": [C, max_sequence_length, D_T5],
    "pooled_projections": [C, D_CLIP]}``, one row per candidate.
    """

    conditioning = "text"

    def __init__(self, transformer, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, scheduler,
                 preprocess: PreprocessConfig | None = None, max_sequence_length: int | None = None,
                 guidance: float = 1.0, text_chunk_size: int = 64):
        """
        Args:
            preprocess: image preparation; its size fixes the packed sequence length and so the
                noise levels of a dynamically shifting scheduler. Default: the pipeline's default
                image, ``128 x`` the VAE factor (1024 px for FLUX.1).
            max_sequence_length: T5 tokens per prompt; default 512 for a transformer with a guidance
                embedding (dev) and 256 without (schnell), Black Forest Labs' reference settings.
            guidance: the distilled guidance scale given to a transformer with ``guidance_embeds``
                (1.0: no distilled guidance); ignored by one without.
            text_chunk_size: prompts encoded per text-encoder call.
        """
        super().__init__()
        from diffusers import FluxPipeline

        self.transformer = transformer  # first: the backend's dtype is the network's
        self.vae = vae
        self.text_encoder = text_encoder
        self.text_encoder_2 = text_encoder_2
        self.tokenizer, self.tokenizer_2 = tokenizer, tokenizer_2
        self.scheduler = scheduler
        if not type(scheduler).__name__.startswith("FlowMatch"):
            raise TypeError(f"FLUX is a rectified-flow model; its scheduler must be a FlowMatch scheduler "
                            f"(FlowMatchEulerDiscreteScheduler), got {type(scheduler).__name__}.")
        latent_channels = int(vae.config.latent_channels)
        if int(transformer.config.in_channels) != 4 * latent_channels:
            raise ValueError(
                f"The transformer takes {transformer.config.in_channels} channels per token but packed 2x2 patches of "
                f"the VAE's {latent_channels}-channel latents have {4 * latent_channels}: a FLUX Fill / Control "
                "transformer (extra conditioning channels) is not a text-to-image FluxPipeline model.")
        self._vae_factor = vae_scale_factor(vae)
        self.preprocess = preprocess or PreprocessConfig(size=DEFAULT_SAMPLE_SIZE * self._vae_factor)
        size = int(self.preprocess.size)
        if size % (2 * self._vae_factor):
            raise ValueError(f"FLUX packs 2x2 latent patches: the image size must be a multiple of "
                             f"{2 * self._vae_factor} (2 x the VAE factor), got {size}.")
        self.guidance_embeds = bool(getattr(transformer.config, "guidance_embeds", False))
        if max_sequence_length is None:
            max_sequence_length = 512 if self.guidance_embeds else 256
        if not 0 < int(max_sequence_length) <= 512:
            raise ValueError(f"max_sequence_length must be in 1..512 (FluxPipeline's limit), "
                             f"got {max_sequence_length}.")
        self.max_sequence_length = int(max_sequence_length)
        self.guidance = float(guidance)
        self.text_chunk_size = int(text_chunk_size)
        self.image_seq_len = (size // self._vae_factor // 2) ** 2
        shift, mu = flux_static_shift(scheduler, self.image_seq_len)
        self._shift_by_resolution = mu is not None
        self.schedule = FlowMatchingSchedule(num_train_timesteps=int(scheduler.config.get("num_train_timesteps", 1000)),
                                             shift=shift, timestep_scale=1.0)
        if mu is not None:
            logger.info("FLUX scheduler shifts its noise levels by resolution (use_dynamic_shifting): at %d px "
                        "(%d image tokens) mu = %.4f, so the classifier uses the static equivalent shift = exp(mu) = "
                        "%.4f.", size, self.image_seq_len, mu, shift)
        # diffusers' pipeline object over the same modules (no copies), for encode_prompt and its id helpers
        # only; it keeps the eager network even when acceleration.optimize_backend wraps self.transformer.
        self._pipeline = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                      text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer)
        self._ids: dict[tuple, torch.Tensor] = {}

    @classmethod
    def from_pipeline(cls, pipe, preprocess: PreprocessConfig | None = None, **kwargs) -> "FluxBackend":
        """Take the components of a loaded ``FluxPipeline``."""
        return cls(pipe.transformer, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.text_encoder_2,
                   pipe.tokenizer_2, pipe.scheduler, preprocess, **kwargs)

    @property
    def latent_shape(self) -> tuple[int, int]:
        """The shape of one image's packed x0: ``((size / f / 2)^2, 4 x latent channels)`` (f: VAE factor)."""
        return (self.image_seq_len, 4 * int(self.vae.config.latent_channels))

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        latents = encode_with_vae(self.vae, pixels)  # (mean - shift_factor) x scaling_factor, [B, C, h, w]
        batch, channels, height, width = latents.shape
        if height != width or height % 2:
            raise ValueError(f"FLUX packs 2x2 patches of square latents; got a {height}x{width} latent (the image "
                             f"side must be a multiple of {2 * self._vae_factor}).")
        if self._shift_by_resolution and (height // 2) * (width // 2) != self.image_seq_len:
            side = int(self.image_seq_len ** 0.5) * 2 * self._vae_factor
            raise ValueError(
                f"This FLUX scheduler shifts its noise levels by resolution and the backend fixed its shift for "
                f"{side} px ({self.image_seq_len} image tokens), but the images are {height * self._vae_factor} px "
                f"({(height // 2) * (width // 2)} tokens): build the backend with the classifier's preprocessing, "
                f"FluxBackend(..., preprocess=PreprocessConfig(size={height * self._vae_factor})) or "
                f"DiffusionClassifier.from_pipeline(pipe, preprocess=...), which passes it on."
            )
        return self._pipeline._pack_latents(latents, batch, channels, height, width)

    @torch.inference_mode()
    def encode_conditions(self, conditions: Sequence[Any]) -> dict[str, torch.Tensor]:
        device = next(self.text_encoder.parameters()).device

        def encode(chunk: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
            embeds, pooled, _ = self._pipeline.encode_prompt(prompt=chunk, prompt_2=None, device=device,
                                                             max_sequence_length=self.max_sequence_length)
            return embeds, pooled

        hidden, pooled = encode_prompt_chunks(conditions, "FLUX", self.text_chunk_size, encode)
        dtype = self._network_dtype()
        return {"encoder_hidden_states": hidden.to(dtype), "pooled_projections": pooled.to(dtype)}

    def unconditional(self) -> dict[str, torch.Tensor]:
        """The empty prompt, encoded as any other prompt (FLUX has no negative-prompt convention)."""
        return self.encode_conditions([""])

    def position_ids(self, text_len: int, image_seq_len: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``(txt_ids [text_len, 3], img_ids [image_seq_len, 3])`` as ``FluxPipeline`` builds them
        (``encode_prompt``'s zeros, ``_prepare_latent_image_ids`` over the square token grid)."""
        side = math.isqrt(int(image_seq_len))
        if side * side != image_seq_len:
            raise ValueError(f"{image_seq_len} image tokens are not a square grid; FLUX here scores square images.")
        key = (int(text_len), side, torch.device(device), dtype)
        if key not in self._ids:
            txt_ids = torch.zeros(int(text_len), 3, device=device, dtype=dtype)
            img_ids = self._pipeline._prepare_latent_image_ids(1, side, side, device, dtype)
            self._ids[key] = (txt_ids, img_ids)
        return self._ids[key]

    def denoise(self, x_t: torch.Tensor, timesteps: torch.Tensor, conditions: dict[str, torch.Tensor]) -> torch.Tensor:
        dtype = self._network_dtype()
        hidden = conditions["encoder_hidden_states"]
        txt_ids, img_ids = self.position_ids(hidden.shape[1], x_t.shape[1], x_t.device, dtype)
        guidance = None
        if self.guidance_embeds:
            guidance = torch.full((x_t.shape[0],), self.guidance, device=x_t.device, dtype=torch.float32)
        return self.transformer(
            hidden_states=x_t.to(dtype), timestep=timesteps, guidance=guidance,
            pooled_projections=conditions["pooled_projections"], encoder_hidden_states=hidden,
            txt_ids=txt_ids, img_ids=img_ids, return_dict=False,
        )[0]

    def _network_dtype(self) -> torch.dtype:
        return self._pipeline.transformer.dtype
