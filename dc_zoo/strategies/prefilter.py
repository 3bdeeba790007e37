"""Contrastive prefilter: a CLIP model's top-k classes, before any diffusion evaluation.

A Diffusion Classifier's cost grows linearly with the number of classes: every candidate costs
its timestep evaluations, so ImageNet's 1000 classes take about 1000 s per image. A contrastive
model scores all classes with one image and one (cached) text forward pass; keeping only its
top-k lets the diffusion model spend its evaluations where the answer is likely. The paper did
this on ImageNet with CLIP RN50 top-20: 1000 s -> 150 s per image, and top-1 61.4% -> 62.6%
(Li et al., "Your Diffusion Model is Secretly a Zero-Shot Classifier", ICCV 2023,
https://arxiv.org/abs/2303.16203).

The prefilter's recall at k (``recall_at_k``) bounds the accuracy of whatever runs after it: a
true class it drops cannot be predicted. The kept set always contains the prefilter's own top-1,
and ties are broken towards the lowest class index, so the same scores always keep the same set.

Models are named as elsewhere in dc_zoo (a zoo name of an ``open_clip`` entry, ``hf-hub:org/repo``)
or as open_clip names them (``"ViT-B-32/openai"``, ``"RN50/openai"``); the weights load on first
use. The zoo's miniatures come from the bundled Hub cache through ``dc_zoo._hub``, offline.
"""
from __future__ import annotations

import math
import numbers
import os
from typing import Any, Sequence

import torch
import torch.nn.functional as F

__all__ = ["ContrastivePrefilter", "recall_at_k", "top_k_indices", "keep_mask", "DEFAULT_TEMPLATES",
           "MODEL_FORMS"]

DEFAULT_TEMPLATES = ("a photo of a {}.",)  # used when neither the caller nor the zoo entry gives one
MODEL_FORMS = ("a zoo name of an open_clip entry (e.g. 'clip-glyphs-mini'; see dc_zoo.list_models(family='open_clip'))",
               "'hf-hub:org/repo' (an open_clip repo on the Hub or in the HF cache)",
               "open_clip's 'ARCH/pretrained' (e.g. 'ViT-B-32/openai', 'RN50/openai')",
               "'local-dir:/path' (a folder holding open_clip_config.json and the weights)")
_RANGE_SLACK = 0.05  # interpolation overshoot tolerated around [-1, 1]
_IMAGE_BATCH = 256  # images per CLIP forward pass


def _forms() -> str:
    return "; ".join(MODEL_FORMS)


def _check_k(k: Any, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or int(k) < 1:
        raise ValueError(f"{name} must be a positive integer (the number of classes kept per image), got {k!r}; "
                         "k >= the number of classes keeps them all.")
    return int(k)


def _check_scores(scores: Any) -> torch.Tensor:
    if not isinstance(scores, torch.Tensor) or scores.ndim != 2:
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"scores must be a [N, K] tensor (images x classes), got {shape}.")
    if scores.shape[1] == 0:
        raise ValueError("scores has no classes (K = 0); give at least one class.")
    return scores


def top_k_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """``LongTensor [N, min(k, K)]``: each row's best classes, best first; ties go to the lowest index."""
    scores, k = _check_scores(scores), _check_k(k)
    order = torch.sort(scores.detach().float(), dim=1, descending=True, stable=True).indices
    return order[:, : min(k, scores.shape[1])]


def keep_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool ``[N, K]`` with exactly ``min(k, K)`` True per row: ``top_k_indices`` as a mask."""
    index = top_k_indices(scores, k)
    return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device).scatter_(1, index, True)


def recall_at_k(scores: torch.Tensor, labels: Sequence[int], k: int) -> float:
    """Fraction of images whose true label is among their top-``k`` scores (ties as ``top_k_indices``)."""
    scores = _check_scores(scores)
    labels = torch.as_tensor(list(labels) if not isinstance(labels, torch.Tensor) else labels, dtype=torch.long)
    if labels.ndim != 1 or labels.numel() != scores.shape[0]:
        raise ValueError(f"labels must give one class index per image: {scores.shape[0]} images, got "
                         f"{tuple(labels.shape)} labels.")
    if labels.numel() == 0:
        raise ValueError("recall_at_k needs at least one image.")
    if int(labels.min()) < 0 or int(labels.max()) >= scores.shape[1]:
        raise ValueError(f"labels must lie in 0..{scores.shape[1] - 1} (one per class), got "
                         f"{int(labels.min())}..{int(labels.max())}.")
    hits = (top_k_indices(scores, k) == labels.to(scores.device)[:, None]).any(dim=1)
    return float(hits.float().mean())


def _check_class_names(class_names: Any) -> tuple[str, ...]:
    if isinstance(class_names, str) or not isinstance(class_names, Sequence):
        raise ValueError(f"class_names must be a sequence of class names, got {type(class_names).__name__}.")
    names = tuple(class_names)
    if not names:
        raise ValueError("class_names is empty; give the classes to rank (e.g. dc_zoo.glyphs.CLASS_NAMES).")
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise ValueError(f"class_names must be strings (the text the CLIP model reads), got {bad[:3]!r}.")
    return names


def _check_templates(templates: Any) -> tuple[str, ...]:
    if isinstance(templates, str):
        templates = (templates,)
    if not isinstance(templates, Sequence) or not templates:
        raise ValueError(f"templates must be a non-empty sequence of strings with '{{}}', got {templates!r}.")
    templates = tuple(templates)
    bad = [t for t in templates if not isinstance(t, str) or "{}" not in t]
    if bad:
        raise ValueError(f"every template must be a string with '{{}}' where the class name goes "
                         f"(e.g. 'a photo of a {{}}.'), got {bad[:3]!r}.")
    return templates


def _check_pixels(pixels: Any) -> torch.Tensor:
    if not isinstance(pixels, torch.Tensor):
        raise ValueError(f"pixels must be a torch.Tensor [N, 3, H, W] in [-1, 1], got {type(pixels).__name__}; "
                         "make one with dc_zoo.preprocess.to_pixels(images, PreprocessConfig(size=...)).")
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(f"pixels must be [N, 3, H, W] (RGB, channels first), got {tuple(pixels.shape)}; "
                         "make them with dc_zoo.preprocess.to_pixels.")
    if not pixels.is_floating_point():
        raise ValueError(f"pixels must be floating point in [-1, 1], got {pixels.dtype}; convert uint8 images "
                         "with dc_zoo.preprocess.to_pixels.")
    if pixels.numel() and not bool(torch.isfinite(pixels).all()):
        raise ValueError("pixels hold NaN or inf; check the images (dc_zoo.preprocess.check_finite_pixels names them).")
    if pixels.numel():
        low, high = float(pixels.min()), float(pixels.max())
        if low < -1 - _RANGE_SLACK or high > 1 + _RANGE_SLACK:
            raise ValueError(f"pixels must be the diffusion classifier's input in [-1, 1] (mean/std 0.5), found "
                             f"values in [{low:.3g}, {high:.3g}]; 0..255 images or CLIP-normalised tensors are not "
                             "that: pass images through dc_zoo.preprocess.to_pixels (or x * 2 - 1 for [0, 1]).")
    return pixels


def _resolve(model: str) -> tuple[str, dict[str, Any]]:
    """``(kind, details)`` for a model reference, without loading weights; ValueError naming the forms."""
    from .._registry import find_entry_by_repo, get_entry, parse_model_name

    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"model must be a non-empty string, got {model!r}; accepted forms: {_forms()}.")
    ref = model.strip()
    if ref.startswith("local-dir:"):
        path = os.path.expanduser(ref[len("local-dir:"):])
        if not os.path.isfile(os.path.join(path, "open_clip_config.json")):
            raise ValueError(f"{ref!r}: {path} is not an open_clip model folder (no open_clip_config.json); "
                             f"accepted forms: {_forms()}.")
        return "local-dir", {"path": path}
    if ref.startswith("hf-hub:"):
        parsed = parse_model_name(ref)  # ValueError for a malformed repo id
        entry = find_entry_by_repo(parsed.id)
        if entry is not None:
            return _zoo(entry, ref, parsed.revision)
        return "hf-hub", {"repo_id": parsed.id, "revision": parsed.revision}
    if "/" in ref:
        import open_clip

        arch, _, pretrained = ref.partition("/")
        if arch in open_clip.list_models():
            tags = open_clip.list_pretrained_tags_by_model(arch)
            if pretrained not in tags and not os.path.isfile(pretrained):
                raise ValueError(f"{ref!r}: open_clip has no pretrained weights {pretrained!r} for {arch}; "
                                 f"choose one of {tags or 'none'} (e.g. '{arch}/{tags[0] if tags else 'openai'}') "
                                 "or give a checkpoint file after the '/'.")
            return "open_clip", {"arch": arch, "pretrained": pretrained}
        entry = find_entry_by_repo(ref)
        if entry is not None:
            return _zoo(entry, ref, None)
        raise ValueError(f"Unknown model {ref!r}: {arch!r} is not an open_clip architecture (open_clip.list_models()) "
                         f"and the zoo has no repo {ref!r}; for a Hub repo write 'hf-hub:{ref}'. "
                         f"Accepted forms: {_forms()}.")
    try:
        entry = get_entry(ref)
    except KeyError as err:
        import open_clip

        if ref in open_clip.list_models():
            tags = open_clip.list_pretrained_tags_by_model(ref)
            raise ValueError(f"{ref!r} is an open_clip architecture without weights; write 'ARCH/pretrained', e.g. "
                             f"'{ref}/{tags[0] if tags else 'openai'}' (its tags: {tags or 'none'}).") from None
        raise ValueError(f"{err.args[0]} Accepted forms for the prefilter: {_forms()}.") from None
    return _zoo(entry, ref, None)


def _zoo(entry: Any, ref: str, revision: str | None) -> tuple[str, dict[str, Any]]:
    from .._registry import list_models

    if entry.family != "open_clip":
        raise ValueError(f"{ref!r} is the zoo's {entry.family} model {entry.name}, a diffusion classifier, not a "
                         f"contrastive model; the prefilter needs an open_clip model: "
                         f"{list_models(family='open_clip')} or {MODEL_FORMS[2]}.")
    return "zoo", {"entry": entry, "revision": revision or entry.revision}


class ContrastivePrefilter:
    """Keep each image's top-``k`` classes under an open_clip model (zero-shot CLIP scores).

    Args:
        model: a zoo name of an ``open_clip`` entry, ``hf-hub:org/repo``, open_clip's
            ``"ARCH/pretrained"`` or ``local-dir:/path`` (see ``MODEL_FORMS``); loaded on first use.
        k: classes kept per image (at least 1; ``k >=`` the number of classes keeps all).
        templates: prompts with ``{}`` for the class name, their text embeddings averaged (default:
            the zoo entry's template, else ``DEFAULT_TEMPLATES``).
        device: where the CLIP model runs (default: the device of the pixels it is given).

    Raises:
        ValueError: ``k < 1``, bad templates, or a model reference of no accepted form.
    """

    def __init__(self, model: str, k: int, *, templates: Sequence[str] | None = None, device: Any = None) -> None:
        self._k = _check_k(k)
        self._kind, self._details = _resolve(model)
        self._model_ref = model.strip()
        entry = self._details.get("entry")
        if templates is None:
            templates = (entry.template,) if entry is not None and entry.template else DEFAULT_TEMPLATES
        self._templates = _check_templates(templates)
        self._device = torch.device(device) if device is not None else None
        self._clip: Any = None  # (model, preprocess_cfg, tokenizer) once loaded
        self._text_cache: dict[tuple[tuple[str, ...], tuple[str, ...]], torch.Tensor] = {}

    # ------------------------------------------------------------------ read-only settings
    @property
    def model(self) -> str:
        return self._model_ref

    @property
    def k(self) -> int:
        return self._k

    @property
    def templates(self) -> tuple[str, ...]:
        return self._templates

    def to_dict(self) -> dict[str, Any]:
        """The settings, JSON-ready, for recording beside results."""
        return {"model": self._model_ref, "k": self._k, "templates": list(self._templates)}

    def __repr__(self) -> str:
        loaded = "loaded" if self._clip is not None else "not loaded"
        return f"ContrastivePrefilter(model={self._model_ref!r}, k={self._k}, templates={self._templates!r}; {loaded})"

    # ------------------------------------------------------------------ loading
    def _load(self) -> tuple[Any, dict[str, Any], Any]:
        if self._clip is not None:
            return self._clip
        import open_clip

        from .. import _hub

        kind, d = self._kind, self._details
        try:
            if kind == "zoo" or (kind == "hf-hub" and d["revision"]):
                repo_id = d["entry"].hub_id if kind == "zoo" else d["repo_id"]
                snapshot = _hub.download_snapshot(repo_id, d["revision"])  # bundled cache for the miniatures
                name, pretrained = f"local-dir:{snapshot.path}", None
            elif kind == "local-dir":
                name, pretrained = f"local-dir:{d['path']}", None
            elif kind == "hf-hub":
                name, pretrained = f"hf-hub:{d['repo_id']}", None
            else:
                name, pretrained = d["arch"], d["pretrained"]
            model, _, _ = open_clip.create_model_and_transforms(name, pretrained=pretrained)
            tokenizer = open_clip.get_tokenizer(name)
        except _hub.ZooHubError:
            raise  # dc_zoo's own loading errors already say what is missing and how to fetch it
        except (OSError, RuntimeError) as err:
            raise RuntimeError(f"Could not load the prefilter's open_clip model {self._model_ref!r}: "
                               f"{str(err).rstrip('.')}. Offline "
                               "(HF_HUB_OFFLINE=1) its weights must already be in the Hugging Face cache; the zoo's "
                               "miniatures ship with dc_zoo.") from err
        model.eval().requires_grad_(False)
        self._clip = (model, _preprocess_cfg(model), tokenizer)
        return self._clip

    def _model_on(self, device: torch.device) -> Any:
        model = self._load()[0]
        if next(model.parameters()).device != device:
            model.to(device)
        return model

    # ------------------------------------------------------------------ scoring
    def _text_features(self, model: Any, tokenizer: Any, names: tuple[str, ...], templates: tuple[str, ...],
                       device: torch.device) -> torch.Tensor:
        key = (names, templates)
        if key not in self._text_cache:
            texts = [t.format(n) for n in names for t in templates]
            with torch.no_grad():
                feats = F.normalize(model.encode_text(tokenizer(texts).to(device)).float(), dim=-1)
            feats = F.normalize(feats.view(len(names), len(templates), -1).mean(dim=1), dim=-1)
            self._text_cache[key] = feats
        return self._text_cache[key].to(device)

    def _clip_input(self, pixels: torch.Tensor, cfg: dict[str, Any]) -> torch.Tensor:
        """[-1, 1] pixels -> the CLIP model's input: [0, 1], resized and center-cropped as open_clip's
        preprocess does a PIL image (bicubic, antialiased), then the model's mean/std."""
        x = (pixels.float() + 1) / 2
        height, width = cfg["size"]
        if tuple(x.shape[-2:]) != (height, width):
            scale = max(height / x.shape[-2], width / x.shape[-1])  # cover the target, then center-crop
            size = (max(height, round(x.shape[-2] * scale)), max(width, round(x.shape[-1] * scale)))
            mode = cfg["interpolation"] if cfg["interpolation"] in ("bicubic", "bilinear") else "bicubic"
            # Width, then height, clamped after each pass: PIL's order and its 8-bit clipping of the
            # intermediate image (one 2D pass keeps bicubic overshoot at glyph edges, up to ~10/255 more).
            x = F.interpolate(x, size=(x.shape[-2], size[1]), mode=mode, antialias=True, align_corners=False).clamp_(0, 1)
            x = F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False).clamp_(0, 1)
            top, left = (size[0] - height) // 2, (size[1] - width) // 2
            x = x[..., top: top + height, left: left + width]
        mean = torch.tensor(cfg["mean"], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(cfg["std"], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def class_scores(self, pixels: torch.Tensor, class_names: Sequence[str],
                     templates: Sequence[str] | None = None) -> torch.Tensor:
        """CLIP zero-shot logits ``[N, K]`` (logit scale x cosine) of ``[-1, 1]`` pixels ``[N, 3, H, W]``.

        Raises:
            ValueError: pixels not ``[N, 3, H, W]`` floats in about ``[-1, 1]``; no class names; bad templates.
        """
        pixels = _check_pixels(pixels)
        names = _check_class_names(class_names)
        templates = self._templates if templates is None else _check_templates(templates)
        device = self._device or pixels.device
        model, cfg, tokenizer = self._load()
        model = self._model_on(device)
        text = self._text_features(model, tokenizer, names, templates, device)
        scale = float(model.logit_scale.exp()) if hasattr(model, "logit_scale") else 1.0
        out = []
        with torch.no_grad():
            for start in range(0, pixels.shape[0], _IMAGE_BATCH):
                x = self._clip_input(pixels[start: start + _IMAGE_BATCH].to(device), cfg)
                out.append(scale * F.normalize(model.encode_image(x).float(), dim=-1) @ text.T)
        return torch.cat(out) if out else torch.empty(0, len(names), device=device)

    def top_k(self, pixels: torch.Tensor, class_names: Sequence[str],
              templates: Sequence[str] | None = None) -> torch.Tensor:
        """``LongTensor [N, min(k, K)]``: the kept classes, best first (ties: lowest index first)."""
        return top_k_indices(self.class_scores(pixels, class_names, templates), self._k)

    def keep(self, pixels: torch.Tensor, class_names: Sequence[str],
             templates: Sequence[str] | None = None) -> torch.Tensor:
        """Bool ``[N, K]``, exactly ``min(k, K)`` True per row, always including the model's top-1."""
        return keep_mask(self.class_scores(pixels, class_names, templates), self._k)

    def recall(self, pixels: torch.Tensor, class_names: Sequence[str], labels: Sequence[int],
               templates: Sequence[str] | None = None) -> float:
        """The prefilter's own recall at its ``k`` on labelled images (an upper bound on what follows)."""
        return recall_at_k(self.class_scores(pixels, class_names, templates), labels, self._k)


def _preprocess_cfg(model: Any) -> dict[str, Any]:
    """Size ``(H, W)``, mean, std and interpolation of a loaded open_clip model's image input."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    visual = model.visual
    cfg = dict(getattr(visual, "preprocess_cfg", None) or {})
    size = cfg.get("size", getattr(visual, "image_size", None))
    if size is None:
        raise ValueError("the open_clip model's visual tower states no image size (visual.image_size).")
    size = (int(size), int(size)) if isinstance(size, numbers.Integral) else tuple(int(s) for s in size)
    mean = tuple(cfg.get("mean") or getattr(visual, "image_mean", None) or OPENAI_DATASET_MEAN)
    std = tuple(cfg.get("std") or getattr(visual, "image_std", None) or OPENAI_DATASET_STD)
    mean, std = (mean * 3 if len(mean) == 1 else mean), (std * 3 if len(std) == 1 else std)
    if any(not math.isfinite(s) or s <= 0 for s in std):
        raise ValueError(f"the open_clip model's image std {std} is not positive.")
    return {"size": size, "mean": mean, "std": std, "interpolation": str(cfg.get("interpolation") or "bicubic")}
