"""The ``admission`` modality: tabular ``[F]`` float32 per stay, what is known when the stay begins.

From ``patient`` (every stay has a row, so every stay has the modality): age, sex, admission height and
weight (as in ``apache``: the same parsing and ranges), unit type, unit stay type, unit and hospital
admission source (categorical codes), hours in hospital before the unit admission and the unit visit number.
From ``admissionDx`` (entries entered in the window, or before it with ``pre_admission``; the same rows as
the ``history`` text): the APACHE admission diagnosis as structured columns (operative, elective, admitted
from the operating room, transferred from another hospital within 48 h, organ system, diagnosis group,
diagnosis). ``variables`` holds the category lists and the diagnosis groups.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from omnifuse.extract.datasets.base import RawModality
from omnifuse.extract.datasets.eicu import variables
from omnifuse.extract.datasets.eicu.apache import patient_features
from omnifuse.extract.datasets.eicu.readers import integer, num, require, scan, text
from omnifuse.extract.datasets.eicu.tabular import Column, binary, categorical, code_of, in_range, to_matrix
from omnifuse.extract.datasets.eicu.tabular import tabular_modality as _tabular
from omnifuse.extract.datasets.eicu.text import off_filter

ADMIT_DX_COLUMNS = ["patientunitstayid", "admissiondxid", "admitdxenteredoffset", "admitdxpath"]


def patient_columns() -> list[Column]:
    """The columns read from ``patient``, in order."""
    p = "patient"
    lo_los, hi_los = variables.PRE_ICU_LOS_RANGE
    out = [
        Column(name, "numeric", unit, lo, hi, source=f"{p}.{col}")
        for col, (name, unit, lo, hi) in variables.PATIENT_NUMERIC.items()
    ]
    return [
        *out,
        binary("sex_male", "0/1 (other or unknown: missing)", f"{p}.gender"),
        categorical("unit_type", variables.UNIT_TYPES, f"{p}.unittype"),
        categorical("unit_stay_type", variables.UNIT_STAY_TYPES, f"{p}.unitstaytype"),
        categorical("unit_admit_source", variables.UNIT_ADMIT_SOURCES, f"{p}.unitadmitsource"),
        categorical("hospital_admit_source", variables.HOSPITAL_ADMIT_SOURCES, f"{p}.hospitaladmitsource"),
        Column("pre_icu_los_h", "numeric:log", "hours", lo_los, hi_los, source=f"{p}.hospitaladmitoffset"),
        Column("unit_visit_number", "numeric", "count", *variables.UNIT_VISIT_RANGE, source=f"{p}.unitvisitnumber"),
    ]


def diagnosis_columns(dx_categories: list[str]) -> list[Column]:
    """The columns read from ``admissionDx``, in order (``dx_categories``: the diagnoses found; without
    any, there is no ``admit_dx`` column)."""
    a = "admissionDx"
    groups = tuple(g for g, _ in variables.ADMIT_DX_GROUPS) + (variables.ADMIT_DX_OTHER,)
    cols = [
        binary("admit_operative", "0/1", f"{a} All Diagnosis|Operative or Non-operative"),
        binary("admit_elective", "0/1 (asked for operative admissions)", f"{a} Elective|Yes/No"),
        binary("admit_from_or", "0/1", f"{a} admitted from or went to the O.R. within 4 h|Yes/No"),
        binary("admit_transfer_48h", "0/1", f"{a} transferred from another hospital within 48 h (checked)"),
        categorical("admit_organ_system", variables.ADMIT_ORGAN_SYSTEMS, f"{a} All Diagnosis|...|<organ system>"),
        categorical("admit_dx_group", groups, f"{a} All Diagnosis diagnosis, grouped (variables.ADMIT_DX_GROUPS)"),
    ]
    if dx_categories:
        cols.append(categorical("admit_dx", tuple(dx_categories), f"{a} All Diagnosis|...|<diagnosis>"))
    return cols


def patient_frame(pat: pl.DataFrame) -> pl.DataFrame:
    """``stay`` and the patient columns (``patient_columns``) of every stay of ``pat`` (``read_patients``)."""
    pfeat, numeric, _, _ = patient_features(pat)
    los = -num("hospitaladmitoffset") / 60.0
    lo_los, hi_los = variables.PRE_ICU_LOS_RANGE
    visit = num("unitvisitnumber")
    other = pat.select(
        "stay",
        unit_type=code_of(pl.col("unittype"), variables.UNIT_TYPES),
        unit_stay_type=code_of(pl.col("unitstaytype"), variables.UNIT_STAY_TYPES),
        unit_admit_source=code_of(pl.col("unitadmitsource"), variables.UNIT_ADMIT_SOURCES),
        hospital_admit_source=code_of(pl.col("hospitaladmitsource"), variables.HOSPITAL_ADMIT_SOURCES),
        pre_icu_los_h=in_range(los, lo_los, hi_los),
        unit_visit_number=in_range(visit, *variables.UNIT_VISIT_RANGE),
    )
    return pfeat.select("stay", *numeric, "sex_male").join(other, on="stay", how="left")


def _dx_group(name: pl.Expr) -> pl.Expr:
    """Diagnosis name -> its group (the first regular expression of ``ADMIT_DX_GROUPS`` that matches)."""
    matches = [pl.when(name.str.contains(rx)).then(pl.lit(g)) for g, rx in variables.ADMIT_DX_GROUPS]
    return pl.when(name.is_null()).then(None).otherwise(pl.coalesce([*matches, pl.lit(variables.ADMIT_DX_OTHER)]))


def _latest(df: pl.DataFrame, value: str) -> pl.DataFrame:
    """The latest row (offset, then row id) per stay: ``stay`` and ``value``."""
    return df.sort("stay", "off", "ord").group_by("stay", maintain_order=True).agg(pl.col(value).last())


def diagnosis_frame(path: Path, pre_admission: bool) -> tuple[pl.DataFrame, list[str]]:
    """``stay`` and the admissionDx columns (categorical codes) of every stay with an entry in the window,
    and the categories of ``admit_dx``: the stays' diagnoses (each the latest in the window), sorted."""
    lf = scan(path)
    require(lf, "admissionDx", ADMIT_DX_COLUMNS)
    rows = (
        lf.filter(off_filter(integer("admitdxenteredoffset"), pre_admission))
        .select(
            stay=integer("patientunitstayid"),
            off=integer("admitdxenteredoffset"),
            ord=integer("admissiondxid"),
            path=text("admitdxpath"),
        )
        .collect()
    )
    segs = pl.col("path").str.split("|").list.eval(pl.element().str.strip_chars())
    alldx = rows.filter(segs.list.get(1, null_on_oob=True) == variables.ADMIT_DX_ALL).with_columns(
        operative=segs.list.get(2, null_on_oob=True).replace_strict(
            variables.ADMIT_DX_OPERATIVE, default=None, return_dtype=pl.Float64
        ),
        system=segs.list.get(4, null_on_oob=True),
        dx=segs.list.get(5, null_on_oob=True),
    )
    latest = _latest(alldx.with_columns(s=pl.struct("operative", "system", "dx")), "s").unnest("s")
    frame = rows.select("stay").unique().join(latest, on="stay", how="left")
    for name, mapping in (
        ("admit_elective", variables.ADMIT_DX_ELECTIVE),
        ("admit_from_or", variables.ADMIT_DX_FROM_OR),
    ):
        answers = rows.filter(pl.col("path").is_in(list(mapping))).with_columns(
            v=pl.col("path").replace_strict(mapping, return_dtype=pl.Float64)
        )
        frame = frame.join(_latest(answers, "v").rename({"v": name}), on="stay", how="left")
    transfer = rows.group_by("stay").agg(
        admit_transfer_48h=pl.col("path").str.starts_with(variables.ADMIT_DX_TRANSFER_48H).any().cast(pl.Float64)
    )
    frame = frame.join(transfer, on="stay", how="left")
    dx_categories = sorted(x for x in frame["dx"].unique().to_list() if x)
    frame = frame.select(
        "stay",
        admit_operative="operative",
        admit_elective="admit_elective",
        admit_from_or="admit_from_or",
        admit_transfer_48h="admit_transfer_48h",
        admit_organ_system=code_of(pl.col("system"), variables.ADMIT_ORGAN_SYSTEMS),
        admit_dx_group=code_of(
            _dx_group(pl.col("dx")), [g for g, _ in variables.ADMIT_DX_GROUPS] + [variables.ADMIT_DX_OTHER]
        ),
        admit_dx=code_of(pl.col("dx"), dx_categories),
    )
    return frame, dx_categories


def build_admission(
    tables: dict[str, Path], pat: pl.DataFrame, stay_index: pl.DataFrame, pre_admission: bool
) -> tuple[np.ndarray, np.ndarray, RawModality]:
    """float32 [N, F] (NaN = not recorded), bool [N] present (any value; every stay on eICU-CRD), and the
    modality description. ``pat``: the patient frame of the cohort; ``pre_admission``: also admissionDx
    entries entered before unit admission (the ``pre_admission_text`` option)."""
    columns = patient_columns()
    frame = patient_frame(pat)
    if "admissionDx" in tables:
        dx, dx_categories = diagnosis_frame(tables["admissionDx"], pre_admission)
        columns += diagnosis_columns(dx_categories)
        frame = frame.join(dx, on="stay", how="left")
    x = to_matrix(frame, columns, stay_index)
    present = np.isfinite(x).any(axis=1)
    raw = _tabular(
        "admission",
        columns,
        {
            "age_top_code": "'> 89' read as 90",
            "admission_dx": "the latest All Diagnosis entry of admissionDx in the window",
            "pre_admission_entries": bool(pre_admission),
        },
    )
    return x, present, raw
