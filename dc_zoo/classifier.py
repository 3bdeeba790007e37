"""``DiffusionClassifier``: a backend, a scoring config and images in; predictions out.

Composes the three layers: the backend (networks from diffusers or your own), the engine
(adaptive stages over shared noise) and candidates (prompts or labels per class).
"""
from __future__ import annotations

import dataclasses
import logging
import numbers
import time
from collections import Counter
from typing import Any, Hashable, Mapping, Sequence

import torch

from .backends.base import DiffusionBackend
from .batch_size import AUTO, BatchSizeSearch, batch_size_for_backend
from .candidates import CandidateSet, check_distinct_conditions, ranking_logits
from .config import PreprocessConfig, ScoringConfig
from .engine import EngineResult, NonFiniteScoreError, score_candidates
from .noise import image_key
from .outputs import ClassificationOutput
from .prefetch import Prefetcher, pin_for
from .image_io import ImageInputError
from .preprocess import as_image_list, check_finite_pixels, to_pixels, validate_images

logger = logging.getLogger(__name__)

__all__ = ["DiffusionClassifier"]


class DiffusionClassifier:
    """Zero-shot classifier from a conditional diffusion model (Li et al., ICCV 2023).

    Args:
        backend: the model family wrapper (``StableDiffusionBackend``, ``DiTBackend``,
            ``DenoiserBackend``).
        scoring: stages, loss, seed, batch size (default: the paper's 50/500, keep 5/1, l2).
        preprocess: image preparation; defaults to the backend's (from the model entry).
        templates: default prompt templates for text models, e.g. ``("a photo of a {}.",)``.
        image_batch_size: images scored together; their work is packed into shared batches.
    """

    def __init__(self, backend: DiffusionBackend, scoring: ScoringConfig | None = None,
                 preprocess: PreprocessConfig | None = None, templates: Sequence[str] = ("{}",),
                 image_batch_size: int = 8):
        self.backend = backend
        self.scoring = scoring or ScoringConfig()
        self.preprocess = preprocess or backend.preprocess
        self.templates = tuple(templates)
        self.image_batch_size = int(image_batch_size)
        self._condition_cache: dict[tuple, Any] = {}
        self._batch_size_cache: dict[tuple, BatchSizeSearch] = {}  # batch_size="auto" results
        self.entry: Any = None  # set by the factory for zoo models
        self.source: Any = None  # set by the factory: the resolved snapshot (repo, revision, commit, path)
        self.calibration: Any = None  # a dc_zoo.calibration.Calibration: the temperature of .probabilities
        self.error_cache_path: Any = None  # see use_error_cache
        self._cache_identity: dict | None = None
        self._error_caches: dict[str, Any] = {}
        self._prefilters: dict[str, Any] = {}
        self._latent_shape: tuple[Any, tuple[int, ...]] | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pipeline(cls, pipe, **kwargs) -> "DiffusionClassifier":
        """From a loaded diffusers pipeline (SD 1.x/2.x, SDXL, SD3/3.5, FLUX.1 or DiT).

        The backend shares the pipeline's modules (no copies): casting the classifier casts the
        pipeline, and an SDXL VAE in float16 is turned to float32 in place (it overflows in float16).
        """
        from .backends import DiTBackend, StableDiffusion3Backend, StableDiffusionBackend, StableDiffusionXLBackend

        from .backends import FluxBackend

        name = type(pipe).__name__
        if name.startswith("Flux") and not name.startswith("Flux2") and hasattr(pipe, "text_encoder_2"):
            family = FluxBackend  # FLUX.1's FluxPipeline: before the attribute tests the others share
        elif hasattr(pipe, "transformer") and hasattr(pipe, "text_encoder_3"):
            family = StableDiffusion3Backend
        elif hasattr(pipe, "unet") and hasattr(pipe, "text_encoder_2"):
            family = StableDiffusionXLBackend
        elif hasattr(pipe, "unet") and hasattr(pipe, "text_encoder"):
            family = StableDiffusionBackend
        elif hasattr(pipe, "transformer") and getattr(pipe.transformer.config, "num_embeds_ada_norm", None):
            family = DiTBackend
        else:
            raise ValueError(
                f"No backend supports pipeline {name}; supported: StableDiffusionPipeline-, StableDiffusionXLPipeline-, "
                "StableDiffusion3Pipeline-, FluxPipeline- and DiTPipeline-layout models (wrap any other denoiser in "
                "dc_zoo.DenoiserBackend)."
            )
        # the backend gets the classifier's preprocessing too: SDXL's size conditioning and FLUX's shift follow it
        backend = family.from_pipeline(pipe, kwargs.get("preprocess"))
        return cls(backend, **kwargs)

    @classmethod
    def from_pretrained(cls, name: str, **kwargs) -> "DiffusionClassifier":
        """By zoo name, ``hf-hub:org/repo[@rev]`` or local directory (see ``dc_zoo.create_model``)."""
        from ._factory import create_model

        return create_model(name, **kwargs)

    # ------------------------------------------------------------------ candidates
    def candidates(self, classes: Sequence[Any] | None = None, *,
                   prompts: Mapping[str, Sequence[str]] | None = None,
                   templates: Sequence[str] | None = None) -> CandidateSet:
        """Build the candidate set for ``classes`` (names or labels) or explicit ``prompts``."""
        if (classes is None) == (prompts is None):
            raise ValueError("Give exactly one of classes=[...] or prompts={class: [prompt, ...]}.")
        if self.backend.conditioning == "class_label":
            if prompts is not None:
                raise ValueError("This model is class-conditional: pass classes=[labels or names], not prompts.")
            return self._label_candidates(list(classes))
        if prompts is not None:
            return CandidateSet.from_prompts(prompts)
        classes = list(classes)
        if any(not isinstance(c, str) for c in classes):
            raise TypeError("Text-conditional models take class names (str); got "
                            f"{[c for c in classes if not isinstance(c, str)][:3]}.")
        return CandidateSet.from_classes(classes, templates if templates is not None else self.templates)

    def _label_candidates(self, classes: list[Any]) -> CandidateSet:
        if not classes:
            raise ValueError("The class list is empty; give at least two class labels or names.")
        names = self.backend.label_names() or {}
        classes = [int(c) if _is_integer_label(c) else c for c in classes]
        if all(isinstance(c, int) for c in classes):
            shown = [names.get(c, str(c)) for c in classes]
            # ImageNet names repeat (134 and 517 are both "crane"): keep them apart by label.
            seen = Counter(shown)
            shown = [n if seen[n] == 1 else f"{n} ({c})" for n, c in zip(shown, classes)]
            return CandidateSet.from_labels(classes, shown)
        lookup: dict[str, int] = {}
        for label, name in names.items():
            for alias in str(name).split(","):
                lookup.setdefault(alias.strip().lower(), label)
        labels = []
        for c in classes:
            if isinstance(c, int):
                labels.append(c)
            elif str(c).strip().lower() in lookup:
                labels.append(lookup[str(c).strip().lower()])
            else:
                import difflib

                close = difflib.get_close_matches(str(c).lower(), list(lookup), n=3)
                raise KeyError(f"Class name {c!r} is not one of this model's labels; close matches: {close}. "
                               "Pass integer labels to be explicit.")
        return CandidateSet.from_labels(labels, [str(c) for c in classes])

    def encode_candidates(self, candidates: CandidateSet) -> Any:
        """Conditioning for a candidate set, computed once per distinct set, device and dtype."""
        key = (tuple(candidates.conditions), self.backend.device, self.backend.dtype)
        if key not in self._condition_cache:
            self._condition_cache.clear()
            conditions = self.backend.encode_conditions(list(candidates.conditions))
            check_distinct_conditions(conditions, candidates)
            self._condition_cache[key] = conditions
        return self._condition_cache[key]

    # ------------------------------------------------------------------ reuse and prefiltering
    def model_identity(self) -> dict[str, Any]:
        """What fixes this classifier's network errors up to the scoring settings: the weights
        (resolved revision, or a hash of the parameters for a model built in code), backend,
        dtype, device type, speed levers, preprocessing and the noise version."""
        from .noise import NOISE_VERSION

        device = torch.device(self.backend.device)
        identity: dict[str, Any] = {
            "backend": type(self.backend).__name__, "dtype": str(self.backend.dtype), "device": device.type,
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "cpu_threads": torch.get_num_threads() if device.type == "cpu" else None,  # reduction order: last bits
            "torch": torch.__version__, "speed_levers": list(getattr(self.backend, "speed_levers", ())),
            "preprocess": self.preprocess.identity(), "noise": NOISE_VERSION,
            "schedule": _schedule_digest(self.backend.schedule),
        }
        source = self.source
        if source is not None and (getattr(source, "commit", None) or getattr(source, "revision", None)):
            identity["weights"] = {"repo": getattr(source, "repo_id", None),
                                   "revision": getattr(source, "commit", None) or getattr(source, "revision", None)}
        else:
            identity["weights"] = {"parameters_sha256": _parameters_digest(self.backend)}
        return identity

    def use_error_cache(self, path: Any, identity: Mapping[str, Any] | None = None) -> "DiffusionClassifier":
        """Store every network error in the SQLite file ``path`` and reuse those found there
        (``dc_zoo.error_cache``): a sweep of schedules and strategies over the same images costs
        the union of their evaluations. ``identity`` replaces ``model_identity()`` (for a model
        whose parameters cannot be hashed); ``path=None`` turns the cache off."""
        for cache in self._error_caches.values():
            cache.close()
        self._error_caches = {}
        self.error_cache_path = path
        self._cache_identity = dict(identity) if identity is not None else None  # None: model_identity() per call
        return self

    def _error_cache_for(self, scoring: ScoringConfig):
        if self.error_cache_path is None:
            return None
        from .error_cache import ErrorCache, namespace_for

        # computed per call: speed levers, dtype or device changed after use_error_cache() count
        identity = self._cache_identity if self._cache_identity is not None else self.model_identity()
        namespace = namespace_for({**identity, "loss": scoring.loss, "seed": int(scoring.seed)})
        if namespace not in self._error_caches:
            self._error_caches[namespace] = ErrorCache(self.error_cache_path, namespace)
        return self._error_caches[namespace]

    def prefilter_mask(self, pixels: torch.Tensor, candidates: CandidateSet, spec: Mapping[str, Any]) -> torch.Tensor:
        """``[N, C]`` candidates in the race after a contrastive prefilter (``dc_zoo.strategies.prefilter``)
        keeps its top-k classes; every prompt of a kept class stays."""
        from .strategies.prefilter import ContrastivePrefilter

        key = repr(sorted(spec.items()))
        if key not in self._prefilters:
            templates = spec.get("templates")
            # templates: the spec's, else the CLIP entry's own (the diffusion model's may mean nothing to CLIP)
            self._prefilters[key] = ContrastivePrefilter(spec["model"], int(spec["k"]),
                                                         templates=tuple(templates) if templates else None,
                                                         device=self.backend.device)
        keep = self._prefilters[key].keep(pixels.float(), list(candidates.class_names)).cpu()  # [N, K]
        return keep[:, torch.tensor(candidates.class_index)]

    # ------------------------------------------------------------------ scoring
    def scoring_for(self, scoring: ScoringConfig, x0: torch.Tensor, conditions: Any) -> ScoringConfig:
        """``scoring`` with ``batch_size="auto"`` replaced by a measured number (see
        ``dc_zoo.batch_size``); searched once per device, dtype and sample shape, then reused."""
        if scoring.batch_size != AUTO:
            return scoring
        key = (self.backend.device, self.backend.dtype, tuple(x0.shape[1:]))
        if key not in self._batch_size_cache:
            self._batch_size_cache[key] = batch_size_for_backend(self.backend, x0, conditions)
        return dataclasses.replace(scoring, batch_size=self._batch_size_cache[key].batch_size)

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """The clean samples x0 of preprocessed pixels (``[B, 3, S, S]`` in [-1, 1]): given to the
        backend in the model's channels and range (``PreprocessConfig.to_model_input``)."""
        return self.backend.encode_images(self.preprocess.to_model_input(pixels.to(self.backend.device)))

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """The shape of one image's x0 (and eps) under this classifier's preprocessing, e.g. for
        ``classify(..., noise=...)``: measured once by encoding a blank image."""
        key = (self.preprocess, id(self.backend))
        if self._latent_shape is None or self._latent_shape[0] != key:
            size = int(self.preprocess.size)
            with torch.inference_mode():
                x0 = self.encode_pixels(torch.zeros(1, 3, size, size))
            self._latent_shape = (key, tuple(int(v) for v in x0.shape[1:]))
        return self._latent_shape[1]

    def score_pixels(self, pixels: torch.Tensor, candidates: CandidateSet, sample_keys: Sequence[Hashable],
                     scoring: ScoringConfig | None = None, noise: torch.Tensor | None = None,
                     on_batch=None) -> EngineResult:
        """Engine call on already preprocessed pixels (``[B, 3, S, S]`` in [-1, 1]); the backend gets them
        in the model's channels and range (``PreprocessConfig.to_model_input``)."""
        scoring = scoring or self.scoring
        # Pinned pixels (dc_zoo.prefetch) copy asynchronously; the engine reads them on the same stream.
        x0 = self.encode_pixels(pixels.to(self.backend.device, non_blocking=pixels.is_pinned()))
        conditions = self.encode_candidates(candidates)
        scoring = self.scoring_for(scoring, x0, conditions)
        mask = self.prefilter_mask(pixels, candidates, scoring.prefilter) if scoring.prefilter else None
        # Caller-supplied noise is not the keyed noise the cache's errors belong to: no cache then.
        cache = self._error_cache_for(scoring) if noise is None else None
        # A cached error belongs to the image content and the noise key together (caller keys such
        # as dataset indices repeat across datasets).
        cache_keys = [f"{image_key(p)}|{k!s}" for p, k in zip(pixels, sample_keys)] if cache is not None else None
        return score_candidates(
            self.backend.denoise, self.backend.schedule, x0, conditions, scoring,
            sample_keys=sample_keys, noise=noise, model_dtype=self.backend.dtype, on_batch=on_batch,
            pad_batches=self.backend.static_batch, candidate_mask=mask, error_cache=cache,
            condition_keys=[_condition_key(c) for c in candidates.conditions] if cache is not None else None,
            cache_keys=cache_keys,
        )

    def classify_pixels(self, pixels: torch.Tensor, candidates: CandidateSet,
                        sample_keys: Sequence[Hashable] | None = None, scoring: ScoringConfig | None = None,
                        keep_timestep_errors: bool = False, noise: torch.Tensor | None = None) -> ClassificationOutput:
        """Score preprocessed pixels in chunks of ``image_batch_size``; keys default to content hashes.

        The one scoring path behind ``classify``, the timm module, the clip_benchmark adapter
        and ``dc-zoo eval``, so they all see the same noise for the same image.

        Raises:
            NonFiniteScoreError: carries ``.completed`` (outputs of the chunks finished before).
        """
        if sample_keys is not None and len(sample_keys) != pixels.shape[0]:
            raise ValueError(f"Got {len(sample_keys)} sample_keys for {pixels.shape[0]} images.")
        _check_noise(noise, pixels.shape[0])
        check_finite_pixels(pixels, sample_keys)  # before any network call; content keys need finite pixels
        keys = list(sample_keys) if sample_keys is not None else [image_key(p) for p in pixels]
        outputs: list[ClassificationOutput] = []
        for lo in range(0, len(keys), self.image_batch_size):
            hi = lo + self.image_batch_size
            try:
                result = self.score_pixels(pixels[lo:hi], candidates, keys[lo:hi], scoring,
                                           noise=noise[lo:hi] if noise is not None else None)
            except NonFiniteScoreError as err:
                err.completed = _concat(outputs) if outputs else None
                raise
            outputs.append(self.to_output(result, candidates, keep_timestep_errors=keep_timestep_errors))
        return _concat(outputs)

    def classify(self, images: Any, classes: Sequence[Any] | None = None, *,
                 prompts: Mapping[str, Sequence[str]] | None = None,
                 templates: Sequence[str] | None = None,
                 sample_keys: Sequence[Hashable] | None = None,
                 labels: Sequence[int] | None = None,
                 scoring: ScoringConfig | None = None,
                 progress: bool = False,
                 return_timestep_errors: bool = False,
                 prefetch: int = 2,
                 value_range: tuple[float, float] | None = None,
                 noise: torch.Tensor | None = None) -> ClassificationOutput:
        """Classify images against class names / labels or explicit prompts.

        Args:
            images: file paths, PIL images, numpy arrays (``HWC``), a ``[B, C, H, W]`` tensor or a
                list of them. ``uint8`` pixels are 0..255, floats 0..1 (see ``dc_zoo.preprocess``).
            classes: class names (text models) or labels/names (class-conditional models).
            prompts: alternatively ``{class_name: [prompt, ...]}`` (each prompt a candidate).
            templates: prompt templates for ``classes`` (default: the classifier's).
            sample_keys: each image's identity for its noise (default: a content hash, so the
                result does not depend on order or batching).
            labels: true labels, only to show running accuracy in the progress bar.
            scoring: override the classifier's ``ScoringConfig`` for this call.
            progress: show a tqdm bar (images, running accuracy, evaluations/image, ETA).
            return_timestep_errors: keep the per-(candidate, timestep) errors.
            prefetch: chunks preprocessed ahead on a background thread while one is scored
                (``dc_zoo.prefetch``); 0 preprocesses on the calling thread.
            value_range: ``(low, high)`` of array / tensor pixels when not their dtype's default,
                e.g. ``(-1, 1)`` for diffusers-style tensors or ``(0, 255)`` for floats in 0..255.
            noise: the eps to use instead of the keyed noise, ``[N, n_timesteps, n_trials,
                *latent_shape]`` for the plan of ``scoring`` (``ClassificationOutput.noise()`` of an
                earlier result has this layout; ``clf.latent_shape`` is the last part). Scores
                then depend on it, not on the seed; the error cache is not used.

        Returns:
            A ``ClassificationOutput``.

        Raises:
            dc_zoo.ImageInputError: an image that cannot be used as given, named by position and
                path or key (missing or damaged file, values outside the range, NaN/inf). Paths,
                layouts and value ranges are checked before any network call; a file that cannot
                be decoded stops the call at its chunk, with ``.completed`` holding the outputs
                of the images before it.
            NonFiniteScoreError: carries ``.completed`` (outputs of the images finished before).
        """
        scoring = scoring or self.scoring
        candidates = self.candidates(classes, prompts=prompts, templates=templates)
        items = as_image_list(images)
        if not items:
            raise ValueError("No images given.")
        if sample_keys is not None and len(sample_keys) != len(items):
            raise ValueError(f"Got {len(sample_keys)} sample_keys for {len(items)} images.")
        if labels is not None and len(labels) != len(items):
            raise ValueError(f"Got {len(labels)} labels for {len(items)} images.")
        validate_images(items, value_range=value_range, names=sample_keys)
        _check_noise(noise, len(items))
        outputs: list[ClassificationOutput] = []
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(items), unit="img", desc="diffusion-classifier", dynamic_ncols=True)
        correct, done, spent, start = 0, 0, 0, time.perf_counter()

        def prepare(lo: int) -> tuple[int, torch.Tensor]:  # runs on the read-ahead thread
            hi = lo + self.image_batch_size
            names = sample_keys[lo:hi] if sample_keys is not None else None
            pixels = to_pixels(items[lo:hi], self.preprocess, value_range=value_range, names=names, start=lo)
            return lo, pin_for(pixels, self.backend.device)

        try:
            # Errors of a chunk (a file that cannot be decoded) arrive after the chunks before it.
            with Prefetcher(range(0, len(items), self.image_batch_size), prepare, ahead=prefetch,
                            name="dc-zoo-classify-read") as ready:
                for lo, pixels in ready:
                    n = pixels.shape[0]
                    keys = sample_keys[lo : lo + n] if sample_keys is not None else None
                    try:
                        out = self.classify_pixels(pixels, candidates, keys, scoring, return_timestep_errors,
                                                   noise=noise[lo : lo + n] if noise is not None else None)
                    except ImageInputError as err:
                        raise err.at(lo + (err.index or 0)) from None
                    except NonFiniteScoreError as err:
                        err.completed = _concat(outputs) if outputs else None
                        raise
                    outputs.append(out)
                    done += n
                    spent += int(out.evaluations.sum())
                    if bar is not None:
                        postfix = {"evals/img": f"{spent / done:.0f}"}  # a running mean: strategies vary per image
                        if labels is not None:
                            correct += int((out.predictions.cpu() == torch.as_tensor(labels[lo : lo + n])).sum())
                            postfix["acc"] = f"{100.0 * correct / done:.1f}%"
                        postfix["s/img"] = f"{(time.perf_counter() - start) / done:.2f}"
                        bar.set_postfix(postfix)
                        bar.update(n)
        except ImageInputError as err:
            err.completed = _concat(outputs) if outputs else None
            raise
        finally:
            if bar is not None:
                bar.close()
        return _concat(outputs)

    def to_output(self, result: EngineResult, candidates: CandidateSet,
                  keep_timestep_errors: bool = False) -> ClassificationOutput:
        """Class-level output from an engine result (best prompt per class)."""
        errors, stage, _ = candidates.reduce(result.candidate_errors, result.stage_reached)
        class_index = torch.tensor(candidates.class_index, device=result.prediction.device)
        return ClassificationOutput(
            predictions=class_index[result.prediction].cpu(),
            class_names=candidates.class_names,
            logits=ranking_logits(errors, stage).cpu(),
            errors=errors.cpu(),
            stage_reached=stage.cpu(),
            evaluations=result.evaluations.cpu(),
            candidate_errors=result.candidate_errors.cpu(),
            sample_keys=list(result.sample_keys),
            timesteps=result.plan.timesteps,
            stage_positions=result.plan.stage_positions,
            timestep_errors=result.timestep_errors.cpu() if keep_timestep_errors else None,
            temperature=self.calibration.temperature if self.calibration is not None else None,
            seed=result.seed, n_trials=result.n_trials, latent_shape=result.latent_shape,
            extras={"strategy": result.strategy,
                    "cached_evaluations": result.cached_evaluations.cpu() if result.cached_evaluations is not None
                    else torch.zeros_like(result.evaluations.cpu())},
        )

    def __repr__(self) -> str:
        return (f"DiffusionClassifier(backend={type(self.backend).__name__}, scoring={self.scoring}, "
                f"preprocess={self.preprocess})")


def _is_integer_label(value: Any) -> bool:
    """Python/numpy integers and 0-d integer tensors are labels; bools and strings are not."""
    if isinstance(value, bool):
        return False
    if isinstance(value, torch.Tensor):
        return value.ndim == 0 and not value.is_floating_point() and value.dtype != torch.bool
    return isinstance(value, numbers.Integral)


def _condition_key(condition: Any) -> str:
    """A candidate's stable text for the error cache: the prompt, or ``label:<n>``."""
    return condition if isinstance(condition, str) else f"label:{int(condition)}"


def _schedule_digest(schedule: Any) -> str:
    """The noise schedule exactly: its class, its public settings (``settings()`` where it has one) and
    the bytes of its tensors (private attributes, such as per-device copies made on first use, are
    caches, not settings)."""
    import hashlib

    digest = hashlib.sha256(type(schedule).__name__.encode())
    settings = schedule.settings() if hasattr(schedule, "settings") else vars(schedule)
    for name, value in sorted(settings.items()):
        if name.startswith("_"):
            continue
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode() + t.view(torch.uint8).numpy().tobytes())
        else:
            digest.update(f"{name}={value!r}".encode())
    return digest.hexdigest()


def _parameters_digest(backend: Any) -> str:
    """sha256 of every tensor of the backend's networks (names, dtypes, shapes, bytes)."""
    import hashlib

    callables = [name for name, v in vars(backend).items()
                 if callable(v) and not isinstance(v, torch.nn.Module) and not isinstance(v, type)
                 and name.endswith("encoder")]
    if callables:
        raise ValueError(f"{type(backend).__name__} uses {callables}, plain functions whose effect no hash can see: "
                         "pass use_error_cache(path, identity={...}) naming your model and encoders (e.g. their "
                         "checkpoint hashes and code version).")
    modules = {name: m for name, m in sorted(vars(backend).items()) if isinstance(m, torch.nn.Module)}
    if not modules:
        raise ValueError(f"{type(backend).__name__} holds no torch module whose parameters identify it; pass "
                         "use_error_cache(path, identity={...}) naming the weights (e.g. a checkpoint hash).")
    digest = hashlib.sha256()
    for name, module in modules.items():
        for key, tensor in sorted(module.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            digest.update(f"{name}.{key}:{t.dtype}:{tuple(t.shape)}".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _check_noise(noise: Any, n_images: int) -> None:
    """Caller-supplied eps must have one row per image (the engine checks the rest of its shape)."""
    if noise is not None and (not isinstance(noise, torch.Tensor) or noise.ndim < 3 or noise.shape[0] != n_images):
        raise ValueError(f"noise must be a tensor [N, n_timesteps, n_trials, *latent_shape] with one row per image "
                         f"({n_images}); got {tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__}. "
                         "ClassificationOutput.noise() gives it in that layout.")


def _concat(outputs: list[ClassificationOutput]) -> ClassificationOutput:
    first = outputs[0]
    if len(outputs) == 1:
        return first
    cat = lambda name: torch.cat([getattr(o, name) for o in outputs])  # noqa: E731
    return ClassificationOutput(
        predictions=cat("predictions"), class_names=first.class_names, logits=cat("logits"),
        errors=cat("errors"), stage_reached=cat("stage_reached"), evaluations=cat("evaluations"),
        candidate_errors=cat("candidate_errors"),
        sample_keys=[k for o in outputs for k in o.sample_keys],
        timesteps=first.timesteps, stage_positions=first.stage_positions,
        timestep_errors=cat("timestep_errors") if first.timestep_errors is not None else None,
        temperature=first.temperature, seed=first.seed, n_trials=first.n_trials, latent_shape=first.latent_shape,
        extras={"strategy": first.extras.get("strategy"),
                "cached_evaluations": torch.cat([o.extras["cached_evaluations"] for o in outputs])}
        if "cached_evaluations" in first.extras else {},
    )
