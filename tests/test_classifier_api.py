"""DiffusionClassifier details a user runs into: label forms, repeated label names, ranking ties, dtype moves."""
from __future__ import annotations

import numpy as np
import torch

import dc_zoo
from dc_zoo.candidates import ranking_logits

from tiny_models import tiny_dit_components, tiny_sd_backend

SCORING = dc_zoo.ScoringConfig(n_samples=(2, 4), to_keep=(2, 1))


def test_ranking_logits_keep_last_bit_error_differences():
    errors = torch.tensor([[0.50000006, 0.5]], dtype=torch.float32)
    stage = torch.tensor([[3, 3]])
    logits = ranking_logits(errors, stage)
    assert logits[0, 1] > logits[0, 0]  # float32 arithmetic would tie these
    assert ranking_logits(torch.tensor([[9.0, 0.1]]), torch.tensor([[2, 1]])).argmax() == 0  # later stage first


def test_integer_labels_in_any_form_and_repeated_label_names():
    comps = tiny_dit_components(seed=0)
    names = {i: f"digit {i}" for i in range(10)}
    names[7] = names[3] = "crane"  # ImageNet has two "crane" labels (134 and 517)
    backend = dc_zoo.DiTBackend(**comps, id2label=names)
    clf = dc_zoo.DiffusionClassifier(backend, SCORING)
    image = torch.rand(3, 16, 16)
    plain = clf.classify(image, [0, 3, 7], sample_keys=["k"])
    assert plain.class_names == ("digit 0", "crane (3)", "crane (7)")
    for labels in (np.array([0, 3, 7]), [torch.tensor(0), torch.tensor(3), torch.tensor(7)]):
        out = clf.classify(image, list(labels), sample_keys=["k"])
        assert torch.equal(out.candidate_errors, plain.candidate_errors)


def test_encoded_prompts_follow_the_backend_to_another_dtype():
    backend = tiny_sd_backend(seed=0)
    clf = dc_zoo.DiffusionClassifier(backend, SCORING)
    image = torch.rand(3, 16, 16)
    clf.classify(image, ["a", "b", "c"])
    backend.to(torch.bfloat16)
    out = clf.classify(image, ["a", "b", "c"])
    assert torch.isfinite(out.candidate_errors).all()
