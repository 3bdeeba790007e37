"""The trained digits miniatures: bundled Hub cache layout, offline loading, held-out accuracy.

Each model is loaded the way a user's code would load a Hub model, through huggingface_hub
with ``HF_HUB_OFFLINE=1`` from a copy of the bundled cache in a temporary directory, and must
classify the digits TEST split (never seen in training) above a floor a few points under the
accuracy measured when the weights were committed (MODEL_CARD.md).
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

import dc_zoo
from dc_zoo import DiffusionClassifier, ScoringConfig
from dc_zoo.digits import (CLASS_NAMES, EVALUATION_SCHEDULES, N_TEST, N_TRAIN, TEMPLATE, TEST_INDICES_SHA256,
                           load_digits_split, split_indices, write_digits_webdataset)

BUNDLED_CACHE = Path(dc_zoo.__file__).parent / "hub_cache"
MINIATURES = ("sd-digits-mini", "dit-digits-mini", "clip-digits-mini")
# Measured with the noise keyed by timestep: sd 0.9722, dit 0.9639 (schedule (5, 50)/(2, 1), l2, 140 evaluations per
# image), clip 0.9806; the floors leave a few points for float differences on other CPUs/libraries.
ACCURACY_FLOORS = {"sd-digits-mini": 0.95, "dit-digits-mini": 0.93, "clip-digits-mini": 0.95}


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> Path:
    """A copy of the bundled cache: proves it is self-contained (plain files, no symlinks)."""
    target = tmp_path_factory.mktemp("hf") / "hub"
    shutil.copytree(BUNDLED_CACHE, target, symlinks=True)
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = True  # in case huggingface_hub was imported before
    return target


@pytest.fixture(scope="module")
def test_split():
    return load_digits_split("test")


def _accuracy(predictions, labels) -> float:
    return float((torch.as_tensor(predictions) == torch.as_tensor(labels)).float().mean())


# ----------------------------------------------------------------------------- the split
def test_digits_split_is_pinned_and_stratified():
    train, test = split_indices("train"), split_indices("test")
    assert (len(train), len(test)) == (N_TRAIN, N_TEST)
    assert not set(train) & set(test)
    assert hashlib.sha256(",".join(map(str, test)).encode()).hexdigest() == TEST_INDICES_SHA256
    images, labels = load_digits_split("test", image_size=16)
    counts = torch.bincount(torch.tensor(labels), minlength=10)
    assert images[0].size == (16, 16) and images[0].mode == "RGB"
    assert int(counts.min()) >= 35 and int(counts.max()) <= 37  # stratified: ~36 per class
    with pytest.raises(ValueError, match="choose one of"):
        split_indices("validation")


def test_webdataset_is_read_by_clip_benchmark(tmp_path, test_split):
    from clip_benchmark.datasets.builder import build_dataset

    root = write_digits_webdataset(tmp_path / "digits", split="test", samples_per_shard=200)
    dataset = build_dataset("wds/digits", root=str(root), split="test")
    assert dataset.classes == list(CLASS_NAMES)
    assert [t.format(c="three") for t in dataset.templates] == [TEMPLATE.format("three")]
    samples = list(dataset)
    images, labels = test_split
    assert [int(y) for _, y in samples] == labels
    assert samples[5][0].tobytes() == images[5].tobytes()


# ----------------------------------------------------------------------------- cache layout
@pytest.mark.parametrize("name", MINIATURES)
def test_bundled_cache_layout(name):
    repo = BUNDLED_CACHE / f"models--dc-zoo--{name}"
    revision = (repo / "refs" / "main").read_text().strip()
    assert len(revision) == 40 and all(c in "0123456789abcdef" for c in revision)
    snapshots = list((repo / "snapshots").iterdir())
    assert [p.name for p in snapshots] == [revision]
    files = sorted(p for p in snapshots[0].rglob("*") if p.is_file() or p.is_symlink())
    assert files and not any(p.is_symlink() for p in files)
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    # The revision is the content hash the training script records (reruns reproduce it).
    lines = [f"{p.relative_to(snapshots[0]).as_posix()} {hashlib.sha256(p.read_bytes()).hexdigest()}" for p in files]
    assert hashlib.sha1("\n".join(lines).encode()).hexdigest() == revision


# ----------------------------------------------------------------------------- accuracy
def _classify(pipe, name, classes, images, labels):
    scoring = ScoringConfig(**EVALUATION_SCHEDULES[name])
    classifier = DiffusionClassifier.from_pipeline(pipe, scoring=scoring, templates=(TEMPLATE,), image_batch_size=64)
    output = classifier.classify(images, classes)
    return output, _accuracy(output.predictions, labels)


def test_sd_digits_mini_accuracy(hub_cache, test_split):
    from diffusers import StableDiffusionPipeline
    from huggingface_hub import snapshot_download

    path = snapshot_download("dc-zoo/sd-digits-mini", cache_dir=str(hub_cache))
    repo = hub_cache / "models--dc-zoo--sd-digits-mini"
    assert Path(path) == repo / "snapshots" / (repo / "refs" / "main").read_text().strip()
    pipe = StableDiffusionPipeline.from_pretrained(path)
    assert pipe.unet.dtype == torch.float32 and pipe.text_encoder.dtype == torch.float32
    assert pipe.tokenizer("a photo of the number: 'three'.").input_ids[0] == 49406  # CLIP's BPE
    images, labels = test_split
    output, accuracy = _classify(pipe, "sd-digits-mini", list(CLASS_NAMES), images, labels)
    assert output.predictions.shape == (N_TEST,)
    assert output.evaluations.tolist() == [140] * N_TEST  # 10 classes x 5 timesteps + 2 x 45
    assert accuracy >= ACCURACY_FLOORS["sd-digits-mini"], accuracy


def test_dit_digits_mini_accuracy(hub_cache, test_split):
    from diffusers import DiTPipeline
    from huggingface_hub import snapshot_download

    pipe = DiTPipeline.from_pretrained(snapshot_download("dc-zoo/dit-digits-mini", cache_dir=str(hub_cache)))
    assert pipe.transformer.dtype == torch.float32
    assert pipe.get_label_ids(["three", "nine"]) == [3, 9]  # id2label from model_index.json
    assert pipe.transformer.config.out_channels == 2 * pipe.vae.config.latent_channels  # learned sigma
    images, labels = test_split
    _, accuracy = _classify(pipe, "dit-digits-mini", list(range(len(CLASS_NAMES))), images, labels)
    assert accuracy >= ACCURACY_FLOORS["dit-digits-mini"], accuracy


def test_clip_digits_mini_accuracy(hub_cache, test_split):
    import open_clip

    name = "hf-hub:dc-zoo/clip-digits-mini"
    model, _, preprocess = open_clip.create_model_and_transforms(name, cache_dir=str(hub_cache))
    tokenizer = open_clip.get_tokenizer(name, cache_dir=str(hub_cache))
    images, labels = test_split
    with torch.no_grad():
        text = model.encode_text(tokenizer([TEMPLATE.format(c) for c in CLASS_NAMES]))
        image = model.encode_image(torch.stack([preprocess(im) for im in images]))
    logits = torch.nn.functional.normalize(image, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).T
    accuracy = _accuracy(logits.argmax(-1), labels)
    assert accuracy >= ACCURACY_FLOORS["clip-digits-mini"], accuracy
