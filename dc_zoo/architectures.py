"""Network configurations of the supported families, for random-weight models.

Benchmarks time the real SD-2-base UNet and DiT-XL/2 shapes without downloading weights,
and tests use the tiny variants of the same classes; both build them here so that a
configuration is written once. Weights are random: use these for speed and code paths,
never for accuracy.
"""
from __future__ import annotations

from typing import Any

import torch

__all__ = ["ARCHITECTURES", "build_stable_diffusion", "build_dit", "build_backend"]

_SD_VAE = dict(
    block_out_channels=(128, 256, 512, 512), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=32,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2,
)
_TINY_VAE = dict(
    block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16,
)

ARCHITECTURES: dict[str, dict[str, Any]] = {
    # stabilityai/stable-diffusion-2-base: unet/config.json, text_encoder (OpenCLIP ViT-H text, 23 layers), vae.
    "sd-2-base": dict(
        family="stable_diffusion",
        unet=dict(
            block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, sample_size=64, in_channels=4, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
            norm_num_groups=32,
        ),
        text_encoder=dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                          num_hidden_layers=23, max_position_embeddings=77, hidden_act="gelu", projection_dim=512),
        vae=dict(_SD_VAE, sample_size=512),
        scheduler=dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000),
    ),
    "tiny-sd": dict(
        family="stable_diffusion",
        unet=dict(
            block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4,
        ),
        text_encoder=dict(vocab_size=49408, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                          num_hidden_layers=2, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                          pad_token_id=49407),
        vae=_TINY_VAE,
        scheduler=dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000),
    ),
    # facebook/DiT-XL-2-256 transformer config; VAE stabilityai/sd-vae-ft-ema.
    "dit-xl-2-256": dict(
        family="dit",
        transformer=dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
                         sample_size=32, patch_size=2, num_embeds_ada_norm=1000),
        vae=dict(_SD_VAE, sample_size=256),
        scheduler=dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, num_train_timesteps=1000),
    ),
    "tiny-dit": dict(
        family="dit",
        transformer=dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
                         sample_size=8, patch_size=2, num_embeds_ada_norm=10, norm_num_groups=4),
        vae=_TINY_VAE,
        scheduler=dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, num_train_timesteps=1000),
    ),
}


def _arch(name: str) -> dict[str, Any]:
    if name not in ARCHITECTURES:
        raise KeyError(f"Unknown architecture {name!r}; choose one of {sorted(ARCHITECTURES)}.")
    return ARCHITECTURES[name]


def build_stable_diffusion(name: str = "tiny-sd", seed: int = 0, prediction_type: str = "epsilon",
                           tokenizer=None) -> dict[str, Any]:
    """Random-weight SD components (unet, vae, text_encoder, tokenizer, scheduler), seeded per component."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    arch = _arch(name)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**arch["unet"]).eval()
    torch.manual_seed(seed)
    vae = AutoencoderKL(**arch["vae"]).eval()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**arch["text_encoder"])).eval()
    if tokenizer is None:
        import tempfile
        from pathlib import Path

        from .clip_tokenizer import build_clip_tokenizer

        tokenizer = build_clip_tokenizer(Path(tempfile.gettempdir()) / "dc_zoo_clip_tokenizer")
    scheduler = DDPMScheduler(**arch["scheduler"], prediction_type=prediction_type)
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


def build_dit(name: str = "tiny-dit", seed: int = 0) -> dict[str, Any]:
    """Random-weight DiT components (transformer with learned sigma, vae, scheduler)."""
    from diffusers import AutoencoderKL, DDIMScheduler, DiTTransformer2DModel

    arch = _arch(name)
    torch.manual_seed(seed)
    transformer = DiTTransformer2DModel(**arch["transformer"]).eval()
    torch.manual_seed(seed)
    vae = AutoencoderKL(**arch["vae"]).eval()
    return dict(transformer=transformer, vae=vae, scheduler=DDIMScheduler(**arch["scheduler"]))


def build_backend(name: str, seed: int = 0, **kwargs):
    """A random-weight backend of architecture ``name``."""
    from .backends import DiTBackend, StableDiffusionBackend

    if _arch(name)["family"] == "dit":
        return DiTBackend(**build_dit(name, seed))
    return StableDiffusionBackend(**build_stable_diffusion(name, seed, **kwargs))
