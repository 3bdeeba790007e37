"""Candidates: what the engine compares (prompts or class labels) and the class of each.

The paper's rule for several prompts per class (its CSV of prompt, classname, classidx): each
prompt is its own candidate in the adaptive stages, and a class is as good as its best
prompt. "Best" means: reached the latest stage, then has the lowest mean error. Cost grows
linearly with the number of prompts per class, so one template per class is the default.
"""
from __future__ import annotations

from dataclasses import dataclass
import hashlib
from typing import Any, Mapping, Sequence

import torch
from torch.utils._pytree import tree_leaves

__all__ = ["CandidateSet", "format_template", "ranking_logits", "check_distinct_conditions"]


def format_template(template: str, classname: str) -> str:
    """Fill a template written either as ``"a photo of a {}."`` or ``"a photo of a {c}."``."""
    if "{c}" in template:
        return template.replace("{c}", classname)
    if "{}" in template:
        return template.replace("{}", classname)
    raise ValueError(f"Template {template!r} has no placeholder; write it with '{{}}' or '{{c}}'.")


def _check_names(names: Sequence[str]) -> list[str]:
    names = [str(n) for n in names]
    if not names:
        raise ValueError("The class list is empty; give at least two class names or labels.")
    blank = [i for i, n in enumerate(names) if not n.strip()]
    if blank:
        raise ValueError(f"Class name {blank[0]} is empty ({names[blank[0]]!r}; classes {names}): every class needs a "
                         "name that its prompt can describe.")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"Duplicate class names {dupes}: each class must appear once; merge or rename them.")
    return names


def ranking_logits(errors: torch.Tensor, stage_reached: torch.Tensor) -> torch.Tensor:
    """A score whose order is the engine's order: later stage first, then lower error.

    ``stage + 1 / (1 + error)`` lies in ``(stage, stage + 1]`` for non-negative errors, so
    argmax is the prediction and top-k respects the adaptive pruning. Computed in float64:
    in float32, two finalists whose errors differ in the last bit would tie. A candidate never
    evaluated (stage -1, error NaN: dropped by a prefilter) scores -1, below every evaluated one.
    """
    score = stage_reached.to(torch.float64) + 1.0 / (1.0 + errors.clamp_min(0).to(torch.float64))
    return torch.where(stage_reached < 0, torch.full_like(score, -1.0), score)


@dataclass(frozen=True)
class CandidateSet:
    """Conditions to score and the class each belongs to.

    Attributes:
        conditions: one per candidate: a prompt (text-conditional models) or an integer class
            label (class-conditional models).
        class_index: the class of each candidate.
        class_names: the names of the classes, in output order.
    """

    conditions: tuple
    class_index: tuple[int, ...]
    class_names: tuple[str, ...]

    @classmethod
    def from_classes(cls, classes: Sequence[str], templates: Sequence[str] = ("{}",)) -> "CandidateSet":
        """Every class through every template (class-major order)."""
        names = _check_names(classes)
        if isinstance(templates, str):
            templates = [templates]
        if not templates:
            raise ValueError("templates is empty; give at least one, e.g. 'a photo of a {}.'.")
        prompts, index = [], []
        for k, name in enumerate(names):
            for template in templates:
                prompts.append(format_template(template, name))
                index.append(k)
        return cls(tuple(prompts), tuple(index), tuple(names))

    @classmethod
    def from_prompts(cls, prompts: Mapping[str, Sequence[str]]) -> "CandidateSet":
        """Explicit prompts per class: ``{"cat": ["a photo of a cat.", ...], ...}``."""
        names = _check_names(list(prompts))
        conditions, index = [], []
        for k, name in enumerate(names):
            rows = prompts[name]
            if isinstance(rows, str):
                rows = [rows]
            if not rows:
                raise ValueError(f"Class {name!r} has no prompts.")
            empty = [r for r in rows if not isinstance(r, str) or not r.strip()]
            if empty:
                raise ValueError(f"Class {name!r} has an empty or non-text prompt {empty[0]!r}; give each prompt as "
                                 "a non-empty string.")
            conditions.extend(rows)
            index.extend([k] * len(rows))
        return cls(tuple(conditions), tuple(index), tuple(names))

    @classmethod
    def from_labels(cls, labels: Sequence[int], class_names: Sequence[str] | None = None) -> "CandidateSet":
        """Class labels of a class-conditional model (e.g. ImageNet ids for DiT)."""
        labels = [int(v) for v in labels]
        if not labels:
            raise ValueError("The class list is empty; give at least two class labels.")
        if len(set(labels)) != len(labels):
            raise ValueError(f"Duplicate class labels in {labels}: each class must appear once.")
        names = _check_names(class_names if class_names is not None else [str(v) for v in labels])
        if len(names) != len(labels):
            raise ValueError(f"Got {len(names)} class names for {len(labels)} labels.")
        return cls(tuple(labels), tuple(range(len(labels))), tuple(names))

    def __len__(self) -> int:
        return len(self.conditions)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def reduce(self, candidate_errors: torch.Tensor, stage_reached: torch.Tensor):
        """Class-level (errors, stage_reached, best candidate) from candidate-level results."""
        logits = ranking_logits(candidate_errors, stage_reached)  # [N, C]
        index = torch.tensor(self.class_index, device=logits.device)
        N, K = logits.shape[0], self.num_classes
        best_logit = torch.full((N, K), float("-inf"), device=logits.device, dtype=logits.dtype)
        best_logit = best_logit.scatter_reduce(1, index.expand(N, -1), logits, reduce="amax")
        is_best = logits == best_logit.gather(1, index.expand(N, -1))
        cand = torch.arange(len(self), device=logits.device).expand(N, -1)
        # lowest candidate id among ties, per class
        masked = torch.where(is_best, cand, torch.full_like(cand, len(self)))
        best = torch.full((N, K), len(self), device=logits.device, dtype=torch.long)
        best = best.scatter_reduce(1, index.expand(N, -1), masked, reduce="amin")
        return candidate_errors.gather(1, best), stage_reached.gather(1, best), best


def check_distinct_conditions(conditions: Any, candidates: CandidateSet) -> None:
    """Refuse two classes whose encoded conditions are identical (e.g. prompts that differ only
    after the text encoder's token limit): they would tie on every error, the tie broken by
    list order, so the prediction between them would mean nothing.

    Raises:
        ValueError: naming both classes and their conditions.
    """
    leaves = [x for x in tree_leaves(conditions) if isinstance(x, torch.Tensor)]
    if not leaves:
        return
    seen: dict[bytes, int] = {}
    for j in range(len(candidates)):
        digest = hashlib.sha256()
        for leaf in leaves:
            row = leaf[j].detach().cpu().contiguous()
            digest.update(str(row.dtype).encode() + row.view(-1).view(torch.uint8).numpy().tobytes()
                          if row.numel() else b"")
        first = seen.setdefault(digest.digest(), j)
        if first != j and candidates.class_index[first] != candidates.class_index[j]:
            a, b = candidates.class_index[first], candidates.class_index[j]
            raise ValueError(
                f"Classes {candidates.class_names[a]!r} and {candidates.class_names[b]!r} have identical encoded "
                f"conditions ({candidates.conditions[first]!r} and {candidates.conditions[j]!r}): they would score "
                "the same on every image. If these are prompts, they probably differ only after the text "
                "encoder's token limit (see the warning above): make them differ earlier or shorten them."
            )
