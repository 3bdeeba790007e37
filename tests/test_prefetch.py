"""Read-ahead (``dc_zoo.prefetch``): same results as reading on the main thread, errors in their
place, and a thread that stops when the consumer does.

``classify`` and ``dc-zoo eval`` are compared with and without the thread on real miniatures.
"""
from __future__ import annotations

import gc
import itertools
import json
import threading
import time
import traceback

import pytest
import torch

from dc_zoo import DiffusionClassifier, PreprocessConfig, ScoringConfig
from dc_zoo.digits import load_digits_split
from dc_zoo.evaluation import EvalConfig, run_evaluation
from dc_zoo.evaluation.run import _chunks
from dc_zoo.prefetch import Prefetcher, pin_for
from dc_zoo.preprocess import to_pixels

from _eval_fixtures import digits_root, one_thread  # noqa: F401
from tiny_models import tiny_dit_backend

pytestmark = pytest.mark.filterwarnings("ignore:WebDataset\\(shardshuffle")


class Boom(ValueError):
    pass


def _slow_square(x: int) -> int:
    time.sleep(0.002 * (x % 3))  # uneven work, so a reordering would show
    return x * x


def _explode_at_3(x: int) -> int:
    if x == 3:
        raise Boom(f"bad item {x}")
    return x


def _stopped(thread: threading.Thread, timeout: float = 5.0) -> bool:
    thread.join(timeout)
    return not thread.is_alive()


@pytest.mark.parametrize("ahead", [0, 1, 2, 5])
def test_order_and_values_are_those_of_the_synchronous_loop(ahead):
    with Prefetcher(range(40), _slow_square, ahead=ahead) as ready:
        assert list(ready) == [_slow_square(x) for x in range(40)]


def test_preprocessed_chunks_equal_the_main_thread_ones():
    images, _ = load_digits_split("test", image_size=16)
    images = images[:11]
    config = PreprocessConfig(size=24)
    starts = range(0, len(images), 4)
    expected = [to_pixels(images[lo : lo + 4], config) for lo in starts]
    with Prefetcher(starts, lambda lo: pin_for(to_pixels(images[lo : lo + 4], config), "cpu")) as ready:
        got = list(ready)
    assert [p.shape[0] for p in got] == [4, 4, 3]
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


@pytest.mark.parametrize("ahead", [0, 2])
def test_an_error_arrives_after_the_earlier_items_with_its_own_type_and_traceback(ahead):
    received = []
    ready = Prefetcher(range(10), _explode_at_3, ahead=ahead)
    with pytest.raises(Boom, match="bad item 3") as info, ready:
        for x in ready:
            received.append(x)
    assert received == [0, 1, 2]
    assert "_explode_at_3" in [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    if ready.thread is not None:
        assert _stopped(ready.thread)


def test_a_dataset_that_ends_mid_chunk_delivers_the_whole_chunks_first():
    samples = [(i, f"image {i}", i % 3) for i in range(5)]  # chunks of 2 over 6 samples: the last is cut
    received = []
    with pytest.raises(RuntimeError, match=r"Chunk of samples \[4\] ended early"), \
            Prefetcher(_chunks(iter(samples), 2, 6), lambda chunk: [i for i, _, _ in chunk]) as ready:
        for chunk in ready:
            received.append(chunk)
    assert received == [[0, 1], [2, 3]]


def test_breaking_out_stops_the_thread_and_closes_the_source():
    made, closed = [], threading.Event()

    def endless():
        try:
            for i in itertools.count():
                made.append(i)
                yield i
        finally:
            closed.set()

    with Prefetcher(endless(), _slow_square, ahead=2) as ready:
        for consumed, _ in enumerate(ready, start=1):
            if consumed == 4:
                break
    assert _stopped(ready.thread) and closed.is_set()
    assert len(made) <= 4 + 2 + 1  # consumed, queued, one in hand: never runs far ahead


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_error_in_the_consumer_stops_the_thread(error):
    ready = Prefetcher(itertools.count(), _slow_square, ahead=2)
    with pytest.raises(error), ready:
        next(ready)
        raise error("consumer stopped")
    assert _stopped(ready.thread)
    with pytest.raises(StopIteration):
        next(ready)


def test_an_abandoned_prefetcher_stops_its_thread():
    ready = Prefetcher(itertools.count(), _slow_square, ahead=2)
    next(ready)
    thread = ready.thread
    del ready
    gc.collect()
    assert _stopped(thread)


def test_ahead_zero_runs_on_the_calling_thread():
    threads = []
    ready = Prefetcher(range(3), lambda x: threads.append(threading.current_thread()) or x, ahead=0)
    assert ready.thread is None and list(ready) == [0, 1, 2]
    assert threads == [threading.current_thread()] * 3
    with pytest.raises(ValueError, match="ahead must be 0"):
        Prefetcher(range(3), str, ahead=-1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only machine")
def test_nothing_is_pinned_without_cuda():
    x = torch.zeros(2, 3)
    assert pin_for(x, "cpu") is x and pin_for(x, "cuda") is x  # pin_memory() would fail here


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tensors_bound_for_cuda_are_pinned():
    x = torch.zeros(2, 3)
    assert pin_for(x, "cuda").is_pinned() and not pin_for(x, "cpu").is_pinned()


def test_classify_gives_the_same_output_with_and_without_the_thread():
    clf = DiffusionClassifier(tiny_dit_backend(seed=0), ScoringConfig(n_samples=(2, 4), to_keep=(2, 1)),
                              image_batch_size=2)
    images = list(torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
    sync = clf.classify(images, [0, 3, 7], prefetch=0)
    ahead = clf.classify(images, [0, 3, 7], prefetch=2)
    assert sync.sample_keys == ahead.sample_keys
    for name in ("predictions", "errors", "candidate_errors", "stage_reached", "evaluations"):
        assert torch.equal(getattr(sync, name), getattr(ahead, name)), name


def test_eval_records_are_the_same_with_and_without_the_thread(digits_root, tmp_path):  # noqa: F811
    samples = {}
    for prefetch in (0, 2):
        config = EvalConfig(model="sd-digits-mini", dataset="wds/digits", dataset_root=str(digits_root),
                            output=str(tmp_path / f"prefetch-{prefetch}"), image_batch_size=2, limit=6,
                            prefetch=prefetch)
        with one_thread():
            result = run_evaluation(config)
        samples[prefetch] = [json.loads(line) for line in result.samples_file.read_text().splitlines()[1:]]
    assert [s["index"] for s in samples[0]] == list(range(6))
    assert samples[0] == samples[2]
