"""A sample whose network output is non-finite is recorded as failed and counted wrong; the run goes on.

One bad image must not end a days-long run, nor hide: its record says why, the metrics count
it as a miss, and the results JSON reports how many failed. The denoiser here is a tiny pixel-
space module that returns NaN for one recognisable (all-white) image.
"""
from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from dc_zoo import DenoiserBackend, DiffusionClassifier, DiscreteDiffusionSchedule, PreprocessConfig, ScoringConfig
from dc_zoo.evaluation import EvalConfig, run_evaluation

pytestmark = pytest.mark.filterwarnings("ignore:WebDataset\\(shardshuffle")


class NaNOnWhite(nn.Module):
    """Predicts eps = 0, except NaN for the image the encoder marked (x0 = 1e6)."""

    def forward(self, x_t, timesteps, labels):
        poisoned = x_t.flatten(1).abs().amax(dim=1) > 1e3
        return torch.where(poisoned.view(-1, 1, 1, 1), torch.full_like(x_t, float("nan")), torch.zeros_like(x_t))


class LabelledDenoiser(DenoiserBackend):
    def label_names(self):
        return {0: "a", 1: "b", 2: "c"}


def _mark_white(pixels: torch.Tensor) -> torch.Tensor:
    white = (pixels > 0.99).flatten(1).all(dim=1).view(-1, 1, 1, 1)
    return torch.where(white, torch.full_like(pixels, 1e6), pixels)


def _write_wds(root, images, labels, classes):
    (root / "test").mkdir(parents=True)
    with tarfile.open(root / "test" / "0.tar", "w") as tar:
        for i, (image, label) in enumerate(zip(images, labels)):
            for name, payload in ((f"s{i}.png", _png(image)), (f"s{i}.cls", str(label).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    (root / "test" / "nshards.txt").write_text("1\n")
    (root / "classnames.txt").write_text("\n".join(classes) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\n")


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_nonfinite_sample_is_recorded_as_failed_and_counted_wrong(tmp_path):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 200, (8, 8, 3), dtype=np.uint8)) for _ in range(3)]
    images.insert(1, Image.new("RGB", (8, 8), (255, 255, 255)))
    _write_wds(tmp_path / "data", images, [0, 1, 2, 0], ["a", "b", "c"])
    backend = LabelledDenoiser(NaNOnWhite(), DiscreteDiffusionSchedule.linear(), PreprocessConfig(size=8),
                              image_encoder=_mark_white)
    clf = DiffusionClassifier(backend, scoring=ScoringConfig(n_samples=(2, 4), to_keep=(2, 1), batch_size=8))
    config = EvalConfig(model="nan-on-white", dataset="wds/toy", dataset_root=str(tmp_path / "data"),
                        output=str(tmp_path / "out"), image_batch_size=2)

    result = run_evaluation(config, classifier=clf)

    records = [json.loads(line) for line in result.samples_file.read_text().splitlines()[1:]]
    assert [r["prediction"] == -1 for r in records] == [False, True, False, False]
    assert "Non-finite" in records[1]["error"] and records[1]["errors"] is None
    assert result.summary["n_failed"] == 1
    assert json.loads(result.results_file.read_text())["failed_images"] == 1
    correct = sum(r["prediction"] == r["label"] for r in records)
    assert result.metrics["acc1"] == pytest.approx(correct / 4)
