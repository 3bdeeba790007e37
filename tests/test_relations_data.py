"""The relations benchmark's data (dc_zoo/relations.py): pinned, compositional, read by the stock readers."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from collections import Counter

import numpy as np
import PIL
import pytest

from dc_zoo import relations as R


@pytest.fixture(scope="module")
def examples():
    return R.load_winoground_examples()


@pytest.mark.parametrize("split", R.SPLITS)
def test_split_content_is_pinned(split):
    if PIL.__version__ != R.PINNED_PILLOW_VERSION:
        pytest.skip(f"pixels were pinned with Pillow {R.PINNED_PILLOW_VERSION}; this is Pillow {PIL.__version__}, "
                    "whose rasteriser may differ")
    assert R.split_content_hash(split) == R.CONTENT_SHA256[split]
    assert R.TEST_CONTENT_SHA256 == R.CONTENT_SHA256["test"]


def test_records_are_seeded_per_index_and_reproducible():
    a = R.load_relations_split("val")
    assert len(a) == R.N_VAL
    again = R.load_relations_split("val")
    assert all(x[1] == y[1] and x[0].tobytes() == y[0].tobytes() for x, y in zip(a, again))
    # a record depends on (seed, split, index) only: recompute one from its own generator
    scene, layout = R.relation_records("val")[17]
    rng = R._rng(R.SEED, "val", 17)
    assert R._draw_scene(rng, R._TRAIN_COMBINATIONS) == scene and R._draw_layout(rng, scene.relation) == layout
    assert R.relation_records("val", seed=1)[17] != (scene, layout)


def test_split_sizes_and_images():
    train = R.load_relations_split("train")
    assert len(train) == R.N_TRAIN
    assert len(R.load_relations_split("test")) == 2 * R.N_TEST
    for image, caption in train[:50]:
        assert image.mode == "RGB" and image.size == (R.IMAGE_SIZE, R.IMAGE_SIZE)
        assert R.parse_caption(caption).caption == caption
    counts = Counter(R.parse_caption(c).relation for _, c in train)
    assert set(counts) == set(R.RELATIONS) and min(counts.values()) > R.N_TRAIN // 5


def test_held_out_combinations_are_only_in_test():
    held = set(R.HELD_OUT_COMBINATIONS)
    assert len(held) == 30
    for split in ("train", "val"):
        scenes = [s for s, _ in R.relation_records(split)]
        assert not any(R.combination_of(s) in held for s in scenes)
    train_things = {t for s, _ in R.relation_records("train") for t in (s.subject, s.obj)}
    assert len(train_things) == len(R.COLOURS) * len(R.SHAPES)  # every single object is seen in training
    assert all(R.combination_of(s) in held for s, _ in R.relation_records("test"))


def test_winoground_schema(examples):
    assert len(examples) == R.N_TEST
    assert [e["id"] for e in examples] == list(range(R.N_TEST))
    for e in examples:
        assert set(e) == set(R.WINOGROUND_COLUMNS)
        assert isinstance(e["id"], int) and e["num_main_preds"] == 1
        assert e["image_0"].size == e["image_1"].size == (R.IMAGE_SIZE, R.IMAGE_SIZE)
    tags = Counter((e["tag"], e["collapsed_tag"]) for e in examples)
    assert tags == {("Object", "Object"): R.N_TEST // 2, ("Attribute", "Relation"): R.N_TEST // 2}


def test_pairs_use_the_same_words_in_another_order(examples):
    for e in examples:
        c0, c1 = e["caption_0"], e["caption_1"]
        assert c0 != c1
        assert sorted(c0.split()) == sorted(c1.split())
        s0, s1 = R.parse_caption(c0), R.parse_caption(c1)
        assert s1 == (s0.swap_objects() if e["tag"] == "Object" else s0.swap_attributes())
        assert R.combination_of(s0) == R.combination_of(s1)


def test_images_of_a_pair_differ(examples):
    for e in examples:
        assert e["image_0"].tobytes() != e["image_1"].tobytes()


def test_each_caption_describes_its_image(examples):
    """Re-render each image from its caption (parsed) and its layout; then check the relation in pixels."""
    for e, ex in zip(examples, R.winoground_records()):
        for j in (0, 1):
            scene, layout = ex["scenes"][j]
            assert R.parse_caption(e[f"caption_{j}"]) == scene
            assert R.render_scene(R.parse_caption(e[f"caption_{j}"]), layout).tobytes() == e[f"image_{j}"].tobytes()
            _assert_relation_visible(e[f"image_{j}"], scene)


def _assert_relation_visible(image, scene: R.Scene) -> None:
    """The centroid of each object's colour lies where the relation says (colours differ within a scene)."""
    px = np.asarray(image, np.float64)
    centroids = []
    for thing in (scene.subject, scene.obj):
        dist = np.linalg.norm(px - np.array(R.COLOURS[thing.colour], np.float64), axis=-1)
        ys, xs = np.nonzero(dist < 40)
        assert len(xs) >= 8, f"{thing} hardly visible for {scene.caption!r}"
        centroids.append((xs.mean(), ys.mean()))
    (xa, ya), (xb, yb) = centroids
    along, across = {"to the left of": (xb - xa, ya - yb), "to the right of": (xa - xb, ya - yb),
                     "above": (yb - ya, xa - xb), "below": (ya - yb, xa - xb)}[scene.relation]
    assert along > 6 and abs(across) < along, scene.caption


def test_captions_fit_the_text_encoder(tmp_path):
    from dc_zoo.clip_tokenizer import build_clip_tokenizer

    tok = build_clip_tokenizer(tmp_path / "tok")
    things = [R.Thing(c, s) for c in R.COLOURS for s in R.SHAPES]
    captions = [R.Scene(a, r, b).caption for a in things for b in things for r in R.RELATIONS
                if a.colour != b.colour and a.shape != b.shape]
    assert max(len(ids) for ids in tok(captions)["input_ids"]) <= R.MAX_CAPTION_TOKENS


def test_stock_winoground_reader_reads_the_cache_offline(tmp_path, examples):
    pytest.importorskip("datasets")
    root = R.write_winoground_cache(tmp_path / "winoground")
    script = textwrap.dedent(f"""
        import hashlib, json
        from clip_benchmark.datasets.builder import build_dataset
        ds = build_dataset("winoground", root={str(root)!r}, transform=None, split="test",
                           task="image_caption_selection")
        out = {{"len": len(ds), "captions": [], "pixels": []}}
        for i in range(len(ds)):
            imgs, caps = ds[i]
            out["captions"].append(caps)
            out["pixels"].append([hashlib.sha256(im.convert("RGB").tobytes()).hexdigest() for im in imgs])
        out["features"] = sorted(ds.ds.features)
        print("RESULT" + json.dumps(out))
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert out["len"] == R.N_TEST
    assert out["features"] == sorted(R.WINOGROUND_COLUMNS)
    assert out["captions"] == [[e["caption_0"], e["caption_1"]] for e in examples]
    assert out["pixels"] == [[hashlib.sha256(e[f"image_{j}"].tobytes()).hexdigest() for j in (0, 1)] for e in examples]


def test_stock_sugar_crepe_reader_reads_the_files(tmp_path, examples):
    from clip_benchmark.datasets.builder import build_dataset

    root = R.write_sugar_crepe(tmp_path / "sugar_crepe")
    assert (root / "val2017").is_dir()
    images = [e[f"image_{j}"] for e in examples for j in (0, 1)]
    for task in R.SUGAR_CREPE_TASKS:
        assert (root / f"{task}.json").is_file()
        ds = build_dataset(f"sugar_crepe/{task}", root=str(root), split="test", transform=None,
                           task="image_caption_selection")
        assert len(ds) == 2 * R.N_TEST
        for n in range(0, len(ds), 37):
            img, (pos, neg) = ds[n]
            assert img.convert("RGB").tobytes() == images[n].tobytes()
            scene, negative = R.parse_caption(pos), R.parse_caption(neg)
            assert pos != neg
            if task == "swap_att":
                assert negative == scene.swap_attributes()
            elif task == "swap_obj":
                assert negative == scene.swap_objects()
            else:
                assert negative.relation != scene.relation and negative.replace_relation(scene.relation) == scene
    ann = json.loads((root / "swap_obj.json").read_text())
    assert all((root / "val2017" / v["filename"]).is_file() for v in ann.values())


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="split"):
        R.load_relations_split("validation")
    with pytest.raises(ValueError, match="task"):
        R.write_sugar_crepe(tmp_path, tasks=("add_att",))
    with pytest.raises(ValueError, match="caption"):
        R.parse_caption("a red circle near a blue square")
