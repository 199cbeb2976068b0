"""Readers for the official MIMIC layouts: MIMIC-III 1.4 (UPPERCASE CSV), MIMIC-IV 1.0 (core/) and 2.x (hosp/).

Small tables are read whole; event tables are streamed in record batches (``iter_event_batches``), so a
330 M-row ``chartevents.csv.gz`` never sits in memory: gzip files through pyarrow's streaming CSV reader,
plain CSV through ``polars.scan_csv``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import polars as pl

Version = Literal["mimic-iii", "mimic-iv"]

_IV_TABLES = {
    "patients": ["hosp/patients", "core/patients"],
    "admissions": ["hosp/admissions", "core/admissions"],
    "icustays": ["icu/icustays"],
    "diagnoses_icd": ["hosp/diagnoses_icd"],
    "d_icd_diagnoses": ["hosp/d_icd_diagnoses"],
    "chartevents": ["icu/chartevents"],
    "labevents": ["hosp/labevents"],
}
EVENT_COLUMNS = ["hadm_id", "stay_id", "charttime", "itemid", "value", "valuenum", "valueuom"]


class MimicLayoutError(ValueError):
    """The root is not a MIMIC-III or MIMIC-IV layout, or a needed table is missing."""


def _find(root: Path, stem: str) -> Path | None:
    for ext in (".csv.gz", ".csv"):
        p = root / f"{stem}{ext}"
        if p.is_file():
            return p
    return None


@dataclass(frozen=True)
class MimicLayout:
    """Where each logical table of a MIMIC root lives."""

    root: Path
    version: Version

    @classmethod
    def detect(cls, root: str | Path) -> MimicLayout:
        root = Path(root)
        if not root.is_dir():
            raise MimicLayoutError(f"MIMIC root {root} is not a directory")
        if _find(root, "ICUSTAYS") is not None:
            return cls(root, "mimic-iii")
        if _find(root, "icu/icustays") is not None:
            return cls(root, "mimic-iv")
        raise MimicLayoutError(
            f"{root} is neither MIMIC-III (ICUSTAYS.csv[.gz] at the top) nor MIMIC-IV (icu/icustays.csv[.gz]); "
            "point --root at the folder that holds them"
        )

    def path(self, table: str) -> Path:
        stems = [table.upper()] if self.version == "mimic-iii" else _IV_TABLES[table]
        for stem in stems:
            p = _find(self.root, stem)
            if p is not None:
                return p
        raise MimicLayoutError(f"{self.version} root {self.root}: table {table!r} not found (looked for {stems})")

    def read(self, table: str, columns: list[str]) -> pl.DataFrame:
        """A small table, all columns as strings, names lower-cased, only ``columns`` (lower case)."""
        df = pl.read_csv(self.path(table), infer_schema_length=0)
        df = df.rename({c: c.lower() for c in df.columns})
        if self.version == "mimic-iii":
            df = df.rename({"icustay_id": "stay_id"}) if "icustay_id" in df.columns else df
            if "icd9_code" in df.columns:
                df = df.rename({"icd9_code": "icd_code"}).with_columns(pl.lit("9").alias("icd_version"))
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise MimicLayoutError(f"{self.path(table)} lacks columns {missing}")
        return df.select(columns)


def _normalise_batch(df: pl.DataFrame) -> pl.DataFrame:
    """Lower-case names, MIMIC-III ICUSTAY_ID -> stay_id, typed columns of EVENT_COLUMNS."""
    df = df.rename({c: c.lower() for c in df.columns})
    if "icustay_id" in df.columns:
        df = df.rename({"icustay_id": "stay_id"})
    if "stay_id" not in df.columns:
        df = df.with_columns(pl.lit(None, dtype=pl.Utf8).alias("stay_id"))
    for c in ("value", "valuenum", "valueuom"):
        if c not in df.columns:
            df = df.with_columns(pl.lit(None, dtype=pl.Utf8).alias(c))
    return df.select(
        pl.col("hadm_id").cast(pl.Utf8).str.strip_chars().cast(pl.Float64, strict=False).cast(pl.Int64),
        pl.col("stay_id").cast(pl.Utf8).str.strip_chars().cast(pl.Float64, strict=False).cast(pl.Int64),
        pl.col("charttime").cast(pl.Utf8).str.to_datetime(strict=False, time_unit="us"),
        pl.col("itemid").cast(pl.Utf8).str.strip_chars().cast(pl.Int64, strict=False),
        pl.col("value").cast(pl.Utf8),
        pl.col("valuenum").cast(pl.Utf8).str.strip_chars().cast(pl.Float64, strict=False),
        pl.col("valueuom").cast(pl.Utf8),
    )


def _header(path: Path) -> list[str]:
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as f:
        line = f.readline()
    import csv

    return next(csv.reader([line]))


def iter_event_batches(
    path: str | Path, itemids: set[int], batch_rows: int = 2_000_000, block_bytes: int = 64 << 20
) -> Iterator[pl.DataFrame]:
    """Stream an event table, keeping rows whose item id is in ``itemids``.

    Yields frames with EVENT_COLUMNS (``stay_id`` null for labevents) of about ``batch_rows`` kept rows;
    gzip input is decompressed ``block_bytes`` at a time, so memory stays bounded whatever the file size.
    """
    path = Path(path)
    header = _header(path)
    wanted = {"hadm_id", "icustay_id", "stay_id", "charttime", "itemid", "value", "valuenum", "valueuom"}
    cols = [c for c in header if c.lower() in wanted]
    if not {"hadm_id", "charttime", "itemid"} <= {c.lower() for c in cols}:
        raise MimicLayoutError(f"{path}: header {header} lacks hadm_id/charttime/itemid")
    item_col = next(c for c in cols if c.lower() == "itemid")
    items = pl.Series(sorted(itemids), dtype=pl.Int64)
    if path.suffix == ".gz":
        import pyarrow as pa
        import pyarrow.csv as pacsv

        reader = pacsv.open_csv(
            pa.input_stream(str(path), compression="gzip"),
            read_options=pacsv.ReadOptions(block_size=block_bytes),
            convert_options=pacsv.ConvertOptions(
                include_columns=cols, column_types={c: pa.string() for c in cols}, strings_can_be_null=True
            ),
        )
        pending: list[pl.DataFrame] = []
        n = 0
        for rb in reader:
            df = pl.from_arrow(pa.Table.from_batches([rb]))
            assert isinstance(df, pl.DataFrame)
            df = df.filter(pl.col(item_col).str.strip_chars().cast(pl.Int64, strict=False).is_in(items.implode()))
            if df.height:
                pending.append(df)
                n += df.height
            if n >= batch_rows:
                yield _normalise_batch(pl.concat(pending))
                pending, n = [], 0
        if pending:
            yield _normalise_batch(pl.concat(pending))
    else:
        lf = pl.scan_csv(path, infer_schema=False).select(cols)
        lf = lf.filter(pl.col(item_col).str.strip_chars().cast(pl.Int64, strict=False).is_in(items.implode()))
        for df in lf.collect_batches(chunk_size=batch_rows):
            if df.height:
                yield _normalise_batch(df)
