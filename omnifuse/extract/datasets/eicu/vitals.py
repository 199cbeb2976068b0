"""The ``vitals`` modality: hourly bins ``[24, F]`` float32 of every allow-listed time-series variable.

Sources, in this order (the demo's first, so that on the full database the demo's features stay a prefix
of the feature list): vitalAperiodic, respiratoryCharting, intakeOutput, vitalPeriodic, nurseCharting, lab.
Each source becomes long rows ``(stay, off, ord, feat, value)`` inside the window; values outside a
variable's plausibility range are dropped (never clipped); several values in one bin combine by the
variable's ``agg`` (``last`` by offset then row id, or ``sum``). NaN means "not observed in the hour". The
hourly values are checked again by the pipeline (``RawModality.ranges``): a level against its range, a
summed volume against 0 when its entries cannot be negative (an hour's sum may exceed one entry's range).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from omnifuse.extract.datasets.base import RawModality
from omnifuse.extract.datasets.eicu import variables
from omnifuse.extract.datasets.eicu.readers import in_window, integer, not_after_window, num, require, scan, text
from omnifuse.extract.datasets.eicu.variables import SeriesVar

LONG_SCHEMA = pl.Schema({"stay": pl.Int64, "off": pl.Int64, "ord": pl.Int64, "feat": pl.String, "value": pl.Float64})
_IO = "flowsheet|Flowsheet Cell Labels|I&O|"


def long_wide(lf: pl.LazyFrame, table: str, id_col: str, off_col: str, spec: dict[str, SeriesVar]) -> pl.LazyFrame:
    """A wide table (one column per variable) -> long rows (stay, off, ord, feat, value) in the window."""
    require(lf, table, ["patientunitstayid", id_col, off_col, *spec])
    base = lf.select(
        stay=integer("patientunitstayid"), off=integer(off_col), ord=integer(id_col), **{c: num(c) for c in spec}
    ).filter(in_window(pl.col("off")))
    long = base.unpivot(index=["stay", "off", "ord"], on=list(spec), variable_name="src", value_name="value")
    mapping = {c: v.name for c, v in spec.items()}
    return long.drop_nulls("value").select(
        "stay", "off", "ord", feat=pl.col("src").replace_strict(mapping, return_dtype=pl.String), value="value"
    )


def long_keyed(
    lf: pl.LazyFrame,
    table: str,
    id_col: str,
    off_col: str,
    entry_col: str | None,
    key: pl.Expr,
    key_cols: list[str],
    value_col: str,
    mapping: dict[str, str],
) -> pl.LazyFrame:
    """A long table (label -> value) -> long rows for the allow-listed labels, in the window."""
    entry = [entry_col] if entry_col else []
    require(lf, table, ["patientunitstayid", id_col, off_col, value_col, *key_cols, *entry])
    value = pl.col(value_col).str.strip_chars().str.strip_suffix("%").str.strip_chars().cast(pl.Float64, strict=False)
    cond = in_window(integer(off_col)) & key.is_in(list(mapping))
    if entry_col:
        cond = cond & not_after_window(integer(entry_col))
    return (
        lf.filter(cond)
        .select(
            stay=integer("patientunitstayid"),
            off=integer(off_col),
            ord=integer(id_col),
            feat=key.replace_strict(mapping, return_dtype=pl.String),
            value=value,
        )
        .drop_nulls("value")
    )


def long_intake_output(lf: pl.LazyFrame) -> pl.LazyFrame:
    """intakeOutput -> hourly intake, output, net balance (per-time totals), urine (summed cells), weight."""
    cols = [
        "patientunitstayid",
        "intakeoutputid",
        "intakeoutputoffset",
        "intakeoutputentryoffset",
        "cellpath",
        "celllabel",
        "cellvaluenumeric",
        *variables.INTAKE_OUTPUT_TOTALS,
    ]
    require(lf, "intakeOutput", cols)
    base = lf.filter(
        in_window(integer("intakeoutputoffset")) & not_after_window(integer("intakeoutputentryoffset"))
    ).select(
        stay=integer("patientunitstayid"),
        off=integer("intakeoutputoffset"),
        ord=integer("intakeoutputid"),
        path=text("cellpath"),
        label=text("celllabel"),
        cell=num("cellvaluenumeric"),
        **{c: num(c) for c in variables.INTAKE_OUTPUT_TOTALS},
    )
    urine = base.filter(
        pl.col("path").str.starts_with(variables.URINE_PATH_PREFIX)
        & pl.col("label").is_in(list(variables.URINE_LABELS))
    )
    weight = base.filter(
        (pl.col("label") == variables.BODYWEIGHT_LABEL) & pl.col("path").str.starts_with(_IO + "Weight")
    )
    parts = [
        *_intake_output_totals(base),
        urine.select("stay", "off", "ord", feat=pl.lit(variables.URINE.name), value=pl.col("cell")),
        weight.select("stay", "off", "ord", feat=pl.lit(variables.BODYWEIGHT.name), value=pl.col("cell")),
    ]
    return pl.concat([p.drop_nulls("value") for p in parts], how="vertical")


def _intake_output_totals(base: pl.LazyFrame) -> list[pl.LazyFrame]:
    """The per-time totals, each counted only at charting times that hold a cell of its kind (a weight-only
    time has totals of 0 that mean "nothing charted", not "no intake")."""
    totals = variables.INTAKE_OUTPUT_TOTALS
    is_in = pl.col("path").str.starts_with(_IO + "Intake")
    is_out = pl.col("path").str.starts_with(_IO + "Output")
    per_time = base.group_by("stay", "off").agg(
        pl.col("ord").min(),
        has_in=is_in.any(),
        has_out=is_out.any(),
        **{c: pl.col(c).sort_by("ord").first() for c in totals},
    )
    keep = {
        "intaketotal": pl.col("has_in"),
        "outputtotal": pl.col("has_out"),
        "nettotal": pl.col("has_in") | pl.col("has_out"),
    }
    return [
        per_time.filter(cond).select("stay", "off", "ord", feat=pl.lit(totals[c].name), value=pl.col(c))
        for c, cond in keep.items()
    ]


WIDE_TABLES: dict[str, tuple[str, str, dict[str, SeriesVar]]] = {
    # table -> row id and offset columns, column -> feature
    "vitalAperiodic": ("vitalaperiodicid", "observationoffset", variables.VITAL_APERIODIC),
    "vitalPeriodic": ("vitalperiodicid", "observationoffset", variables.VITAL_PERIODIC),
}
KEYED_COLUMNS: dict[str, tuple[str, str, str, str]] = {
    # table -> row id, offset, entry (or revision) offset and value columns
    "respiratoryCharting": ("respchartid", "respchartoffset", "respchartentryoffset", "respchartvalue"),
    "nurseCharting": ("nursingchartid", "nursingchartoffset", "nursingchartentryoffset", "nursingchartvalue"),
    "lab": ("labid", "labresultoffset", "labresultrevisedoffset", "labresult"),
}
KEYED_LABELS: dict[str, tuple[tuple[str, ...], Mapping[Any, SeriesVar]]] = {
    # table -> label columns, label (a tuple for two columns) -> feature
    "respiratoryCharting": (("respchartvaluelabel",), variables.RESPIRATORY_CHARTING),
    "nurseCharting": (("nursingchartcelltypevallabel", "nursingchartcelltypevalname"), variables.NURSE_CHARTING),
    "lab": (("labname",), variables.LAB),
}


def read_wide(table: str, lf: pl.LazyFrame) -> pl.LazyFrame:
    """Long rows of a wide table of ``WIDE_TABLES``."""
    id_col, off_col, spec = WIDE_TABLES[table]
    return long_wide(lf, table, id_col, off_col, spec)


def read_keyed(table: str, lf: pl.LazyFrame) -> pl.LazyFrame:
    """Long rows of a label -> value table of ``KEYED_COLUMNS`` (two label columns are joined by \\x1f)."""
    id_col, off_col, entry_col, value_col = KEYED_COLUMNS[table]
    key_cols, spec = KEYED_LABELS[table]
    keys = [text(c) for c in key_cols]
    key = keys[0] if len(keys) == 1 else pl.concat_str(keys, separator="\x1f")
    mapping = {k if isinstance(k, str) else "\x1f".join(k): v.name for k, v in spec.items()}
    return long_keyed(lf, table, id_col, off_col, entry_col, key, list(key_cols), value_col, mapping)


SOURCES: dict[str, tuple[Callable[[pl.LazyFrame], pl.LazyFrame], list[SeriesVar]]] = {
    "vitalAperiodic": (partial(read_wide, "vitalAperiodic"), list(variables.VITAL_APERIODIC.values())),
    "respiratoryCharting": (partial(read_keyed, "respiratoryCharting"), list(variables.RESPIRATORY_CHARTING.values())),
    "intakeOutput": (
        long_intake_output,
        [*variables.INTAKE_OUTPUT_TOTALS.values(), variables.URINE, variables.BODYWEIGHT],
    ),
    "vitalPeriodic": (partial(read_wide, "vitalPeriodic"), list(variables.VITAL_PERIODIC.values())),
    "nurseCharting": (partial(read_keyed, "nurseCharting"), list(variables.NURSE_CHARTING.values())),
    "lab": (partial(read_keyed, "lab"), list(variables.LAB.values())),
}
"""Table -> (long rows reader, the features it defines), in feature order (the demo's sources first)."""


def vital_sources(tables: dict[str, Path]) -> tuple[list[tuple[str, pl.LazyFrame]], list[SeriesVar]]:
    """The long frames of the time-series sources present, and the features they define (in order)."""
    out: list[tuple[str, pl.LazyFrame]] = []
    feats: list[SeriesVar] = []
    for name, (read, defines) in SOURCES.items():
        if name not in tables:
            continue
        out.append((name, read(scan(tables[name]))))
        for v in defines:
            if v.name not in {f.name for f in feats}:
                feats.append(v)
    return out, feats


@dataclass
class SparseSeries:
    """Per-row sparse cells of a ``[T, F]`` array: row-sorted (row, cell = t * F + f, value)."""

    shape: tuple[int, int]
    ptr: np.ndarray  # int64 [N + 1]
    cell: np.ndarray  # int32
    value: np.ndarray  # float32

    def dense(self, row: int) -> np.ndarray | None:
        """float32 ``[T, F]`` of ``row`` (NaN = not observed), or None when the row has no cell."""
        a, b = int(self.ptr[row]), int(self.ptr[row + 1])
        if a == b:
            return None
        out = np.full(self.shape[0] * self.shape[1], np.nan, dtype=np.float32)
        out[self.cell[a:b]] = self.value[a:b]
        return out.reshape(self.shape)

    def present(self) -> np.ndarray:
        """bool [N]: the rows with at least one cell."""
        return np.diff(self.ptr) > 0


def _feature_table(feats: list[SeriesVar]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "feat": [f.name for f in feats],
            "fidx": list(range(len(feats))),
            "lo": [float(f.lo) for f in feats],
            "hi": [float(f.hi) for f in feats],
            "frac": [f.fraction_to_percent for f in feats],
            "agg": [f.agg for f in feats],
        },
        schema_overrides={"fidx": pl.Int32},
    )


def _bin_cells(df: pl.DataFrame) -> pl.DataFrame:
    """Rows (row, off, ord, fidx, agg, value) -> one (row, bin, fidx, value) per hourly cell."""
    df = df.with_columns(
        bin=pl.min_horizontal(pl.col("off") // variables.BIN_MIN, pl.lit(variables.N_BINS - 1)).cast(pl.Int32)
    )
    last = (
        df.filter(pl.col("agg") == "last")
        .sort("row", "fidx", "bin", "off", "ord")
        .group_by("row", "bin", "fidx", maintain_order=True)
        .agg(pl.col("value").last())
    )
    summed = df.filter(pl.col("agg") == "sum").group_by("row", "bin", "fidx").agg(pl.col("value").sum())
    return pl.concat([last, summed], how="vertical").sort("row", "bin", "fidx")


def build_vitals(
    sources: list[tuple[str, pl.LazyFrame]], feats: list[SeriesVar], stay_index: pl.DataFrame
) -> tuple[SparseSeries, dict[str, int]]:
    """Hourly bins of every allow-listed variable; ``stay_index`` maps stay -> row. Returns the cells and the
    counts of long rows in the window, rows out of range and cells."""
    n, nf = stay_index.height, len(feats)
    if not sources:
        empty = SparseSeries(
            (variables.N_BINS, nf), np.zeros(n + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32)
        )
        return empty, {}
    long = pl.concat([lf.select(list(LONG_SCHEMA)).cast(LONG_SCHEMA) for _, lf in sources], how="vertical")
    df = long.collect(engine="streaming")
    counts = {"rows_in_window": df.height}
    df = df.join(_feature_table(feats), on="feat", how="inner").join(stay_index, on="stay", how="inner")
    v = pl.col("value")
    df = df.with_columns(value=pl.when(pl.col("frac") & (v > 0) & (v <= 1)).then(v * 100.0).otherwise(v))
    before = df.height
    df = df.filter(pl.col("value").is_between(pl.col("lo"), pl.col("hi"), closed="both"))
    counts["rows_out_of_range"] = before - df.height
    cells = _bin_cells(df)
    rows = cells["row"].to_numpy().astype(np.int64)
    ptr = np.searchsorted(rows, np.arange(n + 1), side="left").astype(np.int64)
    cell = (cells["bin"].to_numpy().astype(np.int64) * nf + cells["fidx"].to_numpy()).astype(np.int32)
    counts["cells"] = cells.height
    return SparseSeries((variables.N_BINS, nf), ptr, cell, cells["value"].to_numpy().astype(np.float32)), counts


def vitals_modality(sources: list[tuple[str, pl.LazyFrame]], feats: list[SeriesVar]) -> RawModality:
    """The ``vitals`` modality description: ``[24, F]`` time series with units, aggregation and ranges."""
    return RawModality(
        name="vitals",
        input="array",
        kind="timeseries",
        shape=(variables.N_BINS, len(feats)),
        dtype="float32",
        feature_names=[f.name for f in feats],
        preprocessing={
            "timestep_h": variables.BIN_MIN / 60,
            "hours": variables.WINDOW_MIN // 60,
            "units": {f.name: f.unit for f in feats},
            "aggregation": {f.name: f.agg for f in feats},
            "valid_range": {f.name: [f.lo, f.hi] for f in feats},
            "sources": [s for s, _ in sources],
            "missing": "NaN (not observed in the hour)",
        },
        ranges=hourly_ranges(feats),
    )


def hourly_ranges(feats: list[SeriesVar]) -> dict[str, tuple[float | None, float | None]]:
    """The plausible range of each hourly value: a level's own range; a sum's lower bound when it is 0 (the
    sum of entries in [0, hi] is at least 0 but may exceed hi); none for a sum that may be negative."""
    out: dict[str, tuple[float | None, float | None]] = {}
    for f in feats:
        if f.agg == "last":
            out[f.name] = (f.lo, f.hi)
        elif f.lo == 0:
            out[f.name] = (0, None)
    return out
