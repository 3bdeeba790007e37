"""The class-conditional zoo entries as timm models: ``timm.create_model("dit_xl_2_256", pretrained=True)``.

A class-conditional diffusion model (DiT-XL/2, the DiT digits miniature) is an image
classifier over its own labels (Li et al., ICCV 2023, https://arxiv.org/abs/2303.16203,
DiT-XL/2 on ImageNet). Registering it with timm gives it timm's workflow: a
``pretrained_cfg`` (input size, mean/std 0.5 so inputs land in [-1, 1], crop, interpolation,
num_classes, Hub id), ``timm.data.resolve_data_config`` / ``create_transform`` for the eval
transform, and a module whose ``forward(images)`` returns ``[B, num_classes]`` logits. The
logits are the engine's ranking scores (``candidates.ranking_logits``: later stage first, then
lower denoising error), so their argmax is the engine's prediction.

Registration is driven by the registry: every entry of family ``dit`` becomes the timm model
named like the entry with ``_`` for ``-`` (``dit-xl-2-256`` -> ``dit_xl_2_256``); weights load
through ``dc_zoo.create_model`` (the Hugging Face cache / the bundled miniature cache), not
through timm's own loader, which knows no diffusers layout.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, is_model, register_model
from torch import nn

from ._registry import RegistryEntry, get_entry, list_models
from .classifier import DiffusionClassifier
from .outputs import ClassificationOutput

logger = logging.getLogger(__name__)

__all__ = ["DiffusionClassifierNet", "timm_name", "pretrained_cfg_for", "register_timm_model", "TIMM_MODELS"]

_MEAN_STD = (0.5, 0.5, 0.5)  # the diffusion models' [-1, 1] inputs
default_cfgs: dict[str, Any] = {}  # timm's register_model reads the module's default_cfgs
TIMM_MODELS: dict[str, str] = {}  # timm name -> registry name


class DiffusionClassifierNet(nn.Module):
    """A ``DiffusionClassifier`` over all labels of a class-conditional model, as a timm-style module.

    ``forward`` takes timm-normalised images (mean/std 0.5, so values in ``[-1, 1]``) of the
    model's resolution and returns ``[B, num_classes]`` ranking logits; ``forward_output``
    returns the full ``ClassificationOutput`` (errors, stages, evaluations).
    """

    def __init__(self, classifier: DiffusionClassifier, num_classes: int):
        super().__init__()
        self.classifier = classifier
        self.backend = classifier.backend  # the networks, as submodules: .to(), .eval(), state_dict() reach them
        self.num_classes = int(num_classes)
        self.candidates = classifier.candidates(list(range(self.num_classes)))

    @property
    def resolution(self) -> int:
        return int(self.classifier.preprocess.size)

    def forward_output(self, x: torch.Tensor) -> ClassificationOutput:
        if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != (self.resolution, self.resolution):
            raise ValueError(
                f"Expected images [B, 3, {self.resolution}, {self.resolution}] normalised with mean=std=0.5, got "
                f"{tuple(x.shape)}; build the transform with timm.data.create_transform(**timm.data."
                "resolve_data_config(model=model)), or use model.classifier.classify(pil_images, ...)."
            )
        return self.classifier.classify_pixels(x.float(), self.candidates)  # content keys, as classify()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_output(x).logits.to(x.device)

    def get_classifier(self) -> nn.Module:
        return self.backend

    def reset_classifier(self, num_classes: int, *args, **kwargs) -> None:
        raise ValueError(
            "A diffusion classifier has no trainable head: its classes are the model's own labels. To score a subset, "
            "call model.classifier.classify(images, classes=[...])."
        )


def timm_name(entry_name: str) -> str:
    """The timm model name of a registry entry (``dit-xl-2-256`` -> ``dit_xl_2_256``)."""
    return entry_name.replace("-", "_").replace(".", "_")


def pretrained_cfg_for(entry: RegistryEntry) -> dict[str, Any]:
    """timm ``PretrainedCfg`` fields of a class-conditional registry entry."""
    size = int(entry.resolution)
    return dict(
        hf_hub_id=entry.hub_id, input_size=(3, size, size), fixed_input_size=True,
        interpolation=entry.interpolation, crop_pct=1.0, crop_mode="center", mean=_MEAN_STD, std=_MEAN_STD,
        num_classes=int(entry.num_classes), license=entry.license, description=entry.description,
        origin_url=f"https://huggingface.co/{entry.hub_id}", paper_ids="arXiv:2303.16203",
        paper_name="Your Diffusion Model is Secretly a Zero-Shot Classifier",
        notes=(f"dc_zoo registry entry {entry.name}; revision {entry.revision}",
               f"default schedule n_samples={entry.n_samples} to_keep={entry.to_keep} loss={entry.loss}: "
               f"{entry.cost['evaluations_per_image']} network evaluations per image",
               "crop: timm's eval transform resizes and center-crops; the paper's ADM crop is "
               "model.classifier.preprocess (dc_zoo.preprocess)"),
        first_conv=None, classifier=None,
    )


def _load_net(entry_name: str, num_classes: int | None = None, in_chans: int = 3,
              img_size: tuple[int, int] | int | None = None, hf_cache_dir: str | None = None,
              **create_kwargs: Any) -> DiffusionClassifierNet:
    from ._factory import create_model

    entry = get_entry(entry_name)
    if num_classes is not None and int(num_classes) != entry.num_classes:
        raise ValueError(
            f"{timm_name(entry.name)} scores its {entry.num_classes} own labels; num_classes={num_classes} is not "
            "possible (there is no head to resize). Score a subset with model.classifier.classify(images, classes=[...])."
        )
    if int(in_chans) != 3:
        raise ValueError(f"{timm_name(entry.name)} takes RGB images; in_chans={in_chans} is not supported.")
    if img_size is not None:
        size = tuple(img_size) if isinstance(img_size, (tuple, list)) else (int(img_size), int(img_size))
        if size != (entry.resolution, entry.resolution):
            raise ValueError(f"{timm_name(entry.name)} works at {entry.resolution} px only, got img_size={img_size}.")
    classifier = create_model(entry.name, cache_dir=hf_cache_dir, **create_kwargs)
    return DiffusionClassifierNet(classifier, entry.num_classes).eval()


def _entrypoint(entry: RegistryEntry):
    name = timm_name(entry.name)

    def create(pretrained: bool = False, **kwargs: Any) -> DiffusionClassifierNet:
        if not pretrained:
            raise ValueError(
                f"{name} is a zero-shot classifier made of a pretrained diffusion model; a randomly initialised one "
                f"classifies nothing. Use timm.create_model({name!r}, pretrained=True)."
            )
        # timm's own weight loader does not know the diffusers layout: weights come from dc_zoo.create_model.
        # build_model_with_cfg consumes cache_dir itself: hand it to our loader under another name.
        return build_model_with_cfg(_load_net, name, pretrained=False, entry_name=entry.name,
                                    hf_cache_dir=kwargs.pop("cache_dir", None), **kwargs)

    create.__name__ = create.__qualname__ = name
    create.__module__ = __name__
    create.__doc__ = f"{entry.description} (dc_zoo registry entry {entry.name!r})."
    return create


def register_timm_model(entry: RegistryEntry | str) -> str:
    """Register a class-conditional registry entry as a timm model; returns its timm name.

    Raises:
        ValueError: the entry is text-conditional (timm models have a fixed label set).
    """
    entry = get_entry(entry) if isinstance(entry, str) else entry
    if not entry.class_conditional or not entry.num_classes:
        raise ValueError(
            f"{entry.name} is text-conditional: its classes are whatever prompts you give, so it has no fixed "
            "timm head. Use dc_zoo.create_model(name).classify(images, classes=[...])."
        )
    name = timm_name(entry.name)
    if TIMM_MODELS.get(name) == entry.name and is_model(name):
        return name
    if is_model(name) and name not in TIMM_MODELS:
        raise ValueError(f"timm already has a model called {name!r}; rename the registry entry {entry.name!r}.")
    default_cfgs.update(generate_default_cfgs({name: pretrained_cfg_for(entry)}))
    fn = _entrypoint(entry)
    globals()[name] = fn
    register_model(fn)
    TIMM_MODELS[name] = entry.name
    return name


for _name in list_models(family="dit"):
    register_timm_model(_name)
