"""The numeric checks of array inputs (``extract.values``): infinite, too large and out-of-range values masked
and counted, items left empty skipped, declared ranges checked."""

from __future__ import annotations

import numpy as np
import pytest

from omnifuse.cache import ModalitySpec
from omnifuse.extract.values import NO_FINITE_VALUE, OUTSIDE_RANGE, ValueGuard, check_ranges


def _spec(kind: str, shape: tuple[int, ...], ranges: dict | None = None, dtype: str = "float32") -> ModalitySpec:
    names = [f"f{j}" for j in range(shape[-1])]
    return ModalitySpec("m", kind, shape, dtype=dtype, feature_names=names, preprocessing={"ranges": ranges or {}})


def test_guard_masks_counts_each_cell_once_and_keeps_nan_uncounted():
    g = ValueGuard(_spec("timeseries", (2, 3), {"f0": [0, 10], "f2": [None, 1e38]}))
    out = g.check(np.array([[5, np.inf, 3e38], [11, np.nan, 1e39]]))
    assert out.skip is None
    np.testing.assert_array_equal(out.values, [[5, np.nan, np.nan], [np.nan, np.nan, np.nan]])
    # 1e39 is too large for float32 (counted once, not also as outside f2's range)
    assert dict(out.masked) == {"infinite": 1, "too large for float32": 1, OUTSIDE_RANGE: 2}
    assert dict(out.features) == {"f0": 1, "f1": 1, "f2": 2}
    assert ValueGuard(_spec("tabular", (2,), dtype="float16")).check(np.array([7e4, 1.0])).masked == {
        "too large for float16": 1
    }


def test_guard_compares_as_the_store_holds_values():
    """An FiO2 of 0.21 in float32 is 0.2099999934 < 0.21: it must stay inside a low bound of 0.21."""
    g = ValueGuard(_spec("tabular", (1,), {"f0": [0.21, 1.0]}))
    assert not g.check(np.array([np.float32(0.21)])).masked
    assert g.check(np.array([0.2])).masked == {OUTSIDE_RANGE: 1}


def test_guard_skips_items_left_empty_and_vectors_with_any_bad_value():
    g = ValueGuard(_spec("tabular", (2,)))
    assert g.check(np.array([np.nan, np.inf])).skip == NO_FINITE_VALUE
    assert g.check(np.array([np.nan, np.nan])).skip == NO_FINITE_VALUE
    v = ValueGuard(_spec("vector", (2,), {"f1": [0, 1]}))
    assert v.check(np.array([0.5, 0.5])).skip is None
    assert v.check(np.array([np.nan, 0.5])).skip == "non-finite values in a vector input"
    assert v.check(np.array([0.5, 2.0])).skip == "values outside the plausible range in a vector input"


def test_check_ranges_names_the_problem():
    check_ranges({"a": [0, None]}, ["a"], "here")
    with pytest.raises(ValueError, match="here: ranges need feature names"):
        check_ranges({"a": [0, 1]}, None, "here")
    with pytest.raises(ValueError, match=r"here: ranges name features the modality does not have: \['b'\]"):
        check_ranges({"b": [0, 1]}, ["a"], "here")
    for bad in ([1, 0], [0], ["0", 1], [True, 2]):
        with pytest.raises(ValueError, match="range of 'a' must be"):
            check_ranges({"a": bad}, ["a"], "here")
