"""A corpus of awkward and hostile image files, generated in a folder, with what each entry
point must do with each (the table the bad-input tests run through the API, ``dc-zoo
classify``, ``dc-zoo eval`` and the stock ``clip_benchmark eval``)."""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Case:
    """One corpus file and the outcome every entry point must give it.

    Attributes:
        name: file name in the corpus folder.
        reason: a fragment of the error that names why it cannot be read; None when it must
            be classified (after the conversion its ``note`` says).
        in_webdataset: whether the case can be a WebDataset sample (folders and links cannot).
        note: what the case checks.
    """

    name: str
    reason: str | None
    in_webdataset: bool = True
    note: str = ""


CASES = (
    Case("good.png", None, note="an ordinary RGB image"),
    Case("rgba.png", None, note="alpha composited on white, the same everywhere"),
    Case("sixteen.png", None, note="16-bit grey scaled from its depth, not clipped to white"),
    Case("rotated.png", None, note="EXIF orientation applied"),
    Case("truncated.png", "is damaged or truncated"),
    Case("empty.png", "is empty (0 bytes)"),
    Case("notes.png", "is not an image file PIL can read"),
    Case("bomb.png", "more than PIL's safety limit"),
    Case("folder.png", "is a directory", in_webdataset=False),
    Case("dangling.png", "is a broken symbolic link", in_webdataset=False),
    Case("missing.png", "does not exist", in_webdataset=False),
)
READABLE = tuple(c for c in CASES if c.reason is None)
UNREADABLE = tuple(c for c in CASES if c.reason is not None)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header that declares ``width x height`` pixels (10^10: a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00"))
            + _png_chunk(b"IEND", b""))


def write_corpus(folder: Path, size: int = 16) -> Path:
    """Write every case of ``CASES`` into ``folder`` (deterministic content); returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(folder / "good.png")
    alpha = np.concatenate([rgb, (rng.random((size, size, 1)) * 255).astype(np.uint8)], -1)
    Image.fromarray(alpha, "RGBA").save(folder / "rgba.png")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(folder / "sixteen.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated, to be shown rotated back
    Image.fromarray(rgb).transpose(Image.Transpose.ROTATE_90).save(folder / "rotated.png", exif=exif)
    data = (folder / "good.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("these are not pixels\n")
    (folder / "bomb.png").write_bytes(bomb_png())
    (folder / "folder.png").mkdir(exist_ok=True)
    if not (folder / "dangling.png").is_symlink():
        (folder / "dangling.png").symlink_to(folder / "gone.png")
    return folder


CLASSES = ("cat", "dog")


def write_corpus_webdataset(root: Path, corpus: Path, cases=None) -> tuple[Path, list[Case]]:
    """The WebDataset-able cases as one clip_benchmark WebDataset shard (sample ``i`` is
    ``cases[i]``, key ``s{i:07d}``, label ``i % 2``); returns the root and the cases in order."""
    import io
    import tarfile

    cases = [c for c in (cases or CASES) if c.in_webdataset]
    split = root / "test"
    split.mkdir(parents=True, exist_ok=True)
    with tarfile.open(split / "0.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        for i, case in enumerate(cases):
            for name, data in ((f"s{i:07d}.png", (corpus / case.name).read_bytes()), (f"s{i:07d}.cls", str(i % 2).encode())):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))
    (split / "nshards.txt").write_text("1\n")
    (root / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\n")
    return root, cases
