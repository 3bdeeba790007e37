"""The digits benchmark of the miniature models: scikit-learn's bundled 8x8 handwritten digits.

The miniatures (``sd-digits-mini``, ``dit-digits-mini``, ``clip-digits-mini``) are trained on
the TRAIN split defined here and measured on the TEST split, so the split is fixed data, not a
choice left to callers: a seeded stratified split whose test indices are pinned by a hash
(``TEST_INDICES_SHA256``) and checked every time the split is built.

Images are white ink on black like MNIST (a pixel value ``v`` in 0..16 becomes ``round(v *
255 / 16)``), upscaled from 8x8 to ``image_size`` with PIL bicubic resampling
(``UPSCALE_INTERPOLATION``) and returned as RGB. The prompt template is the one the paper used
for MNIST (Li et al., ICCV 2023, arXiv 2303.16203).

``write_digits_webdataset`` writes the layout clip_benchmark reads with ``--dataset wds/<name>
--dataset_root <root>``: ``root/<split>/{0..n-1}.tar`` with ``nshards.txt``, per sample a PNG
image and a ``.cls`` label, plus ``root/classnames.txt`` and
``root/zeroshot_classification_templates.txt``.
"""
from __future__ import annotations

import hashlib
import logging
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from .class_webdataset import write_class_webdataset

logger = logging.getLogger(__name__)

__all__ = [
    "CLASS_NAMES", "TEMPLATE", "SPLIT_SEED", "TEST_SIZE", "TEST_INDICES_SHA256", "N_TRAIN", "N_TEST",
    "DEFAULT_IMAGE_SIZE", "UPSCALE_INTERPOLATION", "split_indices", "load_digits_split",
    "digits_to_images", "captions_for", "write_digits_webdataset", "EVALUATION_SCHEDULES",
]

CLASS_NAMES: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATE = "a photo of the number: '{}'."  # the paper's MNIST template (../shared/REFERENCE.md)
SPLIT_SEED = 0  # sklearn train_test_split(random_state=...)
TEST_SIZE = 0.2  # fraction held out, stratified by label
N_TRAIN, N_TEST = 1437, 360
# sha256 of ",".join(sorted test indices into load_digits()); pins the split across sklearn versions.
TEST_INDICES_SHA256 = "2b34a89618d0d4df0f89a3fc8c6dfe92c5c4afc5d09419ddf7bf197d7b652dd6"
DEFAULT_IMAGE_SIZE = 16
UPSCALE_INTERPOLATION = "bicubic"  # PIL resampling used to upscale 8x8 to image_size
SPLITS = ("train", "test")
# The stage schedules with which the diffusion miniatures' test accuracy is measured (their
# registry defaults): ScoringConfig keyword arguments, sized so the 360 test images take about a
# minute on 2 CPU cores. Evaluations per image are in MODEL_CARD.md.
EVALUATION_SCHEDULES: dict[str, dict] = {
    "sd-digits-mini": {"n_samples": (5, 50), "to_keep": (2, 1), "loss": "l2", "batch_size": 512},
    "dit-digits-mini": {"n_samples": (5, 50), "to_keep": (2, 1), "loss": "l2", "batch_size": 512},
}
_MAX_PIXEL = 16.0  # load_digits pixel values are 0..16


def _indices_hash(indices: np.ndarray) -> str:
    return hashlib.sha256(",".join(str(int(i)) for i in sorted(indices)).encode()).hexdigest()


@lru_cache(maxsize=1)
def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images.astype(np.float32), data.target.astype(np.int64)


@lru_cache(maxsize=1)
def _split() -> dict[str, np.ndarray]:
    from sklearn.model_selection import train_test_split

    _, labels = _raw_digits()
    all_idx = np.arange(len(labels))
    train_idx, test_idx = train_test_split(all_idx, test_size=TEST_SIZE, stratify=labels, random_state=SPLIT_SEED)
    found = _indices_hash(test_idx)
    if found != TEST_INDICES_SHA256:
        raise RuntimeError(
            f"The digits test split changed (indices hash {found}, expected {TEST_INDICES_SHA256}): this "
            "scikit-learn splits differently, so accuracies of the miniatures are not comparable. Install "
            "the scikit-learn version the models were trained with (see MODEL_CARD.md) or retrain them "
            "with scripts/train_miniatures.py."
        )
    return {"train": np.sort(train_idx), "test": np.sort(test_idx)}


def split_indices(split: str) -> np.ndarray:
    """Sorted indices into ``sklearn.datasets.load_digits()`` for ``split`` ("train" or "test")."""
    if split not in SPLITS:
        raise ValueError(f"Unknown digits split {split!r}; choose one of {SPLITS}.")
    return _split()[split].copy()


def digits_to_images(images_8x8: np.ndarray, image_size: int = DEFAULT_IMAGE_SIZE) -> list[Image.Image]:
    """8x8 arrays with values 0..16 to RGB PIL images of ``image_size`` (white ink on black)."""
    if int(image_size) < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}.")
    out = []
    for arr in images_8x8:
        gray = Image.fromarray(np.round(np.asarray(arr, np.float32) * (255.0 / _MAX_PIXEL)).clip(0, 255).astype(np.uint8), "L")
        if image_size != gray.size[0]:
            gray = gray.resize((image_size, image_size), resample=Image.BICUBIC)
        out.append(gray.convert("RGB"))
    return out


def load_digits_split(split: str, image_size: int = DEFAULT_IMAGE_SIZE) -> tuple[list[Image.Image], list[int]]:
    """The fixed digits ``split`` as (RGB PIL images of ``image_size``, integer labels 0..9).

    Raises:
        ValueError: unknown split.
        RuntimeError: the installed scikit-learn no longer reproduces the pinned split.
    """
    idx = split_indices(split)
    images, labels = _raw_digits()
    return digits_to_images(images[idx], image_size), [int(v) for v in labels[idx]]


def captions_for(labels, template: str = TEMPLATE) -> list[str]:
    """The training caption of each label, e.g. ``"a photo of the number: 'three'."``."""
    return [template.format(CLASS_NAMES[int(v)]) for v in labels]


def write_digits_webdataset(root: str | Path, split: str = "test", image_size: int = DEFAULT_IMAGE_SIZE,
                            samples_per_shard: int = 1000) -> Path:
    """Write the digits ``split`` as a clip_benchmark WebDataset under ``root``; returns ``root``.

    Read it back with ``clip_benchmark eval --dataset wds/digits --dataset_root <root>`` or
    ``clip_benchmark.datasets.builder.build_dataset("wds/digits", root=str(root), split=split)``.
    The files are byte-identical across reruns (fixed tar metadata, deterministic PNGs).
    """
    images, labels = load_digits_split(split, image_size)
    return write_class_webdataset(root, split, images, labels, CLASS_NAMES, TEMPLATE, samples_per_shard)
