"""The Diffusion Classifier engine: adaptive stages over shared (t, eps) pairs.

For every image, every surviving candidate is scored at the stage's new timesteps with the
same noise, its score is the mean error over all timesteps evaluated so far (weighted, when the
config names a timestep weighting), and after stage k
only the ``to_keep[k]`` lowest-error candidates go on (Li et al., arXiv 2303.16203, Alg. 2).
Which candidates survive a round is a strategy's decision (``dc_zoo.strategies``; the paper's
stages by default), so the engine only evaluates what is alive, and an optional error cache
(``dc_zoo.error_cache``) supplies errors computed before, by any plan, for the same (t, eps).

Speed comes from the work layout, not from the model: all pending (image, candidate,
timestep, trial) items of a stage are flattened and packed into fixed-size batches across
images, so late stages with few survivors still fill a batch; index bookkeeping stays on the
device and there is one host synchronisation per stage (the non-finite check), none per batch.
The engine knows no model family: it calls a ``denoise`` function and a ``NoiseSchedule``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

import torch
from torch.utils._pytree import tree_map

from .config import ScoringConfig
from .losses import per_sample_error
from .noise import sample_noise
from .noise_schedules import NoiseSchedule, estimate_in_target_space
from .strategies import RoundState, ScoringStrategy, apply_budget, build_strategy, masked_argmin
from .strategies.base import mean_errors as _mean_errors
from .strategies.weighting import build_weighting
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
            (timestep, trial) pairs it was evaluated on (lower is better; weighted by the
            config's ``timestep_weights``).
        stage_reached: ``[N, C]`` index of the last stage that evaluated each candidate.
        prediction: ``[N]`` index of the single surviving candidate.
        evaluations: ``[N]`` network evaluations spent per image.
        timestep_errors: ``[N, C, n_timesteps, n_trials]`` per-pair errors, NaN where a
            candidate was pruned before that timestep (read back for other implementations).
        plan: the timestep plan that was used (its stages are the strategy's rounds).
        sample_keys: the identity that each image's noise was drawn for.
        cached_evaluations: ``[N]`` of ``evaluations`` that the error cache answered (no network call).
        strategy: the JSON spec of the strategy that chose the pairs.
        seed, n_trials, latent_shape: with ``sample_keys`` and ``plan``, what fixes every eps (``seed``
            None when the caller supplied the eps).
    """

    candidate_errors: torch.Tensor
    stage_reached: torch.Tensor
    prediction: torch.Tensor
    evaluations: torch.Tensor
    timestep_errors: torch.Tensor
    plan: TimestepPlan
    sample_keys: list[Hashable] = field(default_factory=list)
    cached_evaluations: torch.Tensor | None = None
    strategy: dict = field(default_factory=dict)
    seed: int | None = None
    n_trials: int = 1
    latent_shape: tuple[int, ...] | None = None


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
    """The eps of each image: ``[N, n_timesteps, n_trials, *latent_shape]``, float32 on the CPU.

    Keyed by (seed, sample key, timestep, trial): the plan decides which rows exist, not their values.
    """
    return torch.stack(
        [sample_noise(seed, key, plan.timesteps, n_trials, latent_shape) for key in sample_keys]
    )


def select_conditions(conditions: Any, index: torch.Tensor) -> Any:
    """The candidates ``index`` of a conditioning pytree (rows of each tensor leaf)."""
    return tree_map(lambda x: x.index_select(0, index) if isinstance(x, torch.Tensor) else x, conditions)


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def _evaluate_items(denoise, schedule, x0, noise, conditions, plan_t, img, cand, tpos, trial, *,
                    loss, batch_size, model_dtype, pad_batches, on_batch, on_errors=None) -> torch.Tensor:
    """Errors of flattened (image, candidate, timestep position, trial) items, in fixed-size batches.

    On a device out-of-memory error the batch size is halved and the batch retried, so a too
    large ``batch_size`` costs time, never results (per-item errors do not depend on batching).
    ``on_errors(start, errors)`` receives each batch's errors (the error cache writes them).
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
            model_input = x_t.to(model_dtype) if model_dtype is not None else x_t
            model_input = model_input.contiguous()  # one memory layout for every batch: a compiled network is not re-traced
            prediction = denoise(model_input, schedule.model_timestep(t), select_conditions(conditions, cand[index]))
            estimate = estimate_in_target_space(schedule, prediction, x_t, t)  # the prediction in the error's space
            batch_errors = per_sample_error(estimate, schedule.target(clean, eps, t), loss)
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not is_out_of_memory(err) or B == 1:
                raise
            B = max(1, B // 2)
            logger.warning("Out of memory at batch size %d; retrying with %d.", 2 * B, B)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        errors[start : start + n_real] = batch_errors[:n_real]
        if on_errors is not None:
            on_errors(start, batch_errors[:n_real])
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
    strategy: ScoringStrategy | None = None,
    candidate_mask: torch.Tensor | None = None,
    error_cache: Any = None,
    condition_keys: Sequence[str] | None = None,
    cache_keys: Sequence[str] | None = None,
) -> EngineResult:
    """Run the strategy's rounds for ``N`` images against ``C`` candidates.

    Args:
        denoise: ``denoise(x_t, model_timestep, conditions_batch) -> prediction``; its output is
            compared with ``schedule.target``.
        schedule: the forward process and target (see ``noise_schedules``).
        x0: ``[N, ...]`` clean latents (or pixels for pixel-space models).
        conditions: pytree of tensors whose leading dimension indexes the ``C`` candidates.
        config: stages, loss, trials, seed, batch size, strategy spec and budget.
        sample_keys: one identity per image; noise depends only on ``(config.seed, key, t, trial)``.
        noise: optional caller-supplied eps ``[N, n_timesteps, n_trials, *x0.shape[1:]]``.
        plan: optional caller-supplied plan; by default the strategy's (the paper's plan for
            ``config.n_samples`` under the default stages).
        model_dtype: dtype that ``x_t`` is cast to before the network (errors stay float32).
        on_batch: called with the number of evaluations after each forward pass.
        pad_batches: pad the last batch of a round to ``config.batch_size`` (repeating an item
            and discarding its result) so compiled models / CUDA graphs see one shape.
        strategy: overrides ``config.strategy`` (an object of ``dc_zoo.strategies``).
        candidate_mask: ``[N, C]`` bool, the candidates in the race per image (a prefilter's
            choice); default all.
        error_cache: a ``dc_zoo.error_cache.ErrorCache`` whose namespace is this model, loss,
            seed and preprocessing: errors found there are not recomputed, new ones are stored
            after each forward pass.
        condition_keys: with ``error_cache``, one stable text per candidate (its prompt or label).
        cache_keys: with ``error_cache``, each image's key there (default: its sample key); the
            classifier uses content hash and noise key together.

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
    strategy = strategy or build_strategy(config.strategy, config.to_keep)
    plan = plan or strategy.timestep_plan(config.n_samples, T, window=config.timestep_range)
    if strategy.name == "stages" and len(plan.stage_positions) != len(config.to_keep):
        raise ValueError(
            f"The plan has {len(plan.stage_positions)} stages but to_keep has {len(config.to_keep)}."
        )
    N = int(x0.shape[0])
    C = num_conditions(conditions)
    if len(sample_keys) != N:
        raise ValueError(f"Got {len(sample_keys)} sample keys for {N} images; give one key per image.")
    if C == 0:
        raise ValueError("No candidates to score: give at least one class or prompt.")
    if strategy.name == "stages" and candidate_mask is None and max(config.to_keep[:-1], default=1) > C:
        raise ValueError(
            f"to_keep={config.to_keep} keeps more candidates than the {C} there are; lower to_keep "
            f"to at most {C} (or use a schedule meant for {C} candidates)."
        )
    device = x0.device
    R = int(config.n_trials)
    n_t = plan.num_timesteps
    supplied_noise = noise is not None  # then the seed does not say which eps were used
    if error_cache is not None and noise is not None:
        raise ValueError("error_cache holds errors of the keyed noise; do not combine it with caller-supplied noise.")
    if noise is None:
        noise = make_noise(config.seed, sample_keys, plan, R, tuple(x0.shape[1:]))
    expected = (N, n_t, R, *x0.shape[1:])
    if tuple(noise.shape) != expected:
        raise ValueError(f"noise has shape {tuple(noise.shape)}; expected {expected} (images, timesteps, trials, ...).")
    noise = noise.to(device=device, dtype=torch.float32)
    x0 = x0.to(torch.float32)
    plan_t = plan.as_tensor(device)
    weighting = build_weighting(config.timestep_weights)
    weights = None if weighting.is_uniform else weighting.weights(plan.timesteps, T).to(device)

    alive = torch.ones((N, C), dtype=torch.bool, device=device)
    if candidate_mask is not None:
        if tuple(candidate_mask.shape) != (N, C):
            raise ValueError(f"candidate_mask has shape {tuple(candidate_mask.shape)}; expected {(N, C)}.")
        alive = candidate_mask.to(device=device, dtype=torch.bool).clone()
        if not bool(alive.any(1).all()):
            raise ValueError("candidate_mask leaves an image with no candidate; keep at least one per image.")
    active = torch.ones(N, dtype=torch.bool, device=device)
    n_candidates = alive.sum(1)
    timestep_errors = torch.full((N, C, n_t, R), float("nan"), device=device)
    stage_reached = torch.full((N, C), -1, dtype=torch.long, device=device)
    evaluations = torch.zeros(N, dtype=torch.long, device=device)
    cached_evaluations = torch.zeros(N, dtype=torch.long)
    cache = (_CacheView(error_cache, cache_keys or sample_keys, condition_keys, plan, C, R)
             if error_cache is not None else None)
    B = int(config.batch_size)

    def result(prediction: torch.Tensor) -> EngineResult:
        return EngineResult(
            candidate_errors=_mean_errors(timestep_errors, weights),
            stage_reached=stage_reached,
            prediction=prediction,
            evaluations=evaluations.cpu(),
            timestep_errors=timestep_errors,
            plan=plan,
            sample_keys=list(sample_keys),
            cached_evaluations=cached_evaluations,
            strategy=strategy.to_dict(),
            seed=None if supplied_noise else int(config.seed),
            n_trials=R,
            latent_shape=tuple(int(v) for v in x0.shape[1:]),
        )

    for stage, positions in enumerate(plan.stage_positions):
        pairs = (alive & active.view(N, 1)).nonzero()  # [M, 2] (image, candidate), the round's one sync
        pos = torch.tensor(positions, dtype=torch.long, device=device)
        P, M = pos.numel(), int(pairs.shape[0])
        if M:
            shape = (M, P, R)
            img = pairs[:, 0].view(M, 1, 1).expand(shape).reshape(-1)
            cand = pairs[:, 1].view(M, 1, 1).expand(shape).reshape(-1)
            tpos = pos.view(1, P, 1).expand(shape).reshape(-1)
            trial = torch.arange(R, device=device).view(1, 1, R).expand(shape).reshape(-1)
            errors = torch.full((img.numel(),), float("nan"), device=device)
            todo = torch.arange(img.numel(), device=device)
            if cache is not None:
                errors, todo, hits = cache.fill(img, cand, tpos, trial)
                cached_evaluations += torch.bincount(img[hits].cpu(), minlength=N)
            if todo.numel():
                store = cache.store_for(img[todo], cand[todo], tpos[todo], trial[todo]) if cache is not None else None
                errors[todo] = _evaluate_items(
                    denoise, schedule, x0, noise, conditions, plan_t, img[todo], cand[todo], tpos[todo], trial[todo],
                    loss=config.loss, batch_size=B, model_dtype=model_dtype, pad_batches=pad_batches,
                    on_batch=on_batch, on_errors=store,
                )
            timestep_errors[img, cand, tpos, trial] = errors
            stage_reached[pairs[:, 0], pairs[:, 1]] = stage
            evaluations += torch.bincount(pairs[:, 0], minlength=N) * (P * R)
            finite = torch.isfinite(errors)
            if not bool(finite.all()):
                bad = int((~finite).nonzero()[0])
                n, j, pp, rr = int(img[bad]), int(cand[bad]), int(tpos[bad]), int(trial[bad])
                raise NonFiniteScoreError(
                    f"Non-finite {config.loss} error for image {sample_keys[n]!r}, candidate "
                    f"{j}, timestep {plan.timesteps[pp]} (trial {rr}) in stage "
                    f"{stage}: the model produced NaN/inf. Try float32 or bfloat16 instead of float16, "
                    "or check the inputs. Scores computed so far are kept in .partial.",
                    partial=result(torch.full((N,), -1, dtype=torch.long, device=device)),
                )
        state = RoundState(round=stage, timestep_errors=timestep_errors, alive=alive,
                           active=active, evaluations=evaluations, plan=plan,
                           max_evaluations=config.max_evaluations, n_trials=R, n_candidates=n_candidates,
                           weights=weights)
        decision = apply_budget(state, strategy.decide(state))
        alive, active = decision.alive, decision.active
        logger.debug("round %d: %d timesteps x %d (image, candidate) pairs", stage, P, M)
        if not bool(active.any()):
            break

    return result(masked_argmin(_mean_errors(timestep_errors, weights), alive))


class _CacheView:
    """The engine's side of an error cache: this call's images, candidates and plan as tensor indices."""

    def __init__(self, cache, sample_keys, condition_keys, plan: TimestepPlan, C: int, R: int):
        if condition_keys is None or len(condition_keys) != C:
            raise ValueError(f"error_cache needs one condition key per candidate ({C}); got "
                             f"{None if condition_keys is None else len(condition_keys)}.")
        self.cache, self.keys, self.failed = cache, [str(k) for k in sample_keys], False
        self.conditions = [str(c) for c in condition_keys]
        self.timesteps = list(plan.timesteps)
        self.known = torch.full((len(self.keys), C, plan.num_timesteps, R), float("nan"))
        column = {c: j for j, c in enumerate(self.conditions)}
        position = {t: p for p, t in enumerate(self.timesteps)}
        for n, rows in enumerate(cache.get(self.keys).get(k, {}) for k in self.keys):
            for (condition, t, trial), error in rows.items():
                j, p = column.get(condition), position.get(int(t))
                if j is not None and p is not None and int(trial) < R:
                    self.known[n, j, p, int(trial)] = error

    def fill(self, img, cand, tpos, trial):
        """(errors with the cached ones filled, indices still to compute, indices answered)."""
        found = self.known[img.cpu(), cand.cpu(), tpos.cpu(), trial.cpu()]
        hits = ~torch.isnan(found)
        device = img.device
        return found.to(device), (~hits).nonzero().view(-1).to(device), hits.nonzero().view(-1).to(device)

    def store_for(self, img, cand, tpos, trial):
        """An ``on_errors(start, errors)`` callback writing each computed batch in one transaction."""
        img, cand, tpos, trial = (v.cpu().tolist() for v in (img, cand, tpos, trial))

        def store(start: int, errors: torch.Tensor) -> None:
            if self.failed:
                return
            values = errors.detach().float().cpu().tolist()
            rows = [(self.keys[img[start + i]], self.conditions[cand[start + i]], self.timesteps[tpos[start + i]],
                     trial[start + i], v) for i, v in enumerate(values) if math.isfinite(v)]
            if rows:
                try:
                    self.cache.put(rows)
                except Exception as err:  # noqa: BLE001 - a cache is an optimisation: scoring goes on
                    self.failed = True
                    logger.warning("The error cache could not be written (%s); scoring goes on without storing "
                                   "new errors.", err)

        return store
