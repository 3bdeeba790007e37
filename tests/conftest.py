"""Shared test fixtures: an offline Hugging Face environment and tiny real diffusion pipelines.

Nothing may come from the Hub: the session runs with ``HF_HUB_OFFLINE=1`` and ``HF_HOME`` in a
temporary folder, set before huggingface_hub is imported. Models are tiny real diffusers
components built here (diffusers' ``get_dummy_components()`` style, seeded before each one),
with the real CLIP tokenizer written offline, saved with ``save_pretrained``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Before anything imports huggingface_hub (it reads these once, at import).
_SESSION_HF_HOME = Path(tempfile.mkdtemp(prefix="dc_zoo-hf-home-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = str(_SESSION_HF_HOME)
os.environ["HF_HUB_CACHE"] = str(_SESSION_HF_HOME / "hub")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny networks run fastest on one thread, and several suites share this machine's two cores:
# oversubscribed intra-op threads made the tiny-model tests 5x slower. DC_ZOO_TEST_THREADS overrides.
torch.set_num_threads(int(os.environ.get("DC_ZOO_TEST_THREADS", "1")))

def pytest_configure(config):
    config.addinivalue_line("markers", "slow: minutes of CPU; deselect with -m 'not slow'")
    config.addinivalue_line("markers", "gpu: needs a CUDA device")


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_HF_HOME, ignore_errors=True)


@pytest.fixture(autouse=True, scope="session")
def offline_hub():
    """Offline mode even if huggingface_hub was imported before this conftest."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE, constants.HF_HUB_CACHE
    constants.HF_HUB_OFFLINE = True
    constants.HF_HUB_CACHE = os.environ["HF_HUB_CACHE"]
    yield
    constants.HF_HUB_OFFLINE, constants.HF_HUB_CACHE = saved


DIGIT_LABELS = {0: "zero", 1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven",
                8: "eight", 9: "nine"}


def build_tiny_sd_pipeline(seed: int = 0, prediction_type: str = "epsilon"):
    """A StableDiffusionPipeline of the tiny components in ``tiny_models`` (16 px, real CLIP tokenizer)."""
    from diffusers import StableDiffusionPipeline
    from tiny_models import tiny_sd_components

    return StableDiffusionPipeline(**tiny_sd_components(seed, prediction_type), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def build_tiny_dit_pipeline(seed: int = 0):
    """A DiTPipeline of the tiny components in ``tiny_models`` (16 px, learned sigma, 10 classes)."""
    from diffusers import DiTPipeline
    from tiny_models import tiny_dit_components

    return DiTPipeline(**tiny_dit_components(seed))


def save_dit_pipeline(pipe, folder: Path, id2label: dict[int, str]) -> Path:
    """``save_pretrained`` plus the ``id2label`` table real DiT repos keep in model_index.json."""
    pipe.save_pretrained(folder, safe_serialization=True)
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    index["id2label"] = {str(k): v for k, v in id2label.items()}
    index_path.write_text(json.dumps(index, indent=2))
    return folder


def folder_commit(folder: Path) -> str:
    """A 40-hex id of a folder's content, used as the commit hash of its cache snapshot."""
    digest = hashlib.sha1()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def write_hub_cache(source: Path, cache_dir: Path, repo_id: str, ref: str = "main") -> str:
    """Place ``source`` in ``cache_dir`` exactly as huggingface_hub's cache lays out ``repo_id``.

    ``models--org--name/snapshots/<commit>/...`` and ``refs/<ref>`` holding the commit.
    Returns the commit.
    """
    commit = folder_commit(source)
    storage = cache_dir / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(source, storage / "snapshots" / commit, dirs_exist_ok=True)
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / ref).write_text(commit)
    return commit


@dataclass(frozen=True)
class TinyPipelines:
    """Tiny pipelines saved on disk and a Hub-format cache holding them."""

    sd_dir: Path
    dit_dir: Path
    cache_dir: Path
    sd_repo: str
    dit_repo: str
    sd_commit: str
    dit_commit: str


@pytest.fixture(scope="session")
def tiny_pipelines(tmp_path_factory) -> TinyPipelines:
    """Tiny SD and DiT pipelines in folders and in a Hub-format cache (repos ``dc-zoo-test/tiny-*``)."""
    root = tmp_path_factory.mktemp("tiny-models")
    sd_dir = root / "tiny-sd"
    build_tiny_sd_pipeline().save_pretrained(sd_dir, safe_serialization=True)
    dit_dir = save_dit_pipeline(build_tiny_dit_pipeline(), root / "tiny-dit", DIGIT_LABELS)
    cache = root / "hub-cache"
    sd_repo, dit_repo = "dc-zoo-test/tiny-sd", "dc-zoo-test/tiny-dit"
    return TinyPipelines(sd_dir=sd_dir, dit_dir=dit_dir, cache_dir=cache, sd_repo=sd_repo, dit_repo=dit_repo,
                      sd_commit=write_hub_cache(sd_dir, cache, sd_repo),
                      dit_commit=write_hub_cache(dit_dir, cache, dit_repo))


@pytest.fixture
def tiny_images():
    """Four small RGB images with different content (PIL)."""
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    arrays = (torch.rand(4, 20, 24, 3, generator=gen) * 255).to(torch.uint8).numpy()
    return [Image.fromarray(a) for a in arrays]
