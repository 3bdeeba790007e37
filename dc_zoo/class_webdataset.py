"""A labelled image split as a clip_benchmark WebDataset, byte-identical across reruns.

The layout ``clip_benchmark eval --dataset wds/<name>`` reads: ``<root>/<split>/<n>.tar``
shards of ``<key>.png`` / ``<key>.cls`` pairs, ``nshards.txt``, ``classnames.txt`` and
``zeroshot_classification_templates.txt``. Shared by the lab datasets (digits, glyphs).
"""
from __future__ import annotations

import io
import logging
import tarfile
from pathlib import Path
from typing import Sequence

from PIL import Image

logger = logging.getLogger(__name__)

__all__ = ["write_class_webdataset"]


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(payload), 0, 0o644  # fixed metadata: byte-identical reruns
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(payload))


def write_class_webdataset(root: str | Path, split: str, images: Sequence[Image.Image], labels: Sequence[int],
                           class_names: Sequence[str], template: str, samples_per_shard: int = 1000) -> Path:
    """Write ``images`` / ``labels`` as split ``split`` of a WebDataset under ``root``; returns ``root``.

    Args:
        template: the prompt template with ``{}`` for the class (written with ``{c}``, as
            clip_benchmark fills templates with ``str.format(c=classname)``).

    Raises:
        ValueError: ``samples_per_shard`` is not a positive integer.
    """
    if int(samples_per_shard) < 1:
        raise ValueError(f"samples_per_shard must be a positive integer, got {samples_per_shard!r}.")
    root = Path(root)
    split_dir = root / split
    split_dir.mkdir(parents=True, exist_ok=True)
    n_shards = max(1, -(-len(images) // samples_per_shard))
    for shard in range(n_shards):
        lo, hi = shard * samples_per_shard, min(len(images), (shard + 1) * samples_per_shard)
        with tarfile.open(split_dir / f"{shard}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(lo, hi):
                key = f"s{i:07d}"
                _add_member(tar, f"{key}.png", _png_bytes(images[i]))
                _add_member(tar, f"{key}.cls", str(labels[i]).encode())
    (split_dir / "nshards.txt").write_text(f"{n_shards}\n")
    (root / "classnames.txt").write_text("\n".join(class_names) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text(template.replace("{}", "{c}") + "\n")
    logger.info("wrote %d %s images in %d shard(s) to %s", len(images), split, n_shards, root)
    return root
