"""Stream chartevents and labevents into one small parquet of cleaned events inside the stays' windows.

Matching as mimic3-benchmarks (``validate_events`` then ``get_events_for_stay``): an event belongs to the stay of
its admission (hadm_id; rows without one are dropped) unless it names another ICU stay; lab events have no
stay and are matched by admission and time. Time is hours since ICU admission; the benchmark's tasks keep
-1e-6 < t < end + 1e-6 (end = 48 h for mortality, the length of stay for phenotyping).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from omnifuse.extract.datasets.mimic.clean import EhrMode, clean_events, item_table, merge_counts
from omnifuse.extract.datasets.mimic.readers import MimicLayout, iter_event_batches
from omnifuse.extract.datasets.mimic.variables import ITEMS

EPS = 1e-6
MORTALITY_HOURS = 48.0


def collect_events(
    layout: MimicLayout,
    stays: pl.DataFrame,
    out_path: str | Path,
    hours: float,
    mode: EhrMode = "benchmark",
    batch_rows: int = 2_000_000,
) -> dict:
    """Write ``out_path`` (parquet: row int32, hours float64, var int8, val float64, key str) for the rows of
    ``stays``, values cleaned in ``mode`` (``clean.clean_events``; in ``benchmark`` mode MIMIC-IV units are not
    read, as in MedFuse's port).

    Kept events lie in (-1e-6, min(hours, los_h) + 1e-6). Returns {"any_in_stay": bool [N] (an event in
    (-1e-6, los_h + 1e-6)), "any_in_48h": bool [N] (an event in (-1e-6, 48 + 1e-6)), "counts": per-variable
    counts, "rows_read": per source}.
    """
    n = stays.height
    small = stays.select(
        pl.col("hadm_id"),
        pl.arange(0, n, dtype=pl.Int32).alias("row"),
        pl.col("stay_id").alias("_sid"),
        pl.col("intime"),
        pl.col("los_h"),
    )
    any_stay = np.zeros(n, dtype=bool)
    any_48 = np.zeros(n, dtype=bool)
    counts: dict[str, dict[str, int]] = {}
    rows_read: dict[str, int] = {}
    used = set(item_table(mode)["itemid"].to_list())
    chart_items = {i for i in used if ITEMS[i][2] == "chart"}
    lab_items = {i for i in used if ITEMS[i][2] == "lab"}
    units = not (mode == "benchmark" and layout.version == "mimic-iv")
    schema = None
    writer: pq.ParquetWriter | None = None
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        for table, items in (("chartevents", chart_items), ("labevents", lab_items)):
            rows_read[table] = 0
            for batch in iter_event_batches(layout.path(table), items, batch_rows=batch_rows):
                rows_read[table] += batch.height
                ev = batch.filter(pl.col("hadm_id").is_not_null() & pl.col("charttime").is_not_null())
                ev = ev.join(small, on="hadm_id", how="inner")
                ev = ev.filter(pl.col("stay_id").is_null() | (pl.col("stay_id") == pl.col("_sid")))
                ev = ev.with_columns(
                    ((pl.col("charttime") - pl.col("intime")).dt.total_microseconds() / 3.6e9).alias("hours")
                )
                ev = ev.filter((pl.col("hours") > -EPS) & (pl.col("hours") < pl.col("los_h") + EPS))
                ev = ev.select("row", "hours", "los_h", "itemid", "value", "valuenum", "valueuom")
                cleaned, c = clean_events(ev, mode, units=units)
                merge_counts(counts, c)
                if cleaned.height == 0:
                    continue
                r = cleaned["row"].to_numpy()
                any_stay[r] = True
                any_48[r[cleaned["hours"].to_numpy() < MORTALITY_HOURS + EPS]] = True
                keep = cleaned.filter(pl.col("hours") < pl.min_horizontal(pl.col("los_h"), pl.lit(float(hours))) + EPS)
                tbl = keep.select(
                    pl.col("row").cast(pl.Int32),
                    "hours",
                    pl.col("var").cast(pl.Int8),
                    "val",
                    pl.col("key").cast(pl.Utf8),
                ).to_arrow()
                if writer is None:
                    schema = tbl.schema
                    writer = pq.ParquetWriter(str(out_path), schema)
                writer.write_table(tbl.cast(schema))
        if writer is None:  # no event at all: an empty file with the schema
            empty = pl.DataFrame(
                schema={"row": pl.Int32, "hours": pl.Float64, "var": pl.Int8, "val": pl.Float64, "key": pl.Utf8}
            )
            empty.write_parquet(out_path)
    finally:
        if writer is not None:
            writer.close()
    return {"any_in_stay": any_stay, "any_in_48h": any_48, "counts": counts, "rows_read": rows_read}
