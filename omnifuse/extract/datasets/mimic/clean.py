"""Per-variable cleaning and unit conversion of raw MIMIC events, in two modes (docs/mimic.md, "Cleaning").

``benchmark`` (default) reproduces mimic3-benchmarks' ``mimic3benchmark/preprocessing.py`` (``clean_events``
and its ``clean_*`` functions) with pandas 1.x semantics, its quirks included; ``clean`` is omnifuse's own
cleaning (the benchmark's value-reading rules where they are sound, plausibility ranges, the Metavision
capillary-refill wording, ``valuenum`` when ``value`` is empty).

Input rows carry ``itemid, value`` (text), ``valuenum``, ``valueuom``; output rows carry ``var`` (index into
VARIABLES), ``val``: the value in the benchmark's unit for continuous channels, the category index (into
``CATEGORIES[var]``) for categorical ones, and ``key``: the text the benchmark compares when one variable has
several values at one chart time (``mimic3benchmark/subject.py`` ``convert_events_to_timeseries``), null where
it compares numbers. Rows whose value cannot be read are dropped and counted.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import polars as pl

from omnifuse.extract.datasets.mimic.variables import (
    BENCHMARK_CLEANED,
    BENCHMARK_ITEMS,
    CATEGORIES,
    CRR_TEXT,
    CRR_TEXT_BENCHMARK,
    GCS_NUMERIC,
    ITEMS,
    PANDAS1_NA_VALUES,
    RANGES,
    VARIABLES,
)

EhrMode = Literal["benchmark", "clean"]
EHR_MODES: tuple[str, ...] = ("benchmark", "clean")

_NUMBER = r"^\s*(\d+(\.\d*)?|\.\d+)\s*$"
_LAB = r"^(\d+(\.\d*)?|\.\d+)$"
"""The benchmark's ``clean_lab`` / ``clean_o2sat`` pattern, on the unstripped text (``re.match`` with ``$``)."""
_PYFLOAT = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
"""Finite numbers as Python's ``float()`` reads them after stripping white space (pandas ``astype(float)`` and
the discretiser's ``float(value)``); digit-group underscores and inf/nan texts are not accepted."""
_BP = r"^\s*(\d+)/(\d+)\s*$"
_BP_BENCHMARK = r"^(\d+)/(\d+)$"
LB_TO_KG = 0.453592


@lru_cache(maxsize=2)
def item_table(mode: EhrMode = "benchmark") -> pl.DataFrame:
    """itemid -> var (int8), label (str): the benchmark's 114 items, plus MIMIC-IV capillary refill in ``clean``."""
    ids = sorted(BENCHMARK_ITEMS if mode == "benchmark" else ITEMS)
    return pl.DataFrame(
        {
            "itemid": ids,
            "var": [VARIABLES.index(ITEMS[i][0]) for i in ids],
            "label": [ITEMS[i][1] for i in ids],
        },
        schema={"itemid": pl.Int64, "var": pl.Int8, "label": pl.Utf8},
    )


@lru_cache(maxsize=1)
def _category_table() -> pl.DataFrame:
    """(var, text) -> category index, for the benchmark's own category strings."""
    rows = [(VARIABLES.index(v), t, i) for v, cats in CATEGORIES.items() for i, t in enumerate(cats)]
    return pl.DataFrame(rows, schema={"var": pl.Int8, "text": pl.Utf8, "cat": pl.Int32}, orient="row")


@lru_cache(maxsize=1)
def _gcs_numeric_table() -> pl.DataFrame:
    rows = []
    for itemid, m in GCS_NUMERIC.items():
        v = ITEMS[itemid][0]
        for k, text in m.items():
            rows.append((itemid, k, CATEGORIES[v].index(text)))
    return pl.DataFrame(rows, schema={"itemid": pl.Int64, "num": pl.Int64, "cat_num": pl.Int32}, orient="row")


def _vid(name: str) -> int:
    return VARIABLES.index(name)


def _crr_table(texts: dict[str, str]) -> pl.DataFrame:
    cats = CATEGORIES["Capillary refill rate"]
    return pl.DataFrame(
        {"_text": list(texts), "_crr": [cats.index(c) for c in texts.values()]},
        schema={"_text": pl.Utf8, "_crr": pl.Int32},
    )


def _weight_height(n: pl.Expr, uom: pl.Expr, label: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """Benchmark ``clean_weight`` / ``clean_height``: unit or item label with "oz" (/16 then lb), "lb" (x 0.453592),
    "in" (x 2.54, rounded half to even as ``np.round``)."""
    is_oz = uom.str.contains("oz", literal=True) | label.str.contains("oz", literal=True)
    is_lb = is_oz | uom.str.contains("lb", literal=True) | label.str.contains("lb", literal=True)
    is_in = uom.str.contains("in", literal=True) | label.str.contains("in", literal=True)
    weight = pl.when(is_oz).then(n / 16.0 * LB_TO_KG).when(is_lb).then(n * LB_TO_KG).otherwise(n)
    height = pl.when(is_in).then((n * 2.54).round(0)).otherwise(n)
    return weight, height


def _continuous_benchmark(units: bool) -> pl.Expr:
    """The value of each continuous channel as the benchmark computes it (null where it keeps none)."""
    raw = pl.col("value")
    present = raw.is_not_null() & ~raw.is_in(list(PANDAS1_NA_VALUES))
    stripped = raw.str.strip_chars()
    pyfloat = pl.when(present & stripped.str.contains(_PYFLOAT)).then(stripped.cast(pl.Float64, strict=False))
    labnum = pl.when(present & raw.str.contains(_LAB)).then(raw.cast(pl.Float64, strict=False))
    has_slash = present & raw.str.contains("/", literal=True)
    # MedFuse's MIMIC-IV port writes valuenum into the unit column, so no unit test ever fires there
    uom = pl.col("_uom") if units else pl.lit("")
    label = pl.col("_label")
    weight, height = _weight_height(pyfloat, uom, label)
    var = pl.col("var")
    return (
        pl.when(var == _vid("Systolic blood pressure"))
        .then(pl.when(has_slash).then(raw.str.extract(_BP_BENCHMARK, 1).cast(pl.Float64)).otherwise(pyfloat))
        .when(var == _vid("Diastolic blood pressure"))
        .then(pl.when(has_slash).then(raw.str.extract(_BP_BENCHMARK, 2).cast(pl.Float64)).otherwise(pyfloat))
        .when(var == _vid("Fraction inspired oxygen"))
        # clean_fio2 as published: every value without "torr" in its unit is divided by 100
        .then(pl.when(uom.str.contains("torr", literal=True)).then(pyfloat).otherwise(pyfloat / 100.0))
        .when(var == _vid("Oxygen saturation"))
        .then(pl.when(labnum <= 1.0).then(labnum * 100.0).otherwise(labnum))
        .when(var.is_in([_vid("Glucose"), _vid("pH")]))
        .then(labnum)
        .when(var == _vid("Temperature"))
        .then(pl.when(pyfloat >= 79.0).then((pyfloat - 32.0) * 5.0 / 9.0).otherwise(pyfloat))
        .when(var == _vid("Weight"))
        .then(weight)
        .when(var == _vid("Height"))
        .then(height)
        .otherwise(pyfloat)  # heart rate, respiratory rate, mean blood pressure: float() in the discretiser
    )


def _continuous_clean() -> pl.Expr:
    """omnifuse's reading: ``value`` when it is a number, ``valuenum`` when ``value`` is empty."""
    text = pl.col("_text")
    has_text = text.is_not_null() & (text != "")
    n = (
        pl.when(has_text & text.str.contains(_NUMBER))
        .then(text.cast(pl.Float64, strict=False))
        .when(~has_text)
        .then(pl.col("valuenum"))
        .otherwise(None)
    )
    bp_sys = text.str.extract(_BP, 1).cast(pl.Float64)
    bp_dia = text.str.extract(_BP, 2).cast(pl.Float64)
    weight, height = _weight_height(n, pl.col("_uom"), pl.col("_label"))
    var = pl.col("var")
    return (
        pl.when(var == _vid("Systolic blood pressure"))
        .then(pl.coalesce(bp_sys, n))
        .when(var == _vid("Diastolic blood pressure"))
        .then(pl.coalesce(bp_dia, n))
        .when(var == _vid("Fraction inspired oxygen"))
        .then(pl.when(~pl.col("_uom").str.contains("torr", literal=True) & (n > 1.0)).then(n / 100.0).otherwise(n))
        .when(var == _vid("Oxygen saturation"))
        .then(pl.when(n <= 1.0).then(n * 100.0).otherwise(n))
        .when(var == _vid("Temperature"))
        .then(pl.when(n >= 79.0).then((n - 32.0) * 5.0 / 9.0).otherwise(n))
        .when(var == _vid("Weight"))
        .then(weight)
        .when(var == _vid("Height"))
        .then(height)
        .otherwise(n)
    )


def _range_exprs() -> tuple[pl.Expr, pl.Expr, pl.Expr, pl.Expr]:
    none = pl.lit(None, dtype=pl.Float64)
    lo_o, lo_v, hi_v, hi_o = none, none, none, none
    for name, (a, b, c, d) in RANGES.items():
        if name in CATEGORIES:
            continue
        cond = pl.col("var") == _vid(name)
        lo_o = pl.when(cond).then(pl.lit(float(a))).otherwise(lo_o)
        lo_v = pl.when(cond).then(pl.lit(float(b))).otherwise(lo_v)
        hi_v = pl.when(cond).then(pl.lit(float(c))).otherwise(hi_v)
        hi_o = pl.when(cond).then(pl.lit(float(d))).otherwise(hi_o)
    return lo_o, lo_v, hi_v, hi_o


def clean_events(
    events: pl.DataFrame, mode: EhrMode = "benchmark", *, units: bool = True
) -> tuple[pl.DataFrame, dict[str, dict[str, int]]]:
    """Map item ids to variables, read and convert values, map categories; in ``clean`` mode apply the ranges.

    ``events``: any columns plus ``itemid`` (int), ``value`` (str|null, as in the file), ``valuenum``
    (float|null), ``valueuom`` (str|null). ``units``: whether the unit column is the real unit (False for
    MIMIC-IV in ``benchmark`` mode, where MedFuse's port stores ``valuenum`` in its place). Returns (the same
    rows with ``var`` int8, ``val`` float64 and ``key`` str added and the raw value columns removed, dropped
    rows excluded; counts per variable: ``seen``, ``unreadable``, ``out_of_range``).
    """
    if mode not in EHR_MODES:
        raise ValueError(f"ehr mode must be one of {EHR_MODES}, got {mode!r}")
    bench = mode == "benchmark"
    ev = events.join(item_table(mode), on="itemid", how="inner")
    raw = pl.col("value")
    # the benchmark matches texts exactly as written; clean mode strips white space first
    text = raw if bench else raw.str.strip_chars()
    ev = ev.with_columns(
        text.alias("_text"),
        pl.col("valueuom").fill_null("").str.to_lowercase().alias("_uom"),
        pl.col("label").str.to_lowercase().alias("_label"),
    )
    ev = ev.with_columns((_continuous_benchmark(units) if bench else _continuous_clean()).alias("_cont"))
    # categorical channels: capillary refill by its texts, GCS by the benchmark's value lists, GCS numbers by item
    ev = ev.join(_crr_table(CRR_TEXT_BENCHMARK if bench else CRR_TEXT), on="_text", how="left")
    ev = ev.join(_category_table().rename({"text": "_text"}), on=["var", "_text"], how="left")
    t = pl.col("_text")
    gcs_num = (
        pl.when(t.str.contains(_NUMBER))
        .then(t.str.strip_chars().cast(pl.Float64, strict=False))
        .when((t.is_null() | (t == "")) & (not bench))
        .then(pl.col("valuenum"))
    )
    ev = ev.with_columns(
        pl.when(gcs_num.is_not_null() & (gcs_num == gcs_num.round(0))).then(gcs_num.cast(pl.Int64)).alias("_numi")
    )
    ev = ev.join(_gcs_numeric_table().rename({"num": "_numi"}), on=["itemid", "_numi"], how="left")
    crr_id = _vid("Capillary refill rate")
    categorical_ids = [_vid(v) for v in CATEGORIES]
    var = pl.col("var")
    is_cat = var.is_in(categorical_ids)
    ev = ev.with_columns(
        pl.when(var == crr_id)
        .then(pl.col("_crr"))
        .when(is_cat)
        .then(pl.coalesce(pl.col("cat"), pl.col("cat_num")))
        .otherwise(None)
        .alias("_cat")
    )
    ev = ev.with_columns(pl.when(is_cat).then(pl.col("_cat").cast(pl.Float64)).otherwise(pl.col("_cont")).alias("val"))
    # the tie-break text: the raw value of the variables the benchmark leaves as text, the category's text
    uncleaned_continuous = [_vid(v) for v in VARIABLES if v not in BENCHMARK_CLEANED and v not in CATEGORIES]
    cat_text = _category_text()
    ev = ev.join(cat_text, on=["var", "_cat"], how="left")
    raw_key = var.is_in(uncleaned_continuous) & pl.lit(bench)
    key = pl.when(is_cat & (var != crr_id)).then(pl.col("_cat_text")).when(raw_key).then(raw).otherwise(None)
    ev = ev.with_columns(key.cast(pl.Utf8).alias("key"))
    ev = ev.with_columns((pl.col("val").is_not_null() & pl.col("val").is_not_nan()).alias("_readable"))
    if bench:
        ev = ev.with_columns(pl.lit(False).alias("_outlier"))
    else:
        lo_o, lo_v, hi_v, hi_o = _range_exprs()
        v = pl.col("val")
        outlier = ~is_cat & ((v < lo_o) | (v > hi_o))
        ev = ev.with_columns((pl.col("_readable") & outlier).fill_null(False).alias("_outlier"))
        ev = ev.with_columns(pl.when(is_cat).then(v).otherwise(v.clip(lo_v, hi_v)).alias("val"))
    counts_df = ev.group_by("var").agg(
        pl.len().alias("seen"),
        (~pl.col("_readable")).sum().alias("unreadable"),
        pl.col("_outlier").sum().alias("out_of_range"),
    )
    counts = {
        VARIABLES[r["var"]]: {
            "seen": int(r["seen"]),
            "unreadable": int(r["unreadable"]),
            "out_of_range": int(r["out_of_range"]),
        }
        for r in counts_df.iter_rows(named=True)
    }
    keep = [c for c in events.columns if c not in ("itemid", "value", "valuenum", "valueuom")]
    out = ev.filter(pl.col("_readable") & ~pl.col("_outlier")).select(*keep, "var", "val", "key")
    return out, counts


@lru_cache(maxsize=1)
def _category_text() -> pl.DataFrame:
    """(var, category index) -> its text."""
    rows = [(VARIABLES.index(v), i, t) for v, cats in CATEGORIES.items() for i, t in enumerate(cats)]
    return pl.DataFrame(rows, schema={"var": pl.Int8, "_cat": pl.Int32, "_cat_text": pl.Utf8}, orient="row")


def merge_counts(total: dict[str, dict[str, int]], new: dict[str, dict[str, int]]) -> None:
    for k, d in new.items():
        t = total.setdefault(k, {"seen": 0, "unreadable": 0, "out_of_range": 0})
        for kk, vv in d.items():
            t[kk] += vv
