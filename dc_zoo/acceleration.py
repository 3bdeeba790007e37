"""Speed levers that keep the numbers: channels_last, a pinned SDPA kernel, torch.compile, TF32.

Each lever is opt-in and measured in ``benchmarks/throughput.py`` and ``benchmarks/levers.py``;
none changes what is computed beyond floating-point rounding. Compilation uses one static
batch shape (the engine pads a stage's last batch) and Inductor's on-disk cache
(``TORCHINDUCTOR_CACHE_DIR``), and falls back to eager execution, with a warning, if the
compiler fails; ``compile_mode="reduce-overhead"`` adds CUDA graphs for that one shape.
The attention kernel is chosen by name, never by timing at run time, so two runs of the same
configuration compute with the same kernel (and the same last bits).
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .backends.base import DiffusionBackend

logger = logging.getLogger(__name__)

__all__ = ["optimize_backend", "denoising_network", "uncompiled", "ATTENTION_KERNELS", "COMPILE_MODES"]

_NETWORK_ATTRS = ("unet", "transformer", "model")

# torch.compile's modes (None = "default"); the CUDA-graph ones need the engine's padded, static batches.
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# torch's scaled_dot_product_attention kernels by the names users pass (None: torch's own pick).
ATTENTION_KERNELS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}


def denoising_network(backend: DiffusionBackend) -> tuple[str, nn.Module]:
    """The attribute name and module of the backend's denoising network."""
    for name in _NETWORK_ATTRS:
        module = getattr(backend, name, None)
        if isinstance(module, nn.Module):
            return name, module
    raise TypeError(f"{type(backend).__name__} has no denoising network among attributes {_NETWORK_ATTRS}.")


class _NetworkWrapper(nn.Module):
    """Wraps the denoising network; the backend still reads its config, dtype, ... through it."""

    def __init__(self, eager: nn.Module):
        super().__init__()
        self.eager = eager

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.eager, name)


class _PinnedAttention(_NetworkWrapper):
    """Runs the network with one scaled_dot_product_attention kernel (diffusers' attention
    processors call ``F.scaled_dot_product_attention``, so ``sdpa_kernel`` reaches every layer)."""

    def __init__(self, eager: nn.Module, kernel: str):
        super().__init__(eager)
        self.kernel = kernel

    def forward(self, *args, **kwargs):
        try:
            with sdpa_kernel([ATTENTION_KERNELS[self.kernel]]):
                return self.eager(*args, **kwargs)
        except RuntimeError as err:
            if "no viable backend" not in str(err).lower() and "no available kernel" not in str(err).lower():
                raise
            raise RuntimeError(
                f"The {self.kernel!r} attention kernel cannot run this network here ({err}). Flash and cuDNN "
                "attention need a CUDA GPU and float16/bfloat16, memory-efficient attention a CUDA GPU; on the "
                "CPU use attention='math' or 'flash', or leave attention=None for torch's own choice."
            ) from err


class _CompiledWithFallback(_NetworkWrapper):
    """Runs the compiled network; on a compiler error, warns once and runs eagerly from then on."""

    def __init__(self, eager: nn.Module, mode: str | None, backend="inductor"):
        super().__init__(eager)
        self.compiled = torch.compile(eager, mode=mode, dynamic=False, backend=backend)
        self.failed = False

    def forward(self, *args, **kwargs):
        if not self.failed:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as err:  # compiler/backend errors vary by platform
                if isinstance(err, torch.OutOfMemoryError):
                    raise
                self.failed = True
                logger.warning("torch.compile failed (%s: %s); continuing in eager mode.", type(err).__name__, err)
        return self.eager(*args, **kwargs)


def optimize_backend(backend: DiffusionBackend, *, channels_last: bool = False, compile: bool = False,
                     compile_mode: str | None = None, compile_backend="inductor",
                     attention: str | None = None, tf32: bool = True) -> DiffusionBackend:
    """Apply speed levers to ``backend`` in place and return it.

    Args:
        channels_last: NHWC memory format for convolutional networks (UNets).
        compile: ``torch.compile`` the denoising network (static shapes; eager fallback).
        compile_mode: ``None`` (default), ``"reduce-overhead"`` (CUDA graphs for the one
            batch shape) or ``"max-autotune"`` (CUDA graphs + kernel autotuning).
        compile_backend: the ``torch.compile`` backend (``"inductor"``).
        attention: pin one attention kernel: ``"flash"``, ``"efficient"``, ``"cudnn"`` or
            ``"math"``; ``None`` leaves torch's choice (flash > efficient > math where they apply).
        tf32: allow TF32 matmuls on Ampere+ GPUs for float32 models.

    Raises:
        ValueError: an unknown attention kernel name or compile mode.
    """
    if compile_mode not in COMPILE_MODES:
        raise ValueError(f"Unknown compile_mode {compile_mode!r}; choose one of {COMPILE_MODES}.")
    if attention is not None and attention not in ATTENTION_KERNELS:
        raise ValueError(f"Unknown attention kernel {attention!r}; choose one of {sorted(ATTENTION_KERNELS)} "
                         "or None (torch's choice).")
    name, network = denoising_network(backend)
    if tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if channels_last:
        network.to(memory_format=torch.channels_last)
    if attention is not None:
        network = _PinnedAttention(network, attention)  # inside compile, so the compiler sees the pin
        setattr(backend, name, network)
    if compile:
        setattr(backend, name, _CompiledWithFallback(network, compile_mode, compile_backend))
        backend.static_batch = True
    # What changed float rounding, for identities (the error cache's namespace).
    applied = (("channels_last", channels_last), ("compile", compile), ("tf32", tf32 and torch.cuda.is_available()))
    levers = tuple(n for n, on in applied if on) + ((f"compile_mode={compile_mode}",) if compile_mode else ())
    levers += (f"attention={attention}",) if attention else ()
    backend.speed_levers = tuple(getattr(backend, "speed_levers", ())) + levers
    return backend


@contextmanager
def uncompiled(backend: DiffusionBackend) -> Iterator[DiffusionBackend]:
    """Run ``backend`` with its eager network for a while (e.g. to probe batch sizes without
    compiling once per shape); the compiled network is put back on exit."""
    name, network = denoising_network(backend)
    if not isinstance(network, _CompiledWithFallback):
        yield backend
        return
    setattr(backend, name, network.eager)
    try:
        yield backend
    finally:
        setattr(backend, name, network)
