"""Train the digits miniatures, the embedded default models of dc_zoo, into the bundled Hub cache.

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

    python scripts/train_miniatures.py                 # all three into dc_zoo/hub_cache
    python scripts/train_miniatures.py --only sd dit   # a subset
    python scripts/train_miniatures.py --evaluate      # held-out accuracy of the cached models
                                                       # (dc_zoo.digits.EVALUATION_SCHEDULES)

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
MODEL_NAMES = ("sd-digits-mini", "dit-digits-mini", "clip-digits-mini")

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


IMAGE_SIZE = 16


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


def _train_pixels() -> tuple[torch.Tensor, torch.Tensor]:
    """TRAIN split as the classifier will see it: dc_zoo's preprocessing, [-1, 1]."""
    from dc_zoo.config import PreprocessConfig
    from dc_zoo.digits import load_digits_split
    from dc_zoo.preprocess import to_pixels

    images, labels = load_digits_split("train", IMAGE_SIZE)
    pixels = to_pixels(images, PreprocessConfig(size=IMAGE_SIZE, interpolation="bicubic", crop="center"))
    return pixels, torch.tensor(labels)


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

    gen = _seed(cfg.seed)
    n = len(cfg.block_out_channels)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=cfg.block_out_channels,
        layers_per_block=1, latent_channels=cfg.latent_channels, norm_num_groups=cfg.norm_num_groups,
        sample_size=IMAGE_SIZE,
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
def build_sd(vae, pixels: torch.Tensor, labels: torch.Tensor, cfg: SDConfig, staging: Path) -> None:
    from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from dc_zoo.clip_tokenizer import write_clip_tokenizer_files
    from dc_zoo.digits import CLASS_NAMES, TEMPLATE

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
    n = len(cfg.block_out_channels)
    latent_size = IMAGE_SIZE // 2 ** (len(vae.config.block_out_channels) - 1)
    unet = UNet2DConditionModel(
        sample_size=latent_size, in_channels=vae.config.latent_channels, out_channels=vae.config.latent_channels,
        block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block,
        down_block_types=("CrossAttnDownBlock2D",) * n, up_block_types=("CrossAttnUpBlock2D",) * n,
        cross_attention_dim=cfg.text_hidden, attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=min(32, cfg.block_out_channels[0]),
    )
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              num_train_timesteps=1000, prediction_type="epsilon", clip_sample=False,
                              steps_offset=1)
    abar = scheduler.alphas_cumprod.float()
    mean, std = _latent_stats(vae, pixels)
    # Caption 0..9 per class and 10 = "" (dropped caption); encoded once per step for all 11.
    captions = [TEMPLATE.format(c) for c in CLASS_NAMES] + [""]
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids

    def loss_fn(idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        z0 = mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)
        z_t, t, eps = _noisy(z0, abar, g)
        cap = labels[idx].clone()
        cap[torch.rand(len(idx), generator=g) < cfg.train.uncond_prob] = len(CLASS_NAMES)
        states = text_encoder(ids)[0][cap]
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
def build_dit(vae, pixels: torch.Tensor, labels: torch.Tensor, cfg: DiTConfig, staging: Path) -> None:
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    from dc_zoo.digits import CLASS_NAMES

    gen = _seed(cfg.train.seed)
    latent_size = IMAGE_SIZE // 2 ** (len(vae.config.block_out_channels) - 1)
    channels = vae.config.latent_channels
    transformer = DiTTransformer2DModel(
        num_attention_heads=cfg.heads, attention_head_dim=cfg.head_dim, in_channels=channels,
        out_channels=2 * channels, num_layers=cfg.layers, sample_size=latent_size,
        patch_size=cfg.patch_size, num_embeds_ada_norm=len(CLASS_NAMES),
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
        y[torch.rand(len(idx), generator=g) < cfg.train.uncond_prob] = len(CLASS_NAMES)  # the null class
        out = transformer(z_t, timestep=t, class_labels=y).sample
        return F.mse_loss(out[:, :channels], eps)  # learned-sigma layout: train the epsilon half

    # The label table already has the null row (label 10); switch off the embedders' own random
    # dropout so that the explicit, seeded 10% above is the only one.
    for block in transformer.transformer_blocks:
        block.norm1.emb.class_embedder.dropout_prob = 0.0
    logger.info("dit: %.2fM params", sum(p.numel() for p in transformer.parameters()) / 1e6)
    (transformer_ema,) = _train_denoiser("dit", [transformer], loss_fn, len(pixels), cfg.train, gen)
    id2label = {i: name for i, name in enumerate(CLASS_NAMES)}
    pipe = DiTPipeline(transformer=transformer_ema, vae=vae, scheduler=scheduler, id2label=id2label)
    pipe.save_pretrained(str(staging), safe_serialization=True)
    # As facebook/DiT-XL-2-256: the label names live in model_index.json under "id2label".
    index_path = staging / "model_index.json"
    index = json.loads(index_path.read_text())
    index["id2label"] = {str(i): name for i, name in id2label.items()}
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    _to_float16_safetensors(staging)


# ----------------------------------------------------------------------------- CLIP
def clip_model_cfg(cfg: CLIPConfig) -> dict:
    return {
        "embed_dim": cfg.embed_dim,
        "vision_cfg": {"image_size": IMAGE_SIZE, "patch_size": cfg.patch_size, "width": cfg.vision_width,
                       "layers": cfg.vision_layers, "head_width": cfg.vision_head_width, "mlp_ratio": 2.0},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": cfg.text_width,
                     "heads": cfg.text_heads, "layers": cfg.text_layers},
    }


def build_clip(pixels: torch.Tensor, labels: torch.Tensor, cfg: CLIPConfig, staging: Path) -> None:
    import open_clip
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    from dc_zoo.digits import CLASS_NAMES, TEMPLATE

    gen = _seed(cfg.seed)
    model_cfg = clip_model_cfg(cfg)
    model = CLIP(**model_cfg)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")  # open_clip's standard SimpleTokenizer, 77 tokens
    texts = tokenizer([TEMPLATE.format(c) for c in CLASS_NAMES])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.05, foreach=True)
    model.train()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg.steps, cfg.lr, 50)
        idx = torch.randint(0, len(pixels), (cfg.batch_size,), generator=gen)
        image_features = F.normalize(model.encode_image(pixels[idx]), dim=-1)
        text_features = F.normalize(model.encode_text(texts), dim=-1)
        logits = model.logit_scale.exp() * image_features @ text_features.T  # [B, 10]
        y = labels[idx]
        # Image->caption cross-entropy; caption->image over the batch with all same-class images positive.
        positives = F.one_hot(y, len(CLASS_NAMES)).T.float()
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
def evaluate(out: Path, names: list[str], limit: int | None = None) -> dict[str, float]:
    """Held-out accuracy of the cached miniatures (digits TEST split), loaded through huggingface_hub."""
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"
    from huggingface_hub import snapshot_download

    from dc_zoo import DiffusionClassifier, ScoringConfig
    from dc_zoo.digits import CLASS_NAMES, EVALUATION_SCHEDULES, TEMPLATE, load_digits_split

    images, labels = load_digits_split("test", IMAGE_SIZE)
    if limit:
        images, labels = images[:limit], labels[:limit]
    results = {}
    for name in names:
        start = time.perf_counter()
        if name == "clip-digits-mini":
            import open_clip

            model, _, preprocess = open_clip.create_model_and_transforms(f"hf-hub:{ORG}/{name}", cache_dir=str(out))
            tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=model.context_length)
            with torch.no_grad():
                text = F.normalize(model.encode_text(tokenizer([TEMPLATE.format(c) for c in CLASS_NAMES])), dim=-1)
                feats = F.normalize(model.encode_image(torch.stack([preprocess(im) for im in images])), dim=-1)
            pred = (feats @ text.T).argmax(-1)
            evals = None
        else:
            from diffusers import DiTPipeline, StableDiffusionPipeline

            path = snapshot_download(f"{ORG}/{name}", cache_dir=str(out))
            pipe_cls = StableDiffusionPipeline if name.startswith("sd") else DiTPipeline
            pipe = pipe_cls.from_pretrained(path)
            scoring = ScoringConfig(**EVALUATION_SCHEDULES[name])
            clf = DiffusionClassifier.from_pipeline(pipe, scoring=scoring, templates=(TEMPLATE,), image_batch_size=64)
            classes = list(CLASS_NAMES) if name.startswith("sd") else list(range(len(CLASS_NAMES)))
            output = clf.classify(images, classes, progress=True, labels=labels)
            pred, evals = output.predictions, float(output.evaluations.float().mean())
        acc = float((pred == torch.tensor(labels)).float().mean())
        results[name] = acc
        logger.info("%s: accuracy %.4f on %d test images, %s evals/img, %.1fs", name, acc, len(labels), evals,
                    time.perf_counter() - start)
    return results


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Hub cache directory to write (default: %(default)s)")
    parser.add_argument("--only", nargs="+", choices=["sd", "dit", "clip"], default=["sd", "dit", "clip"],
                        help="which miniatures to train (the VAE is trained whenever sd or dit is)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads; part of what makes reruns bitwise equal")
    parser.add_argument("--steps-factor", type=float, default=1.0,
                        help="scale every step count (e.g. 0.01 for a smoke run); the committed models use 1")
    parser.add_argument("--vae-from", type=Path, default=None,
                        help="reuse the vae/ of this pipeline directory instead of training one (for experiments)")
    parser.add_argument("--evaluate", action="store_true", help="only measure test accuracy of the cached models")
    parser.add_argument("--limit", type=int, default=None, help="evaluate on the first N test images only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    torch.set_num_threads(args.threads)
    names = [n for n in MODEL_NAMES if n.split("-")[0] in args.only]
    if args.evaluate:
        evaluate(args.out, names, args.limit)
        return 0

    pixels, labels = _train_pixels()
    timings = {}
    vae = None
    if args.vae_from is not None:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(str(args.vae_from), subfolder="vae").eval()
    elif "sd" in args.only or "dit" in args.only:
        start = time.perf_counter()
        vae = train_vae(pixels, _scaled(VAEConfig(), args.steps_factor))
        timings["vae"] = time.perf_counter() - start
    sd_cfg, dit_cfg, clip_cfg = SDConfig(), DiTConfig(), CLIPConfig()
    builders = {
        "sd-digits-mini": lambda staging: build_sd(vae, pixels, labels, _scaled(sd_cfg, args.steps_factor), staging),
        "dit-digits-mini": lambda staging: build_dit(vae, pixels, labels, _scaled(dit_cfg, args.steps_factor), staging),
        "clip-digits-mini": lambda staging: build_clip(pixels, labels, _scaled(clip_cfg, args.steps_factor), staging),
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
