"""Stream chartevents and labevents into one small parquet of cleaned events inside the stays' windows.

Matching as mimic3-benchmarks (``validate_events`` then ``get_events_for_stay``): an event belongs to the stay of
its admission (hadm_id; rows without one are dropped) unless it names another ICU stay; lab events have no
stay and are matched by admission and time. Time is hours since ICU admission; the benchmark's tasks keep
-1e-6 < t < end + 1e-6 (end = 48 h for mortality, the length of stay for phenotyping).

The parquet is written in blocks of ``block_stays`` stays (rows ``b * block_stays`` to ``(b + 1) * block_stays - 1``):
each batch's events go to a file of their block while the tables stream, and the blocks are then copied into
the one output file in block order, so each row group holds one block's events and the file's metadata names
the block size (``BLOCK_KEY``). ``discretize.discretize_parquet`` reads it one block at a time: memory then
grows with the block, not with the number of stays (full MIMIC-IV: 73,000 stays, about 25 M kept events).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from omnifuse.extract.datasets.mimic.clean import EhrMode, clean_events, item_table, merge_counts
from omnifuse.extract.datasets.mimic.readers import MimicLayout, iter_event_batches
from omnifuse.extract.datasets.mimic.variables import ITEMS

EPS = 1e-6
MORTALITY_HOURS = 48.0
BLOCK_STAYS = 4096  # stays per block of the events parquet (about 1.4 M events, 50 MB, in MIMIC-IV)
BLOCK_KEY = b"omnifuse.block_stays"  # parquet metadata: the block size the file was written with
# gzip CSV decompressed and parsed this many bytes at a time: pyarrow's streaming reader keeps about 40 blocks'
# worth of memory in flight (64 MB blocks: 2 GiB; 16 MB: 0.65 GiB, as fast; measured on 67 M chartevents rows)
READ_BLOCK_BYTES = 16 << 20
SCHEMA = {"row": pl.Int32, "hours": pl.Float64, "var": pl.Int8, "val": pl.Float64, "key": pl.Utf8}


def collect_events(
    layout: MimicLayout,
    stays: pl.DataFrame,
    out_path: str | Path,
    hours: float,
    mode: EhrMode = "benchmark",
    batch_rows: int = 2_000_000,
    block_stays: int = BLOCK_STAYS,
) -> dict:
    """Write ``out_path`` (parquet: row int32, hours float64, var int8, val float64, key str) for the rows of
    ``stays``, values cleaned in ``mode`` (``clean.clean_events``; in ``benchmark`` mode MIMIC-IV units are not
    read, as in MedFuse's port). Row groups hold the events of one block of ``block_stays`` rows each, blocks in
    row order, events within a block in the order read.

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
    if block_stays < 1:
        raise ValueError(f"block_stays must be at least 1, got {block_stays}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    parts = out_path.with_name(out_path.name + ".blocks")  # one file per block while the tables stream
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir()
    writers: dict[int, pq.ParquetWriter] = {}
    schema = pl.DataFrame(schema=SCHEMA).to_arrow().schema

    def kept(batch: pl.DataFrame) -> pl.DataFrame | None:
        """The batch's cleaned events inside the window (None if none); counts and event flags updated."""
        ev = batch.filter(pl.col("hadm_id").is_not_null() & pl.col("charttime").is_not_null())
        ev = ev.join(small, on="hadm_id", how="inner")
        ev = ev.filter(pl.col("stay_id").is_null() | (pl.col("stay_id") == pl.col("_sid")))
        ev = ev.with_columns(((pl.col("charttime") - pl.col("intime")).dt.total_microseconds() / 3.6e9).alias("hours"))
        ev = ev.filter((pl.col("hours") > -EPS) & (pl.col("hours") < pl.col("los_h") + EPS))
        ev = ev.select("row", "hours", "los_h", "itemid", "value", "valuenum", "valueuom")
        cleaned, c = clean_events(ev, mode, units=units)
        merge_counts(counts, c)
        if cleaned.height == 0:
            return None
        r = cleaned["row"].to_numpy()
        any_stay[r] = True
        any_48[r[cleaned["hours"].to_numpy() < MORTALITY_HOURS + EPS]] = True
        keep = cleaned.filter(pl.col("hours") < pl.min_horizontal(pl.col("los_h"), pl.lit(float(hours))) + EPS)
        return keep.select(
            pl.col("row").cast(pl.Int32),
            "hours",
            pl.col("var").cast(pl.Int8),
            "val",
            pl.col("key").cast(pl.Utf8),
        )

    try:
        for table, items in (("chartevents", chart_items), ("labevents", lab_items)):
            rows_read[table] = 0
            batches = iter_event_batches(layout.path(table), items, batch_rows=batch_rows, block_bytes=READ_BLOCK_BYTES)
            for batch in batches:
                rows_read[table] += batch.height
                tbl = kept(batch)
                del batch  # its text buffers are freed before the next batch is read
                if tbl is None:
                    continue
                blocks = tbl.with_columns((pl.col("row") // block_stays).alias("_block"))
                for (b,), part in blocks.partition_by("_block", as_dict=True, include_key=False).items():
                    if int(b) not in writers:
                        writers[int(b)] = pq.ParquetWriter(str(parts / f"{int(b):08d}.parquet"), schema)
                    writers[int(b)].write_table(part.to_arrow().cast(schema))
                del tbl, blocks
        for w in writers.values():
            w.close()
        meta = {BLOCK_KEY: str(block_stays).encode()}
        with pq.ParquetWriter(str(out_path), schema.with_metadata(meta)) as out:
            if not writers:  # no event at all: an empty file with the schema
                out.write_table(pl.DataFrame(schema=SCHEMA).to_arrow().cast(schema))
            for b in sorted(writers):
                out.write_table(pq.read_table(parts / f"{b:08d}.parquet").cast(schema), row_group_size=1 << 24)
    finally:
        for w in writers.values():
            if w.is_open:
                w.close()
        shutil.rmtree(parts, ignore_errors=True)
    return {"any_in_stay": any_stay, "any_in_48h": any_48, "counts": counts, "rows_read": rows_read}
