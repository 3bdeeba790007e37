"""Half precision against float32 on the trained miniatures: same predictions? how far apart?

The engine accumulates errors in float32 whatever the model dtype; this measures what the
network's own rounding does to the decisions, on real (trained) weights and held-out data.

    python benchmarks/precision.py                     # CPU: float32 vs bfloat16
    python benchmarks/precision.py --device cuda --dtypes float16 bfloat16
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

import dc_zoo
from dc_zoo.backends.base import resolve_dtype
from dc_zoo.digits import CLASS_NAMES, load_digits_split


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["sd-digits-mini", "dit-digits-mini"])
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--limit", type=int, default=None, help="first N test images (default: all 360)")
    args = parser.parse_args(argv)
    images, labels = load_digits_split("test")
    images, labels = images[: args.limit], torch.tensor(labels[: args.limit])
    print(f"digits test split, {len(images)} images, device {args.device}, torch {torch.__version__}\n")
    print("| model | dtype | acc1 | predictions equal to float32 | max abs error diff | median rel. diff | s |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        reference = None
        for dtype_name in ["float32", *args.dtypes]:
            clf = dc_zoo.create_model(name, device=args.device, dtype=resolve_dtype(dtype_name))
            classes = CLASS_NAMES if clf.backend.conditioning == "text" else list(range(10))
            start = time.perf_counter()
            out = clf.classify(images, classes)
            seconds = time.perf_counter() - start
            acc = float((out.predictions == labels).float().mean())
            if reference is None:
                reference = out
                same, max_diff, rel = len(images), 0.0, 0.0
            else:
                same = int((out.predictions == reference.predictions).sum())
                both = torch.isfinite(out.errors) & torch.isfinite(reference.errors) & (out.stage_reached == reference.stage_reached)
                diff = (out.errors - reference.errors)[both].abs()
                max_diff = float(diff.max())
                rel = float((diff / reference.errors[both].abs().clamp_min(1e-12)).median())
            print(f"| {name} | {dtype_name} | {100 * acc:.2f}% | {same}/{len(images)} | {max_diff:.2e} | {rel:.2e} | {seconds:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
