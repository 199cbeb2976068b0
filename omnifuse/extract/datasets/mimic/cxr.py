"""MIMIC-CXR-JPG images and MIMIC-CXR reports: which study belongs to a stay, and the report's FINDINGS.

Layouts: ``<cxr_root>/mimic-cxr-2.0.0-metadata.csv[.gz]`` (dicom_id, subject_id, study_id, ViewPosition,
StudyDate, StudyTime), ``-split.csv[.gz]``, ``-chexpert.csv[.gz]``, images at
``files/p<first 2 digits>/p<subject>/s<study>/<dicom>.jpg``; reports at ``files/pXX/pSUBJECT/sSTUDY.txt``
under ``reports_root`` (or ``cxr_root``), or inside a ``mimic-cxr-reports.zip`` holding that tree.
Matching follows MedFuse: studies of the stay's subject with intime <= StudyDateTime <= window end, view AP
(optionally PA too), the latest one (ties: greatest study_id, then dicom_id).
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import polars as pl

META = "mimic-cxr-2.0.0-metadata"
SPLIT = "mimic-cxr-2.0.0-split"
CHEXPERT = "mimic-cxr-2.0.0-chexpert"
REPORT_PROVENANCE = ["findings", "impression"]
MAX_WORDS = 150


class CxrLayoutError(ValueError):
    """A MIMIC-CXR source is given but is not in the official layout."""


def _find(root: Path, stem: str) -> Path | None:
    for ext in (".csv.gz", ".csv"):
        if (root / f"{stem}{ext}").is_file():
            return root / f"{stem}{ext}"
    return None


def read_metadata(cxr_root: str | Path) -> pl.DataFrame:
    """dicom_id, subject_id, study_id, view, study_dt (datetime) of every image in the metadata file."""
    root = Path(cxr_root)
    p = _find(root, META)
    if p is None:
        raise CxrLayoutError(f"{root}: {META}.csv[.gz] not found (expected the MIMIC-CXR-JPG 2.0.0 layout)")
    df = pl.read_csv(p, infer_schema_length=0)
    need = {"dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate", "StudyTime"}
    if not need <= set(df.columns):
        raise CxrLayoutError(f"{p} lacks columns {sorted(need - set(df.columns))}")
    # StudyTime is HHMMSS with optional fraction and may have lost leading zeros (e.g. "93012.5")
    time6 = (
        pl.col("StudyTime")
        .str.strip_chars()
        .cast(pl.Float64, strict=False)
        .floor()
        .cast(pl.Int64)
        .cast(pl.Utf8)
        .str.zfill(6)
    )
    return df.select(
        pl.col("dicom_id").str.strip_chars(),
        pl.col("subject_id").str.strip_chars().cast(pl.Int64),
        pl.col("study_id").str.strip_chars().cast(pl.Int64),
        pl.col("ViewPosition").fill_null("").str.strip_chars().alias("view"),
        (pl.col("StudyDate").str.strip_chars() + " " + time6)
        .str.to_datetime("%Y%m%d %H%M%S", strict=False, time_unit="us")
        .alias("study_dt"),
    )


def read_split(cxr_root: str | Path) -> pl.DataFrame | None:
    """subject_id -> official split ("train" / "validate" / "test"), or None when the split file is absent."""
    p = _find(Path(cxr_root), SPLIT)
    if p is None:
        return None
    df = pl.read_csv(p, infer_schema_length=0)
    df = df.select(pl.col("subject_id").cast(pl.Int64), pl.col("split").str.strip_chars())
    return df.group_by("subject_id").agg(pl.col("split").mode().sort().first())


def match_studies(meta: pl.DataFrame, stays: pl.DataFrame, include_pa: bool = False) -> pl.DataFrame:
    """The chosen image of each stay that has one.

    ``stays``: row, subject_id, intime, window_end (datetimes). Returns row, subject_id, study_id, dicom_id,
    view, study_dt for the latest allowed view with intime <= study_dt <= window_end.
    """
    views = ["AP", "PA"] if include_pa else ["AP"]
    m = meta.filter(pl.col("view").is_in(views) & pl.col("study_dt").is_not_null())
    j = stays.join(m, on="subject_id", how="inner")
    j = j.filter((pl.col("study_dt") >= pl.col("intime")) & (pl.col("study_dt") <= pl.col("window_end")))
    j = j.sort(["row", "study_dt", "study_id", "dicom_id"]).unique("row", keep="last", maintain_order=True)
    return j.select("row", "subject_id", "study_id", "dicom_id", "view", "study_dt")


def image_path(cxr_root: str | Path, subject_id: int, study_id: int, dicom_id: str) -> Path:
    s = str(subject_id)
    return Path(cxr_root) / "files" / f"p{s[:2]}" / f"p{s}" / f"s{study_id}" / f"{dicom_id}.jpg"


class ReportStore:
    """Reads ``files/pXX/pSUBJECT/sSTUDY.txt`` from a folder or from a zip of that tree."""

    def __init__(self, root: str | Path):
        root = Path(root)
        self.root = root
        self._zip: zipfile.ZipFile | None = None
        self._names: dict[str, str] = {}
        zips = sorted(root.glob("*.zip")) if root.is_dir() else ([root] if root.suffix == ".zip" else [])
        if not (root / "files").is_dir() and zips:
            self._zip = zipfile.ZipFile(zips[0])
            for name in self._zip.namelist():
                m = re.search(r"files/p\d\d/p\d+/s\d+\.txt$", name)
                if m:
                    self._names[m.group(0)] = name
        elif not (root / "files").is_dir():
            raise CxrLayoutError(f"{root}: no files/ folder and no zip of MIMIC-CXR reports")

    def read(self, subject_id: int, study_id: int) -> str | None:
        s = str(subject_id)
        rel = f"files/p{s[:2]}/p{s}/s{study_id}.txt"
        if self._zip is not None:
            name = self._names.get(rel)
            return None if name is None else self._zip.read(name).decode("utf-8", errors="replace")
        p = self.root / rel
        return p.read_text(encoding="utf-8", errors="replace") if p.is_file() else None


_HEADER = re.compile(r"^[ \t]*([A-Z][A-Z &/()\-]{2,60}?)[ \t]*:", re.MULTILINE)


def report_sections(text: str) -> dict[str, str]:
    """Upper-case ``NAME:`` headers at line starts -> section text (whitespace collapsed); first wins."""
    out: dict[str, str] = {}
    heads = list(_HEADER.finditer(text))
    for i, h in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        name = re.sub(r"\s+", " ", h.group(1)).strip()
        body = re.sub(r"\s+", " ", text[h.end() : end]).strip()
        out.setdefault(name, body)
    return out


def findings_text(text: str, max_words: int = MAX_WORDS) -> tuple[str, int] | None:
    """The FINDINGS section (a header starting with FINDINGS, e.g. "FINDINGS AND IMPRESSION"), else the
    IMPRESSION section, capped at ``max_words`` words. Returns (text, provenance index into
    REPORT_PROVENANCE) or None when neither section has text."""
    secs = report_sections(text)
    for prov, prefix in enumerate(("FINDINGS", "IMPRESSION")):
        for name, body in secs.items():
            if name.startswith(prefix) and body:
                return " ".join(body.split()[:max_words]), prov
    return None
