"""The bad-input corpus (``_bad_input_corpus.CASES``) through every entry point: the Python API
and ``dc-zoo classify`` here; each unreadable item is named with its reason, the readable ones
are classified, the same way everywhere."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import dc_zoo
from dc_zoo.cli import main
from dc_zoo.image_io import ImageReadError

from _bad_input_corpus import CASES, READABLE, UNREADABLE, write_corpus, write_corpus_webdataset
from tiny_models import label_shift_classifier

SCHEDULE = ["--n-samples", "2", "--to-keep", "1"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def clf():
    return label_shift_classifier()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_api(case, corpus, clf):
    path = corpus / case.name
    if case.reason is None:
        out = clf.classify(path, [0, 1])
        assert out.predictions.shape == (1,)
        return
    with pytest.raises(ImageReadError) as info:
        clf.classify([corpus / "good.png", path], [0, 1])
    assert case.reason in str(info.value) and str(path) in str(info.value) and info.value.index == 1


def test_dc_zoo_classify_reports_each_bad_file_and_classifies_the_others(corpus, tiny_pipelines, capsys):
    paths = [str(corpus / c.name) for c in CASES]
    status = main(["classify", "--model", str(tiny_pipelines.sd_dir), "--classes", "cat", "dog", *SCHEDULE,
                   "--no-progress", "--json", *paths])
    captured = capsys.readouterr()
    assert status == 1, "some images failed: the exit status says so"
    assert "Traceback" not in captured.err
    report = json.loads(captured.out)
    assert [r["image"] for r in report["results"]] == [str(corpus / c.name) for c in READABLE]
    failed = {f["image"]: f["error"] for f in report["failed"]}
    for case in UNREADABLE:
        path = str(corpus / case.name)
        assert case.reason in failed[path], (case, failed)
        line = next(line for line in captured.err.splitlines() if f"{path!r}" in line)
        assert case.reason in line


def test_dc_zoo_classify_stops_at_the_first_bad_file_with_fail_fast(corpus, tiny_pipelines, capsys):
    status = main(["classify", "--model", str(tiny_pipelines.sd_dir), "--classes", "cat", "dog", *SCHEDULE,
                   "--no-progress", "--fail-fast", str(corpus / "good.png"), str(corpus / "empty.png"),
                   str(corpus / "notes.png")])
    captured = capsys.readouterr()
    assert status == 1 and captured.out == ""
    assert "empty.png" in captured.err and "notes.png" not in captured.err and "Traceback" not in captured.err


def test_dc_zoo_classify_api_and_command_agree_on_converted_files(corpus, tiny_pipelines, capsys):
    paths = [str(corpus / c.name) for c in READABLE]
    assert main(["classify", "--model", str(tiny_pipelines.sd_dir), "--classes", "cat", "dog", *SCHEDULE,
                 "--no-progress", "--json", *paths]) == 0
    by_command = [r["top"] for r in json.loads(capsys.readouterr().out)["results"]]
    api = dc_zoo.create_model(str(tiny_pipelines.sd_dir), scoring={"n_samples": (2,), "to_keep": (1,)})
    out = api.classify(paths, ["cat", "dog"])
    for i, top in enumerate(by_command):
        errors = {t["class"]: t["error"] for t in top}
        assert errors == pytest.approx({name: float(out.errors[i, k]) for k, name in enumerate(out.class_names)},
                                       rel=1e-6)


def test_missing_file_after_the_classes_is_an_image_not_a_class(corpus, tiny_pipelines, capsys):
    status = main(["classify", "--model", str(tiny_pipelines.sd_dir), "--classes", "cat", "dog", *SCHEDULE,
                   "--no-progress", "--json", str(corpus / "good.png"), "missing.png"])
    captured = capsys.readouterr()
    assert status == 1
    report = json.loads(captured.out)
    assert report["failed"] == [{"image": "missing.png", "error": pytest.approx(report["failed"][0]["error"])}]
    assert "does not exist" in report["failed"][0]["error"]
    assert {t["class"] for t in report["results"][0]["top"]} == {"cat", "dog"}  # not a third class


def test_a_directory_is_expanded_into_its_image_files(corpus, tiny_pipelines, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("b.png", "a.png"):
        (folder / name).write_bytes((corpus / "good.png").read_bytes())
    (folder / "readme.txt").write_text("not an image")
    assert main(["classify", "--model", str(tiny_pipelines.sd_dir), "--classes", "cat", "dog", *SCHEDULE,
                 "--no-progress", "--json", "--", str(folder)]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert [r["image"] for r in results] == [str(folder / "a.png"), str(folder / "b.png")]


@pytest.mark.parametrize("classes, fragment", [
    (["zero", ""], "Class name 1 is empty"),
    (["zero", "zero"], "Duplicate class names ['zero']"),
])
def test_bad_class_lists_are_one_line_usage_errors(classes, fragment, corpus, tiny_pipelines, capsys):
    status = main(["classify", "--model", str(tiny_pipelines.sd_dir), "--classes", *classes, *SCHEDULE,
                   "--no-progress", str(corpus / "good.png")])
    err = capsys.readouterr().err
    assert status == 2 and fragment in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.filterwarnings("ignore:WebDataset.shardshuffle")
def test_dc_zoo_eval_records_each_unreadable_sample_and_scores_the_others(corpus, tiny_pipelines, tmp_path, capsys):
    from _eval_fixtures import eval_in_process, read_results

    root, cases = write_corpus_webdataset(tmp_path / "wds", corpus)
    output = tmp_path / "results"
    status = eval_in_process(["--model", str(tiny_pipelines.sd_dir), "--dataset", "wds/corpus", "--dataset_root",
                              str(root), "--output", str(output), "--n-samples", "2", "--to-keep", "1",
                              "--image-batch-size", "4", "--no-progress", "--quiet"])
    assert status == 0, capsys.readouterr().err
    result, records = read_results(output)
    unreadable = [i for i, c in enumerate(cases) if c.reason is not None]
    assert result["images"] == len(cases) and result["failed_images"] == len(unreadable)
    for record, case in zip(records, cases):
        if case.reason is None:
            assert record["error"] is None and record["prediction"] in (0, 1), (case, record)
        else:  # names the shard, the sample's key and the reason
            assert record["prediction"] == -1 and record["errors"] is None
            assert record["error"].startswith(f"test/0.tar:s{record['index']:07d}.png: ") and case.reason in record["error"]


def _stock_clip_benchmark(root, cwd, site):
    """The stock ``clip_benchmark eval`` console script (dc_zoo reached through its .pth hook)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).parent / "clip_benchmark"
    env = {k: v for k, v in os.environ.items() if k != "DC_ZOO_NO_CLIP_BENCHMARK_HOOK"}
    env.update(HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore", DC_ZOO_SCORING='{"n_samples": [2], "to_keep": [1]}')
    run_with_hook = ("import runpy, site, sys; site.addsitedir(sys.argv[1]); sys.argv = sys.argv[2:];"
                     "runpy.run_path(sys.argv[0], run_name='__main__')")
    argv = [sys.executable, "-c", run_with_hook, str(site), str(script), "eval", "--dataset", "wds/corpus",
            "--dataset_root", str(root), "--batch_size", "4", "--num_workers", "0", "--quiet", "--model",
            "diffusion-classifier", "--pretrained", "sd-digits-mini", "--output", "results/{dataset}_{task}.json"]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def stock_site(tmp_path_factory):
    import shutil
    from pathlib import Path

    import dc_zoo.clip_benchmark as dc_cb

    site = tmp_path_factory.mktemp("site")
    shutil.copy(Path(dc_cb.__file__).parent / "dc_zoo_clip_benchmark.pth", site)
    return site


@pytest.mark.slow
@pytest.mark.parametrize("cases", [READABLE, *[(READABLE[0], c) for c in UNREADABLE if c.in_webdataset
                                               and c.name in ("notes.png", "bomb.png")]],
                         ids=lambda cases: "+".join(c.name for c in cases))
def test_stock_clip_benchmark_scores_readable_samples_and_names_a_corrupt_one(cases, corpus, stock_site, tmp_path):
    """(A truncated and an empty sample are in test_clip_benchmark_errors.py.)"""
    root, cases = write_corpus_webdataset(tmp_path / "wds", corpus, cases)
    (tmp_path / "results").mkdir()
    out = _stock_clip_benchmark(root, tmp_path, stock_site)
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    bad = [i for i, c in enumerate(cases) if c.reason is not None]
    if not bad:
        assert out.returncode == 0, out.stderr[-3000:]
        assert json.loads((tmp_path / "results" / "corpus_zeroshot_classification.json").read_text())["metrics"]
        return
    assert out.returncode == 1, out.stderr[-3000:]
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("clip_benchmark: error: ") and f"sample s{bad[0]:07d}" in line and "0.tar" in line, line
    assert "cannot be decoded" in line, line


def test_class_names_that_are_folders_stay_classes(corpus, tiny_pipelines, tmp_path, monkeypatch, capsys):
    """ImageFolder layouts: ``--classes cat dog cat/`` has two classes and the images of cat/."""
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "1.png").write_bytes((corpus / "good.png").read_bytes())
    monkeypatch.chdir(tmp_path)
    assert main(["classify", "--model", str(tiny_pipelines.sd_dir), "--classes", "cat", "dog", *SCHEDULE,
                 "--no-progress", "--json", "cat/"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert [r["image"] for r in results] == [str(Path("cat") / "1.png")]
    assert {t["class"] for t in results[0]["top"]} == {"cat", "dog"}
