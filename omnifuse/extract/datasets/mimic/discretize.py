"""The benchmark's discretiser, vectorised: cleaned events -> [N, T, 76] with one-hot categories and masks.

Rules (mimic3-benchmarks ``Discretizer`` with ``impute_strategy='previous'``, ``start_time='zero'``,
``store_masks=True``): T = int(hours / timestep + 1 - 1e-6); an event at t hours after ICU admission goes to
bin int(t / timestep - 1e-6) (so bin k covers (k*timestep, (k+1)*timestep], t = 0 in bin 0); the last event of a
bin wins; a bin without an event carries the previous bin's value forward, or the variable's normal value
before the first event; the mask column is 1 only in bins with an event.

Every stay is discretised from its own events alone, so stays can be discretised in blocks:
``discretize_parquet`` reads the events file of ``events.collect_events`` one block of stays at a time (its row
groups), which keeps memory to a block's events and intermediates plus the output (full MIMIC-IV: 73,000 stays,
[N, 24, 76] float32 = 530 MB) and gives the same bytes as ``discretize`` on the whole file.

The whole stay (the benchmark's phenotyping, ``Discretizer.transform(X, end=period_length)``): ``stay_bins``
gives each stay's number of bins, int(min(LOS, cap) / timestep + 1 - 1e-6), and ``discretize_stays`` its bins
as one ragged array (the first ``stay_bins`` bins of the discretisation with end = min(LOS, cap), which no
bin after them can change: every step is causal), so memory holds the stays' own bins, not N x T_cap.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from omnifuse.extract.datasets.mimic.events import BLOCK_KEY
from omnifuse.extract.datasets.mimic.variables import (
    CATEGORIES,
    NORMAL_VALUES,
    VARIABLES,
    column_offsets,
)

EPS = 1e-6
N_VARS = len(VARIABLES)
N_VALUE_COLS = 59


def n_bins(hours: float, timestep: float) -> int:
    """Number of bins for a window of ``hours`` (the benchmark's formula)."""
    return int(hours / timestep + 1.0 - EPS)


def stay_bins(los_hours: np.ndarray, cap_hours: float, timestep: float) -> np.ndarray:
    """int64 [N]: the bins of each stay's whole-stay discretisation, ``n_bins(min(LOS, cap), timestep)`` (the
    benchmark's ``N_bins`` for ``end`` = the phenotyping period, LOS in hours), at least 1 (a stay of length 0
    with an event at its admission time has one bin; the benchmark's discretiser would stop on it)."""
    end = np.minimum(np.asarray(los_hours, dtype=float), float(cap_hours))
    return np.maximum(1, (end / timestep + 1.0 - EPS).astype(np.int64))


def _normal_codes() -> np.ndarray:
    """[17] the normal value of each variable (category index for categorical ones)."""
    out = np.zeros(N_VARS)
    for i, v in enumerate(VARIABLES):
        nv = NORMAL_VALUES[v]
        out[i] = CATEGORIES[v].index(str(nv)) if v in CATEGORIES else float(nv)
    return out


def _category_key() -> pl.DataFrame:
    """(var, category index) -> the category's text: the tie-break key of categorical events given without one."""
    rows = [(VARIABLES.index(v), float(i), c) for v, cats in CATEGORIES.items() for i, c in enumerate(cats)]
    return pl.DataFrame(rows, schema={"var": pl.Int8, "val": pl.Float64, "_ckey": pl.Utf8}, orient="row")


def discretize(
    events: pl.DataFrame, n_rows: int, timestep: float, hours: float, end_hours: np.ndarray | None = None
) -> np.ndarray:
    """Discretise cleaned events of ``n_rows`` stays.

    ``events``: columns ``row`` (int, 0..n_rows-1), ``hours`` (float, time since ICU admission), ``var``
    (int, index into VARIABLES), ``val`` (float; category index for categorical variables) and optionally
    ``key`` (str|null): when one variable has several events at one time, the one with the greatest ``key``
    wins, then the greatest ``val`` (the benchmark sorts by chart time, variable and value, its values of
    uncleaned variables being texts, and keeps the last: ``clean.clean_events`` gives those texts). Without
    ``key``, categories compare by their text and numbers by value.
    ``end_hours`` [n_rows]: per-stay end of the window (default ``hours``); events at t >= end + 1e-6 and
    t <= -1e-6 are ignored. Returns float32 [n_rows, T, 76], T = n_bins(hours, timestep).
    """
    T = n_bins(hours, timestep)
    end = np.full(n_rows, float(hours)) if end_hours is None else np.minimum(np.asarray(end_hours, float), hours)
    has_key = "key" in events.columns
    ev = events.select(
        pl.col("row").cast(pl.Int64),
        pl.col("hours").cast(pl.Float64),
        pl.col("var").cast(pl.Int8),
        pl.col("val").cast(pl.Float64),
        (pl.col("key") if has_key else pl.lit(None)).cast(pl.Utf8).alias("key"),
    )
    rows = ev["row"].to_numpy()
    if ev.height and (rows.min() < 0 or rows.max() >= n_rows):
        raise ValueError(f"event rows must lie in [0, {n_rows}), got [{rows.min()}, {rows.max()}]")
    ev = ev.with_columns(pl.Series("_end", end[rows] if ev.height else np.zeros(0)))
    ev = ev.filter((pl.col("hours") > -EPS) & (pl.col("hours") < pl.col("_end") + EPS))
    # several values of one variable at one time: keep the greatest key, then the greatest value
    if not has_key:
        ev = ev.join(_category_key(), on=["var", "val"], how="left").with_columns(pl.col("_ckey").alias("key"))
    ev = ev.sort(["row", "var", "hours", "key", "val"], nulls_last=False).unique(
        ["row", "var", "hours"], keep="last", maintain_order=True
    )
    ev = ev.with_columns(((pl.col("hours") / timestep) - EPS).cast(pl.Int64).clip(0, T - 1).alias("_bin"))
    # last event of each bin wins (sorted by time above)
    ev = ev.unique(["row", "var", "_bin"], keep="last", maintain_order=True)
    obs = np.full((n_rows, T, N_VARS), np.nan)
    if ev.height:
        obs[ev["row"].to_numpy(), ev["_bin"].to_numpy(), ev["var"].to_numpy().astype(np.int64)] = ev["val"].to_numpy()
    mask = ~np.isnan(obs)
    idx = np.where(mask, np.arange(T)[None, :, None], -1)
    idx = np.maximum.accumulate(idx, axis=1)
    filled = np.take_along_axis(obs, np.clip(idx, 0, None), axis=1)
    filled = np.where(idx < 0, _normal_codes()[None, None, :], filled)
    out = np.zeros((n_rows, T, N_VALUE_COLS + N_VARS), dtype=np.float32)
    offs = column_offsets()
    for i, v in enumerate(VARIABLES):
        if v in CATEGORIES:
            k = len(CATEGORIES[v])
            codes = filled[:, :, i].astype(np.int64)
            out[:, :, offs[i] : offs[i] + k] = np.eye(k, dtype=np.float32)[codes]
        else:
            out[:, :, offs[i]] = filled[:, :, i]
    out[:, :, N_VALUE_COLS:] = mask
    return out


def discretize_parquet(
    path: str | Path,
    rows: np.ndarray,
    timestep: float,
    hours: float,
    end_hours: np.ndarray | None = None,
) -> np.ndarray:
    """Discretise the events file of ``events.collect_events`` one block of stays at a time.

    ``rows`` [N]: for each output row, its ``row`` in the file (strictly increasing; rows of the file not
    listed, e.g. stays the cohort dropped, are skipped). ``end_hours`` [N] as in ``discretize``. The file's
    row groups hold one block of ``block_stays`` rows each (named in its metadata, ``events.BLOCK_KEY``); each
    block's row groups are read, their rows mapped to output rows and passed to ``discretize``. A file without
    that key is read as one block. Returns float32 [N, T, 76], equal to ``discretize`` of all events with their
    rows mapped (the same bytes: no step of ``discretize`` looks across stays).
    """
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((rows.size, n_bins(hours, timestep), N_VALUE_COLS + N_VARS), dtype=np.float32)
    for lo, hi, x in iter_discretized(path, rows, timestep, hours, end_hours):
        out[lo:hi] = x
    return out


def discretize_stays(
    path: str | Path, rows: np.ndarray, timestep: float, cap_hours: float, los_hours: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The whole-stay discretisation of ``rows`` of the events file (as ``discretize_parquet``), each stay up
    to ``cap_hours``: ``(values float32 [S, 76], offsets int64 [N + 1])``, stay ``i``'s bins being
    ``values[offsets[i]:offsets[i + 1]]``, ``stay_bins(los_hours, cap_hours, timestep)[i]`` of them. Equal to the
    first bins of ``discretize_parquet(path, rows, timestep, cap_hours, end_hours=los_hours)``; one block of
    stays is held [block, T_cap, 76] at a time."""
    rows = np.asarray(rows, dtype=np.int64)
    los = np.asarray(los_hours, dtype=float)
    if los.shape != rows.shape:
        raise ValueError(f"los_hours must have shape {rows.shape}, got {los.shape}")
    lengths = stay_bins(los, cap_hours, timestep)
    offsets = np.zeros(rows.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = np.empty((int(offsets[-1]), N_VALUE_COLS + N_VARS), dtype=np.float32)
    for lo, hi, x in iter_discretized(path, rows, timestep, cap_hours, los):
        keep = np.arange(x.shape[1])[None, :] < lengths[lo:hi, None]  # [block, T_cap], row-major = stay order
        values[offsets[lo] : offsets[hi]] = x[keep]
    return values, offsets


def iter_discretized(
    path: str | Path,
    rows: np.ndarray,
    timestep: float,
    hours: float,
    end_hours: np.ndarray | None = None,
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(lo, hi, x)``: output rows ``lo:hi`` (one block of the file's stays) and their discretisation
    x float32 [hi - lo, T, 76] (``discretize_parquet``'s arguments and rules), block after block."""
    rows = np.asarray(rows, dtype=np.int64)
    n = rows.size
    if n and (rows[0] < 0 or np.any(np.diff(rows) <= 0)):
        raise ValueError(f"{path}: rows must be non-negative and strictly increasing")
    end = np.full(n, float(hours)) if end_hours is None else np.asarray(end_hours, dtype=float)
    if end.shape != (n,):
        raise ValueError(f"end_hours must have shape ({n},), got {end.shape}")
    pf = pq.ParquetFile(str(path))
    meta = pf.schema_arrow.metadata or {}
    last = int(rows[-1]) + 1 if n else 0
    block = int(meta[BLOCK_KEY]) if BLOCK_KEY in meta else max(last, 1)
    row_col = pf.schema_arrow.get_field_index("row")
    groups: dict[int, list[int]] = {}
    for g in range(pf.num_row_groups):
        st = pf.metadata.row_group(g).column(row_col).statistics
        if pf.metadata.row_group(g).num_rows == 0:
            continue
        if BLOCK_KEY not in meta:
            groups.setdefault(0, []).append(g)
        elif st is None or not st.has_min_max or int(st.min) // block != int(st.max) // block:
            raise ValueError(f"{path}: row group {g} does not hold one block of {block} stays")
        else:
            groups.setdefault(int(st.min) // block, []).append(g)
    lookup = np.full(block, -1, dtype=np.int64)
    for b in range((last + block - 1) // block):
        lo, hi = np.searchsorted(rows, [b * block, (b + 1) * block])
        if lo == hi:
            continue
        if b in groups:
            ev = pl.from_arrow(pf.read_row_groups(groups[b]))
            assert isinstance(ev, pl.DataFrame)
        else:
            ev = pl.DataFrame(schema={"row": pl.Int64, "hours": pl.Float64, "var": pl.Int8, "val": pl.Float64})
        lookup[:] = -1
        lookup[rows[lo:hi] - b * block] = np.arange(hi - lo)
        local = ev["row"].to_numpy().astype(np.int64) - b * block
        inside = (local >= 0) & (local < block)
        mapped = np.where(inside, lookup[np.clip(local, 0, block - 1)], -1)
        ev = ev.with_columns(pl.Series("row", mapped)).filter(pl.col("row") >= 0)
        yield int(lo), int(hi), discretize(ev, int(hi - lo), timestep, hours, end_hours=end[lo:hi])
