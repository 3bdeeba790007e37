"""Tiny, real diffusers components for tests (diffusers ``get_dummy_components`` style).

Random weights, seeded before each component, so every test sees the same networks. They
exercise the exact code paths of the full-size models in milliseconds.
"""
from __future__ import annotations

import functools
from pathlib import Path
import tempfile

import torch

TOKENIZER_DIR = Path(tempfile.gettempdir()) / "dc_zoo_test_clip_tokenizer"


@functools.lru_cache(maxsize=1)
def clip_tokenizer():
    from dc_zoo.clip_tokenizer import build_clip_tokenizer

    return build_clip_tokenizer(TOKENIZER_DIR)


def tiny_vae(seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16,
    ).eval()


def tiny_sd_components(seed: int = 0, prediction_type: str = "epsilon") -> dict:
    """UNet2DConditionModel + AutoencoderKL + CLIPTextModel + CLIPTokenizer + DDPMScheduler (16 px)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4,
    ).eval()
    vae = tiny_vae(seed)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
        max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )).eval()
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              num_train_timesteps=1000, prediction_type=prediction_type)
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), scheduler=scheduler)


def tiny_dit_components(seed: int = 0, num_classes: int = 10) -> dict:
    """DiTTransformer2DModel with learned sigma (out = 2 x in channels) + AutoencoderKL + DDIM schedule."""
    from diffusers import DDIMScheduler, DiTTransformer2DModel

    torch.manual_seed(seed)
    transformer = DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
        sample_size=8, patch_size=2, num_embeds_ada_norm=num_classes, norm_num_groups=4,
    ).eval()
    scheduler = DDIMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, num_train_timesteps=1000)
    return dict(transformer=transformer, vae=tiny_vae(seed), scheduler=scheduler)


def tiny_sd_backend(seed: int = 0, prediction_type: str = "epsilon"):
    from dc_zoo import StableDiffusionBackend

    return StableDiffusionBackend(**tiny_sd_components(seed, prediction_type))


def tiny_dit_backend(seed: int = 0, num_classes: int = 10):
    from dc_zoo import DiTBackend

    return DiTBackend(**tiny_dit_components(seed, num_classes))
