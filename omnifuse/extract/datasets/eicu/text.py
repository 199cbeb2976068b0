"""The text modalities ``history``, ``diagnosis`` and ``exam``: one string per stay, one line per entry.

Each source's entries inside the window (or, with ``pre_admission``, also before unit admission) become
lines such as ``Neurologic / GCS / 15``, distinct and ordered by offset, then path, then row id.

- ``history``: "Admission diagnosis:" lines (``admissionDx``) then "Past history:" lines (``pastHistory``);
  its provenance says which of the two the stay has (``HISTORY_PROVENANCE``);
- ``diagnosis``: ``diagnosis`` strings, except rows flagged active upon discharge (counted, never read);
- ``exam``: ``physicalExam`` paths and values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from omnifuse.extract.datasets.base import RawModality
from omnifuse.extract.datasets.eicu import variables
from omnifuse.extract.datasets.eicu.readers import in_window, integer, require, scan, text

TEXT_MODALITIES = ("history", "diagnosis", "exam")
HISTORY_PROVENANCE = ["admissionDx+pastHistory", "admissionDx", "pastHistory"]
TEXT_SOURCES = {"history": ("pastHistory", "admissionDx"), "diagnosis": ("diagnosis",), "exam": ("physicalExam",)}


@dataclass
class TextModality:
    """One text modality: row -> text (non-blank), row -> provenance code index, and its description."""

    raw: RawModality
    texts: dict[int, str]
    provenance: dict[int, int] = field(default_factory=dict)


def path_line(path: pl.Expr, value: pl.Expr, prefixes: tuple[str, ...], sep: str) -> pl.Expr:
    """``a/b/C/c`` + value -> ``a / b / C`` (+ ``: value`` when it differs from the last segment)."""
    p = path.fill_null("").str.strip_chars()
    for pre in prefixes:
        p = p.str.strip_prefix(pre)
    segs = p.str.split(sep).list.eval(pl.element().str.strip_chars()).list.eval(pl.element().filter(pl.element() != ""))
    last = segs.list.last().str.to_lowercase()
    prev = segs.list.get(-2, null_on_oob=True).str.to_lowercase()
    segs = pl.when(last == prev).then(segs.list.head(segs.list.len() - 1)).otherwise(segs)
    base = segs.list.join(" / ")
    val = value.fill_null("").str.strip_chars()
    same = (val == "") | (val.str.to_lowercase() == segs.list.last().str.to_lowercase())
    return pl.when(same).then(base).otherwise(pl.concat_str([base, pl.lit(": "), val]))


def collect_lines(lf: pl.LazyFrame) -> dict[int, list[str]]:
    """(stay, off, key, ord, line) -> stay -> distinct non-empty lines by offset, then key, then row id."""
    df = (
        lf.with_columns(line=pl.col("line").str.strip_chars())
        .filter(pl.col("line").is_not_null() & (pl.col("line") != ""))
        .collect()
        .sort("stay", "off", "key", "ord")
        .group_by("stay", maintain_order=True)
        .agg(pl.col("line").unique(maintain_order=True))
    )
    return dict(zip(df["stay"].to_list(), df["line"].to_list(), strict=True))


def off_filter(off: pl.Expr, pre_admission: bool) -> pl.Expr:
    """Offsets in the window, or with ``pre_admission`` any offset up to the window's end."""
    return (off <= variables.WINDOW_MIN) if pre_admission else in_window(off)


ENTRY_COLUMNS: dict[str, tuple[str, str, str]] = {
    # table -> row id, offset and path columns
    "admissionDx": ("admissiondxid", "admitdxenteredoffset", "admitdxpath"),
    "pastHistory": ("pasthistoryid", "pasthistoryenteredoffset", "pasthistorypath"),
    "physicalExam": ("physicalexamid", "physicalexamoffset", "physicalexampath"),
}
ENTRY_VALUES: dict[str, tuple[str, ...]] = {
    # table -> value columns, the first that is not null is the entry's value
    "admissionDx": ("admitdxtext",),
    "pastHistory": ("pasthistoryvaluetext", "pasthistoryvalue"),
    "physicalExam": ("physicalexamtext", "physicalexamvalue"),
}
ENTRY_PATHS: dict[str, tuple[tuple[str, ...], str]] = {
    # table -> prefixes dropped from the path, and the path's separator
    "admissionDx": (("admission diagnosis|",), "|"),
    "pastHistory": (("notes/Progress Notes/Past History/", "Organ Systems/"), "/"),
    "physicalExam": (("notes/Progress Notes/Physical Exam/", "Physical Exam/"), "/"),
}


def entry_lines(path: Path, table: str, pre_admission: bool) -> dict[int, list[str]]:
    """stay -> lines of a table of path entries (``ENTRY_COLUMNS``): admissionDx, pastHistory, physicalExam."""
    id_col, off_col, path_col = ENTRY_COLUMNS[table]
    values = ENTRY_VALUES[table]
    prefixes, sep = ENTRY_PATHS[table]
    lf = scan(path)
    require(lf, table, ["patientunitstayid", id_col, off_col, path_col, *values])
    return collect_lines(
        lf.filter(off_filter(integer(off_col), pre_admission)).select(
            stay=integer("patientunitstayid"),
            off=integer(off_col),
            key=text(path_col),
            ord=integer(id_col),
            line=path_line(pl.col(path_col), pl.coalesce([pl.col(c) for c in values]), prefixes, sep),
        )
    )


def diagnosis_lines(path: Path, pre_admission: bool) -> tuple[dict[int, list[str]], int]:
    """Lines per stay, and the number of in-window rows flagged active upon discharge (left out)."""
    lf = scan(path)
    require(
        lf,
        "diagnosis",
        ["patientunitstayid", "diagnosisid", "activeupondischarge", "diagnosisoffset", "diagnosisstring"],
    )
    flag = text("activeupondischarge").str.to_lowercase().is_in(["true", "t", "1", "yes"])
    in_win = off_filter(integer("diagnosisoffset"), pre_admission)
    flagged = int(lf.filter(in_win & flag).select(pl.len()).collect().item())
    lines = collect_lines(
        lf.filter(in_win & ~flag).select(
            stay=integer("patientunitstayid"),
            off=integer("diagnosisoffset"),
            key=text("diagnosisstring"),
            ord=integer("diagnosisid"),
            line=text("diagnosisstring").str.split("|").list.eval(pl.element().str.strip_chars()).list.join(" / "),
        )
    )
    return lines, flagged


def text_modality(
    name: str, texts: dict[int, str], codes: list[str] | None = None, provenance: dict[int, int] | None = None
) -> TextModality:
    """Keeps the non-blank texts (and their provenance) with the modality's description."""
    texts = {r: s for r, s in texts.items() if s.strip()}
    prov = {r: p for r, p in (provenance or {}).items() if r in texts}
    raw = RawModality(
        name=name, input="text", provenance_codes=codes, preprocessing={"window_min": [0, variables.WINDOW_MIN]}
    )
    return TextModality(raw, texts, prov)


def _rows_of(stay_index: pl.DataFrame) -> dict[int, int]:
    return dict(zip(stay_index["stay"].to_list(), stay_index["row"].to_list(), strict=True))


def join_lines(lines: dict[int, list[str]], stay_index: pl.DataFrame) -> dict[int, str]:
    """stay -> lines to row -> text, for the stays of the cohort with at least one line."""
    rows_of = _rows_of(stay_index)
    return {rows_of[s]: "\n".join(ls) for s, ls in lines.items() if s in rows_of and ls}


def history_modality(tables: dict[str, Path], pre_admission: bool, stay_index: pl.DataFrame) -> TextModality:
    """Admission diagnosis then past history per stay, with which of the two it has as provenance."""
    adx = entry_lines(tables["admissionDx"], "admissionDx", pre_admission) if "admissionDx" in tables else {}
    phx = entry_lines(tables["pastHistory"], "pastHistory", pre_admission) if "pastHistory" in tables else {}
    texts: dict[int, str] = {}
    prov: dict[int, int] = {}
    rows_of = _rows_of(stay_index)
    for stay in sorted(set(adx) | set(phx)):
        r = rows_of.get(stay)
        if r is None:
            continue
        parts = []
        if stay in adx:
            parts.append("Admission diagnosis:\n" + "\n".join(adx[stay]))
        if stay in phx:
            parts.append("Past history:\n" + "\n".join(phx[stay]))
        texts[r] = "\n".join(parts)
        prov[r] = 0 if (stay in adx and stay in phx) else (1 if stay in adx else 2)
    return text_modality("history", texts, HISTORY_PROVENANCE, prov)


def text_modalities(
    tables: dict[str, Path], pre_admission: bool, stay_index: pl.DataFrame, extra: dict[str, object]
) -> list[TextModality]:
    """The text modalities whose sources are present, in the order history, diagnosis, exam; the count of
    diagnosis rows left out goes into ``extra``."""
    out = []
    if "pastHistory" in tables or "admissionDx" in tables:
        out.append(history_modality(tables, pre_admission, stay_index))
    if "diagnosis" in tables:
        lines, flagged = diagnosis_lines(tables["diagnosis"], pre_admission)
        extra["diagnosis_rows_active_upon_discharge_excluded"] = flagged
        out.append(text_modality("diagnosis", join_lines(lines, stay_index)))
    if "physicalExam" in tables:
        exam = entry_lines(tables["physicalExam"], "physicalExam", pre_admission)
        out.append(text_modality("exam", join_lines(exam, stay_index)))
    return out
