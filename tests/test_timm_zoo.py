"""Class-conditional entries as timm models: pretrained_cfg from the registry, logits = the engine's ranking."""
from __future__ import annotations

import pytest
import timm
import torch

import dc_zoo.timm_zoo as timm_zoo
from dc_zoo._registry import get_entry, list_models, register_entry, remove_entry
from dc_zoo.preprocess import to_pixels

TINY = "tiny-dit-timm-test"


@pytest.mark.parametrize("name", list_models(family="dit"))
def test_every_class_conditional_entry_is_a_timm_model(name):
    entry = get_entry(name)
    timm_name = timm_zoo.timm_name(name)
    assert timm_name in timm.list_models("*") and timm_name in timm.list_pretrained()
    cfg = timm.models.get_pretrained_cfg(timm_name)
    size = entry.resolution
    assert cfg.input_size == (3, size, size) and cfg.num_classes == entry.num_classes
    assert cfg.mean == cfg.std == (0.5, 0.5, 0.5)  # timm's normalisation yields the [-1, 1] the model expects
    assert cfg.hf_hub_id == entry.hub_id and cfg.interpolation == entry.interpolation and cfg.crop_pct == 1.0
    assert cfg.license == entry.license


def test_text_conditional_entries_are_not_timm_models():
    assert timm.list_models("sd_*") == []
    with pytest.raises(ValueError, match="text-conditional"):
        timm_zoo.register_timm_model("sd-2-base")


@pytest.fixture(scope="module")
def tiny_timm_model(tiny_pipelines):
    """The tiny DiT as a registry entry, registered with timm, created through timm.create_model."""
    data = get_entry("dit-xl-2-256").to_dict()
    data.update(name=TINY, hub_id=tiny_pipelines.dit_repo, revision=tiny_pipelines.dit_commit, revision_pinned=True,
                resolution=16, num_classes=10, accuracy=[], crop="center",
                schedule={"n_samples": [3, 6], "to_keep": [3, 1], "loss": "l2", "source": "test schedule"},
                cost={"num_classes": 10, "num_train_timesteps": 1000, "evaluations_per_image": 45})
    register_entry(data, overwrite=True)
    name = timm_zoo.register_timm_model(TINY)
    model = timm.create_model(name, pretrained=True, cache_dir=str(tiny_pipelines.cache_dir))
    yield name, model
    remove_entry(TINY)


def test_timm_forward_gives_logits_with_the_engines_argmax(tiny_timm_model, tiny_images):
    name, model = tiny_timm_model
    assert isinstance(model, timm_zoo.DiffusionClassifierNet) and model.num_classes == 10
    assert model.classifier.source.commit == model.classifier.entry.revision
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    x = torch.stack([transform(image) for image in tiny_images])
    assert torch.equal(x, to_pixels(tiny_images, model.classifier.preprocess))  # timm's eval transform = ours
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()
    engine = model.classifier.classify(tiny_images, list(range(10)))
    assert torch.equal(logits.argmax(dim=1), engine.predictions)
    assert torch.equal(logits, engine.logits)
    assert (engine.evaluations == 10 * 3 + 3 * 3).all()  # the entry's schedule: 3 timesteps x 10, then 3 new x 3


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(pretrained=False), "pretrained=True"),
    (dict(pretrained=True, num_classes=5), "no head to resize"),
    (dict(pretrained=True, in_chans=1), "RGB"),
])
def test_timm_create_model_refuses_what_a_diffusion_classifier_cannot_be(tiny_timm_model, tiny_pipelines, kwargs, fragment):
    name, _ = tiny_timm_model
    with pytest.raises(ValueError, match=fragment):
        timm.create_model(name, cache_dir=str(tiny_pipelines.cache_dir), **kwargs)


def test_timm_forward_rejects_the_wrong_input_size(tiny_timm_model):
    _, model = tiny_timm_model
    with pytest.raises(ValueError, match="resolve_data_config"):
        model(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="no trainable head"):
        model.reset_classifier(5)


@pytest.mark.parametrize("name", [n for n in list_models("*-digits-mini", family="dit")])
def test_dit_miniature_through_timm_classifies_digits_like_the_engine(name):
    from dc_zoo.digits import load_digits_split

    model = timm.create_model(timm_zoo.timm_name(name), pretrained=True)
    assert model.pretrained_cfg["hf_hub_id"] == get_entry(name).hub_id and model.classifier.source.source == "bundled"
    images, labels = load_digits_split("test")
    images, labels = images[:12], labels[:12]
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    with torch.no_grad():
        logits = model(torch.stack([transform(image) for image in images]))
    engine = model.classifier.classify(images, list(range(10)))
    assert logits.shape == (12, 10) and torch.equal(logits.argmax(dim=1), engine.predictions)
    assert float((engine.predictions == torch.tensor(labels)).float().mean()) >= 0.75
