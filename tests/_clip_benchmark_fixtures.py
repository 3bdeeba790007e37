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


def tiny_dit_classifier(num_classes: int = 10, scoring: ScoringConfig = FAST_SCORING) -> DiffusionClassifier:
    from tiny_models import tiny_dit_backend

    backend = tiny_dit_backend(num_classes=num_classes)
    if num_classes == len(CLASS_NAMES):
        backend.id2label = dict(enumerate(CLASS_NAMES))
    return DiffusionClassifier(backend, scoring=scoring)


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
