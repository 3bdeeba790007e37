"""The per-(candidate, timestep) error of Diffusion Classifier: l2 (default), l1 or huber.

Each is the mean over all non-batch elements of the elementwise loss between the network's
prediction and its target, computed in float32 whatever the model's dtype, so that
half-precision models accumulate scores without rounding drift.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["LOSSES", "per_sample_error"]

LOSSES = ("l2", "l1", "huber")


def per_sample_error(prediction: torch.Tensor, target: torch.Tensor, loss: str = "l2") -> torch.Tensor:
    """Mean elementwise loss per batch row, in float32.

    Args:
        prediction: network output, shape ``[B, ...]``, any float dtype.
        target: the regression target (eps, v, x0 or velocity), same shape.
        loss: ``"l2"`` (squared error), ``"l1"`` or ``"huber"`` (delta 1, as the official code).

    Returns:
        A float32 tensor of shape ``[B]``.
    """
    prediction = prediction.float()
    target = target.float()
    if loss == "l2":
        err = F.mse_loss(prediction, target, reduction="none")
    elif loss == "l1":
        err = F.l1_loss(prediction, target, reduction="none")
    elif loss == "huber":
        err = F.huber_loss(prediction, target, reduction="none", delta=1.0)
    else:
        raise ValueError(f"Unknown loss {loss!r}; choose one of {LOSSES}.")
    return err.flatten(1).mean(dim=1)
