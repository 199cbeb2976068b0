"""Per-variable cleaning and unit conversion of raw MIMIC events, as mimic3-benchmarks does it (docs/mimic.md).

Input rows carry ``itemid, value`` (text), ``valuenum``, ``valueuom``; output rows carry ``var`` (index into
VARIABLES) and ``val``: the value in the benchmark's unit for continuous channels, the category index (into
``CATEGORIES[var]``) for categorical ones. Rows whose value cannot be read are dropped and counted.
"""

from __future__ import annotations

from functools import lru_cache

import polars as pl

from omnifuse.extract.datasets.mimic.variables import (
    CATEGORIES,
    CRR_TEXT,
    GCS_NUMERIC,
    ITEMS,
    RANGES,
    VARIABLES,
)

_NUMBER = r"^\s*(\d+(\.\d*)?|\.\d+)\s*$"
_BP = r"^\s*(\d+)/(\d+)\s*$"
LB_TO_KG = 0.453592


@lru_cache(maxsize=1)
def item_table() -> pl.DataFrame:
    """itemid -> var (int8), label (str)."""
    ids = sorted(ITEMS)
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


def clean_events(events: pl.DataFrame, outlier_ranges: bool = True) -> tuple[pl.DataFrame, dict[str, dict[str, int]]]:
    """Map item ids to variables, convert units, map categories, apply ranges.

    ``events``: any columns plus ``itemid`` (int), ``value`` (str|null), ``valuenum`` (float|null),
    ``valueuom`` (str|null). Returns (the same rows with ``var`` int8 and ``val`` float64 added and the
    raw value columns removed, dropped rows excluded; counts per variable: ``seen``, ``unreadable``,
    ``out_of_range``).
    """
    ev = events.join(item_table(), on="itemid", how="inner")
    text = pl.col("value").str.strip_chars()
    has_text = text.is_not_null() & (text != "")
    # the benchmark reads VALUE; a number there wins, an empty VALUE falls back to VALUENUM (MIMIC-IV demo)
    num = (
        pl.when(has_text & text.str.contains(_NUMBER))
        .then(text.cast(pl.Float64, strict=False))
        .when(~has_text)
        .then(pl.col("valuenum"))
        .otherwise(None)
    )
    uom = pl.col("valueuom").fill_null("").str.to_lowercase()
    label = pl.col("label").str.to_lowercase()
    var = pl.col("var")
    ev = ev.with_columns(num.alias("_num"), text.alias("_text"), uom.alias("_uom"), label.alias("_label"))
    n = pl.col("_num")
    bp_sys = pl.col("_text").str.extract(_BP, 1).cast(pl.Float64)
    bp_dia = pl.col("_text").str.extract(_BP, 2).cast(pl.Float64)
    is_oz = pl.col("_uom").str.contains("oz") | pl.col("_label").str.contains("oz")
    is_lb = is_oz | pl.col("_uom").str.contains("lb") | pl.col("_label").str.contains("lb")
    is_in = pl.col("_uom").str.contains("in") | pl.col("_label").str.contains("in")
    cont = (
        pl.when(var == _vid("Systolic blood pressure"))
        .then(pl.coalesce(bp_sys, n))
        .when(var == _vid("Diastolic blood pressure"))
        .then(pl.coalesce(bp_dia, n))
        .when(var == _vid("Fraction inspired oxygen"))
        .then(pl.when(~pl.col("_uom").str.contains("torr") & (n > 1.0)).then(n / 100.0).otherwise(n))
        .when(var == _vid("Oxygen saturation"))
        .then(pl.when(n <= 1.0).then(n * 100.0).otherwise(n))
        .when(var == _vid("Temperature"))
        .then(pl.when(n >= 79.0).then((n - 32.0) * 5.0 / 9.0).otherwise(n))
        .when(var == _vid("Weight"))
        .then(pl.when(is_oz).then(n / 16.0 * LB_TO_KG).when(is_lb).then(n * LB_TO_KG).otherwise(n))
        .when(var == _vid("Height"))
        .then(pl.when(is_in).then((n * 2.54).round(0)).otherwise(n))
        .otherwise(n)
    )
    ev = ev.with_columns(cont.alias("_cont"))
    # categorical channels
    crr = pl.DataFrame(
        {"_text": list(CRR_TEXT), "_crr": [CATEGORIES["Capillary refill rate"].index(c) for c in CRR_TEXT.values()]},
        schema={"_text": pl.Utf8, "_crr": pl.Int32},
    )
    ev = ev.join(crr, on="_text", how="left")
    ev = ev.join(_category_table().rename({"text": "_text"}), on=["var", "_text"], how="left")
    ev = ev.with_columns(
        pl.when(n.is_not_null() & (n == n.round(0))).then(n.cast(pl.Int64)).otherwise(None).alias("_numi")
    )
    ev = ev.join(_gcs_numeric_table().rename({"num": "_numi"}), on=["itemid", "_numi"], how="left")
    crr_id = _vid("Capillary refill rate")
    categorical_ids = [_vid(v) for v in CATEGORIES]
    ev = ev.with_columns(
        pl.when(var == crr_id)
        .then(pl.col("_crr"))
        .when(var.is_in(categorical_ids))
        .then(pl.coalesce(pl.col("cat"), pl.col("cat_num")))
        .otherwise(None)
        .alias("_cat")
    )
    is_cat = var.is_in(categorical_ids)
    ev = ev.with_columns(pl.when(is_cat).then(pl.col("_cat").cast(pl.Float64)).otherwise(pl.col("_cont")).alias("val"))
    # ranges, continuous channels only
    lo_o = pl.lit(None, dtype=pl.Float64)
    expr_lo_o, expr_lo_v, expr_hi_v, expr_hi_o = lo_o, lo_o, lo_o, lo_o
    for name, (a, b, c, d) in RANGES.items():
        if name in CATEGORIES:
            continue
        cond = var == _vid(name)
        expr_lo_o = pl.when(cond).then(pl.lit(float(a))).otherwise(expr_lo_o)
        expr_lo_v = pl.when(cond).then(pl.lit(float(b))).otherwise(expr_lo_v)
        expr_hi_v = pl.when(cond).then(pl.lit(float(c))).otherwise(expr_hi_v)
        expr_hi_o = pl.when(cond).then(pl.lit(float(d))).otherwise(expr_hi_o)
    readable = pl.col("val").is_not_null() & pl.col("val").is_not_nan()
    ev = ev.with_columns(readable.alias("_readable"))
    if outlier_ranges:
        v = pl.col("val")
        outlier = ~is_cat & ((v < expr_lo_o) | (v > expr_hi_o))
        ev = ev.with_columns((pl.col("_readable") & outlier).fill_null(False).alias("_outlier"))
        ev = ev.with_columns(pl.when(is_cat).then(v).otherwise(v.clip(expr_lo_v, expr_hi_v)).alias("val"))
    else:
        ev = ev.with_columns(pl.lit(False).alias("_outlier"))
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
    out = ev.filter(pl.col("_readable") & ~pl.col("_outlier")).select(*keep, "var", "val")
    return out, counts


def merge_counts(total: dict[str, dict[str, int]], new: dict[str, dict[str, int]]) -> None:
    for k, d in new.items():
        t = total.setdefault(k, {"seen": 0, "unreadable": 0, "out_of_range": 0})
        for kk, vv in d.items():
            t[kk] += vv
