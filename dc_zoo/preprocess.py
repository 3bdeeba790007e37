"""Image preparation as the paper does it: resize the short side, center-crop, RGB, [-1, 1].

One convention per input type, checked rather than clamped (diffusers: "concise error
messages are preferred to silently correcting erroneous input"):

- **file paths** (``str`` / ``os.PathLike``) and **PIL images** of any mode: decoded and made
  RGB by ``dc_zoo.image_io`` (EXIF orientation applied, alpha composited on white, 16-bit
  scaled from its depth);
- **numpy arrays** ``HW`` / ``HWC`` (channels-last, as PIL; ``[3, H, W]`` is refused with the
  fix, since it could be three grey images) and **torch tensors**
  ``[C, H, W]`` / ``[B, C, H, W]`` with 1, 3 or 4 channels: ``uint8`` is 0..255, ``uint16``
  0..65535, floating point 0..1 (torchvision's convention). Any other range, such as
  diffusers' [-1, 1] or floats in 0..255, is passed with ``value_range=(low, high)``; values
  outside the range, and NaN or inf, are an ``ImageInputError`` that names the image, the
  range found and the ``value_range`` to pass. Only interpolation overshoot is clipped.
"""
from __future__ import annotations

from typing import Any, Hashable, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from .config import PreprocessConfig
from .image_io import ImageInputError, check_image_file, is_image_path, load_image, to_rgb

__all__ = ["to_pixels", "adm_center_crop", "as_image_list", "check_value_range", "check_finite_pixels",
           "validate_images"]

_TV_MODE = {
    "bicubic": InterpolationMode.BICUBIC,
    "bilinear": InterpolationMode.BILINEAR,
    "lanczos": InterpolationMode.LANCZOS,
    "nearest": InterpolationMode.NEAREST,
}
_CHANNELS = (1, 3, 4)
# Natural ranges of integer dtypes; floats default to [0, 1]. Other integer dtypes have none.
_INTEGER_RANGES = {np.dtype(np.uint8): (0.0, 255.0), np.dtype(np.uint16): (0.0, 65535.0)}


def adm_center_crop(image: Image.Image, size: int) -> Image.Image:
    """ADM / DiT center crop: halve with a box filter while large, bicubic resize, crop."""
    while min(*image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    arr = np.array(image)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return Image.fromarray(arr[top : top + size, left : left + size])


def check_value_range(value_range: Any) -> tuple[float, float] | None:
    """``(low, high)`` as floats, or ``None``; raises ``ValueError`` for anything else."""
    if value_range is None:
        return None
    try:
        low, high = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise ValueError(f"value_range must be a pair (low, high) such as (-1, 1) or (0, 255), got {value_range!r}.") from None
    if not (np.isfinite(low) and np.isfinite(high) and high > low):
        raise ValueError(f"value_range must be two finite numbers with low < high, got {value_range!r}.")
    return low, high


def _numpy(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        if values.dtype == torch.uint16:
            return values.to(torch.int32).numpy().astype(np.uint16)
        if values.dtype in (torch.bfloat16, torch.float16):
            values = values.float()
        return values.numpy()
    return np.asarray(values)


def _range_of(dtype: np.dtype, value_range: tuple[float, float] | None) -> tuple[float, float]:
    if value_range is not None:
        return value_range
    if dtype in _INTEGER_RANGES:
        return _INTEGER_RANGES[dtype]
    if np.issubdtype(dtype, np.floating):
        return 0.0, 1.0
    if dtype == np.bool_:
        raise ImageInputError("is a boolean array; pass a mask as uint8 (0/255) or float (0/1) pixels.")
    if np.issubdtype(dtype, np.integer):
        raise ImageInputError(f"has integer dtype {dtype}, which has no fixed value range: convert it to uint8 "
                              "(0..255), or pass value_range=(low, high), e.g. value_range=(0, 255).")
    raise ImageInputError(f"has dtype {dtype}; image pixels must be uint8, uint16 or floating point.")


def _to_unit(values: np.ndarray, value_range: tuple[float, float] | None) -> np.ndarray:
    """Pixel values mapped from their range to [0, 1] (float64), after checking they lie in it."""
    low, high = _range_of(values.dtype, value_range)
    x = values.astype(np.float64)
    finite = np.isfinite(x)
    if not finite.all():
        bad = int((~finite).sum())
        kinds = "/".join(k for k, f in (("NaN", np.isnan), ("inf", np.isinf)) if f(x).any())
        raise ImageInputError(f"holds {kinds} values ({bad} of {x.size}); pass finite pixel values.")
    found_low, found_high = (float(x.min()), float(x.max())) if x.size else (low, high)
    slack = (high - low) / 510  # half an 8-bit level: rounding, not saturation
    if found_low < low - slack or found_high > high + slack:
        if value_range is not None:
            hint = (f"the value_range=({low:g}, {high:g}) that was given does not cover it; pass the range the data "
                    "uses.")
        elif found_low >= -1 - slack and found_high <= 1 + slack:
            hint = "it looks like diffusers' [-1, 1] convention: pass value_range=(-1, 1)."
        elif found_low >= -slack and found_high <= 255 + slack:
            hint = "it looks like 0..255 stored as float: pass value_range=(0, 255) (or convert to uint8)."
        else:
            hint = f"pass value_range=(low, high) for the scale of your data (found {found_low:g}..{found_high:g})."
        kind = "float" if np.issubdtype(values.dtype, np.floating) else str(values.dtype)
        raise ImageInputError(f"has values in [{found_low:g}, {found_high:g}], outside [{low:g}, {high:g}] expected "
                              f"for {kind} pixels; {hint}")
    return np.clip((x - low) / (high - low), 0.0, 1.0)


def _channels_first(array: np.ndarray) -> np.ndarray:
    """``[C, H, W]`` from a numpy ``HW`` / ``HWC`` array (numpy images are channels-last, as PIL's)."""
    if array.ndim == 2:
        return array[None]
    if array.ndim != 3:
        raise ImageInputError(f"is a numpy array of shape {array.shape}; numpy images are HW or HWC (a batch: "
                              "[B, H, W, C]).")
    if array.shape[-1] in _CHANNELS:
        return np.moveaxis(array, -1, 0)
    if array.shape[0] in _CHANNELS:  # [3, H, W] could also be 3 grey images: not guessed
        raise ImageInputError(f"is a numpy array of shape {array.shape}, which looks channels-first; numpy images "
                              "are channels-last: pass np.moveaxis(image, 0, -1) (or torch.from_numpy(image), "
                              "tensors being channels-first), or a batch of grey images as [B, H, W, 1].")
    raise ImageInputError(f"is a numpy array of shape {array.shape} whose last axis is not 1, 3 or 4 channels; "
                          "give HW or HWC pixels.")


def _rgb_unit(x: np.ndarray) -> np.ndarray:
    """``[3, H, W]`` RGB in [0, 1] from ``[C, H, W]``: grey repeated, alpha composited on white (as PIL input)."""
    if x.shape[0] == 1:
        return np.repeat(x, 3, axis=0)
    if x.shape[0] == 4:
        return x[:3] * x[3:] + (1.0 - x[3:])
    return x


def _check_tensor_layout(image: torch.Tensor) -> None:
    if image.ndim != 3:
        raise ImageInputError(f"is a tensor of shape {tuple(image.shape)}; each image tensor must have rank 3 "
                              "[C, H, W].")
    if image.shape[0] not in _CHANNELS:
        hint = " (it looks channels-last: use .permute(2, 0, 1))" if image.shape[-1] in _CHANNELS else ""
        raise ImageInputError(f"is a tensor of shape {tuple(image.shape)}; image tensors must be channels-first "
                              f"with 1, 3 or 4 channels{hint}.")


def _one(image: Any, config: PreprocessConfig, value_range: tuple[float, float] | None) -> torch.Tensor:
    size = int(config.size)
    if is_image_path(image):
        image = load_image(image)
    if isinstance(image, np.ndarray):
        x = _rgb_unit(_to_unit(_channels_first(image), value_range))
        # Arrays go through PIL like files do, so a file and its array give the same pixels.
        image = Image.fromarray(np.round(np.moveaxis(x, 0, -1) * 255).astype(np.uint8))
    elif isinstance(image, torch.Tensor):
        _check_tensor_layout(image)
        unit = _to_unit(_numpy(image), value_range)
        x = torch.from_numpy(_rgb_unit(unit)).float()
        if config.crop == "adm_center":
            image = TF.to_pil_image(x)
        else:
            x = TF.resize(x, size, interpolation=_TV_MODE[config.interpolation], antialias=True)
            x = TF.center_crop(x, [size, size]).clamp(0, 1)  # interpolation overshoot only: the input was checked
            return TF.normalize(x, config.mean, config.std)
    if not isinstance(image, Image.Image):
        raise TypeError(f"is a {type(image).__name__}; give a file path, PIL image, numpy array or tensor.")
    image = to_rgb(image)
    if config.crop == "adm_center":
        image = adm_center_crop(image, size)
    else:
        image = TF.resize(image, size, interpolation=_TV_MODE[config.interpolation])
        image = TF.center_crop(image, [size, size])
    return TF.normalize(TF.to_tensor(image), config.mean, config.std)


def as_image_list(images: Any) -> list[Any]:
    """Split a batch (list, ``[B, C, H, W]`` tensor, ``[B, H, W, C]`` array, single image or path) into items."""
    if is_image_path(images) or isinstance(images, Image.Image):
        return [images]
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, torch.Tensor):
        if images.ndim == 4:
            return list(images.unbind(0))
        if images.ndim == 3:
            return [images]
        raise ValueError(
            f"Image tensors must have rank 3 [C, H, W] or 4 [B, C, H, W], got rank {images.ndim} "
            f"(shape {tuple(images.shape)})."
        )
    if isinstance(images, Sequence) and not isinstance(images, bytes):
        return list(images)
    raise TypeError(f"Expected file paths, PIL images, numpy arrays or tensors, got {type(images).__name__}.")


def _name_of(item: Any, names: Sequence[Hashable] | None, i: int) -> Any:
    if is_image_path(item):
        return str(item)
    return names[i] if names is not None else None


def to_pixels(images: Any, config: PreprocessConfig, *, value_range: Any = None,
              names: Sequence[Hashable] | None = None, start: int = 0) -> torch.Tensor:
    """Preprocess images into a float32 ``[B, 3, size, size]`` tensor in ``[-1, 1]``.

    Args:
        images: file paths, PIL images, arrays or tensors (see the module docstring).
        config: size, interpolation and crop of the model.
        value_range: ``(low, high)`` of array / tensor pixels when not their dtype's default.
        names: each image's sample key, for messages (paths name themselves).
        start: position of the first image in the caller's list, for messages.

    Raises:
        ImageInputError: naming the image (position, path or key), what is wrong and the fix.
        TypeError: an item is not an image at all (also naming it).
    """
    value_range = check_value_range(value_range)
    items = as_image_list(images)
    if not items:
        raise ValueError("No images given.")
    out = []
    for i, item in enumerate(items):
        try:
            out.append(_one(item, config, value_range))
        except ImageInputError as err:
            raise err.at(start + i, _name_of(item, names, i)) from None
        except TypeError as err:
            raise TypeError(f"image {start + i}: {err}") from None
    return torch.stack(out)


def validate_images(items: Sequence[Any], *, value_range: Any = None, names: Sequence[Hashable] | None = None) -> None:
    """Check every item before any work: paths exist and are files, arrays and tensors have a
    layout, dtype, finite values and a range that ``to_pixels`` accepts (files are decoded later,
    chunk by chunk, so a damaged file is reported when its chunk is read).

    Raises:
        ImageInputError, TypeError: as ``to_pixels``, for the first bad item.
    """
    value_range = check_value_range(value_range)
    if value_range is not None and not any(isinstance(item, (np.ndarray, torch.Tensor)) for item in items):
        raise ValueError(f"value_range={value_range} applies to numpy arrays and tensors, but every image here is a "
                         "file or a PIL image (their range is fixed by their mode): leave value_range out.")
    for i, item in enumerate(items):
        try:
            if is_image_path(item):
                check_image_file(item)
            elif isinstance(item, np.ndarray):
                _to_unit(_channels_first(item), value_range)
            elif isinstance(item, torch.Tensor):
                _check_tensor_layout(item)
                _to_unit(_numpy(item), value_range)
            elif not isinstance(item, Image.Image):
                raise TypeError(f"is a {type(item).__name__}; give a file path, PIL image, numpy array or tensor.")
        except ImageInputError as err:
            raise err.at(i, _name_of(item, names, i)) from None
        except TypeError as err:
            raise TypeError(f"image {i}: {err}") from None


def check_finite_pixels(pixels: torch.Tensor, names: Sequence[Hashable] | None = None, start: int = 0) -> None:
    """Refuse preprocessed pixels holding NaN/inf before any network call (names the first bad image)."""
    finite = torch.isfinite(pixels.reshape(pixels.shape[0], -1)).all(dim=1)
    if not bool(finite.all()):
        i = int((~finite).nonzero()[0])
        raise ImageInputError("holds NaN/inf pixel values; pass finite pixels.", start + i,
                              names[i] if names is not None else None)
