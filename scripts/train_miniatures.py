"""Train the lab miniatures, the embedded default models of dc_zoo, into the bundled Hub cache.

Three labs (``LABS``): digits (below), glyphs (``dc_zoo.glyphs``: 62 classes at 32 px, held-out
fonts; sd, dit and clip miniatures) and relations (``dc_zoo.relations``: captioned 32 px scenes
for Winoground-form evaluation; sd and clip). The digits lab is described here in detail; the
others follow the same recipe with the configs in ``LABS`` (a deeper VAE for 32 px, captions
instead of class templates for relations).

Diffusion Classifier (Li et al., ICCV 2023, arXiv 2303.16203) needs a trained conditional
diffusion model; no weights can be downloaded here, so the project trains three small ones on
the TRAIN split of scikit-learn's digits (``dc_zoo.digits``) and commits them:

* ``sd-digits-mini``: StableDiffusionPipeline layout (AutoencoderKL, CLIPTextModel with the
  real CLIP BPE tokenizer, UNet2DConditionModel, SD's scaled-linear DDPM schedule), the UNet
  and text encoder trained jointly on the epsilon loss with 10% empty captions;
* ``dit-digits-mini``: DiTPipeline layout (DiTTransformer2DModel with learned-sigma output,
  the same VAE, DiT's linear schedule, ``id2label`` in model_index.json as facebook/DiT-XL-2-*),
  epsilon half trained with MSE, 10% null-class dropout (label 10);
* ``clip-digits-mini``: an open_clip CLIP (tiny ViT + text transformer, open_clip's tokenizer)
  trained contrastively on the same captions, in open_clip's Hub layout.

Deliberate differences from the full-size models: SD's tokenizer and text encoder use 16 tokens
(not 77; the digit captions take 12) because cross-attention cost scales with it; DiTPipeline's
classifier-free guidance hard-codes ImageNet's null label 1000, so sample the DiT miniature with
``guidance_scale=1`` (Diffusion Classifier itself never uses guidance).

Weights are stored as float16 safetensors (configs stay float32, so loaders build float32
models and upcast). Each model lands in ``<out>/models--dc-zoo--<name>/snapshots/<revision>/``
with ``refs/main`` naming the revision: sha1 of the sorted (path, sha256) of the files.

Usage::

    python scripts/train_miniatures.py                 # the three digits miniatures into dc_zoo/hub_cache
    python scripts/train_miniatures.py --only sd dit   # a subset
    python scripts/train_miniatures.py --evaluate      # held-out accuracy of the cached models
                                                       # (dc_zoo.digits.EVALUATION_SCHEDULES)
    python scripts/train_miniatures.py --lab glyphs    # the 62-class glyph lab (sd, dit, clip)
    python scripts/train_miniatures.py --lab glyphs --evaluate --table   # accuracy against schedule
    python scripts/train_miniatures.py --lab relations # the Winoground-form lab (sd, clip)

Training is seeded (explicit generators for data, timesteps and noise) and runs on ``--threads``
CPU threads (default 1: no reduction-order races, and the fastest choice on a shared machine).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import math
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "dc_zoo" / "hub_cache"
ORG = "dc-zoo"
MODEL_NAMES = ("sd-digits-mini", "dit-digits-mini", "clip-digits-mini")  # the digits lab (see LABS)

logger = logging.getLogger("train_miniatures")


# ----------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class VAEConfig:
    """Small AutoencoderKL: 16x16 RGB -> 4x4x4 latents (three levels, factor 4)."""

    block_out_channels: tuple[int, ...] = (16, 32, 32)
    latent_channels: int = 4
    norm_num_groups: int = 8
    steps: int = 400
    batch_size: int = 64
    lr: float = 2e-3
    kl_weight: float = 1e-4  # light KL: latents stay close to N(0, I) without blurring reconstructions
    seed: int = 1


@dataclass(frozen=True)
class DenoiserTrainConfig:
    """Shared optimisation settings of the two diffusion models."""

    steps: int = 1500
    batch_size: int = 128
    lr: float = 2e-3
    warmup: int = 50
    ema_decay: float = 0.995
    uncond_prob: float = 0.1  # empty caption / null class, so the unconditional branch exists
    seed: int = 2


@dataclass(frozen=True)
class SDConfig:
    text_hidden: int = 32  # the 49408-token embedding table dominates the file; keep this small
    max_length: int = 16  # tokens per prompt (SD: 77); the digit captions take 12, cross-attention cost scales with it
    text_layers: int = 2
    text_heads: int = 4
    block_out_channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    attention_head_dim: int = 8
    train: DenoiserTrainConfig = DenoiserTrainConfig(steps=800)


@dataclass(frozen=True)
class DiTConfig:
    heads: int = 4
    head_dim: int = 16
    layers: int = 4
    patch_size: int = 1
    train: DenoiserTrainConfig = DenoiserTrainConfig(seed=3)


@dataclass(frozen=True)
class CLIPConfig:
    embed_dim: int = 32
    vision_width: int = 64
    vision_layers: int = 3
    vision_head_width: int = 16
    patch_size: int = 4
    text_width: int = 32
    text_heads: int = 4
    text_layers: int = 2
    steps: int = 600
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 4


IMAGE_SIZE = 16  # the digits lab


@dataclass(frozen=True)
class Lab:
    """A bundled dataset and the shapes of the miniatures trained on it.

    Attributes:
        name: ``digits``, ``glyphs`` or ``relations``; the models are ``<family>-<name>-mini``.
        module: the ``dc_zoo`` module holding the data (``load_<name>_split``).
        image_size: pixels per side.
        families: which miniatures the lab has (``sd``, ``dit``, ``clip``).
        vae: the autoencoder; sd and dit share it.
        sd, dit, clip: their configs.
        train_per_class: TRAIN images per class for the denoisers and CLIP (None: the split's
            default size). The generators draw sample ``i`` independently of the split's size, so
            a larger split extends the default one; the VAE always trains on the default split.
    """

    name: str
    module: str
    image_size: int
    families: tuple[str, ...]
    vae: VAEConfig = VAEConfig()
    sd: SDConfig = SDConfig()
    dit: DiTConfig = DiTConfig()
    clip: CLIPConfig = CLIPConfig()
    train_per_class: int | None = None

    @property
    def data(self):
        import importlib

        return importlib.import_module(self.module)

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """Class names, or None for a lab of free captions (relations)."""
        return getattr(self.data, "CLASS_NAMES", None)

    def model_names(self) -> tuple[str, ...]:
        return tuple(f"{family}-{self.name}-mini" for family in self.families)


# 32 px RGB labs: a VAE with one more level (8x downsampling to 4x4 latents) keeps the denoisers
# as cheap per step as the digits ones; 8 latent channels hold the extra detail.
_VAE32 = VAEConfig(block_out_channels=(16, 32, 32, 32), latent_channels=8)
# Glyph identity is fine detail: 16 latent channels and longer training keep it through the 8x
# downsampling (8 channels and 400 steps reconstructed with mse 0.073 and classified near chance).
_VAE32_GLYPHS = VAEConfig(block_out_channels=(32, 32, 64, 64), latent_channels=16, steps=800)
LABS: dict[str, Lab] = {
    "digits": Lab("digits", "dc_zoo.digits", IMAGE_SIZE, ("sd", "dit", "clip")),
    # 62 classes need far more steps than 10 digits (1,200 steps left even TRAIN images near
    # chance); 256 images per class (a free extension of the split) keep 5,000 steps from
    # memorising the training fonts.
    "glyphs": Lab("glyphs", "dc_zoo.glyphs", 32, ("sd", "dit", "clip"), vae=_VAE32_GLYPHS,
                  sd=SDConfig(block_out_channels=(48, 96), train=DenoiserTrainConfig(steps=5000)),
                  dit=DiTConfig(heads=4, head_dim=24, layers=6, train=DenoiserTrainConfig(steps=5000, seed=3)),
                  clip=CLIPConfig(vision_width=96, vision_layers=4, steps=800), train_per_class=256),
    "relations": Lab("relations", "dc_zoo.relations", 32, ("sd", "clip"), vae=_VAE32,
                     sd=SDConfig(block_out_channels=(48, 96), train=DenoiserTrainConfig(steps=1200)),
                     clip=CLIPConfig(vision_width=96, vision_layers=4, steps=1000)),
}


# ----------------------------------------------------------------------------- helpers
def _scaled(cfg, factor: float):
    """``cfg`` with its (and its ``train`` field's) step count multiplied by ``factor``."""
    if factor == 1.0:
        return cfg
    if hasattr(cfg, "train"):
        return replace(cfg, train=_scaled(cfg.train, factor))
    return replace(cfg, steps=max(1, int(cfg.steps * factor)))


def _seed(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


class EMA:
    """Exponential moving average of parameters (with the usual warm-up of the decay)."""

    def __init__(self, modules: list[torch.nn.Module], decay: float):
        self.decay = decay
        self.modules = modules
        self.shadow = [copy.deepcopy(m).eval().requires_grad_(False) for m in modules]
        self.step = 0

    @torch.no_grad()
    def update(self) -> None:
        self.step += 1
        decay = min(self.decay, (1 + self.step) / (10 + self.step))
        for live, avg in zip(self.modules, self.shadow):
            for p_avg, p in zip(avg.parameters(), live.parameters()):
                p_avg.lerp_(p.detach(), 1 - decay)
            for b_avg, b in zip(avg.buffers(), live.buffers()):
                b_avg.copy_(b)


@dataclass(frozen=True)
class TrainData:
    """A lab's TRAIN split as the classifier will see it (dc_zoo's preprocessing, [-1, 1]).

    Attributes:
        pixels: ``[N, 3, S, S]``.
        labels: class index per image (None for a lab of free captions).
        captions: the distinct training captions.
        caption_index: which caption each image has.
    """

    pixels: torch.Tensor
    labels: torch.Tensor | None
    captions: tuple[str, ...]
    caption_index: torch.Tensor


def _train_data(lab: Lab) -> TrainData:
    from dc_zoo.config import PreprocessConfig
    from dc_zoo.preprocess import to_pixels

    config = PreprocessConfig(size=lab.image_size, interpolation="bicubic", crop="center")
    data = lab.data
    if lab.class_names is None:  # free captions, one per image
        pairs = data.load_relations_split("train")
        captions = tuple(dict.fromkeys(caption for _, caption in pairs))
        position = {c: i for i, c in enumerate(captions)}
        index = torch.tensor([position[c] for _, c in pairs])
        return TrainData(to_pixels([image for image, _ in pairs], config), None, captions, index)
    sized = {} if lab.train_per_class is None else {"per_class": lab.train_per_class}
    images, labels = getattr(data, f"load_{lab.name}_split")("train", lab.image_size, **sized)
    labels = torch.tensor(labels)
    captions = tuple(data.TEMPLATE.format(c) for c in data.CLASS_NAMES)
    return TrainData(to_pixels(images, config), labels, captions, labels)


def _to_float16_safetensors(directory: Path) -> None:
    """Rewrite every safetensors file under ``directory`` with float32 tensors as float16."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    for path in sorted(directory.rglob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        tensors = {k: (v.half() if v.dtype == torch.float32 else v).contiguous() for k, v in tensors.items()}
        save_file(tensors, str(path), metadata=metadata)


def _install_snapshot(staging: Path, out: Path, name: str) -> str:
    """Move ``staging`` into the Hub cache layout; returns the deterministic revision."""
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    lines = [f"{p.relative_to(staging).as_posix()} {hashlib.sha256(p.read_bytes()).hexdigest()}" for p in files]
    revision = hashlib.sha1("\n".join(lines).encode()).hexdigest()
    repo_dir = out / f"models--{ORG}--{name}"
    if repo_dir.exists():
        shutil.rmtree(repo_dir)
    snapshot = repo_dir / "snapshots" / revision
    snapshot.parent.mkdir(parents=True)
    shutil.copytree(staging, snapshot)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(revision)
    total = sum(p.stat().st_size for p in files)
    logger.info("%s/%s @ %s: %d files, %.2f MB", ORG, name, revision, len(files), total / 1e6)
    return revision


# ----------------------------------------------------------------------------- VAE
def train_vae(pixels: torch.Tensor, cfg: VAEConfig):
    from diffusers import AutoencoderKL

    image_size = int(pixels.shape[-1])
    gen = _seed(cfg.seed)
    n = len(cfg.block_out_channels)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=cfg.block_out_channels,
        layers_per_block=1, latent_channels=cfg.latent_channels, norm_num_groups=cfg.norm_num_groups,
        sample_size=image_size,
    )
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0, foreach=True)
    vae.train()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg.steps, cfg.lr, 50)
        x = pixels[torch.randint(0, len(pixels), (cfg.batch_size,), generator=gen)]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        loss = F.mse_loss(recon, x) + cfg.kl_weight * posterior.kl().mean() / x[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 500 == 0 or step == cfg.steps - 1:
            logger.info("vae step %d loss %.5f", step, loss.item())
    # Round through float16 now: the VAE that ships (float16 safetensors) is then exactly the one
    # whose latents the denoisers are trained on.
    vae = vae.eval().to(torch.float16).to(torch.float32)
    with torch.no_grad():
        means = torch.cat([vae.encode(c).latent_dist.mean for c in pixels.split(256)])
        recon = torch.cat([vae.decode(m).sample for m in means.split(256)])
    # SD's convention: scaling_factor makes the scaled latents roughly unit variance.
    scaling = float(1.0 / means.std())
    vae.register_to_config(scaling_factor=round(scaling, 5))
    logger.info("vae recon mse %.5f, scaling_factor %.5f", F.mse_loss(recon, pixels).item(), scaling)
    return vae


def _latent_stats(vae, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        dists = [vae.encode(c).latent_dist for c in pixels.split(256)]
    scale = float(vae.config.scaling_factor)
    return torch.cat([d.mean for d in dists]) * scale, torch.cat([d.std for d in dists]) * scale


# ----------------------------------------------------------------------------- denoiser loop
def _train_denoiser(name: str, modules: list[torch.nn.Module], loss_fn, n_items: int,
                    cfg: DenoiserTrainConfig, gen: torch.Generator) -> list[torch.nn.Module]:
    params = [p for m in modules for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0, foreach=True)
    ema = EMA(modules, cfg.ema_decay)
    for m in modules:
        m.train()
    running = 0.0
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg.steps, cfg.lr, cfg.warmup)
        idx = torch.randint(0, n_items, (cfg.batch_size,), generator=gen)
        loss = loss_fn(idx, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update()
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        if step % 500 == 0 or step == cfg.steps - 1:
            logger.info("%s step %d loss %.4f", name, step, running)
    return ema.shadow


def _noisy(z0: torch.Tensor, abar: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    t = torch.randint(0, len(abar), (z0.shape[0],), generator=gen)
    eps = torch.randn(z0.shape, generator=gen)
    a = abar[t].view(-1, 1, 1, 1)
    return a.sqrt() * z0 + (1 - a).sqrt() * eps, t, eps


# ----------------------------------------------------------------------------- SD
def build_sd(vae, data: TrainData, cfg: SDConfig, staging: Path) -> None:
    from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from dc_zoo.clip_tokenizer import write_clip_tokenizer_files

    gen = _seed(cfg.train.seed)
    tok_dir = Path(tempfile.mkdtemp()) / "tokenizer"
    write_clip_tokenizer_files(tok_dir, model_max_length=cfg.max_length)
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir))
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=tokenizer.vocab_size if hasattr(tokenizer, "vocab_size") else 49408,
        hidden_size=cfg.text_hidden, intermediate_size=4 * cfg.text_hidden,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
        max_position_embeddings=tokenizer.model_max_length, hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, projection_dim=cfg.text_hidden,
    ))
    pixels = data.pixels
    n = len(cfg.block_out_channels)
    latent_size = int(pixels.shape[-1]) // 2 ** (len(vae.config.block_out_channels) - 1)
    unet = UNet2DConditionModel(
        sample_size=latent_size, in_channels=vae.config.latent_channels, out_channels=vae.config.latent_channels,
        block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block,
        down_block_types=("CrossAttnDownBlock2D",) * n, up_block_types=("CrossAttnUpBlock2D",) * n,
        cross_attention_dim=cfg.text_hidden, attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=math.gcd(32, *cfg.block_out_channels),
    )
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              num_train_timesteps=1000, prediction_type="epsilon", clip_sample=False,
                              steps_offset=1)
    abar = scheduler.alphas_cumprod.float()
    mean, std = _latent_stats(vae, pixels)
    # The distinct captions, then "" (a dropped caption). Few (one per class): all are encoded
    # once per step; many (free captions): only the batch's.
    captions = list(data.captions) + [""]
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    few = len(captions) <= 256

    def loss_fn(idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        z0 = mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)
        z_t, t, eps = _noisy(z0, abar, g)
        cap = data.caption_index[idx].clone()
        cap[torch.rand(len(idx), generator=g) < cfg.train.uncond_prob] = len(data.captions)
        states = text_encoder(ids)[0][cap] if few else text_encoder(ids[cap])[0]
        return F.mse_loss(unet(z_t, t, encoder_hidden_states=states).sample, eps)

    logger.info("sd: unet %.2fM params, text encoder %.2fM params",
                sum(p.numel() for p in unet.parameters()) / 1e6, sum(p.numel() for p in text_encoder.parameters()) / 1e6)
    unet_ema, text_ema = _train_denoiser("sd", [unet, text_encoder], loss_fn, len(pixels), cfg.train, gen)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_ema, tokenizer=tokenizer, unet=unet_ema,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(str(staging), safe_serialization=True)
    shutil.rmtree(staging / "tokenizer")
    write_clip_tokenizer_files(staging / "tokenizer", model_max_length=cfg.max_length)  # the canonical files, byte-stable across runs
    _to_float16_safetensors(staging)


# ----------------------------------------------------------------------------- DiT
def build_dit(vae, data: TrainData, class_names: tuple[str, ...], cfg: DiTConfig, staging: Path) -> None:
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    pixels, labels = data.pixels, data.labels
    gen = _seed(cfg.train.seed)
    latent_size = int(pixels.shape[-1]) // 2 ** (len(vae.config.block_out_channels) - 1)
    channels = vae.config.latent_channels
    transformer = DiTTransformer2DModel(
        num_attention_heads=cfg.heads, attention_head_dim=cfg.head_dim, in_channels=channels,
        out_channels=2 * channels, num_layers=cfg.layers, sample_size=latent_size,
        patch_size=cfg.patch_size, num_embeds_ada_norm=len(class_names),
    )
    # DiT's training schedule (facebook/DiT-XL-2-*): 1000 linear betas 1e-4..0.02, epsilon.
    scheduler = DDIMScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02, num_train_timesteps=1000,
                              prediction_type="epsilon", clip_sample=False)
    abar = scheduler.alphas_cumprod.float()
    mean, std = _latent_stats(vae, pixels)

    def loss_fn(idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        z0 = mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)
        z_t, t, eps = _noisy(z0, abar, g)
        y = labels[idx].clone()
        y[torch.rand(len(idx), generator=g) < cfg.train.uncond_prob] = len(class_names)  # the null class
        out = transformer(z_t, timestep=t, class_labels=y).sample
        return F.mse_loss(out[:, :channels], eps)  # learned-sigma layout: train the epsilon half

    # The label table already has the null row (label 10); switch off the embedders' own random
    # dropout so that the explicit, seeded 10% above is the only one.
    for block in transformer.transformer_blocks:
        block.norm1.emb.class_embedder.dropout_prob = 0.0
    logger.info("dit: %.2fM params", sum(p.numel() for p in transformer.parameters()) / 1e6)
    (transformer_ema,) = _train_denoiser("dit", [transformer], loss_fn, len(pixels), cfg.train, gen)
    id2label = {i: name for i, name in enumerate(class_names)}
    pipe = DiTPipeline(transformer=transformer_ema, vae=vae, scheduler=scheduler, id2label=id2label)
    pipe.save_pretrained(str(staging), safe_serialization=True)
    # As facebook/DiT-XL-2-256: the label names live in model_index.json under "id2label".
    index_path = staging / "model_index.json"
    index = json.loads(index_path.read_text())
    index["id2label"] = {str(i): name for i, name in id2label.items()}
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    _to_float16_safetensors(staging)


# ----------------------------------------------------------------------------- CLIP
def clip_model_cfg(cfg: CLIPConfig, image_size: int = IMAGE_SIZE) -> dict:
    return {
        "embed_dim": cfg.embed_dim,
        "vision_cfg": {"image_size": image_size, "patch_size": cfg.patch_size, "width": cfg.vision_width,
                       "layers": cfg.vision_layers, "head_width": cfg.vision_head_width, "mlp_ratio": 2.0},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": cfg.text_width,
                     "heads": cfg.text_heads, "layers": cfg.text_layers},
    }


def build_clip(data: TrainData, cfg: CLIPConfig, staging: Path) -> None:
    """Contrastive training as CLIP's: in-batch negatives, no extra hard negatives.

    Each step scores the batch's images against the distinct captions it holds (for a class
    lab, captions are the classes'), so an image whose caption another image shares is not
    pushed away from it.
    """
    import open_clip
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    pixels = data.pixels
    gen = _seed(cfg.seed)
    model_cfg = clip_model_cfg(cfg, int(pixels.shape[-1]))
    model = CLIP(**model_cfg)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")  # open_clip's standard SimpleTokenizer, 77 tokens
    all_texts = tokenizer(list(data.captions))
    few = len(data.captions) <= 256  # class captions: every step sees all of them, as for digits
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.05, foreach=True)
    model.train()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg.steps, cfg.lr, 50)
        idx = torch.randint(0, len(pixels), (cfg.batch_size,), generator=gen)
        image_features = F.normalize(model.encode_image(pixels[idx]), dim=-1)
        if few:
            y, texts, n_texts = data.caption_index[idx], all_texts, len(data.captions)
        else:
            present_captions, y = torch.unique(data.caption_index[idx], return_inverse=True)
            texts, n_texts = all_texts[present_captions], len(present_captions)
        text_features = F.normalize(model.encode_text(texts), dim=-1)
        logits = model.logit_scale.exp() * image_features @ text_features.T  # [B, captions]
        # Image->caption cross-entropy; caption->image over the batch with all images of a caption positive.
        positives = F.one_hot(y, n_texts).T.float()
        present = positives.sum(1) > 0
        text_loss = -(positives[present] * logits.T[present].log_softmax(-1)).sum(1) / positives[present].sum(1)
        loss = (F.cross_entropy(logits, y) + text_loss.mean()) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 500 == 0 or step == cfg.steps - 1:
            logger.info("clip step %d loss %.4f", step, loss.item())
    model.eval()
    staging.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(staging / "open_clip_model.safetensors"), metadata={"format": "pt"})
    hf_config = {
        "model_cfg": model_cfg,
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic",
                           "resize_mode": "shortest"},
    }
    (staging / "open_clip_config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    _to_float16_safetensors(staging)


# ----------------------------------------------------------------------------- evaluation
def evaluate(out: Path, lab: Lab, names: list[str], limit: int | None = None,
             table: bool = False) -> dict[str, float]:
    """Held-out accuracy of the cached miniatures of a class lab (its TEST split), loaded through
    huggingface_hub; with ``table``, the diffusion models under every schedule of the lab's
    ``SCHEDULE_TABLE`` (a markdown table: schedule, evaluations per image, accuracy)."""
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"
    from huggingface_hub import snapshot_download

    from dc_zoo import DiffusionClassifier, ScoringConfig

    data = lab.data
    if lab.class_names is None:
        raise SystemExit(f"the {lab.name} lab has no classes: measure it with the stock clip_benchmark "
                         "(scripts/demo.sh runs its Winoground and SugarCrepe evaluations)")
    class_names, template = data.CLASS_NAMES, data.TEMPLATE
    images, labels = getattr(data, f"load_{lab.name}_split")("test", lab.image_size)
    if limit:
        images, labels = images[:limit], labels[:limit]
    results, rows = {}, []
    for name in names:
        start = time.perf_counter()
        if name.startswith("clip-"):
            import open_clip

            model, _, preprocess = open_clip.create_model_and_transforms(f"hf-hub:{ORG}/{name}", cache_dir=str(out))
            tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=model.context_length)
            with torch.no_grad():
                text = F.normalize(model.encode_text(tokenizer([template.format(c) for c in class_names])), dim=-1)
                feats = F.normalize(model.encode_image(torch.stack([preprocess(im) for im in images])), dim=-1)
            pred = (feats @ text.T).argmax(-1)
            acc = float((pred == torch.tensor(labels)).float().mean())
            results[name] = acc
            logger.info("%s: accuracy %.4f on %d test images, %.1fs", name, acc, len(labels), time.perf_counter() - start)
            continue
        from diffusers import DiTPipeline, StableDiffusionPipeline

        path = snapshot_download(f"{ORG}/{name}", cache_dir=str(out))
        pipe = (StableDiffusionPipeline if name.startswith("sd") else DiTPipeline).from_pretrained(path)
        classes = list(class_names) if name.startswith("sd") else list(range(len(class_names)))
        schedules = [data.EVALUATION_SCHEDULES[name]] + (list(getattr(data, "SCHEDULE_TABLE", ())) if table else [])
        for k, schedule in enumerate(schedules):
            clf = DiffusionClassifier.from_pipeline(pipe, scoring=ScoringConfig(**schedule), templates=(template,),
                                                    image_batch_size=64)
            output = clf.classify(images, classes, progress=True, labels=labels)
            acc = float((output.predictions == torch.tensor(labels)).float().mean())
            evals = float(output.evaluations.float().mean())
            if k == 0:
                results[name] = acc
            rows.append((name, "/".join(map(str, schedule["n_samples"])) + " keep " + "/".join(map(str, schedule["to_keep"])),
                         evals, acc))
            logger.info("%s %s: accuracy %.4f on %d test images, %.0f evals/img, %.1fs", name, rows[-1][1], acc,
                        len(labels), evals, time.perf_counter() - start)
    if table:
        print("| model | schedule | evaluations per image | top-1 |\n|---|---|---|---|")
        for name, schedule, evals, acc in rows:
            print(f"| {name} | {schedule} | {evals:,.0f} | {100 * acc:.2f}% |")
        for name, acc in results.items():
            if name.startswith("clip-"):
                print(f"| {name} | 1 forward pass | 1 | {100 * acc:.2f}% |")
    return results


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Hub cache directory to write (default: %(default)s)")
    parser.add_argument("--lab", choices=sorted(LABS), default="digits",
                        help="which bundled dataset to train on (default: digits)")
    parser.add_argument("--only", nargs="+", choices=["sd", "dit", "clip"], default=["sd", "dit", "clip"],
                        help="which miniatures to train (the VAE is trained whenever sd or dit is)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads; part of what makes reruns bitwise equal")
    parser.add_argument("--steps-factor", type=float, default=1.0,
                        help="scale every step count (e.g. 0.01 for a smoke run); the committed models use 1")
    parser.add_argument("--vae-from", type=Path, default=None,
                        help="reuse the vae/ of this pipeline directory instead of training one (for experiments)")
    parser.add_argument("--evaluate", action="store_true", help="only measure test accuracy of the cached models")
    parser.add_argument("--table", action="store_true",
                        help="with --evaluate: also every schedule of the lab's SCHEDULE_TABLE, as a markdown table")
    parser.add_argument("--limit", type=int, default=None, help="evaluate on the first N test images only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    torch.set_num_threads(args.threads)
    lab = LABS[args.lab]
    names = [n for n in lab.model_names() if n.split("-")[0] in args.only]
    if args.evaluate:
        evaluate(args.out, lab, names, args.limit, args.table)
        return 0

    data = _train_data(lab)
    timings = {}
    vae = None
    if args.vae_from is not None:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(str(args.vae_from), subfolder="vae").eval()
    elif {"sd", "dit"} & set(args.only) & set(lab.families):
        start = time.perf_counter()
        vae_pixels = data.pixels if lab.train_per_class is None else _train_data(replace(lab, train_per_class=None)).pixels
        vae = train_vae(vae_pixels, _scaled(lab.vae, args.steps_factor))
        timings["vae"] = time.perf_counter() - start
    factor = args.steps_factor
    builders = {
        f"sd-{lab.name}-mini": lambda staging: build_sd(vae, data, _scaled(lab.sd, factor), staging),
        f"dit-{lab.name}-mini": lambda staging: build_dit(vae, data, lab.class_names, _scaled(lab.dit, factor), staging),
        f"clip-{lab.name}-mini": lambda staging: build_clip(data, _scaled(lab.clip, factor), staging),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            staging = Path(tmp) / name
            builders[name](staging)
            _install_snapshot(staging, args.out, name)
        timings[name] = time.perf_counter() - start
    logger.info("training wall time (s): %s", {k: round(v, 1) for k, v in timings.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
