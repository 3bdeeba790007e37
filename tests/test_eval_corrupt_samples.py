"""A WebDataset with a corrupt or empty image: ``dc-zoo eval`` records those samples as failed
(shard, key, reason), counts them in ``failed_images`` and scores every other sample at the same
index as on the clean dataset: bit for bit in the other chunks; a failed sample's chunk partner
is scored alone, which moves only the last float bits of its errors."""
from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from _eval_fixtures import digits_root, eval_args, eval_in_process, eval_model, read_results  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore:WebDataset\\(shardshuffle")

LIMIT = ["--limit", "10"]
TRUNCATED, EMPTY = 3, 6  # in different chunks of 2: their chunk partners are scored alone


def _damaged_copy(clean: Path, root: Path) -> Path:
    """The dataset with sample TRUNCATED's PNG cut in half and sample EMPTY's PNG zero bytes long."""
    shutil.copytree(clean, root)
    shard = root / "test" / "0.tar"
    with tarfile.open(clean / "test" / "0.tar") as src, tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as dst:
        for member in src:
            data = src.extractfile(member).read()
            if member.name == f"s{TRUNCATED:07d}.png":
                data = data[: len(data) // 2]
            elif member.name == f"s{EMPTY:07d}.png":
                data = b""
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    return root


def test_corrupt_and_empty_images_are_failed_records_and_the_rest_is_unchanged(eval_model, digits_root, tmp_path):
    damaged = _damaged_copy(digits_root, tmp_path / "damaged")
    assert eval_in_process(eval_args(eval_model, digits_root, tmp_path / "clean") + LIMIT) == 0
    assert eval_in_process(eval_args(eval_model, damaged, tmp_path / "out") + LIMIT) == 0

    results, samples = read_results(tmp_path / "out")
    _, clean = read_results(tmp_path / "clean")
    assert results["failed_images"] == 2 and results["images"] == 10
    assert [s["index"] for s in samples] == list(range(10))
    failed = {s["index"]: s for s in samples if s["error"] is not None}
    assert sorted(failed) == [TRUNCATED, EMPTY]
    for index, s in failed.items():
        assert s["prediction"] == -1 and s["errors"] is None and s["evaluations"] == 0
        assert s["label"] == clean[index]["label"]
        assert s["error"].startswith(f"test/0.tar:s{index:07d}.png: ")
    assert "truncated" in failed[TRUNCATED]["error"]
    assert "is empty (0 bytes)" in failed[EMPTY]["error"]
    damaged_chunks = {i // 2 for i in failed}
    for s, c in zip(samples, clean):
        if s["index"] // 2 not in damaged_chunks:
            assert s == c  # same numbers, same index: nothing shifted
        elif s["index"] not in failed:  # its chunk partner is scored alone: batch layout changes the last bits
            assert s["prediction"] == c["prediction"] and s["stage_reached"] == c["stage_reached"]
            assert s["errors"] == pytest.approx(c["errors"], rel=1e-5)
    correct = sum(s["prediction"] == s["label"] for s in samples)
    assert results["metrics"]["acc1"] == pytest.approx(correct / 10)


def test_local_reader_keeps_clip_benchmark_s_order_and_images(digits_root):
    from clip_benchmark.datasets.builder import build_dataset

    from dc_zoo.evaluation.benchmark_datasets import _wds_shards, read_local_wds

    theirs = build_dataset("wds/digits", root=str(digits_root), transform=None, split="test")
    ours = read_local_wds(digits_root, _wds_shards(digits_root, "test"))
    for _, (a, b) in zip(range(20), zip(ours, theirs)):
        assert a[1] == b[1]
        assert np.array_equal(np.asarray(a[0].convert("RGB")), np.asarray(b[0]))
