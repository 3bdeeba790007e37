"""The per-sample result store, its identity check and the metrics, without a model.

What a crash can leave (a torn last line, a chunk cut between its records, a torn header) is
repaired and re-scored; what a crash cannot explain (a bad line followed by good ones, one
sample recorded twice with different numbers, another configuration's header) is refused.
"""
from __future__ import annotations

import dataclasses
import math

import pytest

from dc_zoo.evaluation import IdentityMismatchError, ResultStore, RunIdentity, SampleRecord, StoreCorruptError, shard
from dc_zoo.evaluation.metrics import classification_metrics
from dc_zoo.evaluation.progress import OverallProgress

IDENTITY = RunIdentity(
    model="sd-digits-mini", revision="abc123", dtype="float32",
    preprocess={"size": 16, "interpolation": "bicubic", "crop": "center", "mean": [0.5] * 3, "std": [0.5] * 3},
    n_samples=(2, 4), to_keep=(3, 1), loss="l2", n_trials=1, seed=0, batch_size=16, image_batch_size=2,
    templates=("a photo of the number: '{}'.",), class_names=("zero", "one", "two"), dataset="wds/digits",
    split="test", dataset_size=5,
)


def record(index: int, label: int = 0, prediction: int = 0) -> SampleRecord:
    errors = (0.1 + index / 7, 0.2 + index / 11, 1 / 3)
    return SampleRecord(index=index, label=label, prediction=prediction, errors=errors, stage_reached=(1, 0, 0),
                        evaluations=12)


def write_chunks(store: ResultStore, *chunks: list[int]) -> None:
    with store.writer(0) as writer:
        for chunk in chunks:
            writer.append([record(i) for i in chunk])


@pytest.fixture
def store(tmp_path) -> ResultStore:
    return ResultStore(tmp_path / "store", IDENTITY)


def test_records_read_back_exactly(store):
    write_chunks(store, [0, 1], [2, 3], [4])  # the last chunk is short: the split has 5 samples
    assert store.open_and_repair() == {i: record(i) for i in range(5)}
    assert store.read_all() == {i: record(i) for i in range(5)}


def test_torn_last_line_is_cut_and_its_chunk_scored_again(store, caplog):
    write_chunks(store, [0, 1], [2, 3])
    path = store.rank_path(0)
    whole = path.read_bytes()
    path.write_bytes(whole[:-10])
    assert set(store.open_and_repair()) == {0, 1}
    assert path.read_bytes() == whole[: whole.index(b'{"index":2')]  # record 2 was whole but its chunk was not
    assert "torn write" in caplog.text and "samples [2, 3]" in caplog.text
    write_chunks(store, [2, 3])
    assert path.read_bytes() == whole  # the resumed file is the uninterrupted one


def test_torn_header_starts_the_file_over(store):
    store.directory.mkdir(parents=True)
    store.rank_path(0).write_bytes(b'{"dc_zoo_result_st')
    assert store.open_and_repair() == {}
    assert store.rank_path(0).read_bytes() == b""
    write_chunks(store, [0, 1])
    assert set(store.read_all()) == {0, 1}


def test_other_configuration_is_refused_naming_each_field(store):
    write_chunks(store, [0, 1])
    other = dataclasses.replace(IDENTITY, seed=3, templates=("{}",))
    with pytest.raises(IdentityMismatchError, match=r"seed: stored 0, this run 3.*templates: stored"):
        ResultStore(store.directory, other).open_and_repair()


def test_store_of_a_newer_format_is_refused(store):
    write_chunks(store, [0, 1])
    path = store.rank_path(0)
    path.write_text(path.read_text().replace('"dataset_size":5', '"dataset_size":5,"shiny_new_field":1', 1))
    with pytest.raises(IdentityMismatchError, match="shiny_new_field.*newer version"):
        store.open_and_repair()


def test_damage_a_crash_cannot_cause_is_refused(store):
    write_chunks(store, [0, 1], [2, 3])
    path = store.rank_path(0)
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1][:20]
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(StoreCorruptError, match="line 2 is unreadable but later lines are fine"):
        store.open_and_repair()


def test_a_sample_recorded_twice_differently_is_refused(store):
    write_chunks(store, [0, 1])
    with ResultStore(store.directory, IDENTITY).writer(1) as writer:
        writer.append([record(0, prediction=2), record(1)])
    with pytest.raises(StoreCorruptError, match="Sample 0 is recorded twice"):
        store.open_and_repair()


def test_overall_progress_counts_only_whole_new_records(store):
    write_chunks(store, [0, 1])
    progress = OverallProgress(store.directory, total=3, resumed=2, enabled=False)
    path = store.rank_path(0)
    line = record(2, label=1, prediction=1).to_json().encode() + b"\n"
    with open(path, "ab") as f:
        f.write(line[:15])
    assert progress.poll() == 0
    with open(path, "ab") as f:
        f.write(line[15:])
    assert progress.poll() == 1 and progress.tally.correct == 1


def test_metrics_are_clip_benchmark_s_and_failed_samples_count_as_wrong():
    records = [record(0, label=0, prediction=0), record(1, label=2, prediction=0),
               SampleRecord(index=2, label=1, prediction=-1, errors=None, stage_reached=None, evaluations=0,
                            error="non-finite")]
    metrics = classification_metrics(records, num_classes=3)
    assert metrics["acc1"] == pytest.approx(1 / 3)
    assert math.isnan(metrics["acc5"])  # clip_benchmark reports no top-5 under 5 classes
    assert metrics["mean_per_class_recall"] == pytest.approx((1 + 0 + 0) / 3)


def test_round_robin_shards_cover_every_chunk_once():
    chunks = list(range(11))
    shards = [shard(chunks, r, 3) for r in range(3)]
    assert sorted(c for s in shards for c in s) == chunks and [len(s) for s in shards] == [4, 4, 3]
