"""imagenet_robustness class subsets: a DiT entry classifies over the subset's ImageNet labels only.

The data sets are fake but laid out as clip_benchmark reads them (an ImageFolder of WordNet-id
folders for imagenet-a / imagenet-r) and built by clip_benchmark's own ``build_dataset``.
"""
from __future__ import annotations

import ast
import inspect
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from _clip_benchmark_fixtures import tiny_dit_classifier
from dc_zoo.clip_benchmark import DiffusionClassifierForClipBenchmark, register
from dc_zoo.clip_benchmark.imagenet_labels import imagenet_labels_for_classes, imagenet_wnids


def _builder_subset(variable: str) -> list[str]:
    """The WordNet ids clip_benchmark hard-codes for a robustness subset (a literal in build_dataset)."""
    from clip_benchmark.datasets import builder

    tree = ast.parse(inspect.getsource(builder))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == variable:
            return sorted(ast.literal_eval(node.value))
    raise AssertionError(f"{variable} not found in clip_benchmark's builder")


@pytest.fixture(scope="module", params=["imagenet-a", "imagenet-r"])
def fake_subset(request, tmp_path_factory):
    from clip_benchmark.datasets.builder import build_dataset

    wnids = _builder_subset(request.param.replace("-", "_") + "_wnids")
    root = tmp_path_factory.mktemp(request.param)
    for k, wnid in enumerate(wnids):
        (root / wnid).mkdir()
        Image.new("RGB", (20, 18), (k % 256, (37 * k) % 256, 90)).save(root / wnid / "0.png")
    dataset = build_dataset(request.param, root=str(root), split="test", task="zeroshot_classification")
    return dataset, wnids


def test_subset_classes_map_to_their_imagenet_labels(fake_subset):
    dataset, wnids = fake_subset
    expected = [(imagenet_wnids().index(w),) for w in wnids]
    assert len(dataset.classes) == 200
    assert imagenet_labels_for_classes(dataset.classes, dataset) == expected  # from the folders
    assert imagenet_labels_for_classes(dataset.classes) == expected  # from the names alone


def test_objectnet_classes_take_all_their_imagenet_labels():
    dataset = SimpleNamespace(folders_to_ids={"b_folder": [409, 530], "a_folder": [412]})
    assert imagenet_labels_for_classes(["alarm clock", "backpack"], dataset) == [(412,), (409, 530)]


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")  # 2 images, 200 classes
def test_dit_scores_only_the_subset_labels_through_the_stock_metric(fake_subset):
    register()
    from clip_benchmark.metrics import zeroshot_classification

    dataset, wnids = fake_subset
    labels = [imagenet_wnids().index(w) for w in wnids]
    classifier = tiny_dit_classifier(num_classes=1000)
    model = DiffusionClassifierForClipBenchmark(classifier, name="tiny-dit-1k")
    dataset.transform = model.transform
    picked = [0, 123]
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, sampler=picked)
    metrics = zeroshot_classification.evaluate(model, loader, model.tokenizer, dataset.classes, ["a photo of a {c}."],
                                               "cpu", amp=True)
    assert model.candidates.conditions == tuple(labels)
    assert metrics["dc_candidates"] == 200
    images = [Image.open(dataset.samples[i][0]) for i in picked]
    engine = classifier.classify(images, labels)
    assert model.stats.predictions == engine.predictions.tolist()
    target = torch.tensor([dataset.samples[i][1] for i in picked])
    assert metrics["acc1"] == pytest.approx(float((engine.predictions == target).float().mean()))
