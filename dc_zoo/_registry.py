"""The zoo's registry: one JSON file per model in ``registry/``, interpreted here.

Entries are data (open_clip's ``model_configs/*.json``, timm's ``default_cfgs``): this module
loads every ``registry/*.json`` shipped as the ``dc_zoo.registry_data`` package, validates it
against ``registry/schema.json`` at import, and answers the questions callers ask by name:
``list_models("sd-*")``, ``get_entry("sd-2-base")``, and how to read a model name
(``sd-2-base``, ``hf-hub:org/repo@revision``, ``local-dir:/path`` or a directory).

Paper: Li et al., "Your Diffusion Model is Secretly a Zero-Shot Classifier", ICCV 2023
(https://arxiv.org/abs/2303.16203).
"""
from __future__ import annotations

import difflib
import fnmatch
import json
import logging
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Iterable, Mapping

logger = logging.getLogger(__name__)

__all__ = [
    "RegistryEntry", "ModelName", "RegistryValidationError", "list_models", "get_entry", "find_entry_by_repo",
    "default_model", "parse_model_name", "register_entry", "remove_entry", "registry_schema", "validate_entry",
]

MODEL_SOURCES = ("hf-hub", "local-dir")
TEXT_FAMILIES = ("stable_diffusion", "stable_diffusion_3", "stable_diffusion_xl")  # scored by prompts
FLOW_FAMILIES = ("stable_diffusion_3",)  # trained with rectified flow: velocity target
FLOW_PREDICTION = "flow_prediction"  # their prediction_type (diffusers' name for the velocity eps - x0)
TEXT_FAMILIES += ("flux",)  # FLUX.1 (FluxPipeline): prompts,
FLOW_FAMILIES += ("flux",)  # and rectified flow (velocity eps - x0)
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


class RegistryValidationError(ValueError):
    """A registry entry does not match ``registry/schema.json``."""


# --------------------------------------------------------------------------- schema
def registry_schema() -> dict[str, Any]:
    """The JSON schema every entry follows (``registry/schema.json``)."""
    return json.loads(resources.files("dc_zoo.registry_data").joinpath("schema.json").read_text(encoding="utf-8"))


_JSON_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is_type(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _JSON_TYPES[name])


def _schema_errors(value: Any, schema: Mapping[str, Any], where: str) -> list[str]:
    """Errors of ``value`` against the JSON-schema keywords the registry schema uses.

    Covers type, enum, pattern, minLength, minimum, maximum, properties, required,
    additionalProperties (false), items and minItems: the whole vocabulary of schema.json,
    so the package needs no jsonschema dependency.
    """
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else list(types)
        if not any(_is_type(value, t) for t in types):
            return [f"{where}: expected {' or '.join(types)}, got {type(value).__name__} {value!r}"]
    errors = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{where}: {value!r} is shorter than {schema['minLength']} characters")
    if _is_type(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: {value} is below the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: {value} is above the maximum {schema['maximum']}")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        errors += [f"{where}: missing required field {key!r}" for key in schema.get("required", ()) if key not in value]
        if schema.get("additionalProperties", True) is False:
            errors += [f"{where}: unknown field {key!r} (allowed: {sorted(properties)})" for key in value if key not in properties]
        for key, sub in properties.items():
            if key in value:
                errors += _schema_errors(value[key], sub, f"{where}.{key}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{where}: needs at least {schema['minItems']} item(s)")
        if "items" in schema:
            for i, item in enumerate(value):
                errors += _schema_errors(item, schema["items"], f"{where}[{i}]")
    return errors


def _semantic_errors(data: Mapping[str, Any], where: str) -> list[str]:
    """Rules a JSON schema cannot say: pinning, schedule shape, family-specific fields."""
    errors = []
    if data.get("revision_pinned") and not _COMMIT.match(str(data.get("revision", ""))):
        errors.append(f"{where}: revision_pinned is true but revision {data.get('revision')!r} is not a 40-hex commit")
    if not data.get("revision_pinned") and _COMMIT.match(str(data.get("revision", ""))):
        errors.append(f"{where}: revision is a commit hash; set revision_pinned to true")
    if data.get("original_id") and data.get("original_id") == data.get("hub_id"):
        errors.append(f"{where}: original_id repeats hub_id; set it to null")
    diffusion = data.get("family") != "open_clip"
    if diffusion and not (data.get("schedule") and data.get("cost")):
        errors.append(f"{where}: a diffusion entry needs a schedule and its cost")
    if not diffusion and (data.get("schedule") or data.get("cost")):
        errors.append(f"{where}: an open_clip entry has no diffusion schedule; set schedule and cost to null")
    schedule = data.get("schedule") or {}
    if len(schedule.get("n_samples", ())) != len(schedule.get("to_keep", ())):
        errors.append(f"{where}.schedule: n_samples and to_keep must have the same length")
    elif schedule.get("to_keep") and schedule["to_keep"][-1] != 1:
        errors.append(f"{where}.schedule: the last to_keep must be 1")
    family = data.get("family")
    if family == "dit" and not data.get("num_classes"):
        errors.append(f"{where}: a class-conditional (dit) entry needs num_classes")
    if family in TEXT_FAMILIES and not data.get("template"):
        errors.append(f"{where}: a text-conditional entry needs a prompt template")
    flow = data.get("prediction_type") == FLOW_PREDICTION
    if family in FLOW_FAMILIES and not flow:
        errors.append(f"{where}: a {family} entry is a rectified-flow model; "
                      f"set prediction_type to {FLOW_PREDICTION!r}")
    if flow and family not in FLOW_FAMILIES:
        errors.append(f"{where}: prediction_type {FLOW_PREDICTION!r} is for the rectified-flow families "
                      f"{FLOW_FAMILIES}")
    if data.get("template") and "{}" not in data["template"] and "{c}" not in data["template"]:
        errors.append(f"{where}.template: {data['template']!r} has no '{{}}' placeholder")
    if data.get("recommended"):
        from .config import ScoringConfig

        try:
            ScoringConfig(**data["recommended"]["scoring"])
        except (TypeError, ValueError) as err:
            errors.append(f"{where}.recommended.scoring: {err}")
    for key, fields in (data.get("calibration") or {}).items():
        from .calibration import Calibration

        try:
            Calibration.from_dict(fields)
        except (TypeError, ValueError) as err:
            errors.append(f"{where}.calibration.{key}: {err}")
    return errors


def validate_entry(data: Mapping[str, Any], where: str = "entry") -> None:
    """Check one entry against ``registry/schema.json`` and the registry's own rules.

    Raises:
        RegistryValidationError: listing every problem found.
    """
    errors = _schema_errors(data, registry_schema(), where)
    if not errors:
        errors = _semantic_errors(data, where)
    if errors:
        raise RegistryValidationError("Invalid registry entry:\n  " + "\n  ".join(errors))


# --------------------------------------------------------------------------- entries
@dataclass(frozen=True)
class RegistryEntry:
    """One zoo model, as ``registry/<name>.json`` describes it (fields documented in schema.json)."""

    name: str
    description: str
    family: str
    hub_id: str | None
    original_id: str | None
    official_location: bool
    location_note: str | None
    revision: str
    revision_pinned: bool
    pipeline_class: str
    prediction_type: str | None
    resolution: int
    interpolation: str
    crop: str
    default_dtype: str
    template: str | None
    num_classes: int | None
    schedule: Mapping[str, Any] | None
    cost: Mapping[str, int] | None
    license: str
    accuracy: tuple[Mapping[str, Any], ...]
    intended_use: str
    limitations: tuple[str, ...]
    default: bool
    vae_id: str | None = None
    notes: tuple[str, ...] = ()
    recommended: Mapping[str, Any] | None = None  # a measured cheaper scoring, used when asked for
    calibration: Mapping[str, Any] | None = None  # {"default" | "recommended": Calibration fields}
    listed: bool = field(default=True, compare=False)  # False for hf-hub / local models described on the fly

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str | None = None) -> "RegistryEntry":
        """Validate ``data`` and build the entry."""
        validate_entry(data, where or str(data.get("name", "entry")))
        values = dict(data)
        for key in ("accuracy", "limitations", "notes"):
            values[key] = tuple(values.get(key) or ())
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The entry as JSON-ready data (the registry file's content)."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "listed"}
        for key in ("accuracy", "limitations", "notes"):
            out[key] = list(out[key])
        out["schedule"] = dict(self.schedule) if self.schedule is not None else None
        out["cost"] = dict(self.cost) if self.cost is not None else None
        for key in ("recommended", "calibration"):  # optional: absent from the file when unset
            if out[key] is None:
                del out[key]
            else:
                out[key] = json.loads(json.dumps(out[key]))
        return out

    @property
    def repo_ids(self) -> tuple[str, ...]:
        """Where the weights may be found, current location first, then the paper's id."""
        return tuple(r for r in (self.hub_id, self.original_id) if r)

    @property
    def class_conditional(self) -> bool:
        return self.family == "dit"

    @property
    def n_samples(self) -> tuple[int, ...]:
        return tuple(self.schedule["n_samples"])

    @property
    def to_keep(self) -> tuple[int, ...]:
        return tuple(self.schedule["to_keep"])

    @property
    def loss(self) -> str:
        return str(self.schedule["loss"])


_ENTRIES: dict[str, RegistryEntry] = {}


def _load_registry() -> None:
    package = resources.files("dc_zoo.registry_data")
    files = sorted((p for p in package.iterdir() if p.name.endswith(".json") and p.name != "schema.json"),
                   key=lambda p: p.name)
    for path in files:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise RegistryValidationError(f"registry/{path.name} is not valid JSON: {err}") from None
        entry = RegistryEntry.from_dict(data, where=f"registry/{path.name}")
        if path.name != f"{entry.name}.json":
            raise RegistryValidationError(f"registry/{path.name} holds entry {entry.name!r}; name the file {entry.name}.json.")
        _ENTRIES[entry.name] = entry
    defaults = [e.name for e in _ENTRIES.values() if e.default]
    if len(defaults) > 1:
        raise RegistryValidationError(f"Several registry entries are marked default: {defaults}; mark exactly one.")
    logger.debug("loaded %d registry entries", len(_ENTRIES))


def register_entry(data: Mapping[str, Any] | RegistryEntry, overwrite: bool = False) -> RegistryEntry:
    """Add an entry at run time (your own fine-tune on the Hub, a test model), validated like the files.

    Raises:
        RegistryValidationError: the entry does not match the schema.
        ValueError: the name exists and ``overwrite`` is False.
    """
    entry = data if isinstance(data, RegistryEntry) else RegistryEntry.from_dict(data)
    if isinstance(data, RegistryEntry):
        validate_entry(entry.to_dict(), entry.name)
    if entry.name in _ENTRIES and not overwrite:
        raise ValueError(f"Registry entry {entry.name!r} exists; pass overwrite=True to replace it.")
    _ENTRIES[entry.name] = entry
    return entry


def remove_entry(name: str) -> RegistryEntry:
    """Remove an entry added with ``register_entry`` (or any entry) from this process's registry."""
    return _ENTRIES.pop(get_entry(name).name)


def _natural_key(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def list_models(pattern: str | Iterable[str] = "", family: str | None = None) -> list[str]:
    """Names of the zoo's models, naturally sorted (``sd-1-5`` before ``sd-1-10``).

    Args:
        pattern: fnmatch wildcard(s), e.g. ``"sd-2*"`` or ``["dit-*", "*mini"]``; empty lists all.
        family: keep only ``"stable_diffusion"``, ``"stable_diffusion_3"``, ``"stable_diffusion_xl"``,
            ``"dit"`` or ``"open_clip"`` entries.
            ``"flux"`` (FLUX.1) entries, too.
    """
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    patterns = [p for p in patterns if p]
    names = [n for n, e in _ENTRIES.items() if family is None or e.family == family]
    if patterns:
        names = [n for n in names if any(fnmatch.fnmatchcase(n, p.lower()) for p in patterns)]
    return sorted(names, key=_natural_key)


def get_entry(name: str) -> RegistryEntry:
    """The entry called ``name``.

    Raises:
        KeyError: unknown name, with the close matches and how to list all.
    """
    if name in _ENTRIES:
        return _ENTRIES[name]
    lowered = name.lower().replace("_", "-")
    if lowered in _ENTRIES:
        return _ENTRIES[lowered]
    close = difflib.get_close_matches(lowered, list(_ENTRIES), n=4, cutoff=0.5)
    raise KeyError(
        f"Unknown model {name!r}; close matches: {close or 'none'}. See dc_zoo.list_models() or "
        "`dc-zoo list` for all names; use 'hf-hub:org/repo' for a Hub repo or 'local-dir:/path' for a folder."
    )


def find_entry_by_repo(repo_id: str) -> RegistryEntry | None:
    """The entry whose current Hub id or paper id is ``repo_id`` (case-insensitive), if any."""
    wanted = repo_id.lower()
    for entry in _ENTRIES.values():
        if any(r.lower() == wanted for r in entry.repo_ids):
            return entry
    return None


def default_model() -> str:
    """The zoo's default model: the paper's Stable Diffusion 2.0 base."""
    for entry in _ENTRIES.values():
        if entry.default:
            return entry.name
    raise LookupError("No registry entry is marked default; set \"default\": true in one registry/*.json.")


# --------------------------------------------------------------------------- names
@dataclass(frozen=True)
class ModelName:
    """A parsed model name.

    Attributes:
        source: ``"zoo"`` (a registry name), ``"hf-hub"`` or ``"local-dir"``.
        id: the registry name, the Hub repo id or the directory path.
        revision: the revision after ``@`` in ``hf-hub:org/repo@revision``, else None.
    """

    source: str
    id: str
    revision: str | None = None


_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def parse_model_name(name: str) -> ModelName:
    """Read ``sd-2-base``, ``hf-hub:org/repo[@revision]``, ``local-dir:/path`` or an existing directory.

    A bare ``org/repo`` is accepted when the registry knows it (a current or a paper id, e.g.
    ``runwayml/stable-diffusion-v1-5``), so old code keeps working.

    Raises:
        ValueError: unknown prefix, empty id, malformed repo id, or a path-like name that is
            neither a directory nor a known repo; the message gives both valid spellings.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"Model name must be a non-empty string, got {name!r}; see dc_zoo.list_models().")
    name = name.strip()
    prefix, sep, rest = name.partition(":")
    if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]+", prefix):
        source = prefix.lower().replace("_", "-")
        if source not in MODEL_SOURCES:
            raise ValueError(
                f"Unknown model source {prefix!r} in {name!r}; valid sources: {', '.join(MODEL_SOURCES)} "
                "(e.g. 'hf-hub:org/repo@revision' or 'local-dir:/path/to/pipeline')."
            )
        if not rest:
            raise ValueError(f"Model name {name!r} has nothing after '{prefix}:'; give a repo id or a path.")
        if source == "local-dir":
            return ModelName("local-dir", os.path.expanduser(rest))
        repo, at, revision = rest.partition("@")
        if not _REPO_ID.match(repo) or ".." in repo or (at and not revision):
            raise ValueError(
                f"{rest!r} is not a Hub repo id; write 'hf-hub:org/repo' or 'hf-hub:org/repo@revision' "
                "(revision: a branch, tag or 40-hex commit)."
            )
        return ModelName("hf-hub", repo, revision or None)
    if os.path.isdir(os.path.expanduser(name)):
        return ModelName("local-dir", os.path.expanduser(name))
    if "/" in name or "\\" in name:
        repo, _, revision = name.partition("@")
        if _REPO_ID.match(repo) and find_entry_by_repo(repo) is not None:
            return ModelName("hf-hub", repo, revision or None)
        raise ValueError(
            f"Model name {name!r} is not a zoo name and no such directory exists. Use 'hf-hub:{name}' to load a "
            f"Hub repo or 'local-dir:{name}' for a local folder; zoo names: dc_zoo.list_models()."
        )
    return ModelName("zoo", name)


_load_registry()
