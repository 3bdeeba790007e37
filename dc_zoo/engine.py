"""The Diffusion Classifier engine: adaptive stages over shared (t, eps) pairs.

For every image, every surviving candidate is scored at the stage's new timesteps with the
same noise, its score is the mean error over all timesteps evaluated so far, and after stage k
only the ``to_keep[k]`` lowest-error candidates go on (Li et al., arXiv 2303.16203, Alg. 2).

Speed comes from the work layout, not from the model: all pending (image, candidate,
timestep, trial) items of a stage are flattened and packed into fixed-size batches across
images, so late stages with few survivors still fill a batch; index bookkeeping stays on the
device and there is one host synchronisation per stage (the non-finite check), none per batch.
The engine knows no model family: it calls a ``denoise`` function and a ``NoiseSchedule``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

import torch
from torch.utils._pytree import tree_map

from .config import ScoringConfig
from .losses import per_sample_error
from .noise import sample_noise
from .noise_schedules import NoiseSchedule
from .timestep_plan import TimestepPlan, validate_stages

logger = logging.getLogger(__name__)

__all__ = ["score_candidates", "EngineResult", "NonFiniteScoreError", "make_noise", "num_conditions", "is_out_of_memory",
           "select_conditions"]

Denoise = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


class NonFiniteScoreError(FloatingPointError):
    """A network output gave a NaN/inf error; ``partial`` holds everything computed before it."""

    def __init__(self, message: str, partial: "EngineResult"):
        super().__init__(message)
        self.partial = partial


@dataclass
class EngineResult:
    """Everything the stages computed for a batch of images.

    Attributes:
        candidate_errors: ``[N, C]`` float32 mean error of each candidate over the
            (timestep, trial) pairs it was evaluated on (lower is better).
        stage_reached: ``[N, C]`` index of the last stage that evaluated each candidate.
        prediction: ``[N]`` index of the single surviving candidate.
        evaluations: ``[N]`` network evaluations spent per image.
        timestep_errors: ``[N, C, n_timesteps, n_trials]`` per-pair errors, NaN where a
            candidate was pruned before that timestep (read back for other implementations).
        plan: the timestep plan that was used.
        sample_keys: the identity that each image's noise was drawn for.
    """

    candidate_errors: torch.Tensor
    stage_reached: torch.Tensor
    prediction: torch.Tensor
    evaluations: torch.Tensor
    timestep_errors: torch.Tensor
    plan: TimestepPlan
    sample_keys: list[Hashable] = field(default_factory=list)


def num_conditions(conditions: Any) -> int:
    """Number of candidates in a conditioning pytree (leading dimension of its tensors)."""
    leaves = [x for x in torch.utils._pytree.tree_leaves(conditions) if isinstance(x, torch.Tensor)]
    if not leaves:
        raise ValueError("conditions must contain at least one tensor with a leading candidate dimension.")
    sizes = {int(x.shape[0]) for x in leaves}
    if len(sizes) != 1:
        raise ValueError(f"All condition tensors must share their leading dimension, got sizes {sorted(sizes)}.")
    return sizes.pop()


def make_noise(
    seed: int, sample_keys: Sequence[Hashable], plan: TimestepPlan, n_trials: int, latent_shape: Sequence[int]
) -> torch.Tensor:
    """The eps of each image: ``[N, n_timesteps, n_trials, *latent_shape]``, float32 on the CPU."""
    return torch.stack(
        [sample_noise(seed, key, plan.num_timesteps, n_trials, latent_shape) for key in sample_keys]
    )


def _mean_errors(timestep_errors: torch.Tensor) -> torch.Tensor:
    """Each candidate's mean error over the (timestep, trial) pairs it was evaluated on (NaN = not run)."""
    counts = (~torch.isnan(timestep_errors)).sum(dim=(2, 3)).clamp_min(1)
    return torch.nansum(timestep_errors, dim=(2, 3)) / counts


def select_conditions(conditions: Any, index: torch.Tensor) -> Any:
    """The candidates ``index`` of a conditioning pytree (rows of each tensor leaf)."""
    return tree_map(lambda x: x.index_select(0, index) if isinstance(x, torch.Tensor) else x, conditions)


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def _evaluate_items(denoise, schedule, x0, noise, conditions, plan_t, img, cand, tpos, trial, *,
                    loss, batch_size, model_dtype, pad_batches, on_batch) -> torch.Tensor:
    """Errors of flattened (image, candidate, timestep position, trial) items, in fixed-size batches.

    On a device out-of-memory error the batch size is halved and the batch retried, so a too
    large ``batch_size`` costs time, never results (per-item errors do not depend on batching).
    """
    M = img.numel()
    errors = torch.empty(M, device=x0.device)
    start, B = 0, batch_size
    while start < M:
        index = torch.arange(start, min(start + B, M), device=x0.device)
        if pad_batches and index.numel() < B:
            index = torch.cat([index, index[-1:].expand(B - index.numel())])
        n_real = min(B, M - start)
        i, p, r = img[index], tpos[index], trial[index]
        t = plan_t[p]
        try:
            eps = noise[i, p, r]
            clean = x0[i]
            x_t = schedule.add_noise(clean, eps, t)
            if model_dtype is not None:
                x_t = x_t.to(model_dtype)
            x_t = x_t.contiguous()  # one memory layout for every batch: a compiled network is not re-traced
            prediction = denoise(x_t, schedule.model_timestep(t), select_conditions(conditions, cand[index]))
            batch_errors = per_sample_error(prediction, schedule.target(clean, eps, t), loss)
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not is_out_of_memory(err) or B == 1:
                raise
            B = max(1, B // 2)
            logger.warning("Out of memory at batch size %d; retrying with %d.", 2 * B, B)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        errors[start : start + n_real] = batch_errors[:n_real]
        start += n_real
        if on_batch is not None:
            on_batch(n_real)
    return errors


@torch.inference_mode()
def score_candidates(
    denoise: Denoise,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    conditions: Any,
    config: ScoringConfig,
    *,
    sample_keys: Sequence[Hashable],
    noise: torch.Tensor | None = None,
    plan: TimestepPlan | None = None,
    model_dtype: torch.dtype | None = None,
    on_batch: Callable[[int], None] | None = None,
    pad_batches: bool = False,
) -> EngineResult:
    """Run the adaptive stages for ``N`` images against ``C`` candidates.

    Args:
        denoise: ``denoise(x_t, model_timestep, conditions_batch) -> prediction``; its output is
            compared with ``schedule.target``.
        schedule: the forward process and target (see ``noise_schedules``).
        x0: ``[N, ...]`` clean latents (or pixels for pixel-space models).
        conditions: pytree of tensors whose leading dimension indexes the ``C`` candidates.
        config: stages, loss, trials, seed and batch size.
        sample_keys: one identity per image; noise depends only on ``(config.seed, key)``.
        noise: optional caller-supplied eps ``[N, n_timesteps, n_trials, *x0.shape[1:]]``.
        plan: optional caller-supplied plan; by default the reference plan for
            ``config.n_samples``.
        model_dtype: dtype that ``x_t`` is cast to before the network (errors stay float32).
        on_batch: called with the number of evaluations after each forward pass.
        pad_batches: pad the last batch of a stage to ``config.batch_size`` (repeating an item
            and discarding its result) so compiled models / CUDA graphs see one shape.

    Returns:
        An ``EngineResult``.

    Raises:
        ValueError: stage schedule or inputs the plan cannot serve.
        NonFiniteScoreError: a prediction produced a non-finite error (names the image,
            candidate and timestep; ``.partial`` keeps what was computed).
    """
    if not isinstance(config.batch_size, int):
        raise ValueError(
            f"score_candidates needs a number for batch_size, got {config.batch_size!r}: 'auto' is resolved by "
            "DiffusionClassifier.scoring_for (or dc_zoo.batch_size.batch_size_for_backend)."
        )
    T = schedule.num_train_timesteps
    validate_stages(config.n_samples, config.to_keep, T)
    plan = plan or TimestepPlan.from_stages(config.n_samples, T)
    if len(plan.stage_positions) != len(config.to_keep):
        raise ValueError(
            f"The plan has {len(plan.stage_positions)} stages but to_keep has {len(config.to_keep)}."
        )
    N = int(x0.shape[0])
    C = num_conditions(conditions)
    if len(sample_keys) != N:
        raise ValueError(f"Got {len(sample_keys)} sample keys for {N} images; give one key per image.")
    if C == 0:
        raise ValueError("No candidates to score: give at least one class or prompt.")
    if max(config.to_keep[:-1], default=1) > C:
        raise ValueError(
            f"to_keep={config.to_keep} keeps more candidates than the {C} there are; lower to_keep "
            f"to at most {C} (or use a schedule meant for {C} candidates)."
        )
    device = x0.device
    R = int(config.n_trials)
    n_t = plan.num_timesteps
    if noise is None:
        noise = make_noise(config.seed, sample_keys, plan, R, tuple(x0.shape[1:]))
    expected = (N, n_t, R, *x0.shape[1:])
    if tuple(noise.shape) != expected:
        raise ValueError(f"noise has shape {tuple(noise.shape)}; expected {expected} (images, timesteps, trials, ...).")
    noise = noise.to(device=device, dtype=torch.float32)
    x0 = x0.to(torch.float32)
    plan_t = plan.as_tensor(device)

    timestep_errors = torch.full((N, C, n_t, R), float("nan"), device=device)
    stage_reached = torch.full((N, C), -1, dtype=torch.long, device=device)
    kept = torch.arange(C, device=device).expand(N, C)
    rows = torch.arange(N, device=device)
    evaluations = 0
    B = int(config.batch_size)

    def result(prediction: torch.Tensor) -> EngineResult:
        return EngineResult(
            candidate_errors=_mean_errors(timestep_errors),
            stage_reached=stage_reached,
            prediction=prediction,
            evaluations=torch.full((N,), evaluations, dtype=torch.long),
            timestep_errors=timestep_errors,
            plan=plan,
            sample_keys=list(sample_keys),
        )

    for stage, (positions, keep) in enumerate(zip(plan.stage_positions, config.to_keep)):
        k = kept.shape[1]
        pos = torch.tensor(positions, dtype=torch.long, device=device)
        P = pos.numel()
        shape = (N, k, P, R)
        img = rows.view(N, 1, 1, 1).expand(shape).reshape(-1)
        cand = kept.reshape(N, k, 1, 1).expand(shape).reshape(-1)
        tpos = pos.view(1, 1, P, 1).expand(shape).reshape(-1)
        trial = torch.arange(R, device=device).view(1, 1, 1, R).expand(shape).reshape(-1)
        errors = _evaluate_items(
            denoise, schedule, x0, noise, conditions, plan_t, img, cand, tpos, trial,
            loss=config.loss, batch_size=B, model_dtype=model_dtype, pad_batches=pad_batches, on_batch=on_batch,
        )
        evaluations += k * P * R
        errors = errors.view(shape)
        timestep_errors[rows.view(N, 1, 1), kept.reshape(N, k, 1), pos.view(1, 1, P)] = errors
        stage_reached.scatter_(1, kept, stage)
        finite = torch.isfinite(errors)
        if not bool(finite.all()):  # the one host sync of the stage
            n, j, pp, rr = (int(v) for v in (~finite).nonzero()[0])
            raise NonFiniteScoreError(
                f"Non-finite {config.loss} error for image {sample_keys[n]!r}, candidate "
                f"{int(kept[n, j])}, timestep {plan.timesteps[positions[pp]]} (trial {rr}) in stage "
                f"{stage}: the model produced NaN/inf. Try float32 or bfloat16 instead of float16, "
                "or check the inputs. Scores computed so far are kept in .partial.",
                partial=result(torch.full((N,), -1, dtype=torch.long, device=device)),
            )
        kept_mean = _mean_errors(timestep_errors).gather(1, kept)
        order = torch.topk(-kept_mean, k=min(keep, k), dim=1).indices
        kept = kept.gather(1, order)
        logger.debug("stage %d: %d timesteps x %d candidates x %d images", stage, P, k, N)

    return result(kept[:, 0])
