"""Reading eICU-CRD tables: where they are, lazy string scans, and the column expressions every part shares.

Every column is read as a string; numbers are parsed where used (``num``, ``integer``), a bad cell becoming
null. Column names are lower-cased, so exports that differ in case read the same.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import polars as pl

from omnifuse.extract.datasets.eicu import variables

DEMO_DIRNAME = "eicu-demo-2.0.1"
TABLE_NAMES = (
    "patient",
    "apachePatientResult",
    "apacheApsVar",
    "apachePredVar",
    "pastHistory",
    "admissionDx",
    "diagnosis",
    "physicalExam",
    "vitalAperiodic",
    "vitalPeriodic",
    "respiratoryCharting",
    "intakeOutput",
    "nurseCharting",
    "lab",
    "treatment",
    "infusionDrug",
    "carePlanGeneral",
)


class EicuDataError(ValueError):
    """The eICU files are missing or not laid out as eICU-CRD."""


def demo_root() -> Path:
    """The bundled eICU-CRD demo 2.0.1 (``omnifuse/data/eicu-demo-2.0.1``)."""
    root = Path(str(importlib.resources.files("omnifuse") / "data" / DEMO_DIRNAME))
    if not (root / "patient.csv.gz").is_file():
        raise EicuDataError(f"the bundled eICU demo is not installed at {root} (patient.csv.gz is missing)")
    return root


def find_tables(root: Path) -> dict[str, Path]:
    """eICU table name -> file for each table present in ``root`` (``name.csv.gz`` or ``name.csv``, any case)."""
    by_lower = {p.name.lower(): p for p in root.iterdir() if p.is_file()}
    found: dict[str, Path] = {}
    for name in TABLE_NAMES:
        for ext in (".csv.gz", ".csv"):
            p = by_lower.get(f"{name.lower()}{ext}")
            if p is not None:
                found[name] = p
                break
    return found


def scan(path: Path) -> pl.LazyFrame:
    """Every column as a string (numbers are parsed where used, a bad cell becoming null), names lower-case."""
    lf = pl.scan_csv(path, infer_schema=False, quote_char='"')
    names = lf.collect_schema().names()
    return lf.rename({n: n.strip().lower() for n in names if n != n.strip().lower()})


def num(col: str) -> pl.Expr:
    """Column ``col`` as Float64 (null where it does not parse)."""
    return pl.col(col).str.strip_chars().cast(pl.Float64, strict=False)


def integer(col: str) -> pl.Expr:
    """Column ``col`` rounded to Int64 (null where it does not parse)."""
    return num(col).round(0).cast(pl.Int64)


def text(col: str) -> pl.Expr:
    """Column ``col`` stripped, empty where null."""
    return pl.col(col).fill_null("").str.strip_chars()


def in_window(expr: pl.Expr) -> pl.Expr:
    """An offset from unit admission within 0 to 1,440 minutes, both inclusive."""
    return expr.is_between(0, variables.WINDOW_MIN, closed="both")


def not_after_window(expr: pl.Expr) -> pl.Expr:
    """For an entry or revision offset: null (not given) or at most 1,440 minutes."""
    return expr.is_null() | (expr <= variables.WINDOW_MIN)


def require(lf: pl.LazyFrame, table: str, cols: list[str]) -> None:
    """``EicuDataError`` naming the table and the columns it lacks."""
    have = set(lf.collect_schema().names())
    missing = [c for c in cols if c not in have]
    if missing:
        raise EicuDataError(f"eICU table {table!r} lacks columns {missing}; is this an eICU-CRD 2.0 export?")
