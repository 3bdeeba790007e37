"""How the stock clip_benchmark finds Diffusion Classifier: registration, the .pth hook, task guards.

Also the numerical pieces that make clip_benchmark's output trustworthy for a joint scorer:
the rank ladder (exact through float16/bfloat16) and the NumPy 2.4 fix of ``accuracy()``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import dc_zoo.clip_benchmark as dc_cb
from dc_zoo.clip_benchmark import MODEL_NAME, MODEL_TYPE, UnsupportedTaskError, register
from dc_zoo.clip_benchmark.numpy_compat import accuracy, patch_accuracy
from dc_zoo.clip_benchmark.rank_ladder import encode_ranks, ladder, ladder_capacity

PTH_FILE = Path(dc_cb.__file__).parent / "dc_zoo_clip_benchmark.pth"


def test_register_extends_the_parser_list_in_place_once():
    import clip_benchmark.models as models

    types_list = models.MODEL_TYPES
    register()
    register()
    assert models.MODEL_TYPES is types_list and types_list.count(MODEL_TYPE) == 1
    assert models.TYPE2FUNC[MODEL_TYPE] is dc_cb.load_diffusion_classifier
    assert models.TYPE2FUNC["open_clip"].__wrapped__.__module__ == "clip_benchmark.models.open_clip"


def test_default_model_type_dispatches_a_zoo_entry_to_diffusion_classifier(tiny_pipelines):
    register()
    from clip_benchmark.models import load_clip

    model, transform, tokenizer = load_clip("open_clip", MODEL_NAME, str(tiny_pipelines.sd_dir), None, "cpu")
    assert isinstance(model, dc_cb.DiffusionClassifierForClipBenchmark) and tokenizer is model.tokenizer
    from PIL import Image

    assert transform(Image.new("RGB", (20, 24))).shape == (3, 16, 16)
    with pytest.raises(ValueError, match="--model diffusion-classifier"):
        load_clip(MODEL_TYPE, "ViT-B-32", str(tiny_pipelines.sd_dir), None, "cpu")


@pytest.mark.parametrize("task, options, match", [
    ("linear_probe", {}, "linear_probe: a linear probe is trained on image features alone"),
    ("captioning", {}, "captioning: a Diffusion Classifier scores"),
    ("auto", {"save_clf": "clf.pt"}, "zeroshot_classification with --save_clf"),
    ("zeroshot_classification", {"load_clfs": ["a.pt"]}, "with --load_clfs"),
])
def test_cli_run_stops_unsupported_tasks_before_loading_the_model(task, options, match):
    register()
    import clip_benchmark.cli as cli

    args = argparse.Namespace(model=MODEL_NAME, model_type="open_clip", pretrained="no-such-entry", task=task,
                              dataset="wds/digits", save_clf=None, load_clfs=[])
    for key, value in options.items():
        setattr(args, key, value)
    with pytest.raises(UnsupportedTaskError, match=match):
        cli.run(args)  # a model load of "no-such-entry" would raise KeyError instead


def _hook_site(tmp_path: Path) -> Path:
    """A site-packages stand-in holding the hook, placed by ``python -m dc_zoo.clip_benchmark install-hook``."""
    from dc_zoo.clip_benchmark.__main__ import main

    site_dir = tmp_path / "site"
    site_dir.mkdir(parents=True)
    assert main(["install-hook", "--site-dir", str(site_dir)]) == 0
    assert (site_dir / PTH_FILE.name).read_text() == PTH_FILE.read_text()
    return site_dir


def test_pth_hook_registers_lazily_at_clip_benchmark_import(tmp_path):
    code = (
        "import os, site, sys;"
        "hooked = lambda: any(type(f).__name__ == 'ClipBenchmarkPatcher' for f in sys.meta_path);"
        "os.environ['DC_ZOO_NO_CLIP_BENCHMARK_HOOK'] = '1'; site.addsitedir(sys.argv[1]);"
        "assert not hooked(), 'DC_ZOO_NO_CLIP_BENCHMARK_HOOK=1 did not turn the hook off';"
        "del os.environ['DC_ZOO_NO_CLIP_BENCHMARK_HOOK']; site.addsitedir(sys.argv[2]);"
        "assert hooked() and 'torch' not in sys.modules and 'dc_zoo' not in sys.modules, 'hook missing or heavy';"
        "import clip_benchmark.cli as cli, clip_benchmark.models as m;"
        "print(m.MODEL_TYPES, getattr(cli.run, '_dc_zoo_wrapped', False))"
    )
    sites = [str(_hook_site(tmp_path / name)) for name in ("off", "on")]
    # The variable keeps a hook that setup.sh already placed in the venv's site-packages off at start-up.
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "DC_ZOO_NO_CLIP_BENCHMARK_HOOK": "1"}
    out = subprocess.run([sys.executable, "-c", code, *sites], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("['open_clip', 'ja_clip', 'diffusion_classifier'] True")


def test_rank_ladder_is_exact_in_every_autocast_dtype():
    values = ladder(ladder_capacity(1), top_exponent=1)
    assert bool((values[1:] < values[:-1]).all())
    for dtype in (torch.float16, torch.bfloat16):
        assert torch.equal(values.to(dtype).float(), values)
    assert float(values.square().sum()) < 100.0**2  # fits inside clip_benchmark's 100 * unit vector
    with pytest.raises(ValueError, match="lower --batch_size"):
        ladder(ladder_capacity(-3) + 1, top_exponent=-3)


def test_encode_ranks_keeps_row_and_column_orders():
    scores = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    per_row = encode_ranks(scores, dim=-1)
    assert torch.equal(per_row.argsort(dim=1), scores.argsort(dim=1))
    overall = encode_ranks(scores, dim=None, top_exponent=-2)
    assert torch.equal(overall.argsort(dim=0), scores.argsort(dim=0))
    assert torch.equal(overall.argsort(dim=1), scores.argsort(dim=1))
    assert float(overall.abs().max()) < 0.25


def test_accuracy_replacement_matches_clip_benchmark_and_is_installed_only_when_needed():
    import clip_benchmark.metrics.zeroshot_classification as zc

    original = getattr(zc.accuracy, "__wrapped__", None) or zc.accuracy
    original = original if original is not accuracy else None
    logits = torch.randn(50, 10, generator=torch.Generator().manual_seed(1))
    target = torch.randint(0, 10, (50,), generator=torch.Generator().manual_seed(2))
    if original is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert accuracy(logits, target, topk=(1, 5)) == original(logits, target, topk=(1, 5))

    class Fixed:  # an accuracy() that already works must be left alone
        accuracy = staticmethod(accuracy)

    assert patch_accuracy(Fixed) is False
    register()
    # NumPy < 2.4 warns where 2.4 raises; either way the installed function is the fixed one.
    assert zc.accuracy is accuracy
    assert zc.accuracy(logits, target, topk=(1, 5))[0] == pytest.approx(
        float((logits.argmax(1) == target).float().mean()))
