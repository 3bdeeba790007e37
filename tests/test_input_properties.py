"""Property-based checks (hypothesis): whatever a caller passes, ``classify`` and
``ScoringConfig`` either work on exactly what was given or raise a documented error; an image
is never clamped into range behind the caller's back."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dc_zoo
from dc_zoo.image_io import ImageInputError
from tiny_models import label_shift_classifier

DOCUMENTED = (ImageInputError, TypeError, ValueError)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
DTYPES = ["uint8", "uint16", "int32", "int64", "float16", "float32", "float64", "bool"]
DEFAULT_RANGES = {"uint8": (0, 255), "uint16": (0, 65535), "float16": (0, 1), "float32": (0, 1), "float64": (0, 1)}


CLF = label_shift_classifier(image_batch_size=4)


@st.composite
def images(draw):
    """Arrays or tensors of any dtype, layout and scale, sometimes with NaN/inf."""
    dtype = draw(st.sampled_from(DTYPES))
    rank = draw(st.sampled_from([2, 3, 3, 3, 4]))
    shape = [draw(st.integers(1, 5)) if i in (0, rank - 1) else draw(st.integers(4, 9)) for i in range(rank)]
    scale = draw(st.sampled_from([1.0, 2.0, 255.0, 65535.0, 1e6]))
    offset = draw(st.sampled_from([0.0, -0.5, -1.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    values = (rng.random(shape) + offset) * scale
    if dtype == "bool":
        array = values > 0
    elif dtype.startswith(("uint", "int")):
        info = np.iinfo(dtype)
        array = np.clip(np.round(values), info.min, info.max).astype(dtype)
    else:
        array = values.astype(dtype)
        if draw(st.booleans()) and array.size:
            array.flat[0] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    as_tensor = draw(st.booleans())
    return torch.from_numpy(np.ascontiguousarray(array)) if as_tensor else array


value_ranges = st.one_of(st.none(), st.sampled_from([(0, 1), (-1, 1), (0, 255), (0, 65535), (5, 2)]))


@SETTINGS
@given(image=images(), value_range=value_ranges)
def test_classify_works_on_what_was_given_or_raises_a_documented_error(image, value_range):
    try:
        out = CLF.classify(image, [0, 1], value_range=value_range, prefetch=0)
    except DOCUMENTED as err:
        assert str(err), "every error says what is wrong"
        return
    array = image.numpy() if isinstance(image, torch.Tensor) else image
    dtype = str(array.dtype)
    low, high = value_range if value_range is not None else DEFAULT_RANGES[dtype]  # other dtypes must have raised
    values = array.astype(np.float64)
    assert np.isfinite(values).all(), "non-finite pixels were classified"
    slack = (high - low) / 510
    assert values.min() >= low - slack and values.max() <= high + slack, "out-of-range pixels were clamped"
    assert out.predictions.shape[0] == (array.shape[0] if array.ndim == 4 else 1)


@SETTINGS
@given(classes=st.lists(st.one_of(st.text(max_size=6), st.integers(-3, 3), st.none()), max_size=5))
def test_class_lists_give_candidates_or_a_documented_error(classes):
    text_clf = dc_zoo.DiffusionClassifier.__new__(dc_zoo.DiffusionClassifier)
    text_clf.backend, text_clf.templates = type("TextBackend", (), {"conditioning": "text"})(), ("a {}.",)
    try:
        candidates = text_clf.candidates(classes)
    except DOCUMENTED:
        return
    assert len(candidates.class_names) == len(classes) and all(n.strip() for n in candidates.class_names)
    assert len(set(candidates.class_names)) == len(classes)


stage_values = st.one_of(st.integers(-2, 600), st.lists(st.integers(-2, 600), max_size=4), st.text(max_size=3),
                         st.floats(allow_nan=True), st.booleans(), st.lists(st.floats(0, 10), max_size=3), st.none())


@SETTINGS
@given(n_samples=stage_values, to_keep=stage_values,
       loss=st.one_of(st.sampled_from(["l1", "l2", "huber", "l3", ""]), st.integers()),
       n_trials=st.one_of(st.integers(-1, 3), st.floats(), st.text(max_size=2)),
       seed=st.one_of(st.integers(), st.floats(), st.none()),
       batch_size=st.one_of(st.integers(-1, 64), st.sampled_from(["auto", "32", "x", ""]), st.floats()))
def test_scoring_config_is_valid_or_refused_with_value_error(n_samples, to_keep, loss, n_trials, seed, batch_size):
    try:
        config = dc_zoo.ScoringConfig(n_samples=n_samples, to_keep=to_keep, loss=loss, n_trials=n_trials, seed=seed,
                                      batch_size=batch_size)
    except ValueError as err:
        assert str(err)
        return
    assert len(config.n_samples) == len(config.to_keep) and config.to_keep[-1] == 1
    assert all(isinstance(v, int) and v >= 1 for v in config.n_samples + config.to_keep)
    assert config.batch_size == "auto" or (isinstance(config.batch_size, int) and config.batch_size >= 1)


@pytest.mark.parametrize("value_range", [None, (-1, 1)])
def test_an_in_range_image_is_classified_unchanged_by_the_check(value_range):
    image = torch.rand(2, 3, 8, 8) if value_range is None else torch.rand(2, 3, 8, 8) * 2 - 1
    out = CLF.classify(image, [0, 1], value_range=value_range)
    assert out.predictions.shape == (2,)
