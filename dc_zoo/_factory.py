"""``create_model``: a ready ``DiffusionClassifier`` from a zoo name, a Hub repo or a folder.

Three spellings (timm's ``_factory.py``): ``"sd-2-base"`` (a registry entry: its Hub location,
pinned revision, preprocessing, template and stage schedule), ``"hf-hub:org/repo[@revision]"``
(any diffusers StableDiffusionPipeline / StableDiffusion3Pipeline / StableDiffusionXLPipeline /
DiTPipeline / FluxPipeline repo; the backend is read from model_index.json and the scheduler config) and
``"local-dir:/path"`` or a plain directory (a fine-tune or a merged LoRA saved with
``save_pretrained``). Optional components (SD3's T5: ``text_encoder_3`` / ``tokenizer_3``) load
when model_index.json declares them and are left out when it says ``[null, null]`` or omits them.

Loading is safe by construction: weights are safetensors unless the caller allows pickle, and
no code from a model repo is ever imported or run. A model_index.json that names a custom
pipeline or module, or a component class outside diffusers / transformers (or of the wrong
kind), is refused before anything is imported; every class comes from those two libraries by
name, and ``trust_remote_code`` is never passed. Damaged files (a truncated or empty weight
file, half-written JSON) are named with how to fetch them again (``_hub.DamagedFileError``).

Repos move: the paper's ``runwayml/stable-diffusion-v1-5`` and ``stabilityai/stable-diffusion-2-*``
are gone from the Hub. An entry knows both its current location and the paper's id; loading
by either tries the current location first, then a cached copy under the paper's id, and
logs and records (``classifier.source``) which one it used.

Paper: Li et al., "Your Diffusion Model is Secretly a Zero-Shot Classifier", ICCV 2023
(https://arxiv.org/abs/2303.16203).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from . import _hub
from ._registry import FLOW_PREDICTION, ModelName, RegistryEntry, find_entry_by_repo, get_entry, parse_model_name
from .backends import (DiTBackend, FluxBackend, StableDiffusion3Backend, StableDiffusionBackend,
                       StableDiffusionXLBackend, resolve_dtype)
from .backends.flux import DEFAULT_SAMPLE_SIZE as _FLUX_SAMPLE_SIZE
from .classifier import DiffusionClassifier
from .config import PreprocessConfig, ScoringConfig
from .timestep_plan import TimestepPlan

logger = logging.getLogger(__name__)

__all__ = ["create_model", "resolve_model", "ResolvedModel", "FAMILIES"]


@dataclass(frozen=True)
class FamilySpec:
    """What a backend family needs from a diffusers pipeline folder."""

    pipeline_classes: tuple[str, ...]  # model_index.json _class_name values it accepts
    required: tuple[str, ...]  # components that must be present
    networks: tuple[str, ...]  # components holding weights
    template: str | None  # prompt template for models outside the registry
    n_samples: tuple[int, ...]  # default stages for models outside the registry
    to_keep: tuple[int, ...]
    optional: tuple[tuple[str, ...], ...] = ()  # groups loaded when declared (all of a group or none)
    optional_networks: tuple[str, ...] = ()  # those of the optional components that hold weights
    default_dtype: str = "float16"  # GPU dtype for models outside the registry


FAMILIES: dict[str, FamilySpec] = {
    "stable_diffusion": FamilySpec(
        pipeline_classes=("StableDiffusionPipeline",),
        required=("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
        networks=("unet", "vae", "text_encoder"),
        template="a photo of a {}.", n_samples=(50, 500), to_keep=(5, 1),
    ),
    "dit": FamilySpec(
        pipeline_classes=("DiTPipeline",),
        required=("transformer", "vae", "scheduler"),
        networks=("transformer", "vae"),
        template=None, n_samples=(250,), to_keep=(1,),
    ),
    # T5 (text_encoder_3) is optional, as in diffusers: without it the pipeline feeds zeros in its place.
    "stable_diffusion_3": FamilySpec(
        pipeline_classes=("StableDiffusion3Pipeline",),
        required=("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler"),
        networks=("transformer", "vae", "text_encoder", "text_encoder_2"),
        template="a photo of a {}.", n_samples=(50, 500), to_keep=(5, 1),
        optional=(("text_encoder_3", "tokenizer_3"),), optional_networks=("text_encoder_3",),
        default_dtype="bfloat16",  # the dtype recommended for SD3.5 (SD3-medium's own entry says float16)
    ),
    "stable_diffusion_xl": FamilySpec(
        pipeline_classes=("StableDiffusionXLPipeline",),
        required=("unet", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler"),
        networks=("unet", "vae", "text_encoder", "text_encoder_2"),
        template="a photo of a {}.", n_samples=(50, 500), to_keep=(5, 1),
    ),
    # FLUX.1: CLIP-L (text_encoder, pooled output only) and T5-XXL (text_encoder_2) are both required; the
    # pipeline's optional IP-adapter image_encoder / feature_extractor are never loaded (text-to-image scoring).
    "flux": FamilySpec(
        pipeline_classes=("FluxPipeline",),
        required=("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler"),
        networks=("transformer", "vae", "text_encoder", "text_encoder_2"),
        template="a photo of a {}.", n_samples=(50, 500), to_keep=(5, 1),
        default_dtype="bfloat16",  # Black Forest Labs' and diffusers' dtype for FLUX.1
    ),
}
_LIBRARIES = ("diffusers", "transformers")  # the only modules a model_index.json may name
# What each component must be: (library, base class) of the classes it may name.
_COMPONENT_KINDS = {
    "unet": ("diffusers", "ModelMixin"), "vae": ("diffusers", "ModelMixin"), "transformer": ("diffusers", "ModelMixin"),
    "scheduler": ("diffusers", "SchedulerMixin"),
    **{f"text_encoder{n}": ("transformers", "PreTrainedModel") for n in ("", "_2", "_3")},
    **{f"tokenizer{n}": ("transformers", "PreTrainedTokenizerBase") for n in ("", "_2", "_3")},
}
# model_index.json keys through which diffusers would fetch and run code from the repo or the Hub.
_REMOTE_CODE_KEYS = ("custom_pipeline", "_custom_pipeline", "auto_map", "trust_remote_code")
_NO_REPO_CODE = "dc_zoo never imports or runs code from a model repo"


def _supported_pipelines() -> list[str]:
    return [c for spec in FAMILIES.values() for c in spec.pipeline_classes]


@dataclass(frozen=True)
class ResolvedModel:
    """A model name resolved to files on disk, before any weights are loaded.

    Attributes:
        entry: the registry entry (or one described from the files for hf-hub / local models).
        snapshot: where the files are (repo, revision, commit, folder, bundled/cache/hub/local).
        model_index: the pipeline's model_index.json.
        components: ``{component: (library, class_name)}`` of the components the backend needs.
    """

    entry: RegistryEntry
    snapshot: _hub.Snapshot
    model_index: Mapping[str, Any]
    components: Mapping[str, tuple[str, str]]


def _family_of(model_index: Mapping[str, Any], snapshot: _hub.Snapshot) -> str:
    class_name = model_index.get("_class_name")
    for family, spec in FAMILIES.items():
        if class_name in spec.pipeline_classes:
            return family
    raise _hub.UnsupportedPipelineError(
        f"{snapshot.describe()} is a {class_name or 'pipeline without _class_name'}; dc_zoo scores "
        f"{_supported_pipelines()}. "
        "For another model family, wrap its denoiser in dc_zoo.DenoiserBackend and pass it to DiffusionClassifier."
    )


def _refuse_repo_code(snapshot: _hub.Snapshot, model_index: Mapping[str, Any]) -> None:
    """Stop a model_index.json that asks for code shipped with the repo (before anything is imported)."""
    index = snapshot.path / "model_index.json"
    class_name = model_index.get("_class_name")
    if isinstance(class_name, (list, tuple)):
        module, cls = (list(class_name) + [None, None])[:2]
        raise _hub.RemoteCodeError(
            f"{index}: _class_name {list(class_name)!r} names a custom pipeline (class {cls!r} in the repo's own "
            f"{module}.py); {_NO_REPO_CODE}. Use a repo whose _class_name is one of {_supported_pipelines()}, "
            "or wrap the model's denoiser in dc_zoo.DenoiserBackend yourself."
        )
    for key in _REMOTE_CODE_KEYS:
        if key in model_index:
            raise _hub.RemoteCodeError(
                f"{index}: the entry {key!r} ({model_index[key]!r}) asks for code from the repo or the Hub; "
                f"{_NO_REPO_CODE}. Remove the entry if the pipeline is a standard one, else wrap its denoiser in "
                "dc_zoo.DenoiserBackend yourself."
            )


def _component_class(snapshot: _hub.Snapshot, name: str, library: str, class_name: str):
    """The class a component names, taken by name from diffusers / transformers and of the right kind.

    Raises:
        RemoteCodeError: another library (a module of the repo) or a class that is not a component
            of this kind; checked before importing anything for a foreign library.
    """
    import importlib

    index = snapshot.path / "model_index.json"
    entry = f"{index}: component {name!r} = [{library!r}, {class_name!r}]"
    if library not in _LIBRARIES:
        raise _hub.RemoteCodeError(
            f"{entry} comes from library {library!r}; dc_zoo loads components only from {_LIBRARIES} "
            f"(a model_index.json cannot make it import other code: {_NO_REPO_CODE})."
        )
    if not (isinstance(class_name, str) and class_name.isidentifier() and not class_name.startswith("_")):
        raise _hub.RemoteCodeError(f"{entry}: {class_name!r} is not a class name; {_NO_REPO_CODE}.")
    cls = getattr(importlib.import_module(library), class_name, None)
    if cls is None:
        raise _hub.UnsupportedPipelineError(
            f"{entry} needs {library}.{class_name}, which the installed {library} does not have; upgrade {library} "
            f"(classes from anywhere else are never loaded: {_NO_REPO_CODE})."
        )
    kind_library, kind = _COMPONENT_KINDS.get(name, (library, None))
    base = getattr(importlib.import_module(kind_library), kind) if kind else None
    if not isinstance(cls, type) or (base is not None and not issubclass(cls, base)):
        what = f"a {kind_library}.{kind} subclass" if base is not None else "a class"
        raise _hub.RemoteCodeError(
            f"{entry}: {library}.{class_name} is not {what}, so it cannot be the {name!r} component; "
            "the model_index.json is wrong or hand-edited."
        )
    return cls


def _describe_unlisted(name: str, snapshot: _hub.Snapshot, model_index: Mapping[str, Any], family: str) -> RegistryEntry:
    """An entry for a model outside the registry, read from its config files."""
    spec = FAMILIES[family]
    root = snapshot.path
    scheduler = _hub.read_json_file(snapshot, root / "scheduler" / "scheduler_config.json")
    vae = _hub.read_json_file(snapshot, root / "vae" / "config.json")
    network = _hub.read_json_file(snapshot, root / spec.networks[0] / "config.json")
    factor = 2 ** (len(vae.get("block_out_channels", [0, 0, 0, 0])) - 1)
    resolution = int(network.get("sample_size") or 64) * factor
    if family == "flux":  # FluxTransformer2DModel has no sample_size: FluxPipeline's default image size
        resolution = _FLUX_SAMPLE_SIZE * factor
    num_classes = int(network["num_embeds_ada_norm"]) if family == "dit" else None
    flow = str(scheduler.get("_class_name", "")).startswith("FlowMatch")
    T = int(scheduler.get("num_train_timesteps", 1000))
    k = num_classes or 10
    evaluations = TimestepPlan.from_stages(spec.n_samples, T).evaluations(k, spec.to_keep)
    return RegistryEntry(
        name=name, description=f"{model_index.get('_class_name')} loaded from {snapshot.describe()} (not in the registry).",
        family=family, hub_id=snapshot.repo_id, original_id=None, official_location=False,
        location_note=None, revision=snapshot.revision or "local", revision_pinned=bool(snapshot.commit and snapshot.commit == snapshot.revision),
        pipeline_class=str(model_index.get("_class_name")),
        prediction_type=FLOW_PREDICTION if flow else (scheduler.get("prediction_type") or "epsilon"),
        resolution=resolution, interpolation="bicubic", crop="adm_center" if family == "dit" else "center",
        default_dtype=spec.default_dtype,
        template=spec.template, num_classes=num_classes,
        schedule={"n_samples": list(spec.n_samples), "to_keep": list(spec.to_keep), "loss": "l2",
                  "source": "dc_zoo's default for this family (the paper's)"},
        cost={"num_classes": k, "num_train_timesteps": T, "evaluations_per_image": evaluations},
        license="unknown: see the model's own card", accuracy=(), intended_use="Whatever its own license allows.",
        limitations=("Not validated by dc_zoo: no published or measured accuracy.",), default=False, listed=False,
    )


def _resolve_entry_snapshot(entry: RegistryEntry, revision: str | None, requested_repo: str | None,
                            hub_kwargs: Mapping[str, Any]) -> _hub.Snapshot:
    """Try the entry's current location, then the paper's id; say which one answered."""
    failures: list[_hub.ZooHubError] = []
    for repo in entry.repo_ids:
        rev = revision or (entry.revision if repo == entry.hub_id else "main")
        try:
            snapshot = _hub.download_snapshot(repo, rev, **hub_kwargs)
        except (_hub.ModelNotCachedError, _hub.ModelRepoNotFoundError) as err:
            failures.append(err)
            continue
        if repo != entry.hub_id:
            logger.warning("%s: loaded from the paper's id %s; the entry's current location %s was not available (%s)",
                           entry.name, repo, entry.hub_id, failures[0])
        elif requested_repo and requested_repo.lower() != repo.lower():
            logger.warning("%s: %s is the paper's id; resolved to its current location %s (%s)", entry.name,
                           requested_repo, repo, entry.location_note or "")
        if not (entry.revision_pinned or revision):
            logger.info("%s: revision %r is unpinned; resolved commit %s", entry.name, rev, snapshot.commit)
        return snapshot
    first = failures[0]
    others = "; ".join(str(f) for f in failures[1:])
    raise type(first)(f"{first}" + (f" Also tried the paper's id: {others}" if others else ""))


def resolve_model(name: str, revision: str | None = None, *, token: str | bool | None = None,
                  cache_dir: str | os.PathLike | None = None, local_files_only: bool | None = None,
                  allow_pickle: bool = False, endpoint: str | None = None) -> ResolvedModel:
    """Find a model's files (downloading them unless offline) and describe it; loads no weights.

    Args and Raises: as ``create_model``.
    """
    parsed: ModelName = parse_model_name(name)
    hub_kwargs = dict(token=token, cache_dir=cache_dir, local_files_only=local_files_only,
                      allow_pickle=allow_pickle, endpoint=endpoint)
    entry: RegistryEntry | None = None
    if parsed.source == "zoo":
        entry = get_entry(parsed.id)
        if entry.family not in FAMILIES:
            raise ValueError(
                f"{entry.name} is a {entry.family} model (a CLIP baseline), not a diffusion classifier; load it with "
                f"{_hub.open_clip_load_hint(entry.hub_id)} and compare it side by side."
            )
        snapshot = _resolve_entry_snapshot(entry, revision, None, hub_kwargs)
    elif parsed.source == "hf-hub":
        entry = find_entry_by_repo(parsed.id)
        if entry is not None and entry.family in FAMILIES:
            snapshot = _resolve_entry_snapshot(entry, parsed.revision or revision, parsed.id, hub_kwargs)
        else:
            entry = None
            snapshot = _hub.download_snapshot(parsed.id, parsed.revision or revision, **hub_kwargs)
    else:
        snapshot = _hub.local_snapshot(parsed.id)
    model_index = _hub.read_model_index(snapshot)
    _refuse_repo_code(snapshot, model_index)
    family = _family_of(model_index, snapshot)
    components = _hub.check_components(snapshot, model_index, FAMILIES[family].required)
    components.update(_optional_components(snapshot, model_index, FAMILIES[family]))
    for component, (library, class_name) in components.items():
        _component_class(snapshot, component, library, class_name)
    if entry is None:
        entry = _describe_unlisted(name, snapshot, model_index, family)
    elif entry.family != family:
        raise _hub.UnsupportedPipelineError(
            f"{entry.name} is registered as {entry.family} but {snapshot.describe()} holds a "
            f"{model_index.get('_class_name')}; the repo changed under an unpinned revision: pin revision=<commit>."
        )
    return ResolvedModel(entry=entry, snapshot=snapshot, model_index=model_index, components=components)


def _declared(model_index: Mapping[str, Any], name: str) -> bool:
    """Whether model_index.json gives ``name`` a class (absent and ``[null, null]`` mean "not used")."""
    spec = model_index.get(name)
    return isinstance(spec, (list, tuple)) and any(part is not None for part in spec)


def _optional_components(snapshot: _hub.Snapshot, model_index: Mapping[str, Any],
                         spec: FamilySpec) -> dict[str, tuple[str, str]]:
    """The optional components the pipeline declares (e.g. SD3's T5), each group whole and on disk.

    Raises:
        MissingComponentsError: a group declared in part, or a declared component without its folder.
    """
    found: dict[str, tuple[str, str]] = {}
    for group in spec.optional:
        declared = [name for name in group if _declared(model_index, name)]
        if not declared:
            continue
        if len(declared) != len(group):
            absent = [name for name in group if name not in declared]
            raise _hub.MissingComponentsError(
                f"{snapshot.describe()} declares {', '.join(declared)} but not {', '.join(absent)} in "
                "model_index.json; "
                f"{' and '.join(group)} are used together. Declare both (and their folders), or set both to "
                "[null, null] to load the pipeline without them."
            )
        found.update(_hub.check_components(snapshot, model_index, group))
    return found


def _load_component(snapshot: _hub.Snapshot, name: str, library: str, class_name: str, use_safetensors: bool,
                    dtype: torch.dtype | None = None):
    """One component through its own class's ``from_pretrained`` (never an Auto class, never repo code).

    Networks load straight in ``dtype``: no float32 copy of a large model, and the libraries keep the
    layers their models must run in float32 (T5's ``wo``, ``_keep_in_fp32_modules``) in float32.
    """
    cls = _component_class(snapshot, name, library, class_name)
    folder = snapshot.path / name
    kind = _COMPONENT_KINDS.get(name, (None, None))[1]
    try:
        if kind in ("SchedulerMixin", "PreTrainedTokenizerBase"):
            return cls.from_pretrained(str(folder))
        precision = {} if dtype is None else {"torch_dtype" if library == "diffusers" else "dtype": dtype}
        return cls.from_pretrained(str(folder), use_safetensors=True if use_safetensors else None, **precision)
    except _hub.ZooHubError:
        raise
    except Exception as err:  # noqa: BLE001 - only the library errors that mean a damaged file are translated
        damaged = _damage_reason(err)
        if damaged is None:
            raise
        raise _hub.DamagedFileError(
            f"{folder} holds a damaged or incomplete file: {library}.{class_name}.from_pretrained failed with "
            f"{damaged} (component {name!r} of {snapshot.describe()}); {_hub.refetch_hint(snapshot)}."
        ) from err


def _damage_reason(err: BaseException) -> str | None:
    """``"Type: message"`` when a library error means a file it read was damaged, else None."""
    chain, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        chain.append(err)
        err = err.__cause__ or err.__context__
    for e in chain:
        kind = type(e).__name__
        text = str(e).strip()
        if kind == "SafetensorError" or isinstance(e, (json.JSONDecodeError, UnicodeDecodeError, EOFError)) or (
                isinstance(e, OSError) and any(w in text for w in ("Unable to load weights", "not a valid JSON",
                                                                   "header", "incomplete"))):
            return f"{kind}: {text}" if text else kind
    return None


def _checked_scheduler(entry: RegistryEntry, snapshot: _hub.Snapshot, scheduler):
    """The scheduler, with the registry's prediction_type where its config disagrees (DDPM family)."""
    is_flow = type(scheduler).__name__.startswith("FlowMatch")
    if (entry.prediction_type == FLOW_PREDICTION) != is_flow:
        raise _hub.UnsupportedPipelineError(
            f"{entry.name} is registered with prediction_type {entry.prediction_type!r} but {snapshot.describe()} has "
            f"a {type(scheduler).__name__}; a rectified-flow model needs a FlowMatch scheduler and the others a "
            "DDPM-family one. The repo changed under an unpinned revision: pin revision=<commit>."
        )
    if is_flow:
        return scheduler
    declared = scheduler.config.get("prediction_type", "epsilon") or "epsilon"
    if entry.listed and entry.prediction_type and declared != entry.prediction_type:
        logger.warning("%s: the scheduler of %s says prediction_type=%r but the registry says %r; using the registry's",
                       entry.name, snapshot.describe(), declared, entry.prediction_type)
        scheduler = type(scheduler).from_config(scheduler.config, prediction_type=entry.prediction_type)
    return scheduler


def _build_backend(entry: RegistryEntry, resolved: ResolvedModel, parts: Mapping[str, Any], scheduler,
                   preprocess: PreprocessConfig):
    """The family's backend over the loaded components."""
    if entry.family == "stable_diffusion":
        return StableDiffusionBackend(parts["unet"], parts["vae"], parts["text_encoder"], parts["tokenizer"],
                                      scheduler, preprocess)
    if entry.family == "stable_diffusion_3":
        return StableDiffusion3Backend(parts["transformer"], parts["vae"], parts["text_encoder"], parts["tokenizer"],
                                       parts["text_encoder_2"], parts["tokenizer_2"], scheduler,
                                       parts.get("text_encoder_3"), parts.get("tokenizer_3"), preprocess)
    if entry.family == "flux":
        return FluxBackend(parts["transformer"], parts["vae"], parts["text_encoder"], parts["tokenizer"],
                           parts["text_encoder_2"], parts["tokenizer_2"], scheduler, preprocess)
    if entry.family == "stable_diffusion_xl":
        force_zeros = resolved.model_index.get("force_zeros_for_empty_prompt", True)
        return StableDiffusionXLBackend(parts["unet"], parts["vae"], parts["text_encoder"], parts["tokenizer"],
                                        parts["text_encoder_2"], parts["tokenizer_2"], scheduler, preprocess,
                                        force_zeros_for_empty_prompt=bool(force_zeros))
    id2label = resolved.model_index.get("id2label")
    backend = DiTBackend(parts["transformer"], parts["vae"], scheduler, id2label, preprocess)
    if entry.num_classes and backend.num_classes != entry.num_classes:
        raise _hub.UnsupportedPipelineError(
            f"{entry.name} should have {entry.num_classes} classes but {resolved.snapshot.describe()} has "
            f"{backend.num_classes}; the repo changed under an unpinned revision: pin revision=<commit>."
        )
    return backend


RECOMMENDED = "recommended"


def _scoring_for(entry: RegistryEntry, scoring: ScoringConfig | Mapping[str, Any] | str | None) -> ScoringConfig:
    """The entry's schedule with ``scoring``'s overrides; ``"recommended"`` (or a dict with
    ``"preset": "recommended"``) starts from the entry's measured cheaper scoring instead."""
    if isinstance(scoring, ScoringConfig):
        return scoring
    base = ScoringConfig(n_samples=entry.n_samples, to_keep=entry.to_keep, loss=entry.loss,
                         batch_size=int(entry.schedule.get("batch_size", ScoringConfig.batch_size)))
    overrides = {"preset": scoring} if isinstance(scoring, str) else dict(scoring or {})
    preset = overrides.pop("preset", None)
    if preset is not None:
        if preset != RECOMMENDED:
            raise ValueError(f"Unknown scoring preset {preset!r}; the one preset is {RECOMMENDED!r} "
                             "(the entry's measured cheaper scoring).")
        if not entry.recommended:
            raise ValueError(f"{entry.name} has no recommended scoring in its registry entry; use its default "
                             "(the paper's schedule) or give a strategy, e.g. {'strategy': {'name': 'sequential'}}.")
        base = dataclasses.replace(base, **entry.recommended["scoring"])  # ScoringConfig takes JSON lists
    return dataclasses.replace(base, **overrides)


def _calibration_for(entry: RegistryEntry, scoring: Any):
    """The entry's fitted temperature for the default or the recommended scoring (None for others)."""
    from .calibration import Calibration

    table = entry.calibration or {}
    if scoring is None:
        key = "default"
    elif scoring == RECOMMENDED or (isinstance(scoring, Mapping) and dict(scoring) == {"preset": RECOMMENDED}):
        key = RECOMMENDED
    else:
        return None
    return Calibration.from_dict(table[key]) if key in table else None


def _load_dtype(entry: RegistryEntry, snapshot: _hub.Snapshot, component: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype a component loads in: the run's, except an SDXL VAE that says ``force_upcast`` (it
    overflows in float16), kept in float32 from its original weights (``backends/sdxl.py``)."""
    if entry.family != "stable_diffusion_xl" or component != "vae" or dtype != torch.float16:
        return dtype
    try:
        config = json.loads((snapshot.path / component / "config.json").read_text())
    except (OSError, ValueError):
        return torch.float32  # the loader names a missing or damaged config; until then, stay safe
    return torch.float32 if config.get("force_upcast", True) else dtype


def _device_and_dtype(entry: RegistryEntry, device, dtype) -> tuple[torch.device, torch.dtype]:
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = resolve_dtype(dtype)
    if resolved is None:
        # Half precision is the GPU default of the paper; on a CPU it is slow and loses accuracy.
        resolved = resolve_dtype(entry.default_dtype) if device.type == "cuda" else torch.float32
    return device, resolved


def create_model(name: str, revision: str | None = None, device: str | torch.device | None = None,
                 dtype: str | torch.dtype | None = None,
                 scoring: ScoringConfig | Mapping[str, Any] | str | None = None, *,
                 templates: Sequence[str] | None = None, preprocess: PreprocessConfig | None = None,
                 token: str | bool | None = None, cache_dir: str | os.PathLike | None = None,
                 local_files_only: bool | None = None, allow_pickle: bool = False, endpoint: str | None = None,
                 image_batch_size: int = 8) -> DiffusionClassifier:
    """Build a ``DiffusionClassifier`` by name.

    Args:
        name: a zoo name (``dc_zoo.list_models()``), ``hf-hub:org/repo[@revision]`` (also a
            registry repo's current or paper id) or ``local-dir:/path`` / an existing directory.
        revision: branch, tag or commit; default the entry's pinned revision (else ``main``).
        device: default ``cuda`` when available, else ``cpu``.
        dtype: default the entry's ``default_dtype`` on a GPU, float32 on the CPU.
        scoring: a ``ScoringConfig``, or a dict of overrides of the entry's default schedule
            (e.g. ``{"loss": "l1", "seed": 1}``), or ``"recommended"``: the entry's measured cheaper
            scoring (``dc_zoo.strategies``), with its fitted probability temperature.
        templates: prompt templates (default: the entry's).
        preprocess: image preparation (default: the entry's resolution, interpolation, crop).
        token: Hub token for gated / private repos.
        cache_dir: Hugging Face cache folder (default ``HF_HUB_CACHE``).
        local_files_only: never use the network (default: ``HF_HUB_OFFLINE``).
        allow_pickle: accept pickle (``.bin``) weights; only safetensors otherwise.
        endpoint: Hub URL (default ``HF_ENDPOINT``).
        image_batch_size: images whose work is packed together.

    Returns:
        A classifier with ``.entry`` (the registry entry) and ``.source`` (the resolved snapshot).

    Raises:
        KeyError: unknown zoo name (with close matches).
        ValueError: malformed name; an open_clip entry (not a diffusion classifier).
        dc_zoo._hub.ModelNotCachedError / RevisionNotCachedError / ModelRevisionNotFoundError /
        ModelRepoNotFoundError / GatedModelError / MissingComponentsError /
        UnsupportedPipelineError / PickleWeightsError / DamagedFileError / RemoteCodeError: see
        their messages for the fix.
    """
    resolved = resolve_model(name, revision, token=token, cache_dir=cache_dir, local_files_only=local_files_only,
                             allow_pickle=allow_pickle, endpoint=endpoint)
    entry, snapshot = resolved.entry, resolved.snapshot
    spec = FAMILIES[entry.family]
    networks = spec.networks + tuple(n for n in spec.optional_networks if n in resolved.components)
    use_safetensors = _hub.check_weight_files(snapshot, networks, allow_pickle=allow_pickle)
    _hub.check_files_intact(snapshot, resolved.components)
    device, dtype = _device_and_dtype(entry, device, dtype)
    parts = {c: _load_component(snapshot, c, lib, cls, use_safetensors, _load_dtype(entry, snapshot, c, dtype))
             for c, (lib, cls) in resolved.components.items()}
    scheduler = _checked_scheduler(entry, snapshot, parts["scheduler"])
    preprocess = preprocess or PreprocessConfig(size=entry.resolution, interpolation=entry.interpolation, crop=entry.crop)
    backend = _build_backend(entry, resolved, parts, scheduler, preprocess)
    backend = backend.to(device=device).eval()  # already in dtype (loaded so): no cast undoes the float32 layers
    if templates is None:
        templates = (entry.template,) if entry.template else ("{}",)
    classifier = DiffusionClassifier(backend, scoring=_scoring_for(entry, scoring), preprocess=preprocess,
                                     templates=templates, image_batch_size=image_batch_size)
    classifier.entry = entry
    classifier.source = snapshot
    classifier.calibration = _calibration_for(entry, scoring)
    logger.info("created %s from %s on %s (%s)", entry.name, snapshot.describe(), device, dtype)
    return classifier
