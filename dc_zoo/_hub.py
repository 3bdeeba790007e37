"""Every Hugging Face Hub access of dc_zoo, in one place (timm's ``_hub.py``).

Weights come only through ``huggingface_hub.snapshot_download``: its cache, ``HF_HUB_OFFLINE``,
tokens for gated repos and pinned revisions are honoured, and each way it can fail becomes
one distinct error that says what went wrong and how to fix it. The zoo's own miniature
models (``dc-zoo/*``) ship inside the package as a Hub-format cache (``dc_zoo/hub_cache``), so
they load through the same code with no network. Pickle weights (``.bin``/``.ckpt``) can run
code when loaded; they are refused unless the caller opts in, safetensors are the default.
Files are checked before anything is loaded: a truncated or empty weight file or a half-written
JSON file is named, with how to fetch it again (``DamagedFileError``), rather than surfacing as
a bare safetensors or JSON error.

Paper: Li et al., "Your Diffusion Model is Secretly a Zero-Shot Classifier", ICCV 2023
(https://arxiv.org/abs/2303.16203).
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

logger = logging.getLogger(__name__)

__all__ = [
    "BUNDLED_CACHE", "BUNDLED_ORG", "Snapshot", "ZooHubError", "ModelNotCachedError", "RevisionNotCachedError",
    "ModelRevisionNotFoundError", "ModelRepoNotFoundError", "GatedModelError", "MissingComponentsError",
    "UnsupportedPipelineError", "PickleWeightsError", "DamagedFileError", "RemoteCodeError", "download_snapshot", "cached_snapshot", "local_snapshot",
    "read_model_index", "read_json_file", "check_components", "check_weight_files", "check_files_intact",
    "refetch_hint", "hub_cache_dir", "is_offline", "open_clip_load_hint",
]

BUNDLED_CACHE = Path(__file__).resolve().parent / "hub_cache"  # Hub-format cache of the trained miniatures
BUNDLED_ORG = "dc-zoo"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_SAFE_SUFFIXES = (".safetensors",)
_PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
# Never needed to classify: original-format checkpoints, other frameworks, fp16/EMA duplicates, NSFW filter.
_IGNORE = ["*.ckpt", "*.msgpack", "*.onnx", "*.onnx_data", "*.pb", "*.h5", "*.ot", "*fp16*", "*non_ema*",
           "*.png", "*.jpg", "safety_checker/*", "feature_extractor/*",
           # single-file checkpoints beside the diffusers folders (SDXL ~7 GB, SD3/3.5 up to 16 GB, FLUX.1 ~24 GB):
           # never read
           "sd_xl_*.safetensors", "sd3*.safetensors", "text_encoders/*", "flux1-*.safetensors", "ae.safetensors"]


class ZooHubError(OSError):
    """Base class of the loading errors below (all are ``OSError``, as huggingface_hub's are)."""


class ModelNotCachedError(ZooHubError, FileNotFoundError):
    """The repo is not in the local cache and downloading is switched off."""


class RevisionNotCachedError(ModelNotCachedError):
    """The repo is cached, but not at the requested revision, and downloading is switched off."""


class ModelRevisionNotFoundError(ZooHubError, ValueError):
    """The Hub has the repo but not the requested revision."""


class ModelRepoNotFoundError(ZooHubError, FileNotFoundError):
    """The Hub has no such repo (deleted, renamed, private or misspelled)."""


class GatedModelError(ZooHubError, PermissionError):
    """The repo is gated and the request carried no (or an unauthorised) token."""


class MissingComponentsError(ZooHubError, FileNotFoundError):
    """The snapshot lacks model_index.json or components the backend needs."""


class UnsupportedPipelineError(ZooHubError, ValueError):
    """No dc_zoo backend scores this pipeline class."""


class PickleWeightsError(ZooHubError, ValueError):
    """Only pickle weights exist and the caller did not allow pickle."""


class DamagedFileError(ZooHubError, ValueError):
    """A file of the snapshot is truncated, empty or not valid JSON (an interrupted download or copy)."""


class RemoteCodeError(UnsupportedPipelineError):
    """model_index.json asks for code from the repo (a custom pipeline or module); dc_zoo never runs it."""


@dataclass(frozen=True)
class Snapshot:
    """A resolved set of model files on disk.

    Attributes:
        path: the folder holding model_index.json and the component folders.
        repo_id: the Hub repo it belongs to (None for a local directory).
        revision: the revision asked for (branch, tag or commit).
        commit: the commit it resolved to, when known.
        source: ``"bundled"`` (dc_zoo/hub_cache), ``"cache"`` (the HF cache, offline),
            ``"hub"`` (checked against / downloaded from the Hub) or ``"local-dir"``.
    """

    path: Path
    repo_id: str | None
    revision: str | None
    commit: str | None
    source: str

    def describe(self) -> str:
        if self.repo_id is None:
            return f"local directory {self.path}"
        commit = f", commit {self.commit}" if self.commit and self.commit != self.revision else ""
        return f"{self.repo_id}@{self.revision}{commit} ({self.source}: {self.path})"


def is_offline() -> bool:
    """Whether huggingface_hub is in offline mode (``HF_HUB_OFFLINE=1``)."""
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def hub_cache_dir() -> Path:
    """The Hugging Face cache folder in use (``HF_HUB_CACHE`` / ``HF_HOME``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _library_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dc_zoo")
    except PackageNotFoundError:
        return "0+unknown"


def _is_bundled(repo_id: str) -> bool:
    return repo_id.split("/")[0] == BUNDLED_ORG and (BUNDLED_CACHE / _repo_folder(repo_id)).is_dir()


def open_clip_load_hint(repo_id: str) -> str:
    """How to load an open_clip repo of the zoo (from the bundled cache when it ships with dc_zoo)."""
    cache = f", cache_dir='{BUNDLED_CACHE}'" if _is_bundled(repo_id) else ""
    return f"open_clip.create_model_and_transforms('hf-hub:{repo_id}'{cache})"


def _repo_folder(repo_id: str) -> str:
    return "models--" + repo_id.replace("/", "--")


def _cached_revisions(storage: Path) -> list[str]:
    refs = storage / "refs"
    names = []
    if refs.is_dir():
        for ref in sorted(p for p in refs.rglob("*") if p.is_file()):
            names.append(f"{ref.relative_to(refs).as_posix()} -> {ref.read_text().strip()[:12]}")
    snapshots = storage / "snapshots"
    if snapshots.is_dir():
        names += [p.name[:12] for p in sorted(snapshots.iterdir()) if p.is_dir()]
    return names


def _fetch_hint(repo_id: str, revision: str) -> str:
    return (f"fetch it on a machine with network access with `hf download {repo_id} --revision {revision}` "
            f"(older huggingface_hub: `huggingface-cli download {repo_id} --revision {revision}`) into the same "
            "HF_HOME, or unset HF_HUB_OFFLINE to let dc_zoo download it")


def refetch_hint(snapshot: Snapshot) -> str:
    """How to get intact files again for ``snapshot`` (Hub cache, bundled miniature or local folder)."""
    if snapshot.source == "bundled":
        return ("the miniature ships inside dc_zoo, so reinstall the package "
                "(`pip install --force-reinstall --no-deps dc_zoo`, or `git checkout dc_zoo/hub_cache` in a checkout)")
    if snapshot.repo_id is None:
        return (f"save the pipeline again with DiffusionPipeline.save_pretrained('{snapshot.path}') "
                "(or copy the folder again from where it came from)")
    revision = snapshot.commit or snapshot.revision or "main"
    cache_option = ""
    parts = snapshot.path.parts
    if len(parts) > 3 and parts[-2] == "snapshots":
        cache = snapshot.path.parents[2]
        if cache.resolve() != hub_cache_dir().resolve():
            cache_option = f" --cache-dir {cache}"
    return (f"fetch it again with `hf download {snapshot.repo_id} --revision {revision}{cache_option} --force-download` "
            f"where there is network access, or delete the snapshot folder {snapshot.path} and load the model "
            "again with downloads on")


def _damaged(snapshot: Snapshot, path: Path, problem: str) -> DamagedFileError:
    return DamagedFileError(f"{path} is damaged or incomplete: {problem}. It belongs to {snapshot.describe()}; "
                            f"an interrupted download or copy leaves files like this: {refetch_hint(snapshot)}.")


def read_json_file(snapshot: Snapshot, path: str | os.PathLike) -> dict[str, Any]:
    """A JSON object file of ``snapshot`` (model_index.json, a config).

    Raises:
        MissingComponentsError: the file does not exist.
        DamagedFileError: it is empty, not UTF-8, not JSON (e.g. cut off) or not a JSON object.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise MissingComponentsError(
            f"{path} is missing, so {snapshot.describe()} is incomplete; {refetch_hint(snapshot)}.") from None
    if not raw.strip():
        raise _damaged(snapshot, path, f"it is empty ({len(raw)} bytes)")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise _damaged(snapshot, path, f"it is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise _damaged(snapshot, path, f"it is not valid JSON, as a cut-off or half-written file is (line "
                       f"{err.lineno} column {err.colno} of {len(raw):,} bytes: {err.msg})") from None
    if not isinstance(data, dict):
        raise _damaged(snapshot, path, f"it holds a JSON {type(data).__name__}, not an object")
    return data


def _is_loaded_weight_file(name: str) -> bool:
    """``model.safetensors`` / ``diffusion_pytorch_model-00001-of-00002.safetensors``, not ``*.fp16.safetensors``."""
    return name.endswith(".safetensors") and "." not in name[: -len(".safetensors")]


def _safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete safetensors file (from its header and size), or None."""
    size = path.stat().st_size
    if size == 0:
        return "it is empty (0 bytes)"
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"it is truncated ({size} bytes, less than the 8-byte header length)"
        n = int.from_bytes(head, "little")
        if n > size - 8:
            return f"it is truncated ({size:,} bytes, but its header alone should take {n:,})"
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return "its safetensors header is not valid JSON"
    if not isinstance(header, dict):
        return "its safetensors header is not a JSON object"
    ends = [int(v["data_offsets"][1]) for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and isinstance(v.get("data_offsets"), list)
            and len(v["data_offsets"]) == 2]
    expected = 8 + n + max(ends, default=0)
    if size < expected:
        return f"it is truncated ({size:,} of the {expected:,} bytes its header describes)"
    if size > expected:
        return f"it has {size - expected:,} bytes more than its header describes"
    return None


def check_files_intact(snapshot: Snapshot, components: Iterable[str]) -> None:
    """Check the files dc_zoo will load from ``components`` without loading them.

    Every ``.json`` file must parse and every weight ``.safetensors`` file must be as long as its
    header says (reads headers only), so a damaged file is named before a library reports it
    without its name or the reason.

    Raises:
        DamagedFileError: naming the file, what is wrong and how to fetch it again.
    """
    for name in components:
        folder = snapshot.path / name
        if not folder.is_dir():
            continue
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            if path.name.endswith(".json"):
                read_json_file(snapshot, path)
            elif _is_loaded_weight_file(path.name):
                problem = _safetensors_problem(path)
                if problem:
                    raise _damaged(snapshot, path, problem)


def download_snapshot(repo_id: str, revision: str | None = None, *, token: str | bool | None = None,
                      cache_dir: str | os.PathLike | None = None, local_files_only: bool | None = None,
                      allow_pickle: bool = False, endpoint: str | None = None) -> Snapshot:
    """Resolve ``repo_id@revision`` to a folder through ``huggingface_hub.snapshot_download``.

    Repos of the ``dc-zoo`` organisation that ship with the package come from ``dc_zoo/hub_cache``.

    Args:
        repo_id: ``org/repo``.
        revision: branch, tag or commit (default ``"main"``); a commit pins the weights.
        token: Hub token for gated or private repos (default: the stored login / ``HF_TOKEN``).
        cache_dir: Hugging Face cache folder (default: ``HF_HUB_CACHE``).
        local_files_only: never touch the network (default: ``HF_HUB_OFFLINE``).
        allow_pickle: also fetch ``.bin`` pickle weights (needed by repos without safetensors).
        endpoint: Hub URL (default: ``HF_ENDPOINT`` / huggingface.co).

    Raises:
        ModelNotCachedError, RevisionNotCachedError: offline and not in the cache.
        ModelRevisionNotFoundError, ModelRepoNotFoundError, GatedModelError: the Hub refused.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError, HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError,
    )

    revision = revision or "main"
    bundled = cache_dir is None and _is_bundled(repo_id)
    if bundled:
        cache_dir, local_files_only = BUNDLED_CACHE, True
    offline = is_offline() if local_files_only is None else bool(local_files_only)
    ignore = list(_IGNORE) + ([] if allow_pickle else ["*.bin", "*.pt", "*.pth", "*.pkl"])
    try:
        path = snapshot_download(
            repo_id, revision=revision, cache_dir=cache_dir, local_files_only=offline, token=token,
            library_name="dc_zoo", library_version=_library_version(), ignore_patterns=ignore, endpoint=endpoint,
        )
    except HFValidationError as err:
        raise ValueError(f"{repo_id!r} is not a valid Hub repo id ({err}); write it as 'org/repo'.") from None
    except GatedRepoError:
        raise GatedModelError(
            f"{repo_id} is a gated repo and the request had no accepted token. Accept its licence and conditions at "
            f"https://huggingface.co/{repo_id} (the licence page), then log in with `hf auth login` (older "
            "huggingface_hub: `huggingface-cli login`), set HF_TOKEN, or pass token=..."
        ) from None
    except RevisionNotFoundError:
        raise ModelRevisionNotFoundError(
            f"Revision {revision!r} does not exist in {repo_id}. Use a branch ('main'), a tag, or a commit listed at "
            f"https://huggingface.co/{repo_id}/commits/main."
        ) from None
    except RepositoryNotFoundError:
        raise ModelRepoNotFoundError(
            f"The Hub has no repo {repo_id} (deleted, renamed, private or misspelled). Check the id at "
            f"https://huggingface.co/{repo_id}; for a private repo pass token=... ."
        ) from None
    except LocalEntryNotFoundError:
        cache = Path(cache_dir) if cache_dir is not None else hub_cache_dir()
        storage = cache / _repo_folder(repo_id)
        why = "downloads are off (HF_HUB_OFFLINE=1 or local_files_only=True)"
        if storage.is_dir():
            raise RevisionNotCachedError(
                f"{repo_id} is in the cache {cache} but not at revision {revision!r} (cached: "
                f"{', '.join(_cached_revisions(storage)) or 'nothing complete'}), and {why}. Pick a cached revision "
                f"or {_fetch_hint(repo_id, revision)}."
            ) from None
        raise ModelNotCachedError(
            f"{repo_id} (revision {revision!r}) is not in the Hugging Face cache {cache}, and {why}. "
            f"To use it, {_fetch_hint(repo_id, revision)}."
        ) from None
    path = Path(path)
    commit = path.name if _COMMIT.match(path.name) else None
    source = "bundled" if bundled else ("cache" if offline else "hub")
    logger.info("resolved %s@%s to %s (%s)", repo_id, revision, path, source)
    return Snapshot(path=path, repo_id=repo_id, revision=revision, commit=commit, source=source)


def cached_snapshot(repo_id: str, revision: str | None = None,
                    cache_dir: str | os.PathLike | None = None) -> Snapshot | None:
    """The cached snapshot of ``repo_id@revision`` if present, without touching the network."""
    try:
        return download_snapshot(repo_id, revision, cache_dir=cache_dir, local_files_only=True)
    except ModelNotCachedError:
        return None


def local_snapshot(path: str | os.PathLike) -> Snapshot:
    """A pipeline folder on disk (``save_pretrained`` output, a fine-tune, a merged LoRA)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise MissingComponentsError(
            f"{folder} is not a directory; give the folder that DiffusionPipeline.save_pretrained wrote "
            "(it holds model_index.json)."
        )
    return Snapshot(path=folder.resolve(), repo_id=None, revision=None, commit=None, source="local-dir")


def read_model_index(snapshot: Snapshot) -> dict[str, Any]:
    """The snapshot's ``model_index.json`` (the diffusers pipeline description)."""
    index = snapshot.path / "model_index.json"
    if not index.is_file():
        raise MissingComponentsError(
            f"{snapshot.describe()} has no model_index.json, so it is not a diffusers pipeline. Save the model with "
            "DiffusionPipeline.save_pretrained(folder), or build a backend yourself (dc_zoo.StableDiffusionBackend / "
            "DiTBackend / DenoiserBackend)."
        )
    return read_json_file(snapshot, index)


def check_components(snapshot: Snapshot, model_index: Mapping[str, Any], required: Iterable[str]) -> dict[str, tuple[str, str]]:
    """``{component: (library, class_name)}`` for ``required``, each declared and present on disk.

    Raises:
        MissingComponentsError: naming every missing component.
    """
    found, missing = {}, []
    for name in required:
        spec = model_index.get(name)
        if not (isinstance(spec, (list, tuple)) and len(spec) == 2 and spec[0] and spec[1]):
            missing.append(f"{name} (not declared in model_index.json)")
        elif not (snapshot.path / name).is_dir():
            missing.append(f"{name} (no {name}/ folder)")
        else:
            found[name] = (str(spec[0]), str(spec[1]))
    if missing:
        raise MissingComponentsError(
            f"{snapshot.describe()} ({model_index.get('_class_name', 'unknown pipeline')}) lacks components: "
            f"{', '.join(missing)}. A complete pipeline has {', '.join(required)}; re-save it with "
            "DiffusionPipeline.save_pretrained or download the full snapshot."
        )
    return found


def check_weight_files(snapshot: Snapshot, components: Iterable[str], allow_pickle: bool = False) -> bool:
    """Check that each network component has weights in an allowed format.

    Returns:
        True when every component has safetensors (load with ``use_safetensors=True``); False
        when some have only pickle weights and ``allow_pickle`` is set.

    Raises:
        PickleWeightsError: a component has only pickle weights and ``allow_pickle`` is False.
        MissingComponentsError: a component has no weight file at all.
    """
    all_safe = True
    for name in components:
        files = [p for p in (snapshot.path / name).iterdir() if p.is_file()]
        safe = [p for p in files if p.name.endswith(_SAFE_SUFFIXES)]
        pickled = [p for p in files if p.name.endswith(_PICKLE_SUFFIXES)]
        if safe:
            continue
        if pickled and not allow_pickle:
            raise PickleWeightsError(
                f"Component {name!r} of {snapshot.describe()} has only pickle weights ({pickled[0].name}); loading "
                "pickle can execute code. If you trust the repo, pass allow_pickle=True (dc-zoo: --allow-pickle); "
                "better, convert it to safetensors."
            )
        if not pickled:
            raise MissingComponentsError(
                f"Component {name!r} of {snapshot.describe()} has no weights (no .safetensors or .bin file in {name}/). "
                "If the repo has only pickle .bin weights, pass allow_pickle=True (they are not fetched otherwise); "
                "else the snapshot is incomplete: download it again."
            )
        all_safe = False
    return all_safe
