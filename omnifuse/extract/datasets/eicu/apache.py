"""The ``apache`` modality: tabular ``[F]`` float32 per stay.

APACHE IV day-1 physiology (``apacheApsVar``, ``aps_*``), admission comorbidities and day-1 interventions
(``apachePredVar``, ``pred_*``), then age, admission height and weight, sex and the unit type and admission
source one-hot from ``patient``. Each column's kind (binary, numeric, numeric with the log hint) is in
``preprocessing["feature_kinds"]``. -1 and empty cells, and values outside the plausibility ranges, are NaN:
the patient's height, weight and age are range-checked here, every column (``variables.APACHE_RANGES``,
0/1 flags and one-hots [0, 1]) by the pipeline, which counts what it masks. A stay is present when it has a
row in either APACHE table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from omnifuse.extract.datasets.base import RawModality
from omnifuse.extract.datasets.eicu import variables
from omnifuse.extract.datasets.eicu.readers import integer, num, require, scan

APACHE_TABLES = (
    ("apacheApsVar", "apacheapsvarid", variables.APACHE_APS, "aps_"),
    ("apachePredVar", "apachepredvarid", variables.APACHE_PRED, "pred_"),
)


def apache_part(lf: pl.LazyFrame, table: str, id_col: str, cols: dict[str, str], prefix: str) -> pl.DataFrame:
    """One APACHE table, allow-listed columns as floats with -1 and empty read as null; one row per stay."""
    require(lf, table, ["patientunitstayid", id_col, *cols])
    exprs = {f"{prefix}{c}": pl.when(num(c) == -1).then(None).otherwise(num(c)) for c in cols}
    return (
        lf.select(stay=integer("patientunitstayid"), ord=integer(id_col), **exprs)
        .sort("stay", "ord")
        .unique(subset="stay", keep="first", maintain_order=True)
        .drop("ord")
        .collect()
    )


@dataclass
class _Columns:
    """Feature names in order, their units, and which are continuous (standardised by stage two)."""

    names: list[str] = field(default_factory=list)
    units: dict[str, str] = field(default_factory=dict)
    continuous: list[str] = field(default_factory=list)
    ranges: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)


def patient_features(pat: pl.DataFrame) -> tuple[pl.DataFrame, list[str], list[str], dict[str, str]]:
    """Age, sex, admission height and weight, unit type and admission source one-hot, per stay. Returns the
    frame (``stay`` and one column per feature), the numeric names, the one-hot names and the units."""
    age_raw = pl.col("age").fill_null("").str.strip_chars()
    age = (
        pl.when(age_raw.is_in(list(variables.AGE_TOP_CODE)))
        .then(age_raw.replace_strict(variables.AGE_TOP_CODE, default=None, return_dtype=pl.Float64))
        .otherwise(age_raw.cast(pl.Float64, strict=False))
    )
    exprs: dict[str, pl.Expr] = {}
    units: dict[str, str] = {}
    for col, (name, unit, lo, hi) in variables.PATIENT_NUMERIC.items():
        x = age if col == "age" else num(col)
        exprs[name] = pl.when(x.is_between(lo, hi, closed="both")).then(x).otherwise(None)
        units[name] = unit
    sex = pl.col("gender").fill_null("").str.strip_chars()
    exprs["sex_male"] = pl.when(sex == "Male").then(1.0).when(sex == "Female").then(0.0).otherwise(None)
    units["sex_male"] = "0/1 (other or unknown: missing)"
    onehot: list[str] = []
    for col, values, prefix in (
        ("unittype", variables.UNIT_TYPES, "unit_type="),
        ("unitadmitsource", variables.UNIT_ADMIT_SOURCES, "unit_admit_source="),
    ):
        s = pl.col(col).fill_null("").str.strip_chars()
        for val in values:
            exprs[f"{prefix}{val}"] = (s == val).cast(pl.Float64)
            units[f"{prefix}{val}"] = "one-hot"
            onehot.append(f"{prefix}{val}")
    numeric = [variables.PATIENT_NUMERIC[c][0] for c in variables.PATIENT_NUMERIC]
    return pat.select("stay", **exprs), numeric, onehot, units


def _apache_tables(tables: dict[str, Path], cols: _Columns) -> list[pl.DataFrame]:
    """The APACHE tables present, one row per stay each; their columns are added to ``cols``."""
    parts: list[pl.DataFrame] = []
    for table, id_col, spec, prefix in APACHE_TABLES:
        if table not in tables:
            continue
        parts.append(apache_part(scan(tables[table]), table, id_col, spec, prefix))
        for c, unit in spec.items():
            cols.names.append(prefix + c)
            cols.units[prefix + c] = unit
            if not unit.startswith("0/1"):
                cols.continuous.append(prefix + c)
            cols.ranges[prefix + c] = (0, 1) if unit.startswith("0/1") else variables.APACHE_RANGES[c]
    return parts


def _kind(name: str, unit: str, continuous: bool) -> str:
    """The ``FeatureKind`` of an apache column: 0/1 flags and one-hots ``binary``; measurements
    ``numeric``, with the log hint for the right-skewed ones (``variables.APACHE_LOG``)."""
    if not continuous:
        return "binary"
    return "numeric:log" if name.removeprefix("aps_") in variables.APACHE_LOG else "numeric"


def build_apache(
    tables: dict[str, Path], pat: pl.DataFrame, stay_index: pl.DataFrame
) -> tuple[np.ndarray, np.ndarray, RawModality]:
    """float32 [N, F] (NaN = not recorded), bool [N] present, and the modality description. Needs
    ``apacheApsVar`` or ``apachePredVar`` in ``tables``; ``pat`` is the patient frame of ``cohort``."""
    cols = _Columns()
    parts = _apache_tables(tables, cols)
    wide = pl.concat([p.select("stay") for p in parts]).unique()
    for p in parts:
        wide = wide.join(p, on="stay", how="left")
    pfeat, numeric, onehot, punits = patient_features(pat)
    wide = wide.join(pfeat, on="stay", how="left").join(stay_index, on="stay", how="inner")
    names = cols.names + numeric + ["sex_male"] + onehot
    cols.units.update(punits)
    cols.ranges.update({name: (lo, hi) for name, _, lo, hi in variables.PATIENT_NUMERIC.values()})
    cols.ranges.update({name: (0, 1) for name in ["sex_male", *onehot]})
    continuous = cols.continuous + numeric
    kinds = [_kind(name, cols.units[name], name in continuous) for name in names]
    n = stay_index.height
    x = np.full((n, len(names)), np.nan, np.float32)
    rows = wide["row"].to_numpy()
    with np.errstate(over="ignore"):  # a value beyond float32 becomes inf: the pipeline masks and counts it
        x[rows] = wide.select(names).to_numpy().astype(np.float32)
    present = np.zeros(n, bool)
    present[rows] = True
    raw = RawModality(
        name="apache",
        input="array",
        kind="tabular",
        shape=(len(names),),
        dtype="float32",
        feature_names=names,
        preprocessing={
            "continuous": [names.index(c) for c in continuous],
            "feature_kinds": kinds,
            "units": cols.units,
            "missing": "NaN (-1, empty or out of range in the source)",
            "age_top_code": "'> 89' read as 90",
        },
        ranges={name: cols.ranges[name] for name in names},
    )
    return x, present, raw
