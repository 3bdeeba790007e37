"""batch_size="auto": the search's rules, and that the chosen size changes speed, not results."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

import dc_zoo
import dc_zoo.batch_size as batch_size_module
from dc_zoo.acceleration import optimize_backend
from dc_zoo.batch_size import search_batch_size
from dc_zoo.cli import build_parser

from tiny_models import tiny_sd_backend

STAGES = dict(n_samples=(4, 12), to_keep=(2, 1))


class FakeClock:
    """Stands in for time.perf_counter so a forward pass 'costs' a chosen time."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(batch_size_module.time, "perf_counter", fake)
    return fake


def costed_forward(clock, overhead, per_item, fits_up_to=None):
    sizes = []

    def forward(batch):
        sizes.append(batch)
        if fits_up_to is not None and batch > fits_up_to:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate for batch {batch}")
        clock.now += overhead + per_item * batch

    return forward, sizes


def test_doubles_while_throughput_grows_and_stops_at_the_plateau(clock):
    # rate(B) = B / (2 ms + 1 ms * B): 800, 889, 941, 970/s -> the last doubling gains 3% < 5%.
    forward, sizes = costed_forward(clock, overhead=0.002, per_item=0.001)
    result = search_batch_size(forward, start=8, limit=1024)
    assert result.batch_size == 32 and result.stopped == "plateau"
    assert [b for b, _ in result.rates] == [8, 16, 32, 64]
    assert result.rates[0][1] == pytest.approx(800.0)
    assert set(sizes) == {8, 16, 32, 64}  # one warm-up and two timed passes per size
    assert "batch size 32 (plateau" in result.describe()


def test_out_of_memory_ends_the_search_at_the_last_size_that_fit(clock):
    forward, _ = costed_forward(clock, overhead=0.05, per_item=1e-5, fits_up_to=48)
    result = search_batch_size(forward, start=8, limit=1024)
    assert result.batch_size == 32 and result.stopped == "out of memory"


def test_limit_and_slow_pass_stop_the_search(clock):
    forward, _ = costed_forward(clock, overhead=0.05, per_item=1e-5)
    assert search_batch_size(forward, start=8, limit=100).batch_size == 64
    slow, _ = costed_forward(clock, overhead=0.0, per_item=1.0)  # 8 s per pass at batch 8
    result = search_batch_size(slow, start=8, limit=1024, max_pass_seconds=5.0)
    assert result.batch_size == 8 and result.stopped == "slow pass"


def test_nothing_fits_is_a_clear_error(clock):
    forward, _ = costed_forward(clock, overhead=0.01, per_item=0.0, fits_up_to=4)
    with pytest.raises(RuntimeError, match="Not even 8 network evaluations fit.*smaller batch_size"):
        search_batch_size(forward, start=8)


def test_other_errors_are_not_taken_for_out_of_memory(clock):
    def forward(batch):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        search_batch_size(forward)


class FitsUpTo(nn.Module):
    """A real network that runs out of memory above a batch size, as a GPU would."""

    def __init__(self, network: nn.Module, limit: int):
        super().__init__()
        self.network, self.limit = network, limit

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.network, name)

    def forward(self, sample, *args, **kwargs):
        if sample.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory (batch {sample.shape[0]} > {self.limit})")
        return self.network(sample, *args, **kwargs)


def test_auto_batch_size_gives_the_same_predictions_and_is_searched_once(caplog):
    images = torch.rand(3, 3, 16, 16)
    fixed = dc_zoo.DiffusionClassifier(tiny_sd_backend(seed=2), dc_zoo.ScoringConfig(**STAGES, batch_size=32))
    backend = tiny_sd_backend(seed=2)
    backend.unet = FitsUpTo(backend.unet, 16)
    auto = dc_zoo.DiffusionClassifier(backend, dc_zoo.ScoringConfig(**STAGES, batch_size="auto"))
    expected = fixed.classify(images, ["a", "b", "c"], sample_keys=range(3))
    with caplog.at_level(logging.INFO, logger="dc_zoo.batch_size"):
        out = auto.classify(images, ["a", "b", "c"], sample_keys=range(3))
        again = auto.classify(images[:1], ["a", "b", "c"], sample_keys=range(1))
    (search,) = auto._batch_size_cache.values()
    # 32 does not fit, so 16 at most; on a loaded machine the timing may already plateau at 8
    assert search.batch_size in (8, 16) and search.stopped in ("out of memory", "plateau")
    assert caplog.text.count("batch_size='auto'") == 1
    assert torch.equal(out.predictions, expected.predictions)
    torch.testing.assert_close(out.candidate_errors, expected.candidate_errors, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(again.candidate_errors, expected.candidate_errors[:1], rtol=1e-5, atol=1e-6)


def test_auto_with_a_compiled_network_searches_eagerly_and_compiles_one_shape():
    graphs = []

    def counting_compiler(graph_module, example_inputs):
        graphs.append(tuple(example_inputs[0].shape) if example_inputs else ())
        return graph_module.forward

    torch._dynamo.reset()
    backend = optimize_backend(tiny_sd_backend(seed=2), compile=True, compile_backend=counting_compiler)
    clf = dc_zoo.DiffusionClassifier(backend, dc_zoo.ScoringConfig(**STAGES, batch_size="auto"))
    clf.classify(torch.rand(2, 3, 16, 16), ["a", "b"], sample_keys=range(2))
    (search,) = clf._batch_size_cache.values()
    assert not backend.unet.failed and type(backend.unet).__name__ == "_CompiledWithFallback"
    batch_dims = {shape[0] for shape in graphs if shape}
    assert batch_dims == {search.batch_size}, graphs  # padded batches: one shape, the chosen one


def test_the_engine_wants_a_number():
    backend = tiny_sd_backend()
    with pytest.raises(ValueError, match="needs a number for batch_size.*scoring_for"):
        dc_zoo.engine.score_candidates(
            backend.denoise, backend.schedule, torch.zeros(1, 4, 2, 2), torch.zeros(2, 3, 8),
            dc_zoo.ScoringConfig(**STAGES, batch_size="auto"), sample_keys=[0])


@pytest.mark.parametrize("value, expected", [("64", 64), (np.int64(8), 8), ("auto", "auto"), (512, 512)])
def test_batch_size_values(value, expected):
    assert dc_zoo.ScoringConfig(batch_size=value).batch_size == expected


@pytest.mark.parametrize("value, message", [(0, "at least 1"), (True, "positive integer or 'auto'"),
                                            ("big", "positive integer or 'auto'"), (3.5, "positive integer")])
def test_bad_batch_sizes_are_refused(value, message):
    with pytest.raises(ValueError, match=message):
        dc_zoo.ScoringConfig(batch_size=value)


def test_command_line_takes_auto_and_names_a_bad_value(capsys):
    parser = build_parser()
    args = parser.parse_args(["classify", "--batch-size", "auto", "x.png"])
    assert args.batch_size == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["classify", "--batch-size", "lots", "x.png"])
    assert "batch_size must be a positive integer or 'auto', got 'lots'" in capsys.readouterr().err
    eval_args = parser.parse_args(["eval", "--model", "m", "--dataset", "wds/digits", "--dataset-root", "r",
                                   "--output", "o", "--batch-size", "auto", "--attention", "math",
                                   "--compile-mode", "reduce-overhead"])
    assert (eval_args.batch_size, eval_args.attention, eval_args.compile_mode) == ("auto", "math", "reduce-overhead")
