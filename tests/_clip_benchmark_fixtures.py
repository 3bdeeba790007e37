"""Shared helpers of the clip_benchmark integration tests: tiny real models and digits data sets.

Tiny Stable Diffusion / DiT components come from ``tiny_models`` (random but seeded weights: the
tests check that clip_benchmark's numbers equal the engine's own, not that they are high).
Schedules are two short stages so each test scores a handful of images in seconds on a CPU.
"""
from __future__ import annotations

import torch

from dc_zoo import DiffusionClassifier, ScoringConfig
from dc_zoo.digits import CLASS_NAMES, TEMPLATE, load_digits_split

FAST_SCORING = ScoringConfig(n_samples=(2, 4), to_keep=(3, 1), batch_size=64)
CLIP_TEMPLATES = [TEMPLATE.replace("{}", "{c}"), "a blurry photo of the number {c}."]


def tiny_sd_classifier(scoring: ScoringConfig = FAST_SCORING) -> DiffusionClassifier:
    from tiny_models import tiny_sd_backend

    return DiffusionClassifier(tiny_sd_backend(), scoring=scoring, templates=(TEMPLATE,))


def tiny_dit_classifier(num_classes: int = 1000, scoring: ScoringConfig = FAST_SCORING) -> DiffusionClassifier:
    """A class-conditional DiT over ``num_classes`` labels (1000: ImageNet's label space), 16 px."""
    from diffusers import AutoencoderKL, DDIMScheduler, DiTTransformer2DModel

    from dc_zoo import DiTBackend

    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1,
        sample_size=8, patch_size=2, num_embeds_ada_norm=num_classes, norm_num_groups=4,
    ).eval()
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16,
    ).eval()
    scheduler = DDIMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, num_train_timesteps=1000)
    return DiffusionClassifier(DiTBackend(transformer, vae, scheduler), scoring=scoring)


def digits_subset(n: int, split: str = "test"):
    """The first ``n`` images of a digits split (PIL, 16 px) and their labels."""
    images, labels = load_digits_split(split)
    return images[:n], labels[:n]


def caption(label: int) -> str:
    return TEMPLATE.format(CLASS_NAMES[label])


class WinogroundStyleDigits(torch.utils.data.Dataset):
    """Winoground layout from digits: two images of different digits, their two captions.

    Item ``i``: ``(pixels [2, 3, S, S], [caption of image 0, caption of image 1])``; each caption is
    the other image's hard negative (same template, one word changed).
    """

    def __init__(self, images, labels, transform):
        pairs, used = [], set()
        for i, a in enumerate(labels):
            for j in range(i + 1, len(labels)):
                if i not in used and j not in used and labels[j] != a:
                    pairs.append((i, j))
                    used.update((i, j))
                    break
        self.items = [(torch.stack([transform(images[i]), transform(images[j])]), [caption(labels[i]), caption(labels[j])])
                      for i, j in pairs]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx):
        return self.items[idx]
