"""Results as dataclasses (diffusers ``BaseOutput`` style), never bare tuples."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable

import torch

__all__ = ["ClassificationOutput"]


@dataclass
class ClassificationOutput:
    """What ``DiffusionClassifier.classify`` returns for ``N`` images and ``K`` classes.

    Attributes:
        predictions: ``[N]`` predicted class indices.
        class_names: the ``K`` class names, in column order.
        logits: ``[N, K]`` ranking score, higher is better: its argmax is the prediction and
            its order respects the adaptive stages (see ``candidates.ranking_logits``).
        errors: ``[N, K]`` mean denoising error of each class's best candidate, over the
            timesteps that candidate was evaluated on (lower is better; the paper's score).
        stage_reached: ``[N, K]`` last stage each class was evaluated in.
        evaluations: ``[N]`` network evaluations spent per image.
        candidate_errors: ``[N, C]`` per-candidate (prompt) mean errors.
        sample_keys: each image's noise identity; with the seed it fixes the (t, eps) pairs.
        timesteps: the plan's timesteps; stage ``k`` used positions ``stage_positions[k]``.
        timestep_errors: ``[N, C, n_timesteps, n_trials]`` per-pair errors (NaN = not run).
        temperature: the calibration temperature of ``probabilities`` (None: 1, uncalibrated).
        extras: the strategy spec and ``cached_evaluations [N]`` (answered by the error cache).
        seed: the noise seed; with ``sample_keys``, ``timesteps`` and ``n_trials`` it fixes every eps.
        n_trials: eps draws per timestep.
        latent_shape: the shape of one image's x0 (and eps) in the space the model denoises.
    """

    predictions: torch.Tensor
    class_names: tuple[str, ...]
    logits: torch.Tensor
    errors: torch.Tensor
    stage_reached: torch.Tensor
    evaluations: torch.Tensor
    candidate_errors: torch.Tensor
    sample_keys: list[Hashable]
    timesteps: tuple[int, ...]
    stage_positions: tuple[tuple[int, ...], ...]
    timestep_errors: torch.Tensor | None = None
    temperature: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    n_trials: int = 1
    latent_shape: tuple[int, ...] | None = None

    def noise(self) -> torch.Tensor:
        """The eps this result was scored with, ``[N, n_timesteps, n_trials, *latent_shape]`` (float32,
        CPU): pass it as ``classify(..., noise=...)`` or to another implementation, with ``timesteps``,
        to score the same (t, eps) pairs (``dc_zoo.noise.sample_noise`` draws it again from the keys)."""
        from .noise import sample_noise

        if self.seed is None or self.latent_shape is None:
            raise ValueError("This output was scored with caller-supplied noise (or built by hand), so no seed "
                             "says which eps it used: keep the noise you passed to classify(..., noise=...).")
        return torch.stack([sample_noise(self.seed, key, self.timesteps, self.n_trials, self.latent_shape)
                            for key in self.sample_keys])

    @property
    def probabilities(self) -> torch.Tensor:
        """``[N, K]`` class probabilities, softmax of the negated errors over the temperature
        (``dc_zoo.calibration``; fitted per model and schedule, or 1), with argmax equal to the
        prediction."""
        from .calibration import probabilities

        return probabilities(self.errors, 1.0 if self.temperature is None else self.temperature, ranking=self.logits)

    @property
    def predicted_names(self) -> list[str]:
        return [self.class_names[int(i)] for i in self.predictions]

    def topk(self, k: int = 5) -> torch.Tensor:
        """``[N, k]`` class indices in the engine's ranking order."""
        return self.logits.topk(min(k, self.logits.shape[1]), dim=1).indices

    def __len__(self) -> int:
        return int(self.predictions.shape[0])
