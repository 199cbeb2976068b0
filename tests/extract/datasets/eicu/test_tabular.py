"""eicu.tabular and the cache's feature kinds: FeatureKind strings, codes of categories, the checks of
ModalitySpec, a spec round trip through JSON, and old specs without kinds reading as numeric."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from omnifuse.cache.schema import CacheError, CacheSpec, FeatureKind, ModalitySpec, feature_kinds_of
from omnifuse.extract.datasets.eicu.tabular import Column, binary, categorical, code_of, tabular_modality, to_matrix


def test_feature_kind_strings():
    assert FeatureKind.parse("numeric") == FeatureKind("numeric")
    assert FeatureKind.parse("numeric:log") == FeatureKind("numeric", log=True)
    assert FeatureKind.parse("binary") == FeatureKind("binary")
    assert FeatureKind.parse("categorical:7") == FeatureKind("categorical", n_categories=7)
    for s in ("numeric", "numeric:log", "binary", "categorical:7"):
        assert str(FeatureKind.parse(s)) == s
    for bad in ("ordinal", "binary:log", "categorical", "categorical:x", "categorical:0", "numeric:sqrt"):
        with pytest.raises(CacheError):
            FeatureKind.parse(bad)


def test_code_of_and_to_matrix():
    df = pl.DataFrame({"stay": [3, 1, 2, 9], "v": [" b ", "a", "zz", None]})
    out = df.select("stay", code=code_of(pl.col("v"), ("a", "b")))
    assert out["code"].to_list() == [1.0, 0.0, None, None]
    index = pl.DataFrame({"stay": [1, 2, 3], "row": [0, 1, 2]})
    x = to_matrix(out, [categorical("code", ("a", "b"), "t")], index)  # stay 9 is not in the cohort
    assert x.dtype == np.float32 and x[:, 0].tolist()[:1] == [0.0] and math.isnan(x[1, 0]) and x[2, 0] == 1.0


def _raw():
    return tabular_modality(
        "t",
        [
            Column("los", "numeric:log", "hours", 0, None, source="s"),
            binary("flag", "0/1", "s"),
            categorical("colour", ("red", "green", "blue"), "s"),
        ],
        {"note": "x"},
    )


def test_tabular_modality_records_kinds_categories_ranges():
    raw = _raw()
    pre = raw.preprocessing
    assert pre["feature_kinds"] == ["numeric:log", "binary", "categorical:3"]
    assert pre["categories"] == {"colour": ["red", "green", "blue"]} and pre["continuous"] == [0]
    assert raw.ranges == {"los": (0, None), "flag": (0, 1), "colour": (0, 2)} and pre["note"] == "x"


def test_modality_spec_kinds_round_trip_and_old_specs_read_as_numeric():
    raw = _raw()
    spec = ModalitySpec(
        "t", "tabular", raw.shape, "float32", preprocessing=raw.preprocessing, feature_names=raw.feature_names
    )
    assert spec.feature_kinds == ["numeric:log", "binary", "categorical:3"]
    assert spec.categories == {"colour": ["red", "green", "blue"]}
    back = CacheSpec.from_json(CacheSpec("d", "1", [spec]).to_json()).modalities[0]
    assert back.feature_kinds == spec.feature_kinds and back.categories == spec.categories
    # a spec written before kinds existed: every column numeric, no categories
    old = CacheSpec.from_json(
        {
            "dataset": "d",
            "dataset_version": "1",
            "modalities": [
                {
                    "name": "apache",
                    "kind": "tabular",
                    "shape": [4],
                    "dtype": "float32",
                    "preprocessing": {"continuous": [0]},
                    "feature_names": list("abcd"),
                }
            ],
        }
    ).modalities[0]
    assert old.feature_kinds == ["numeric"] * 4 and old.categories == {}
    assert feature_kinds_of({}, 2) == [FeatureKind("numeric")] * 2


@pytest.mark.parametrize(
    ("pre", "message"),
    [
        ({"feature_kinds": ["numeric", "binary"]}, "2 feature kinds for 3 features"),
        ({"feature_kinds": ["numeric", "binary", "ordinal"]}, "is not numeric"),
        ({"feature_kinds": ["numeric", "binary", "categorical:3"]}, "has none category names"),
        ({"feature_kinds": ["numeric", "binary", "categorical:3"], "categories": {"c": ["x"]}}, "has 1 category"),
        ({"feature_kinds": ["numeric"] * 3, "categories": {"a": ["x"]}}, "not categorical"),
        ({"categories": {"a": ["x"]}}, "without feature_kinds"),
    ],
)
def test_modality_spec_refuses_inconsistent_kinds(pre, message):
    with pytest.raises(CacheError, match=message):
        ModalitySpec("t", "tabular", (3,), "float32", preprocessing=pre, feature_names=["a", "b", "c"])
