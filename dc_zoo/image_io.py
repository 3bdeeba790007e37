"""Images from files and PIL objects into RGB, one way for every entry point.

``classify()``, ``dc-zoo classify``, ``dc-zoo eval`` and the clip_benchmark adapter all call
``load_image`` (paths) and ``to_rgb`` (PIL images), so one file gets one prediction whichever
way it arrives. The conversions are the ones photo viewers and torchvision's decoder make:

- the EXIF orientation is applied (``ImageOps.exif_transpose``), a phone photo is upright;
- transparency (RGBA, LA, palette with alpha) is composited on white, not dropped;
- 16-bit images (PNG modes ``I;16``, or ``I`` for a 16-bit PNG) are scaled from their bit
  depth to 8 bits instead of being clipped at 255 (which turns most of them white); other
  32-bit integer images have no fixed range and are refused;
- float images (mode ``F``) must hold values in ``[0, 1]``; anything else is an error.

A file that cannot be read raises ``ImageReadError``, which names the file and the reason
(missing, a directory, empty, truncated, not an image, too many pixels) and the fix.
"""
from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["ImageInputError", "ImageReadError", "check_image_file", "load_image", "decode_image_bytes", "to_rgb", "is_image_path", "image_files_in",
           "IMAGE_EXTENSIONS"]

# File name endings PIL can open (jpg, png, webp, tif, bmp, gif, ...; not write-only formats such as pdf).
IMAGE_EXTENSIONS = tuple(sorted({ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}))


class ImageInputError(ValueError):
    """An input image that cannot be classified as given.

    Attributes:
        index: its position in the call (``None`` when not known).
        name: its path or sample key (``None`` for an in-memory image without a key).
        reason: what is wrong and how to fix it.
    """

    def __init__(self, reason: str, index: int | None = None, name: Any = None):
        self.index, self.name, self.reason = index, name, reason
        super().__init__(f"{describe_image(index, name)}: {reason}")

    def __reduce__(self):  # pickled across DataLoader workers: rebuilt from its parts, not its message
        return type(self), (self.reason, self.index, self.name)

    def at(self, index: int | None = None, name: Any = None) -> "ImageInputError":
        """The same error placed at ``index`` / ``name`` (keeps what is already known)."""
        return type(self)(self.reason, self.index if index is None else index, self.name if name is None else name)


class ImageReadError(ImageInputError, OSError):
    """An image file that cannot be read (missing, a directory, empty, truncated, not an image)."""


def describe_image(index: int | None, name: Any) -> str:
    """``image 3 ('cat.png')``: how messages name an image."""
    text = "image" if index is None else f"image {index}"
    return text if name is None else f"{text} ({str(name)!r})"


def is_image_path(value: Any) -> bool:
    """A ``str`` or ``os.PathLike`` (never a bytes buffer) names a file."""
    return isinstance(value, (str, os.PathLike))


def image_files_in(folder: str | os.PathLike) -> list[Path]:
    """The image files directly inside ``folder`` (by extension), sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.is_dir())


def check_image_file(path: str | os.PathLike) -> Path:
    """The path, after checking it is an existing, non-empty file (without decoding it).

    Raises:
        ImageReadError: missing, a broken link, a directory or empty.
    """
    p = Path(path)
    if not p.exists():
        if p.is_symlink():
            raise ImageReadError(f"is a broken symbolic link (to {os.readlink(p)!r}); point it at an image file.",
                                 name=str(path))
        raise ImageReadError("does not exist; give the path of an image file (PNG, JPEG, ...).", name=str(path))
    if p.is_dir():
        raise ImageReadError("is a directory, not an image file; give the files in it (dc-zoo classify expands a "
                             "directory into its image files).", name=str(path))
    if p.stat().st_size == 0:
        raise ImageReadError("is empty (0 bytes); the file was not written completely: copy it again.",
                             name=str(path))
    return p


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open, fully decode and upright an image file.

    Raises:
        ImageReadError: naming the file and why it cannot be read.
    """
    p = check_image_file(path)
    return _decode(p, str(path))


def decode_image_bytes(data: bytes, name: Any = None) -> Image.Image:
    """``load_image`` for an image held in memory (a WebDataset sample's bytes).

    Raises:
        ImageReadError: naming ``name`` and why the bytes cannot be decoded.
    """
    if not data:
        raise ImageReadError("is empty (0 bytes); the file was not written completely: copy it again.", name=name)
    return _decode(io.BytesIO(data), name)


def _bomb(pixels: int, name: Any) -> ImageReadError:
    return ImageReadError(f"declares {pixels:,} pixels, more than PIL's safety limit of {Image.MAX_IMAGE_PIXELS:,}; "
                          "it may be a decompression bomb. If you trust the file, raise PIL.Image.MAX_IMAGE_PIXELS.",
                          name=name)


def _decode(source: Any, name: Any) -> Image.Image:
    try:
        with Image.open(source) as image:
            # PIL only warns between 1x and 2x its limit (and warnings are process-wide): check here.
            if Image.MAX_IMAGE_PIXELS and image.width * image.height > Image.MAX_IMAGE_PIXELS:
                raise _bomb(image.width * image.height, name)
            image.load()
            return ImageOps.exif_transpose(image) if _has_orientation(image) else image.copy()
    except Image.DecompressionBombError as err:
        found = re.search(r"\((\d+) pixels\)", str(err))
        raise _bomb(int(found.group(1)) if found else 0, name) from None
    except UnidentifiedImageError:
        raise ImageReadError("is not an image file PIL can read (unknown or damaged format).", name=name) from None
    except (OSError, SyntaxError, ValueError) as err:  # truncated data, bad chunks, unsupported modes
        raise ImageReadError(f"is damaged or truncated ({err}); copy or export it again.", name=name) from None


def _has_orientation(image: Image.Image) -> bool:
    try:
        return image.getexif().get(0x0112, 1) not in (1, None)
    except Exception:  # noqa: BLE001 - unreadable EXIF is treated as none, as viewers do
        return False


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB image from a PIL image of any mode (see the module docstring)."""
    if _has_orientation(image):
        image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        return Image.fromarray(_high_depth_to_uint8(image), mode="L").convert("RGB")
    if mode in ("P", "PA") or "A" in image.getbands():
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def _high_depth_to_uint8(image: Image.Image) -> np.ndarray:
    """Grey levels of a 16/32-bit integer or float image, scaled from its depth to 0..255."""
    values = np.asarray(image)
    if image.mode == "F":
        if not np.isfinite(values).all():
            raise ImageInputError("is a float (mode F) image holding NaN or inf values.")
        low, high = float(values.min()), float(values.max())
        if low < 0 or high > 1:
            raise ImageInputError(f"is a float (mode F) image with values in [{low:g}, {high:g}]; float images must "
                                  "be in [0, 1]: convert it to 8 or 16 bits, or pass its pixels as an array with "
                                  "value_range=(low, high).")
        return np.round(values * 255).astype(np.uint8)
    # 16-bit files open as "I;16*", or as "I" on some Pillow versions (a 16-bit PNG): those are
    # scaled from 16 bits. Any other 32-bit integer image has no fixed range: not guessed.
    if not (image.mode.startswith("I;16") or (image.mode == "I" and image.format == "PNG")):
        raise ImageInputError("is a 32-bit integer (mode I) image, which has no fixed value range: convert it to 8 "
                              "or 16 bits, or pass its pixels as an array with value_range=(low, high).")
    values = values.astype(np.int64)
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > 65535:
        raise ImageInputError(f"is a 16-bit image with values in [{low}, {high}], outside 0..65535; pass its pixels "
                              "as an array with value_range=(low, high).")
    return np.round(values * (255.0 / 65535)).astype(np.uint8)
