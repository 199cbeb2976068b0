"""eicu.cohort: the patient table's checks, the mortality label and the APACHE IVa reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from omnifuse.extract.datasets.eicu.cohort import (
    PATIENT_COLUMNS,
    apache_iva_reference,
    build_cohort,
    mortality_labels,
    read_patients,
    stay_rows,
)
from omnifuse.extract.datasets.eicu.readers import EicuDataError


def _patients(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    """rows of (patientunitstayid, uniquepid, hospitaldischargestatus); other columns empty."""
    cols = {c: [""] * len(rows) for c in PATIENT_COLUMNS}
    cols["patientunitstayid"] = [r[0] for r in rows]
    cols["uniquepid"] = [r[1] for r in rows]
    cols["hospitaldischargestatus"] = [r[2] for r in rows]
    pl.DataFrame(cols).write_csv(path)
    return path


def test_patients_sorted_by_stay_and_checked(tmp_path):
    pat = read_patients(_patients(tmp_path / "p.csv", [("30", "b", "Alive"), ("10", "a", "Expired")]))
    assert pat["stay"].to_list() == [10, 30] and stay_rows(pat)["row"].to_list() == [0, 1]
    for rows, message in (
        ([("1", "a", ""), ("1", "b", "")], "repeats patientunitstayid"),
        ([("x", "a", "")], "without a numeric patientunitstayid"),
        ([("1", "", "")], "without uniquepid"),
    ):
        with pytest.raises(EicuDataError, match=message):
            read_patients(_patients(tmp_path / "bad.csv", rows))


def test_mortality_label_masks_unknown_status():
    y, mask = mortality_labels(pl.Series(["Expired", "Alive", "", "Unknown"]))
    assert y[:, 0].tolist() == [1.0, 0.0, 0.0, 0.0] and y.dtype == np.float32
    assert mask.tolist() == [True, True, False, False]


def test_apache_iva_reference_first_iva_row_in_range(tmp_path):
    pl.DataFrame(
        {
            "patientunitstayid": ["10", "10", "10", "20", "30", "99"],
            "apachepatientresultsid": ["5", "3", "1", "7", "8", "9"],
            "apacheversion": ["IVa", "IVa", "IV", "IVa", "IVa", "IVa"],
            "predictedhospitalmortality": ["0.9", "0.25", "0.5", "-1", "0.1", "0.3"],
        }
    ).write_csv(tmp_path / "r.csv")
    index = pl.DataFrame({"stay": [10, 20, 30], "row": [0, 1, 2]})
    ref, mask = apache_iva_reference({"apachePatientResult": tmp_path / "r.csv"}, index)
    assert ref.tolist() == pytest.approx([0.25, 0.0, 0.1])  # lowest result id of version IVa; -1 not computed
    assert mask.tolist() == [True, False, True]
    ref, mask = apache_iva_reference({}, index)
    assert not mask.any() and not ref.any()


def test_cohort_counts(tmp_path):
    tables = {"patient": _patients(tmp_path / "p.csv", [("1", "a", "Expired"), ("2", "a", "Alive"), ("3", "b", "")])}
    pat = read_patients(tables["patient"])
    c = build_cohort(tables, pat, stay_rows(pat))
    assert c.stay_id.tolist() == [1, 2, 3] and c.subject_id.tolist() == ["a", "a", "b"]
    assert {k: c.extra[k] for k in ("stays", "patients", "expired", "alive", "unlabelled")} == {
        "stays": 3,
        "patients": 2,
        "expired": 1,
        "alive": 1,
        "unlabelled": 1,
    }
    assert c.extra["tables_present"] == ["patient"] and "lab" in c.extra["tables_absent"]
    assert [t.name for t in c.tasks] == ["mortality"] and "apache_iva" in c.references
