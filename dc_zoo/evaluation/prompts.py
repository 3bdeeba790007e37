"""Which prompts a text-conditional model scores: the entry's templates, clip_benchmark's, or a file's.

Cost grows linearly with the number of prompts per class (each prompt is a candidate in the
adaptive stages), so the default is the zoo entry's own template(s), the paper's one prompt
per class; ``clip_benchmark`` selects the dataset's template ensemble (the CLIP protocol);
a file gives your own.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

__all__ = ["PromptChoice", "resolve_prompts", "TEMPLATE_SOURCES"]

TEMPLATE_SOURCES = ("entry", "clip_benchmark")  # or a path to a .txt (one per line) / .json file


@dataclass(frozen=True)
class PromptChoice:
    """Templates (shared by all classes) or explicit prompts per class, plus their identity."""

    templates: tuple[str, ...] | None
    prompts: dict[str, list[str]] | None

    @property
    def identity(self) -> tuple[str, ...]:
        """What the run identity records: the templates, or every class-specific prompt."""
        if self.templates is not None:
            return self.templates
        return tuple(f"{name}: {p}" for name, rows in self.prompts.items() for p in rows)


def _from_file(path: Path, dataset: str) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() != ".json":
        rows = [line.strip() for line in text.splitlines() if line.strip()]
        if not rows:
            raise ValueError(f"Template file {path} is empty; write one template per line, e.g. 'a photo of a {{c}}.'.")
        return rows
    data = json.loads(text)
    if isinstance(data, dict) and not all(isinstance(v, list) and v and isinstance(v[0], str) for v in data.values()):
        raise ValueError(f"{path} must be a JSON list of templates, or {{dataset: templates}} as clip_benchmark's "
                         "--custom_template_file.")
    if isinstance(data, dict):
        short = dataset.split("/", 1)[1] if "/" in dataset else dataset
        for key in (dataset, short):
            if key in data:
                return data[key]
        raise ValueError(f"{path} has no entry for {dataset!r} (keys: {sorted(data)[:8]}...); add one.")
    if isinstance(data, list) and data:
        return data
    raise ValueError(f"{path} must hold a non-empty JSON list of templates.")


def resolve_prompts(source: str, entry_templates: Sequence[str], benchmark_templates: Any,
                    class_names: Sequence[str], dataset: str) -> PromptChoice:
    """Resolve ``--templates`` into a ``PromptChoice``.

    Args:
        source: ``"entry"``, ``"clip_benchmark"`` or a file path.
        entry_templates: the classifier's templates (from its zoo entry).
        benchmark_templates: ``dataset.templates`` from clip_benchmark (list, or dict per class).
        class_names: the dataset's class names.
        dataset: the dataset name (to pick a per-dataset entry from a JSON file).

    Raises:
        ValueError: unknown source, or templates that do not cover the classes.
    """
    if source == "entry":
        chosen: Any = list(entry_templates)
    elif source == "clip_benchmark":
        if not benchmark_templates:
            raise ValueError(f"clip_benchmark has no templates for {dataset!r}; use --templates entry or a file.")
        chosen = benchmark_templates
    elif Path(source).is_file():
        chosen = _from_file(Path(source), dataset)
    else:
        raise ValueError(f"--templates {source!r} is neither one of {TEMPLATE_SOURCES} nor an existing file.")
    if isinstance(chosen, dict):
        missing = [c for c in class_names if c not in chosen]
        if missing:
            raise ValueError(f"The class-specific prompts lack classes {missing[:5]}; give prompts for every class.")
        return PromptChoice(templates=None, prompts={c: list(chosen[c]) for c in class_names})
    templates = tuple(str(t) for t in chosen)
    bad = [t for t in templates if "{}" not in t and "{c}" not in t]
    if bad:
        raise ValueError(f"Templates {bad[:3]} have no class placeholder; write '{{c}}' or '{{}}' where the class goes.")
    return PromptChoice(templates=templates, prompts=None)
