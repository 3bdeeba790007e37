"""Image loading against scoring: the share of time the accelerator would wait without read-ahead.

Per image, on one CPU thread (as ``dc_zoo.prefetch``'s thread runs it): decode plus
``to_pixels`` in chunks of 8, as ``dc-zoo eval`` does, for (a) the bundled digits WebDataset read
through clip_benchmark (16 px PNGs, upscaled by preprocessing) and (b) photos (scikit-learn's
and scikit-image's samples, short side upscaled to 512, stored as JPEG q90). Sizes: 256 px
(DiT-XL/2's ADM crop) and 512 px (SD-2-base's center crop). The wait share is load / (load +
scoring) at the GPU rates of the speed issue: SD-2-base ~680 evaluations/s at 2050
evaluations/image (Oxford Pets schedule), DiT-XL/2 ~2000 evaluations/s at 14400 (ObjectNet).

    python benchmarks/loading.py [--images 32] [--repeats 3] [--out table.md]
"""
from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from dc_zoo import PreprocessConfig
from dc_zoo.digits import write_digits_webdataset
from dc_zoo.evaluation.benchmark_datasets import load_benchmark_dataset
from dc_zoo.preprocess import to_pixels

SCORING_S = {"SD-2-base": 2050 / 680, "DiT-XL/2": 14400 / 2000}  # seconds of GPU time per image
CONFIGS = {256: PreprocessConfig(size=256, crop="adm_center"), 512: PreprocessConfig(size=512, crop="center")}
CHUNK = 8


def _photos(n: int) -> list[bytes]:
    from skimage import data
    from sklearn.datasets import load_sample_images

    arrays = list(load_sample_images().images) + [data.astronaut(), data.coffee(), data.chelsea()]
    encoded = []
    for image in map(Image.fromarray, arrays):
        buf = io.BytesIO()
        image.resize(tuple(round(x * 512 / min(image.size)) for x in image.size), Image.BICUBIC).save(buf, "JPEG",
                                                                                                   quality=90)
        encoded.append(buf.getvalue())
    return [encoded[i % len(encoded)] for i in range(n)]


def _per_image_s(read, config: PreprocessConfig, n: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start, images = time.perf_counter(), list(read())  # decode (a lazy reader decodes here)
        for lo in range(0, n, CHUNK):
            to_pixels(images[lo : lo + CHUNK], config)
        times.append((time.perf_counter() - start) / n)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    n = args.images
    with tempfile.TemporaryDirectory() as tmp:
        dataset = load_benchmark_dataset("wds/digits", str(write_digits_webdataset(tmp, "test")), "test")
        photos = _photos(n)
        sources = {"digits wds (16 px PNG)": lambda: (image for _, image, _ in dataset.samples(range(n))),
                   "photos (JPEG, 512 px short side)": lambda: (Image.open(io.BytesIO(b)).convert("RGB")
                                                                for b in photos)}
        rows = ["| source | size | decode + preprocess ms/image | " + " | ".join(
                    f"share of {m} time ({s:.2f} s/image)" for m, s in SCORING_S.items()) + " |",
                "|---|---|---|" + "---|" * len(SCORING_S)]
        for name, read in sources.items():
            for size, config in CONFIGS.items():
                load = _per_image_s(read, config, n, args.repeats)
                shares = " | ".join(f"{100 * load / (load + s):.3f}%" for s in SCORING_S.values())
                rows.append(f"| {name} | {size} ({config.crop}) | {1000 * load:.2f} | {shares} |")
    table = "\n".join(rows) + f"\n\n{n} images, median of {args.repeats} runs, 1 CPU thread, chunks of {CHUNK}.\n"
    print(table)
    if args.out is not None:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
