"""Speed levers that keep the numbers: channels_last, torch.compile with a clean fallback, TF32.

Each lever is opt-in and measured in ``benchmarks/throughput.py``; none changes what is
computed beyond floating-point rounding. Compilation uses one static batch shape (the
engine pads a stage's last batch) and Inductor's on-disk cache (``TORCHINDUCTOR_CACHE_DIR``),
and falls back to eager execution, with a warning, if the compiler fails.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from .backends.base import DiffusionBackend

logger = logging.getLogger(__name__)

__all__ = ["optimize_backend", "denoising_network"]

_NETWORK_ATTRS = ("unet", "transformer", "model")


def denoising_network(backend: DiffusionBackend) -> tuple[str, nn.Module]:
    """The attribute name and module of the backend's denoising network."""
    for name in _NETWORK_ATTRS:
        module = getattr(backend, name, None)
        if isinstance(module, nn.Module):
            return name, module
    raise TypeError(f"{type(backend).__name__} has no denoising network among attributes {_NETWORK_ATTRS}.")


class _CompiledWithFallback(nn.Module):
    """Runs the compiled network; on a compiler error, warns once and runs eagerly from then on."""

    def __init__(self, eager: nn.Module, mode: str | None, backend="inductor"):
        super().__init__()
        self.eager = eager
        self.compiled = torch.compile(eager, mode=mode, dynamic=False, backend=backend)
        self.failed = False

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.eager, name)  # config, dtype, ... of the wrapped network

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
                     tf32: bool = True) -> DiffusionBackend:
    """Apply speed levers to ``backend`` in place and return it.

    Args:
        channels_last: NHWC memory format for convolutional networks (UNets).
        compile: ``torch.compile`` the denoising network (static shapes; eager fallback).
        compile_mode: e.g. ``"max-autotune"`` (CUDA graphs + autotuning) or ``None`` (default).
        compile_backend: the ``torch.compile`` backend (``"inductor"``).
        tf32: allow TF32 matmuls on Ampere+ GPUs for float32 models.
    """
    name, network = denoising_network(backend)
    if tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if channels_last:
        network.to(memory_format=torch.channels_last)
    if compile:
        setattr(backend, name, _CompiledWithFallback(network, compile_mode, compile_backend))
        backend.static_batch = True
    return backend
