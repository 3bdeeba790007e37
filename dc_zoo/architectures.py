"""Network configurations of the supported families, for random-weight models.

Benchmarks time the real SD-2-base UNet, DiT-XL/2, SD3-medium transformer and SDXL-base UNet
shapes without downloading weights, and tests use the tiny variants of the same classes; both
build them here so that a configuration is written once. Weights are random: use these for
speed and code paths, never for accuracy. Build under ``torch.device("meta")`` to count FLOPs
of the full-size networks without allocating them (``benchmarks/throughput.py --flops-only``).
"""
from __future__ import annotations

from typing import Any

import torch

__all__ = ["ARCHITECTURES", "build_stable_diffusion", "build_dit", "build_sd3", "build_sdxl", "build_t5_tokenizer",
           "build_backend"]
__all__ += ["build_flux"]

_SD_VAE = dict(
    block_out_channels=(128, 256, 512, 512), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=32,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2,
)
_TINY_VAE = dict(
    block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16,
)

# The CLIP text towers of SD3 and SDXL: ViT-L/14 (OpenAI) and OpenCLIP ViT-bigG/14, with their projections.
_CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
               max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, bos_token_id=49406,
               eos_token_id=49407, pad_token_id=49407)
_CLIP_G = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
               max_position_embeddings=77, hidden_act="gelu", projection_dim=1280, bos_token_id=49406,
               eos_token_id=49407, pad_token_id=49407)
# Tiny towers of different widths (as L and bigG differ), so the concatenations and the padding to
# the transformer's width are exercised; CLIP's real 49408-token vocabulary (clip_tokenizer.py).
_TINY_CLIP_L = dict(vocab_size=49408, hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
                    max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
                    projection_dim=16)
_TINY_CLIP_G = dict(_TINY_CLIP_L, hidden_size=24, intermediate_size=48, projection_dim=24)

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
    # stabilityai/stable-diffusion-3-medium-diffusers: transformer, CLIP-L + bigG, T5 v1.1 XXL, 16-channel VAE.
    "sd-3-medium": dict(
        family="stable_diffusion_3",
        transformer=dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                         attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                         caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=192),
        text_encoder=_CLIP_L,
        text_encoder_2=_CLIP_G,
        text_encoder_3=dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                            feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
                            relative_attention_max_distance=128, is_encoder_decoder=False),
        vae=dict(_SD_VAE, latent_channels=16, sample_size=1024, scaling_factor=1.5305, shift_factor=0.0609,
                 use_quant_conv=False, use_post_quant_conv=False),
        scheduler=dict(num_train_timesteps=1000, shift=3.0),
    ),
    "tiny-sd3": dict(
        family="stable_diffusion_3",
        transformer=dict(sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                         attention_head_dim=8, num_attention_heads=2, joint_attention_dim=48,
                         caption_projection_dim=16, pooled_projection_dim=40, pos_embed_max_size=16),
        text_encoder=_TINY_CLIP_L,
        text_encoder_2=_TINY_CLIP_G,
        text_encoder_3=dict(d_model=48, d_kv=8, d_ff=64, num_layers=1, num_heads=2, feed_forward_proj="gated-gelu",
                            relative_attention_num_buckets=8, relative_attention_max_distance=16,
                            is_encoder_decoder=False),  # vocab_size: the tiny tokenizer's (build_t5_tokenizer)
        vae=dict(_TINY_VAE, latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
                 use_post_quant_conv=False),
        scheduler=dict(num_train_timesteps=1000, shift=3.0),
    ),
    # stabilityai/stable-diffusion-xl-base-1.0: unet ("text_time" micro-conditioning), CLIP-L + bigG, VAE.
    "sdxl-base": dict(
        family="stable_diffusion_xl",
        unet=dict(
            block_out_channels=(320, 640, 1280), layers_per_block=2, sample_size=128, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816, norm_num_groups=32,
        ),
        text_encoder=_CLIP_L,
        text_encoder_2=_CLIP_G,
        vae=dict(_SD_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True),
        scheduler=dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000,
                       timestep_spacing="leading", steps_offset=1),
    ),
    "tiny-sdxl": dict(
        family="stable_diffusion_xl",
        unet=dict(
            block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4), transformer_layers_per_block=(1, 2), cross_attention_dim=40,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=4,
            projection_class_embeddings_input_dim=6 * 4 + 24, norm_num_groups=4,
        ),
        text_encoder=_TINY_CLIP_L,
        text_encoder_2=_TINY_CLIP_G,
        vae=dict(_TINY_VAE, scaling_factor=0.13025, force_upcast=True),
        scheduler=dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000,
                       timestep_spacing="leading", steps_offset=1),
    ),
}
# FluxPipeline layout in miniature (black-forest-labs/FLUX.1-*: FluxTransformer2DModel over packed 2x2 patches,
# CLIP-L's pooled output + T5-XXL hidden states, 16-channel VAE with shift 0.1159 / scale 0.3611). Tiny:
# 4 latent channels (16 per packed token), 16 px -> 8x8 latents -> 16 image tokens; T5 over build_t5_tokenizer's
# vocabulary. build_flux picks the schnell (no guidance embedding, static shift) or dev (guidance embedding,
# dynamic shifting) variant of the transformer and scheduler.
# black-forest-labs/FLUX.1-schnell: transformer/config.json (12B: 19 double- and 38 single-stream blocks), CLIP-L,
# T5-XXL, the 16-channel VAE; schnell's scheduler has a static shift of 1.
ARCHITECTURES["flux-1-schnell"] = dict(
    family="flux",
    transformer=dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                     num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                     axes_dims_rope=(16, 56, 56)),
    text_encoder=_CLIP_L,
    text_encoder_2=dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                        feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
                        relative_attention_max_distance=128, is_encoder_decoder=False),
    vae=dict(_SD_VAE, latent_channels=16, sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159,
             use_quant_conv=False, use_post_quant_conv=False),
    scheduler=dict(num_train_timesteps=1000, base_image_seq_len=256, max_image_seq_len=4096, base_shift=0.5,
                   max_shift=1.15),
    resolution=1024,
)
ARCHITECTURES["tiny-flux"] = dict(
    family="flux",
    transformer=dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                     num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16,
                     axes_dims_rope=(4, 4, 8)),  # the rope axes sum to attention_head_dim
    text_encoder=_TINY_CLIP_L,  # CLIPTextModel: its pooled output (width 16) is the pooled projection
    text_encoder_2=dict(d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2, feed_forward_proj="gated-gelu",
                        relative_attention_num_buckets=8, relative_attention_max_distance=16,
                        is_encoder_decoder=False),  # vocab_size: the tiny tokenizer's (build_t5_tokenizer)
    vae=dict(_TINY_VAE, latent_channels=4, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
             use_post_quant_conv=False),
    scheduler=dict(num_train_timesteps=1000, base_image_seq_len=256, max_image_seq_len=4096, base_shift=0.5,
                   max_shift=1.15),
    resolution=16,  # FluxTransformer2DModel has no sample_size; build_backend's preprocess size
)


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
    tokenizer = tokenizer if tokenizer is not None else _default_clip_tokenizer()
    with torch.device("cpu"):  # the training schedule is data, also when networks are built on "meta"
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
    with torch.device("cpu"):
        scheduler = DDIMScheduler(**arch["scheduler"])
    return dict(transformer=transformer, vae=vae, scheduler=scheduler)


def _arch_of_family(name: str, family: str, builder: str) -> dict[str, Any]:
    """Architecture ``name``, refused (naming the ones that fit) when ``builder`` does not build its family."""
    arch = _arch(name)
    if arch["family"] != family:
        raise ValueError(f"{name!r} is a {arch['family']} architecture; {builder} builds "
                         f"{[n for n, a in ARCHITECTURES.items() if a['family'] == family]}.")
    return arch


def _t5_encoder(config: dict[str, Any], seed: int):
    """A T5EncoderModel of ``config`` and the offline T5 tokenizer (``build_t5_tokenizer``); the tiny
    models take the tokenizer's vocabulary size, the full-size ones T5's (its ids stay below it)."""
    from transformers import T5Config, T5EncoderModel

    tokenizer = build_t5_tokenizer()
    config = {"vocab_size": len(tokenizer), **config}
    torch.manual_seed(seed)
    encoder = T5EncoderModel(T5Config(**config, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)).eval()
    return encoder, tokenizer


def _default_clip_tokenizer():
    import tempfile
    from pathlib import Path

    from .clip_tokenizer import build_clip_tokenizer

    return build_clip_tokenizer(Path(tempfile.gettempdir()) / "dc_zoo_clip_tokenizer")


# Words of the tiny T5 vocabulary besides single characters (enough for the tests' prompts).
_T5_WORDS = ("a", "photo", "of", "the", "number", "drawing", "cat", "dog", "bird", "zero", "one", "two", "three",
             "four", "five", "six", "seven", "eight", "nine", "blurry")


def build_t5_tokenizer(model_max_length: int = 512):
    """A real T5 ``T5Tokenizer`` (SentencePiece-style Unigram) over a tiny vocabulary, built in code.

    T5's 32k vocabulary is not bundled anywhere offline; this one has T5's special tokens at
    T5's ids (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2), every lowercase letter, digit and common
    punctuation, and a few whole words, so any lowercase English prompt tokenizes (letter by
    letter where no word matches; capitals become ``<unk>``) and ends with ``</s>`` as T5's does.
    """
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789.,:;'!?-()"]
    pieces += [("\u2581" + c, -4.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789'"]
    pieces += [("\u2581" + w, -1.0) for w in _T5_WORDS if len(w) > 1]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=model_max_length)


def build_sd3(name: str = "tiny-sd3", seed: int = 0, t5: bool = False, tokenizer=None) -> dict[str, Any]:
    """Random-weight StableDiffusion3Pipeline components, seeded per component.

    Args:
        t5: also build ``text_encoder_3`` (T5EncoderModel) and its tokenizer; without it they are
            ``None``, as diffusers allows (the pipeline then feeds zeros in T5's place, so the
            transformer sees the same sequence length). Full-size: T5-XXL is 4.7B parameters.
        tokenizer: the CLIP tokenizer for both CLIP towers (default: the real one, built offline).
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    arch = _arch_of_family(name, "stable_diffusion_3", "build_sd3")
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(**arch["transformer"]).eval()
    torch.manual_seed(seed)
    vae = AutoencoderKL(**arch["vae"]).eval()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(**arch["text_encoder"])).eval()
    torch.manual_seed(seed + 1)  # the two towers differ, as CLIP-L and bigG do
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**arch["text_encoder_2"])).eval()
    tokenizer = tokenizer if tokenizer is not None else _default_clip_tokenizer()
    text_encoder_3 = tokenizer_3 = None
    if t5:
        text_encoder_3, tokenizer_3 = _t5_encoder(arch["text_encoder_3"], seed)
    with torch.device("cpu"):
        scheduler = FlowMatchEulerDiscreteScheduler(**arch["scheduler"])
    return dict(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                text_encoder_2=text_encoder_2, tokenizer_2=tokenizer, text_encoder_3=text_encoder_3,
                tokenizer_3=tokenizer_3, scheduler=scheduler)


def build_sdxl(name: str = "tiny-sdxl", seed: int = 0, prediction_type: str = "epsilon",
               tokenizer=None) -> dict[str, Any]:
    """Random-weight StableDiffusionXLPipeline components (EulerDiscreteScheduler), seeded per component."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    arch = _arch_of_family(name, "stable_diffusion_xl", "build_sdxl")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**arch["unet"]).eval()
    torch.manual_seed(seed)
    vae = AutoencoderKL(**arch["vae"]).eval()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**arch["text_encoder"])).eval()
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**arch["text_encoder_2"])).eval()
    tokenizer = tokenizer if tokenizer is not None else _default_clip_tokenizer()
    with torch.device("cpu"):
        scheduler = EulerDiscreteScheduler(**arch["scheduler"], prediction_type=prediction_type)
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
                tokenizer_2=tokenizer, scheduler=scheduler)


def build_flux(name: str = "tiny-flux", seed: int = 0, guidance_embeds: bool = False,
               dynamic_shifting: bool = False, tokenizer=None) -> dict[str, Any]:
    """Random-weight FluxPipeline components, seeded per component.

    Args:
        guidance_embeds: give the transformer FLUX.1 [dev]'s distilled-guidance embedding
            (schnell has none).
        dynamic_shifting: a scheduler that shifts its noise levels by resolution
            (``use_dynamic_shifting``, shift 3.0: FLUX.1 [dev]'s config); else static shift 1.0.
        tokenizer: the CLIP tokenizer (default: the real one, built offline); T5's is
            ``build_t5_tokenizer()``.
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    arch = _arch_of_family(name, "flux", "build_flux")
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(**arch["transformer"], guidance_embeds=guidance_embeds).eval()
    torch.manual_seed(seed)
    vae = AutoencoderKL(**arch["vae"]).eval()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**arch["text_encoder"])).eval()
    tokenizer = tokenizer if tokenizer is not None else _default_clip_tokenizer()
    text_encoder_2, tokenizer_2 = _t5_encoder(arch["text_encoder_2"], seed)
    with torch.device("cpu"):
        scheduler = FlowMatchEulerDiscreteScheduler(**arch["scheduler"], use_dynamic_shifting=dynamic_shifting,
                                                    shift=3.0 if dynamic_shifting else 1.0)
    return dict(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, scheduler=scheduler)


def build_backend(name: str, seed: int = 0, device: str | torch.device | None = None, **kwargs):
    """A random-weight backend of architecture ``name`` (keyword arguments go to its builder).

    Args:
        device: where the networks are created: ``"meta"`` allocates nothing (shapes and FLOP
            counts of the full-size models), ``"cuda"`` skips the CPU initialisation; default CPU.
    """
    from contextlib import nullcontext

    from .backends import DiTBackend, StableDiffusion3Backend, StableDiffusionBackend, StableDiffusionXLBackend

    backends = {"dit": (DiTBackend, build_dit), "stable_diffusion_3": (StableDiffusion3Backend, build_sd3),
                "stable_diffusion_xl": (StableDiffusionXLBackend, build_sdxl),
                "stable_diffusion": (StableDiffusionBackend, build_stable_diffusion)}
    from .backends import FluxBackend

    backends["flux"] = (FluxBackend, build_flux)
    backend_class, builder = backends[_arch(name)["family"]]
    if _arch(name)["family"] == "flux":  # the preprocess size fixes FLUX's token count (and shift)
        from .config import PreprocessConfig

        with torch.device(device) if device is not None else nullcontext():
            parts = builder(name, seed, **kwargs)
        return backend_class(**parts, preprocess=PreprocessConfig(size=_arch(name)["resolution"]))
    with torch.device(device) if device is not None else nullcontext():
        parts = builder(name, seed, **kwargs)
    return backend_class(**parts)  # outside the device context: the schedule's tables stay on the CPU
