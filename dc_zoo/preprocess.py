"""Image preparation as the paper does it: resize the short side, center-crop, RGB, [-1, 1].

Accepts PIL images in any mode (grayscale, palette and RGBA are converted to RGB, not
rejected), numpy ``HWC`` arrays and torch tensors (``[3, H, W]`` / ``[B, 3, H, W]``; uint8 in
0..255 or float in 0..1; 1-channel repeated, 4-channel alpha dropped).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from .config import PreprocessConfig

__all__ = ["to_pixels", "adm_center_crop", "as_image_list"]

_PIL_RESAMPLE = {
    "bicubic": Image.BICUBIC,
    "bilinear": Image.BILINEAR,
    "lanczos": Image.LANCZOS,
    "nearest": Image.NEAREST,
}
_TV_MODE = {
    "bicubic": InterpolationMode.BICUBIC,
    "bilinear": InterpolationMode.BILINEAR,
    "lanczos": InterpolationMode.LANCZOS,
    "nearest": InterpolationMode.NEAREST,
}


def adm_center_crop(image: Image.Image, size: int) -> Image.Image:
    """ADM / DiT center crop: halve with a box filter while large, bicubic resize, crop."""
    while min(*image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    arr = np.array(image)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return Image.fromarray(arr[top : top + size, left : left + size])


def _tensor_to_float(img: torch.Tensor) -> torch.Tensor:
    if img.dtype == torch.uint8:
        img = img.float() / 255.0
    elif img.is_floating_point():
        img = img.float()
    else:
        raise TypeError(
            f"Image tensors must be uint8 (0..255) or floating point (0..1), got {img.dtype}; "
            "convert with .float() / 255."
        )
    if img.shape[0] == 1:
        img = img.expand(3, *img.shape[1:])
    elif img.shape[0] == 4:
        img = img[:3]
    elif img.shape[0] != 3:
        raise ValueError(
            f"Image tensors must be channels-first with 1, 3 or 4 channels, got shape {tuple(img.shape)}."
        )
    return img


def as_image_list(images: Any) -> list[Any]:
    """Split a batch (list, ``[B, C, H, W]`` tensor, single image) into single images."""
    if isinstance(images, (Image.Image, np.ndarray)) and not (isinstance(images, np.ndarray) and images.ndim == 4):
        return [images]
    if isinstance(images, np.ndarray):
        return list(images)
    if isinstance(images, torch.Tensor):
        if images.ndim == 4:
            return list(images.unbind(0))
        if images.ndim == 3:
            return [images]
        raise ValueError(
            f"Image tensors must have rank 3 [C, H, W] or 4 [B, C, H, W], got rank {images.ndim} "
            f"(shape {tuple(images.shape)})."
        )
    if isinstance(images, Sequence) and not isinstance(images, (str, bytes)):
        return list(images)
    raise TypeError(f"Expected PIL images, numpy arrays or tensors, got {type(images).__name__}.")


def _one(image: Any, config: PreprocessConfig) -> torch.Tensor:
    size = int(config.size)
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3):
            raise ValueError(f"numpy images must be HW or HWC, got shape {image.shape}.")
        if image.dtype != np.uint8:
            if not np.issubdtype(image.dtype, np.floating):
                raise TypeError(f"numpy images must be uint8 or float in 0..1, got {image.dtype}.")
            image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
        image = Image.fromarray(image)
    if isinstance(image, torch.Tensor):
        if image.ndim != 3:
            raise ValueError(
                f"Each image tensor must have rank 3 [C, H, W], got shape {tuple(image.shape)}."
            )
        x = _tensor_to_float(image.detach().cpu())
        if config.crop == "adm_center":
            image = TF.to_pil_image(x.clamp(0, 1))
        else:
            x = TF.resize(x, size, interpolation=_TV_MODE[config.interpolation], antialias=True)
            x = TF.center_crop(x, [size, size]).clamp(0, 1)
            return TF.normalize(x, config.mean, config.std)
    if not isinstance(image, Image.Image):
        raise TypeError(f"Expected a PIL image, numpy array or tensor, got {type(image).__name__}.")
    if image.mode != "RGB":
        if image.mode in ("P", "PA") or "A" in image.getbands():
            image = image.convert("RGBA")
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, image)
        image = image.convert("RGB")
    if config.crop == "adm_center":
        image = adm_center_crop(image, size)
    else:
        image = TF.resize(image, size, interpolation=_TV_MODE[config.interpolation])
        image = TF.center_crop(image, [size, size])
    return TF.normalize(TF.to_tensor(image), config.mean, config.std)


def to_pixels(images: Any, config: PreprocessConfig) -> torch.Tensor:
    """Preprocess images into a float32 ``[B, 3, size, size]`` tensor in ``[-1, 1]``."""
    items = as_image_list(images)
    if not items:
        raise ValueError("No images given.")
    return torch.stack([_one(img, config) for img in items])
