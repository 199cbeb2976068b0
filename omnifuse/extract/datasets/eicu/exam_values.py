"""The ``exam_values`` modality: tabular ``[F]`` float32 per stay, the numbers charted in ``physicalExam``.

The structured twin of the ``exam`` text, from the same rows (entries in the window, or before it with
``pre_admission``): heart rate, systolic and diastolic pressure, respiratory rate and SpO2 as charted
current (the latest entry), lowest (the minimum) and highest (the maximum) values; FiO2, PEEP and ventilator
rate (latest); the GCS eyes, verbal and motor scores and the total (each the lowest, i.e. worst, in the
window, as APACHE scores it; a stay with components but no charted total gets the sum of its worst
components); whether a GCS was not scorable because of sedation; and whether the latest respiratory mode is
``ventilated``. A value outside its plausible range (``variables.EXAM_VITALS``, ``EXAM_GCS``) is a charting
error and is dropped (counted); a stay is present when it has at least one value.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from omnifuse.extract.datasets.base import RawModality
from omnifuse.extract.datasets.eicu import variables
from omnifuse.extract.datasets.eicu.readers import integer, num, require, scan, text
from omnifuse.extract.datasets.eicu.tabular import Column, binary, tabular_modality, to_matrix
from omnifuse.extract.datasets.eicu.text import off_filter

EXAM_COLUMNS = ["patientunitstayid", "physicalexamid", "physicalexamoffset", "physicalexampath", "physicalexamtext"]
GCS_COMPONENT = r"^Neurologic/GCS/(Eyes|Verbal|Motor) Score/(\d+)$"
GCS_TOTAL = r"^Neurologic/GCS/(\d+)$"
SRC = "physicalExam"
EXAM_VITALS_ITEMS = list(variables.EXAM_VITALS.items())
FLAGS = ("exam_gcs_unable_meds", "exam_resp_mode_ventilated")


def exam_columns() -> list[Column]:
    """The columns of ``exam_values``, in order."""
    cols = [Column(v.name, "numeric", v.unit, v.lo, v.hi, source=f"{SRC} {path}") for path, v in EXAM_VITALS_ITEMS]
    for comp, (name, lo, hi) in variables.EXAM_GCS.items():
        cols.append(Column(name, "numeric", "GCS points", lo, hi, source=f"{SRC} Neurologic/GCS/{comp} Score/<n>"))
    name, lo, hi = variables.EXAM_GCS_TOTAL
    cols.append(Column(name, "numeric", "GCS points", lo, hi, source=f"{SRC} Neurologic/GCS/<n> (or the sum)"))
    cols.append(
        binary("exam_gcs_unable_meds", "0/1 (no GCS entry: missing)", f"{SRC} {' or '.join(variables.EXAM_GCS_MEDS)}")
    )
    cols.append(binary("exam_resp_mode_ventilated", "0/1 (latest Resp Mode)", f"{SRC} .../Resp Mode/<mode>"))
    return cols


def exam_rows(path: Path, pre_admission: bool) -> pl.DataFrame:
    """physicalExam rows in the window: stay, off, ord, ``p`` (the path without ``EXAM_PREFIX``) and ``t``
    (the charted text)."""
    lf = scan(path)
    require(lf, SRC, EXAM_COLUMNS)
    return (
        lf.filter(off_filter(integer("physicalexamoffset"), pre_admission))
        .filter(text("physicalexampath").str.starts_with(variables.EXAM_PREFIX))
        .select(
            stay=integer("patientunitstayid"),
            off=integer("physicalexamoffset"),
            ord=integer("physicalexamid"),
            p=text("physicalexampath").str.strip_prefix(variables.EXAM_PREFIX),
            t=text("physicalexamtext"),
        )
        .collect()
    )


def _values(rows: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Long frame (stay, off, ord, feature, agg, value) of every charted number in range, and the count of
    numbers out of range (dropped)."""
    vital_prefix = variables.EXAM_VITAL_PREFIX[len(variables.EXAM_PREFIX) :]
    spec = pl.DataFrame(
        {
            "p": [vital_prefix + k for k, _ in EXAM_VITALS_ITEMS],
            "feature": [v.name for _, v in EXAM_VITALS_ITEMS],
            "agg": [v.agg for _, v in EXAM_VITALS_ITEMS],
            "lo": [float(v.lo) for _, v in EXAM_VITALS_ITEMS],
            "hi": [float(v.hi) for _, v in EXAM_VITALS_ITEMS],
            "pct": [v.fraction_to_percent for _, v in EXAM_VITALS_ITEMS],
        }
    )
    vit = rows.join(spec, on="p", how="inner").with_columns(value=num("t"))
    vit = vit.with_columns(
        value=pl.when(pl.col("pct") & (pl.col("value") > 0) & (pl.col("value") <= 1))
        .then(pl.col("value") * 100)
        .otherwise(pl.col("value"))
    )
    comp = rows.with_columns(
        comp=pl.col("p").str.extract(GCS_COMPONENT, 1), value=pl.col("p").str.extract(GCS_COMPONENT, 2)
    ).filter(pl.col("comp").is_not_null())
    gcs_spec = pl.DataFrame(
        {
            "comp": list(variables.EXAM_GCS),
            "feature": [v[0] for v in variables.EXAM_GCS.values()],
            "lo": [float(v[1]) for v in variables.EXAM_GCS.values()],
            "hi": [float(v[2]) for v in variables.EXAM_GCS.values()],
        }
    )
    comp = comp.join(gcs_spec, on="comp", how="inner").with_columns(
        value=pl.col("value").cast(pl.Float64), agg=pl.lit("min")
    )
    name, lo, hi = variables.EXAM_GCS_TOTAL
    total = rows.with_columns(value=pl.col("p").str.extract(GCS_TOTAL, 1).cast(pl.Float64)).filter(
        pl.col("value").is_not_null()
    )
    total = total.with_columns(feature=pl.lit(name), agg=pl.lit("min"), lo=pl.lit(float(lo)), hi=pl.lit(float(hi)))
    keep = ["stay", "off", "ord", "feature", "agg", "lo", "hi", "value"]
    allv = pl.concat([vit.select(keep), comp.select(keep), total.select(keep)]).filter(pl.col("value").is_not_null())
    ok = pl.col("value").is_between(pl.col("lo"), pl.col("hi"), closed="both")
    return allv.filter(ok).drop("lo", "hi"), int(allv.filter(~ok).height)


def _aggregate(values: pl.DataFrame) -> pl.DataFrame:
    """(stay, feature) -> the value its ``agg`` chooses: ``last`` (offset, then row id), ``min`` or ``max``."""
    by = values.sort("stay", "feature", "off", "ord").group_by("stay", "feature", maintain_order=True)
    agg = by.agg(
        pl.col("agg").first(), last=pl.col("value").last(), min=pl.col("value").min(), max=pl.col("value").max()
    )
    return agg.select(
        "stay",
        "feature",
        value=pl.when(pl.col("agg") == "last")
        .then(pl.col("last"))
        .when(pl.col("agg") == "min")
        .then(pl.col("min"))
        .otherwise(pl.col("max")),
    )


def exam_frame(rows: pl.DataFrame, columns: list[Column]) -> tuple[pl.DataFrame, int]:
    """``stay`` and one column per ``columns`` for every stay with a physicalExam entry in the window, and
    the count of charted numbers out of range."""
    values, out_of_range = _values(rows)
    agg = _aggregate(values)
    stays = rows.select("stay").unique().sort("stay")
    wide = stays
    for c in columns:
        if c.name in FLAGS:
            continue
        part = agg.filter(pl.col("feature") == c.name).select("stay", pl.col("value").alias(c.name))
        wide = wide.join(part, on="stay", how="left")
    comps = [v[0] for v in variables.EXAM_GCS.values()]
    total = variables.EXAM_GCS_TOTAL[0]
    wide = wide.with_columns(
        pl.when(pl.col(total).is_null())
        .then(pl.sum_horizontal(comps, ignore_nulls=False))
        .otherwise(pl.col(total))
        .alias(total)
    )
    gcs = (
        rows.filter(pl.col("p").str.starts_with("Neurologic/GCS/"))
        .group_by("stay")
        .agg(exam_gcs_unable_meds=pl.col("p").is_in(list(variables.EXAM_GCS_MEDS)).any().cast(pl.Float64))
    )
    mode_prefix = variables.EXAM_RESP_MODE[len(variables.EXAM_PREFIX) :]
    mode = (
        rows.filter(pl.col("p").str.starts_with(mode_prefix))
        .sort("stay", "off", "ord")
        .group_by("stay", maintain_order=True)
        .agg(mode=pl.col("p").last())
        .select("stay", exam_resp_mode_ventilated=(pl.col("mode") == mode_prefix + "ventilated").cast(pl.Float64))
    )
    wide = wide.join(gcs, on="stay", how="left").join(mode, on="stay", how="left")
    return wide.select("stay", *[c.name for c in columns]), out_of_range


def build_exam_values(
    path: Path, stay_index: pl.DataFrame, pre_admission: bool
) -> tuple[np.ndarray, np.ndarray, RawModality, dict[str, int]]:
    """float32 [N, F] (NaN = not charted), bool [N] present (at least one value), the modality description
    and counts (``rows_out_of_range``)."""
    columns = exam_columns()
    frame, out_of_range = exam_frame(exam_rows(path, pre_admission), columns)
    x = to_matrix(frame, columns, stay_index)
    present = np.isfinite(x).any(axis=1)
    raw = tabular_modality(
        "exam_values",
        columns,
        {
            "aggregation": {c.name: _agg_of(c.name) for c in columns},
            "pre_admission_entries": bool(pre_admission),
        },
    )
    return x, present, raw, {"rows_out_of_range": out_of_range}


def _agg_of(name: str) -> str:
    for _, v in EXAM_VITALS_ITEMS:
        if v.name == name:
            return v.agg
    if name in {v[0] for v in variables.EXAM_GCS.values()} or name == variables.EXAM_GCS_TOTAL[0]:
        return "min"
    return "any" if name == "exam_gcs_unable_meds" else "last"
