"""A Diffusion Classifier behind the CLIP interface that clip_benchmark's metric code calls.

clip_benchmark scores a model as ``normalize(encode_image(x)) @ normalize(encode_text(t))``,
which fits two independent towers. A Diffusion Classifier (Li et al., ICCV 2023, arXiv
2303.16203) is a joint scorer: it needs the image and all candidates together. The adapter
lets the metric code's call order deliver them:

- ``zeroshot_classification``: the metric encodes every class's prompts before the first
  image, so the model knows the full class list when images arrive; each image then runs the
  engine's adaptive stages over *all* classes, and the image feature carries the engine's
  ranking (stage reached, then error) while each class's text feature is a one-hot column.
  The product of the two is that ranking, encoded by ``rank_ladder`` so that it survives
  clip_benchmark's autocast and its float16/bfloat16 matrix product.
- ``image_caption_selection`` (Winoground, SugarCrepe) and single-batch
  ``zeroshot_retrieval``: images arrive first (one-hot features), then the batch's captions;
  every (image, caption) pair of the batch is scored with shared noise, together with the
  unconditional error of each image, and caption features carry ``uncond error - cond error``
  (Krojer et al., Diffusion-ITM). Within an image (text direction) subtracting the image's own
  unconditional error changes nothing; across images (image direction) it removes the bias
  toward images that are easy to denoise. ``caption_score="raw"`` (``DC_ZOO_CAPTION_SCORE=raw``)
  scores ``-cond error`` instead, the paper's plain rule, to measure what the normalisation
  buys.

Networks run with autocast disabled, in the entry's own dtype, so ``--no_amp`` does not change
a single prediction.
"""
from __future__ import annotations

import dataclasses
import json

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..candidates import CandidateSet
from ..config import PreprocessConfig, ScoringConfig
from ..engine import score_candidates
from ..noise import image_key
from ..preprocess import to_pixels
from .imagenet_labels import imagenet_labels_for_classes
from .prompt_tokenizer import PromptTokenizer
from .rank_ladder import encode_ranks, top_exponent_for_unit_columns

logger = logging.getLogger(__name__)

__all__ = [
    "DiffusionClassifierForClipBenchmark", "PixelTransform", "UnsupportedTaskError",
    "ZEROSHOT_CLASSIFICATION", "IMAGE_CAPTION_SELECTION", "ZEROSHOT_RETRIEVAL",
]

ZEROSHOT_CLASSIFICATION = "zeroshot_classification"
IMAGE_CAPTION_SELECTION = "image_caption_selection"
ZEROSHOT_RETRIEVAL = "zeroshot_retrieval"
PAIR_TASKS = (IMAGE_CAPTION_SELECTION, ZEROSHOT_RETRIEVAL)
LOGIT_SCALE = 100.0  # clip_benchmark: logits = 100 * normalize(image_features) @ classifier
CAPTION_SCORES = ("normalized", "raw")  # uncond - cond error (Diffusion-ITM), or -cond error


class UnsupportedTaskError(ValueError):
    """A clip_benchmark task or option that a joint (image, text) scorer cannot express."""

    def __init__(self, task: str, reason: str):
        super().__init__(f"Diffusion Classifier cannot run {task}: {reason}")
        self.task = task


@dataclass(frozen=True)
class PixelTransform:
    """The dataset transform: a PIL image to the model's ``[3, S, S]`` pixels in ``[-1, 1]``.

    A small picklable object (not a bound method), so DataLoader workers do not copy the model.
    """

    preprocess: PreprocessConfig

    def __call__(self, image: Any) -> torch.Tensor:
        return to_pixels([image], self.preprocess)[0]


@dataclass
class RunStats:
    """What the evaluation cost, for the DC extras of the result file."""

    images: int = 0
    evaluations: int = 0
    seconds: float = 0.0
    predictions: list[int] = field(default_factory=list)


def _no_autocast(device: torch.device):
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # a device type autocast does not know: nothing to disable
        return contextlib.nullcontext()


def _append_condition(conditions: Any, extra: Any) -> Any:
    """Concatenate two conditioning pytrees of the same structure along the candidate dim."""
    leaves, spec = tree_flatten(conditions)
    extra_leaves, extra_spec = tree_flatten(extra)
    if spec != extra_spec:
        raise TypeError("The unconditional branch has a different structure from the prompt conditions.")
    return tree_unflatten(
        [torch.cat([a, b.to(a.device)]) if isinstance(a, torch.Tensor) else a for a, b in zip(leaves, extra_leaves)],
        spec,
    )


def _prompts_for(classname: str, templates: Any) -> list[str]:
    # Exactly as clip_benchmark's zero_shot_classifier builds them, so encode_text can check.
    if isinstance(templates, dict):
        return list(templates[classname])
    return [template.format(c=classname) for template in templates]


def single_stage(scoring: ScoringConfig) -> ScoringConfig:
    """Every candidate on the final stage's timesteps: pair scores that are comparable across images
    (so no strategy, budget or prefilter: a caption score must not depend on which others were dropped)."""
    if scoring.strategy or scoring.max_evaluations or scoring.prefilter:
        logger.info("caption scoring evaluates every caption at every timestep: the strategy, budget and "
                    "prefilter of the scoring config do not apply to it")
    return ScoringConfig(n_samples=(max(scoring.n_samples),), to_keep=(1,), loss=scoring.loss,
                         n_trials=scoring.n_trials, seed=scoring.seed, batch_size=scoring.batch_size)


def fit_to_candidates(scoring: ScoringConfig, n_candidates: int) -> ScoringConfig:
    """Keep at most all candidates in each stage (a 200-class subset under a 1000-class schedule)."""
    to_keep = tuple(min(k, n_candidates) for k in scoring.to_keep)
    if to_keep == scoring.to_keep:
        return scoring
    logger.info("to_keep %s capped at the %d candidates: %s", scoring.to_keep, n_candidates, to_keep)
    return dataclasses.replace(scoring, to_keep=to_keep)  # the strategy, budget and prefilter stay


class DiffusionClassifierForClipBenchmark(nn.Module):
    """A ``DiffusionClassifier`` as the ``(model, transform, tokenizer)`` clip_benchmark expects.

    Args:
        classifier: the ``DiffusionClassifier`` (backend, scoring, preprocessing).
        name: the zoo entry, recorded in the results.

    Attributes:
        tokenizer: ``PromptTokenizer``; pass it to clip_benchmark with the model.
        transform: ``PixelTransform`` with the entry's preprocessing.
        stats: images, network evaluations, seconds and predictions of the current task.
    """

    def __init__(self, classifier: Any, name: str | None = None, caption_score: str = "normalized"):
        super().__init__()
        if caption_score not in CAPTION_SCORES:
            raise ValueError(f"caption_score {caption_score!r} unknown; choose one of {CAPTION_SCORES} "
                             "(normalized: unconditional minus conditional error; raw: minus conditional error).")
        self.caption_score = caption_score
        self.classifier = classifier
        self.backend = classifier.backend  # a registered submodule: .eval()/.to() reach the networks
        entry = getattr(classifier, "entry", None)
        self.name = name or getattr(entry, "name", None) or type(classifier.backend).__name__
        self.tokenizer = PromptTokenizer()
        self.transform = PixelTransform(classifier.preprocess)
        self.task: str | None = None
        self.stats = RunStats()
        self.scoring: ScoringConfig = classifier.scoring
        self.candidates: CandidateSet | None = None
        self._class_prompts: list[tuple[str, ...]] | None = None
        self._text_calls = 0
        self._pending: tuple[torch.Tensor, list[str]] | None = None
        self._pair_batches = 0

    # ------------------------------------------------------------------ tasks
    def begin_classification(self, classnames: Sequence[str], templates: Any, dataset: Any = None) -> None:
        """Fix the class list (all of the dataset's classes) before clip_benchmark encodes prompts.

        Text models: each prompt is a candidate and a class is as good as its best prompt.
        Class-conditional models (DiT): the classes' labels; on ImageNet-derived datasets only
        the subset's labels, read from the dataset's folders when it has them.
        """
        classnames = [str(c) for c in classnames]
        if not classnames:
            raise ValueError("The dataset has no class names; zero-shot classification needs them.")
        conditions: list[Any] = []
        class_index: list[int] = []
        if self.backend.conditioning == "text":
            self._class_prompts = []
            for k, name in enumerate(classnames):
                prompts = _prompts_for(name, templates)
                if not prompts:
                    raise ValueError(f"Class {name!r} has no prompt; check the templates.")
                self._class_prompts.append(tuple(prompts))
                conditions.extend(prompts)
                class_index.extend([k] * len(prompts))
        else:
            self._class_prompts = None  # templates do not condition a class-label model
            labels = None
            if getattr(self.backend, "num_classes", None) == 1000:
                labels = imagenet_labels_for_classes(classnames, dataset)
            if labels is None:
                labels = [(int(c),) for c in self.classifier.candidates(classnames).conditions]
            for k, group in enumerate(labels):
                conditions.extend(group)
                class_index.extend([k] * len(group))
            logger.info("%s scores %d labels for %d classes (templates unused)", self.name, len(conditions), len(classnames))
        self.candidates = CandidateSet(tuple(conditions), tuple(class_index), tuple(classnames))
        self.scoring = fit_to_candidates(self.classifier.scoring, len(conditions))
        self._begin(ZEROSHOT_CLASSIFICATION)

    def begin_pairs(self, task: str) -> None:
        """Score (image, caption) pairs batch by batch (caption selection, one-batch retrieval)."""
        if task not in PAIR_TASKS:
            raise ValueError(f"Unknown pair task {task!r}; choose one of {PAIR_TASKS}.")
        if self.backend.conditioning != "text":
            raise UnsupportedTaskError(task, f"{self.name} is class-conditional, so captions cannot condition it; "
                                             "use a text-to-image entry (e.g. a Stable Diffusion one).")
        self.candidates = None
        self.scoring = single_stage(self.classifier.scoring)
        self._begin(task)

    def _begin(self, task: str) -> None:
        self.task = task
        self.stats = RunStats()
        self._text_calls = 0
        self._pending = None
        self._pair_batches = 0

    def extras(self) -> dict[str, Any]:
        """DC facts for the result file: flat scalars, so ``clip_benchmark build`` keeps them as columns."""
        s = self.scoring
        n = max(self.stats.images, 1)
        return {
            "dc_entry": self.name,
            "dc_evaluations_per_image": self.stats.evaluations / n,
            "dc_seconds_per_image": self.stats.seconds / n,
            "dc_schedule": (f"n_samples={'/'.join(map(str, s.n_samples))} to_keep={'/'.join(map(str, s.to_keep))} "
                            f"loss={s.loss} n_trials={s.n_trials}"
                            + (f" strategy={json.dumps(s.strategy, sort_keys=True)}" if s.strategy else "")
                            + (f" prefilter={s.prefilter['model']}:{s.prefilter['k']}" if s.prefilter else "")
                            + (f" max_evaluations={s.max_evaluations}" if s.max_evaluations else "")
                            + (f" timestep_weights={s.timestep_weights['name']}" if s.timestep_weights else "")
                            + (f" timestep_range={list(s.timestep_range)}" if s.timestep_range else "")),
            "dc_seed": s.seed,
            "dc_candidates": len(self.candidates) if self.candidates is not None else None,
            "dc_caption_score": self.caption_score if self.task in PAIR_TASKS else None,
        }

    # ------------------------------------------------------------------ the CLIP interface
    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        texts = self.tokenizer.decode(tokens)
        device = tokens.device if isinstance(tokens, torch.Tensor) else torch.device("cpu")
        with _no_autocast(device):
            if self.task == ZEROSHOT_CLASSIFICATION:
                return self._class_text_features(texts).to(device)
            if self.task in PAIR_TASKS:
                return self._caption_features(texts).to(device)
        raise RuntimeError(self._no_task_message("encode_text"))

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        pixels = self._check_pixels(images)
        with _no_autocast(pixels.device):
            if self.task == ZEROSHOT_CLASSIFICATION:
                return self._ranked_image_features(pixels).to(images.device)
            if self.task in PAIR_TASKS:
                return self._hold_images(pixels).to(images.device)
        raise RuntimeError(self._no_task_message("encode_image"))

    def _no_task_message(self, method: str) -> str:
        return (f"{method} was called before the task was known: run the model through clip_benchmark's "
                "metric functions after dc_zoo.clip_benchmark.register() (the loader does it), or call "
                "begin_classification(classnames, templates) / begin_pairs(task) first.")

    def _check_pixels(self, images: torch.Tensor) -> torch.Tensor:
        size = int(self.classifier.preprocess.size)
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"encode_image expects [B, 3, {size}, {size}] pixels made by this model's transform; "
                             f"got {shape}. Build the dataset with the transform returned by the loader.")
        return images.float()

    # ------------------------------------------------------------------ classification
    def _class_text_features(self, texts: list[str]) -> torch.Tensor:
        K = len(self.candidates.class_names)
        k = self._text_calls
        if k >= K:
            raise RuntimeError(f"encode_text was called for more than the {K} classes given to begin_classification.")
        if self._class_prompts is not None and tuple(texts) != self._class_prompts[k]:
            raise ValueError(f"encode_text call {k} got prompts {texts[:2]}... but class {k} "
                             f"({self.candidates.class_names[k]!r}) has {list(self._class_prompts[k][:2])}...: "
                             "the class prompts must be encoded once each, in class order.")
        self._text_calls += 1
        features = torch.zeros(len(texts), K + 1)
        features[:, k] = 1.0
        return features

    def _ranked_image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        K = len(self.candidates.class_names)
        if self._text_calls != K:
            raise RuntimeError(
                f"encode_image came after only {self._text_calls} of {K} classes' prompts were encoded; the "
                "adaptive stages need every class first (classifiers loaded with --load_clfs are not supported).")
        start = time.perf_counter()
        out = self.classifier.classify_pixels(pixels, self.candidates, scoring=self.scoring)
        self.stats.predictions.extend(int(p) for p in out.predictions)
        self.stats.evaluations += int(out.evaluations.sum())
        self.stats.seconds += time.perf_counter() - start
        self.stats.images += len(out)
        ranks = encode_ranks(out.logits, dim=-1, top_exponent=1)
        # |features| = LOGIT_SCALE, so 100 * normalize(features) returns the ladder values unchanged.
        pad = (LOGIT_SCALE**2 - ranks.square().sum(dim=1, keepdim=True)).clamp_min(0).sqrt()
        return torch.cat([ranks, pad], dim=1)

    # ------------------------------------------------------------------ image-caption pairs
    def _hold_images(self, pixels: torch.Tensor) -> torch.Tensor:
        self._pair_batches += 1
        if self.task == ZEROSHOT_RETRIEVAL and self._pair_batches > 1:
            raise UnsupportedTaskError(
                "zeroshot_retrieval over several batches",
                "images and captions of different batches are never scored together, so their pair scores "
                "do not exist; raise --batch_size to the dataset size.")
        self._pending = (pixels, [image_key(p) for p in pixels])
        n = pixels.shape[0]
        return torch.cat([torch.eye(n), torch.zeros(n, 1)], dim=1)

    def _caption_features(self, texts: list[str]) -> torch.Tensor:
        if self._pending is None:
            raise RuntimeError("encode_text for captions came before encode_image of their images; "
                               "clip_benchmark's pair metrics encode the images of a batch first.")
        pixels, keys = self._pending
        self._pending = None
        if self.task == IMAGE_CAPTION_SELECTION and len(keys) > 2 and self._pair_batches == 1:
            logger.warning("Scoring all %d x %d image-caption pairs of each batch: clip_benchmark does not tell the "
                           "model which captions belong to which image. --batch_size 1 gives the same numbers at "
                           "a fraction of the cost.", len(keys), len(texts))
        backend = self.backend
        start = time.perf_counter()
        x0 = self.classifier.encode_pixels(pixels.to(backend.device))
        conditions = backend.encode_conditions(texts)
        normalized = self.caption_score == "normalized"
        if normalized:
            conditions = _append_condition(conditions, backend.unconditional())
        scoring = self.classifier.scoring_for(self.scoring, x0, conditions)
        result = score_candidates(backend.denoise, backend.schedule, x0, conditions, scoring,
                                  sample_keys=keys, model_dtype=backend.dtype, pad_batches=backend.static_batch)
        self.stats.seconds += time.perf_counter() - start
        self.stats.images += len(keys)
        self.stats.evaluations += int(result.evaluations.sum())
        errors = result.candidate_errors.float().cpu()
        # [images, captions]; higher = better match
        normalised = errors[:, -1:] - errors[:, :-1] if normalized else -errors
        n_images = normalised.shape[0]
        values = encode_ranks(normalised, dim=None, top_exponent=top_exponent_for_unit_columns(n_images))
        pad = (1.0 - values.square().sum(dim=0)).clamp_min(0).sqrt()
        return torch.cat([values.t(), pad[:, None]], dim=1)

    def __repr__(self) -> str:
        return f"DiffusionClassifierForClipBenchmark({self.name!r}, task={self.task!r}, scoring={self.scoring})"
