"""Speed levers change speed, not results: channels_last, torch.compile (and its fallback)."""
from __future__ import annotations

import logging

import pytest
import torch

import dc_zoo
from dc_zoo.acceleration import optimize_backend
from dc_zoo.noise_schedules import FlowMatchingSchedule

from test_flow_matching_denoiser import TinyFlowDenoiser
from tiny_models import tiny_dit_backend, tiny_sd_backend

SCORING = dc_zoo.ScoringConfig(n_samples=(4, 12), to_keep=(2, 1), batch_size=7)


def mlp_backend():
    torch.manual_seed(0)
    return dc_zoo.DenoiserBackend(TinyFlowDenoiser().eval(), FlowMatchingSchedule(),
                                  dc_zoo.PreprocessConfig(size=8, interpolation="nearest"))


def classify(backend, images, classes):
    return dc_zoo.DiffusionClassifier(backend, SCORING).classify(images, classes, sample_keys=range(len(images)))


def test_channels_last_gives_the_same_scores():
    images = torch.rand(2, 3, 16, 16)
    eager = classify(tiny_sd_backend(seed=3), images, ["a", "b", "c"])
    fast = classify(optimize_backend(tiny_sd_backend(seed=3), channels_last=True), images, ["a", "b", "c"])
    assert torch.equal(fast.predictions, eager.predictions)
    torch.testing.assert_close(fast.candidate_errors, eager.candidate_errors, rtol=1e-5, atol=1e-6)


def test_compiled_network_gives_the_same_scores_with_padded_batches():
    images = torch.rand(3, 3, 8, 8)
    eager = classify(mlp_backend(), images, [0, 1, 2, 3])
    backend = optimize_backend(mlp_backend(), compile=True)
    assert backend.static_batch
    fast = classify(backend, images, [0, 1, 2, 3])
    assert not backend.model.failed
    assert torch.equal(fast.predictions, eager.predictions)
    torch.testing.assert_close(fast.candidate_errors, eager.candidate_errors, rtol=1e-4, atol=1e-5)


def test_compiler_failure_falls_back_to_eager(caplog):
    def broken_compiler(graph_module, example_inputs):
        raise RuntimeError("this compiler always fails")

    images = torch.rand(2, 3, 8, 8)
    eager = classify(mlp_backend(), images, [0, 1, 2])
    backend = optimize_backend(mlp_backend(), compile=True, compile_backend=broken_compiler)
    with caplog.at_level(logging.WARNING, logger="dc_zoo.acceleration"):
        out = classify(backend, images, [0, 1, 2])
    assert backend.model.failed and "continuing in eager mode" in caplog.text
    torch.testing.assert_close(out.candidate_errors, eager.candidate_errors)


def test_pinned_attention_kernels_give_the_same_scores():
    images = torch.rand(2, 3, 16, 16)
    default = classify(tiny_sd_backend(seed=3), images, ["a", "b", "c"])
    for kernel in ("math", "flash"):  # the two kernels torch has on the CPU
        pinned = classify(optimize_backend(tiny_sd_backend(seed=3), attention=kernel), images, ["a", "b", "c"])
        assert torch.equal(pinned.predictions, default.predictions)
        torch.testing.assert_close(pinned.candidate_errors, default.candidate_errors, rtol=1e-5, atol=1e-6)


def test_pinned_attention_reaches_the_attention_layers_and_fails_clearly():
    # memory-efficient attention has no CPU kernel: the pin must reach diffusers' attention
    # processors (or this would run) and the error must say what to do instead.
    backend = optimize_backend(tiny_sd_backend(seed=3), attention="efficient")
    with pytest.raises(RuntimeError, match="'efficient' attention kernel cannot run.*attention='math'"):
        classify(backend, torch.rand(1, 3, 16, 16), ["a", "b"])


def test_pinned_attention_under_torch_compile():
    images = torch.rand(2, 3, 16, 16)
    default = classify(tiny_dit_backend(), images, [0, 1, 2])
    backend = optimize_backend(tiny_dit_backend(), attention="math", compile=True, compile_backend="eager")
    out = classify(backend, images, [0, 1, 2])
    assert not backend.transformer.failed  # dynamo traced through the kernel pin
    assert torch.equal(out.predictions, default.predictions)
    torch.testing.assert_close(out.candidate_errors, default.candidate_errors, rtol=1e-5, atol=1e-6)


def test_unknown_attention_kernel_or_compile_mode_is_refused():
    with pytest.raises(ValueError, match="Unknown attention kernel 'fast'.*cudnn.*efficient.*flash.*math"):
        optimize_backend(mlp_backend(), attention="fast")
    with pytest.raises(ValueError, match="Unknown compile_mode 'turbo'.*reduce-overhead"):
        optimize_backend(mlp_backend(), compile=True, compile_mode="turbo")


def test_compiled_network_is_traced_once_for_a_whole_run():
    # Every stage's batches reach the network with one shape and one memory layout (the engine pads
    # and makes x_t contiguous), so the compiler never re-traces: a re-trace per layout would cost a
    # compilation each time and, past dynamo's cache limit, silently fall back to eager.
    graphs = []

    def counting_compiler(graph_module, example_inputs):
        graphs.append(len(example_inputs))
        return graph_module.forward

    torch._dynamo.reset()
    backend = optimize_backend(tiny_dit_backend(), compile=True, compile_backend=counting_compiler)
    clf = dc_zoo.DiffusionClassifier(backend, SCORING, image_batch_size=2)
    clf.classify(torch.rand(3, 3, 16, 16), [0, 1, 2, 3], sample_keys=range(3))
    clf.classify(torch.rand(1, 3, 16, 16), [0, 1, 2, 3], sample_keys=[9])
    assert not backend.transformer.failed
    assert len(graphs) == 1, f"{len(graphs)} compilations"
