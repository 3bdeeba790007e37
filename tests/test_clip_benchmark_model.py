"""The CLIP interface of a Diffusion Classifier under clip_benchmark's own metric code (in process).

Every expectation is the engine's own result on the same images: clip_benchmark's
acc1/acc5/mean_per_class_recall must equal ``DiffusionClassifier.classify``, its caption-selection
scores must equal Diffusion-ITM comparisons computed from the engine's errors, and none of it may
change with autocast or the batch size.
"""
from __future__ import annotations

import pytest
import torch
from sklearn.metrics import balanced_accuracy_score

from _clip_benchmark_fixtures import (
    CLIP_TEMPLATES, FAST_SCORING, WinogroundStyleDigits, caption, digits_subset, tiny_sd_classifier,
)
from dc_zoo.clip_benchmark import DiffusionClassifierForClipBenchmark, UnsupportedTaskError, register
from dc_zoo.clip_benchmark.model import single_stage
from dc_zoo.digits import CLASS_NAMES
from dc_zoo.engine import score_candidates
from dc_zoo.noise import image_key

N_IMAGES = 8


@pytest.fixture(scope="module")
def metrics_modules():
    register()
    from clip_benchmark.metrics import image_caption_selection, zeroshot_classification

    return zeroshot_classification, image_caption_selection


@pytest.fixture(scope="module")
def classifier():
    return tiny_sd_classifier()


@pytest.fixture(scope="module")
def digits():
    return digits_subset(N_IMAGES)


@pytest.fixture(scope="module")
def engine_output(classifier, digits):
    """The engine's own answer: every clip_benchmark prompt a candidate, the best prompt wins."""
    images, _ = digits
    prompts = {c: [t.format(c=c) for t in CLIP_TEMPLATES] for c in CLASS_NAMES}
    return classifier.classify(images, prompts=prompts)


def _loader(model, images, labels, batch_size):
    pixels = torch.stack([model.transform(im) for im in images])
    dataset = torch.utils.data.TensorDataset(pixels, torch.tensor(labels))
    dataset.classes = list(CLASS_NAMES)  # read by clip_benchmark's evaluate()
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)


@pytest.mark.parametrize("amp", [True, False])
def test_stock_logits_rank_classes_as_the_engine(metrics_modules, classifier, digits, engine_output, amp):
    zeroshot_classification, _ = metrics_modules
    images, labels = digits
    model = DiffusionClassifierForClipBenchmark(classifier, name="tiny-sd")
    model.begin_classification(list(CLASS_NAMES), CLIP_TEMPLATES)
    weights = zeroshot_classification.zero_shot_classifier(model, model.tokenizer, list(CLASS_NAMES), CLIP_TEMPLATES,
                                                           "cpu", amp=amp)
    logits, _ = zeroshot_classification.run_classification(model, weights, _loader(model, images, labels, 3), "cpu",
                                                           amp=amp)
    assert torch.equal(logits.argmax(1), engine_output.predictions)
    assert torch.equal(logits.argsort(dim=1, descending=True, stable=True),
                       engine_output.logits.argsort(dim=1, descending=True, stable=True))
    assert len(set(logits[0].tolist())) == len(CLASS_NAMES)  # no ties made by half precision


def test_metrics_equal_engine_and_survive_amp(metrics_modules, classifier, digits, engine_output):
    zeroshot_classification, _ = metrics_modules
    images, labels = digits
    target = torch.tensor(labels)
    expected_acc1 = float((engine_output.predictions == target).float().mean())
    expected_acc5 = float((engine_output.topk(5) == target[:, None]).any(1).float().mean())
    results = {}
    for amp in (True, False):
        model = DiffusionClassifierForClipBenchmark(classifier, name="tiny-sd")
        results[amp] = zeroshot_classification.evaluate(model, _loader(model, images, labels, 4), model.tokenizer,
                                                        list(CLASS_NAMES), CLIP_TEMPLATES, "cpu", amp=amp)
        assert model.stats.predictions == engine_output.predictions.tolist()
    for metrics in results.values():
        assert metrics["acc1"] == pytest.approx(expected_acc1)
        assert metrics["acc5"] == pytest.approx(expected_acc5)
        assert metrics["mean_per_class_recall"] == pytest.approx(
            balanced_accuracy_score(labels, engine_output.predictions.numpy()))
        assert metrics["dc_evaluations_per_image"] == pytest.approx(float(engine_output.evaluations.float().mean()))
        assert metrics["dc_seed"] == FAST_SCORING.seed
        assert metrics["dc_schedule"] == "n_samples=2/4 to_keep=3/1 loss=l2 n_trials=1"
        assert metrics["dc_candidates"] == len(CLASS_NAMES) * len(CLIP_TEMPLATES)
    assert {k: v for k, v in results[True].items() if k != "dc_seconds_per_image"} == \
        {k: v for k, v in results[False].items() if k != "dc_seconds_per_image"}


def _expected_caption_selection(classifier, dataset, raw: bool = False):
    """Winoground's text/image/group scores from the engine's errors, normalised by the unconditional
    error (``raw``: minus the conditional error alone)."""
    backend = classifier.backend
    text_ok, image_ok = [], []
    for pixels, captions in dataset:
        x0 = backend.encode_images(pixels)
        conditions = backend.encode_conditions(captions)
        if not raw:
            conditions = torch.cat([conditions, backend.unconditional()])
        result = score_candidates(backend.denoise, backend.schedule, x0, conditions, single_stage(classifier.scoring),
                                  sample_keys=[image_key(p) for p in pixels], model_dtype=backend.dtype)
        err = result.candidate_errors
        s = -err if raw else err[:, 2:3] - err[:, :2]  # s[image, caption]: uncond error - cond error
        text_ok.append(bool(s[0, 0] > s[0, 1] and s[1, 1] > s[1, 0]))
        image_ok.append(bool(s[0, 0] > s[1, 0] and s[1, 1] > s[0, 1]))
    group = [t and i for t, i in zip(text_ok, image_ok)]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {"text_acc": mean(text_ok), "image_acc": mean(image_ok), "acc": mean(group)}


def test_caption_selection_is_diffusion_itm_at_batch_sizes_1_and_4(metrics_modules, classifier):
    _, image_caption_selection = metrics_modules
    from clip_benchmark.datasets.builder import image_captions_collate_fn

    images, labels = digits_subset(8)
    model = DiffusionClassifierForClipBenchmark(classifier, name="tiny-sd")
    dataset = WinogroundStyleDigits(images, labels, model.transform)
    assert len(dataset) >= 4
    expected = _expected_caption_selection(classifier, dataset)
    for batch_size in (1, 4):
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=image_captions_collate_fn)
        metrics = image_caption_selection.evaluate(model, loader, model.tokenizer, "cpu", amp=True)
        for key, value in expected.items():
            assert metrics[key] == pytest.approx(value), (batch_size, key)
        assert metrics["dc_schedule"].startswith("n_samples=4 to_keep=1")


def test_caption_selection_without_the_unconditional_normalisation(metrics_modules, classifier):
    _, image_caption_selection = metrics_modules
    from clip_benchmark.datasets.builder import image_captions_collate_fn

    images, labels = digits_subset(8)
    model = DiffusionClassifierForClipBenchmark(classifier, name="tiny-sd", caption_score="raw")
    dataset = WinogroundStyleDigits(images, labels, model.transform)
    expected = _expected_caption_selection(classifier, dataset, raw=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, collate_fn=image_captions_collate_fn)
    metrics = image_caption_selection.evaluate(model, loader, model.tokenizer, "cpu", amp=True)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value), key
    assert metrics["dc_caption_score"] == "raw"
    with pytest.raises(ValueError, match="caption_score 'plain' unknown"):
        DiffusionClassifierForClipBenchmark(classifier, caption_score="plain")


def test_sugarcrepe_style_true_caption_against_hard_negative(metrics_modules, classifier):
    """One image, its caption and a hard negative (the next digit): text_acc is the engine's choice."""
    _, image_caption_selection = metrics_modules
    from clip_benchmark.datasets.builder import image_captions_collate_fn

    images, labels = digits_subset(6)
    model = DiffusionClassifierForClipBenchmark(classifier, name="tiny-sd")
    items = [(model.transform(im), [caption(y), caption((y + 1) % 10)]) for im, y in zip(images, labels)]
    backend = classifier.backend
    wins = []
    for pixels, captions in items:
        conditions = torch.cat([backend.encode_conditions(captions), backend.unconditional()])
        err = score_candidates(backend.denoise, backend.schedule, backend.encode_images(pixels[None]), conditions,
                               single_stage(classifier.scoring), sample_keys=[image_key(pixels)],
                               model_dtype=backend.dtype).candidate_errors[0]
        wins.append(bool(err[0] < err[1]))
    for batch_size in (1, 4):
        loader = torch.utils.data.DataLoader(items, batch_size=batch_size, collate_fn=image_captions_collate_fn)
        metrics = image_caption_selection.evaluate(model, loader, model.tokenizer, "cpu", amp=True)
        assert metrics["text_acc"] == pytest.approx(sum(wins) / len(wins)), batch_size
        assert metrics["image_acc"] == 1.0  # one image per instance: nothing to choose


def test_single_batch_retrieval_ranks_pairs_by_normalised_error(classifier):
    register()
    from clip_benchmark.datasets.builder import image_captions_collate_fn
    from clip_benchmark.metrics import zeroshot_retrieval

    images, labels = digits_subset(3)
    model = DiffusionClassifierForClipBenchmark(classifier, name="tiny-sd")
    pixels = torch.stack([model.transform(im) for im in images])
    captions = [caption(label) for label in labels]
    loader = torch.utils.data.DataLoader(list(zip(pixels, [[c] for c in captions])), batch_size=3,
                                         collate_fn=image_captions_collate_fn)
    metrics = zeroshot_retrieval.evaluate(model, loader, model.tokenizer, "cpu", amp=True, recall_k_list=[1])
    backend = classifier.backend
    conditions = torch.cat([backend.encode_conditions(captions), backend.unconditional()])
    err = score_candidates(backend.denoise, backend.schedule, backend.encode_images(pixels), conditions,
                           single_stage(classifier.scoring), sample_keys=[image_key(p) for p in pixels],
                           model_dtype=backend.dtype).candidate_errors
    s = err[:, 3:4] - err[:, :3]  # [image, caption]
    truth = torch.arange(3)
    assert metrics["image_retrieval_recall@1"] == pytest.approx(float((s.argmax(0) == truth).float().mean()))
    assert metrics["text_retrieval_recall@1"] == pytest.approx(float((s.argmax(1) == truth).float().mean()))


def test_unsupported_tasks_stop_before_any_scoring(metrics_modules, classifier):
    register()
    from clip_benchmark.metrics import captioning, linear_probe, zeroshot_classification, zeroshot_retrieval

    model = DiffusionClassifierForClipBenchmark(classifier, name="tiny-sd")
    with pytest.raises(UnsupportedTaskError, match="linear_probe: a linear probe"):
        linear_probe.evaluate(model, None, None, -1, 8, 0, 0.1, 1, "x", 0, "features", "cpu")
    with pytest.raises(UnsupportedTaskError, match="captioning"):
        captioning.evaluate(model=model, dataloader=None, batch_size=1, num_workers=0, device="cpu", amp=True)
    with pytest.raises(UnsupportedTaskError, match="--save_clf"):
        zeroshot_classification.evaluate(model, [], model.tokenizer, ["a", "b"], ["{c}"], "cpu", save_clf="w.pt")
    with pytest.raises(UnsupportedTaskError, match="--load_clfs"):
        zeroshot_classification.evaluate(model, [], model.tokenizer, ["a", "b"], ["{c}"], "cpu", load_clfs=["w.pt"])
    two_batches = torch.utils.data.DataLoader([(torch.zeros(3, 16, 16), ["x"])] * 2, batch_size=1,
                                              collate_fn=lambda b: (torch.stack([x for x, _ in b]), [t for _, t in b]))
    with pytest.raises(UnsupportedTaskError, match="zeroshot_retrieval over 2 batches"):
        zeroshot_retrieval.evaluate(model, two_batches, model.tokenizer, "cpu")
    assert model.stats.evaluations == 0


def test_encode_image_needs_every_class_first(classifier, digits):
    model = DiffusionClassifierForClipBenchmark(classifier, name="tiny-sd")
    with pytest.raises(RuntimeError, match="before the task was known"):
        model.encode_image(torch.zeros(1, 3, 16, 16))
    model.begin_classification(list(CLASS_NAMES), CLIP_TEMPLATES)
    model.encode_text(model.tokenizer([t.format(c="zero") for t in CLIP_TEMPLATES]))
    with pytest.raises(RuntimeError, match="only 1 of 10 classes"):
        model.encode_image(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="class 1 .'one'. has"):
        model.encode_text(model.tokenizer(["a photo of a cat."]))
