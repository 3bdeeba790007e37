"""Diffusion Classifier in CLIP_benchmark: ``clip_benchmark eval --model diffusion-classifier --pretrained <entry>``.

Li, Prabhudesai, Duggal, Brown, Pathak, "Your Diffusion Model is Secretly a Zero-Shot
Classifier", ICCV 2023 (arXiv 2303.16203), evaluated by the stock clip-benchmark 1.6.2 command
side by side with CLIP models. ``model`` adapts the joint scorer to the CLIP interface the
metric code calls; ``registration`` makes the stock command find it; ``tasks`` wraps the metric
entry points; ``python -m dc_zoo.clip_benchmark eval ...`` needs no import-time hook.
"""
from .model import DiffusionClassifierForClipBenchmark, PixelTransform, UnsupportedTaskError
from .registration import MODEL_NAME, MODEL_TYPE, load_diffusion_classifier, register

__all__ = [
    "DiffusionClassifierForClipBenchmark", "PixelTransform", "UnsupportedTaskError",
    "MODEL_NAME", "MODEL_TYPE", "load_diffusion_classifier", "register",
]
