"""eicu.text: entry paths as readable lines, ordering and de-duplication, the window, history provenance."""

from __future__ import annotations

import polars as pl

from omnifuse.extract.datasets.eicu.text import (
    HISTORY_PROVENANCE,
    collect_lines,
    off_filter,
    path_line,
    text_modalities,
)

INDEX = pl.DataFrame({"stay": [10, 20, 30], "row": [0, 1, 2]})


def test_path_line_drops_prefixes_repeats_and_same_values():
    df = pl.DataFrame(
        {
            "path": ["notes/Progress Notes/Physical Exam/Physical Exam/Neurologic/GCS/15", "a/b/B", "a/b", None],
            "value": ["15", "", "Yes", "x"],
        }
    )
    out = df.select(path_line(pl.col("path"), pl.col("value"), ("notes/Progress Notes/Physical Exam/",), "/"))
    assert out["path"].to_list() == ["Physical Exam / Neurologic / GCS / 15", "a / b", "a / b: Yes", ": x"]


def test_collect_lines_orders_by_offset_key_id_and_keeps_distinct():
    lf = pl.LazyFrame(
        {
            "stay": [1, 1, 1, 1, 2],
            "off": [5, 0, 0, 7, 0],
            "key": ["b", "z", "a", "c", "k"],
            "ord": [1, 2, 3, 4, 5],
            "line": ["second", "third?", "first", "second", "  "],
        }
    )
    assert collect_lines(lf) == {1: ["first", "third?", "second"]}  # blank lines dropped, repeats kept once


def test_window_and_pre_admission_offsets():
    off = pl.DataFrame({"o": [-60, 0, 1440, 1441]})
    assert off.select(off_filter(pl.col("o"), False))["o"].to_list() == [False, True, True, False]
    assert off.select(off_filter(pl.col("o"), True))["o"].to_list() == [True, True, True, False]


def _write(tmp_path, name, cols):
    pl.DataFrame(cols).write_csv(tmp_path / f"{name}.csv")
    return tmp_path / f"{name}.csv"


def test_text_modalities_history_provenance_and_diagnosis_flags(tmp_path):
    tables = {
        "admissionDx": _write(
            tmp_path,
            "admissionDx",
            {
                "patientunitstayid": ["10", "20"],
                "admissiondxid": ["1", "2"],
                "admitdxenteredoffset": ["5", "5"],
                "admitdxpath": ["admission diagnosis|Elective|Yes", "admission diagnosis|Sepsis"],
                "admitdxtext": ["Yes", "Sepsis"],
            },
        ),
        "pastHistory": _write(
            tmp_path,
            "pastHistory",
            {
                "patientunitstayid": ["10", "30", "30"],
                "pasthistoryid": ["1", "2", "3"],
                "pasthistoryenteredoffset": ["0", "-10", "1500"],
                "pasthistorypath": ["notes/Progress Notes/Past History/Organ Systems/Cardiac/CHF"] * 3,
                "pasthistoryvalue": ["CHF"] * 3,
                "pasthistoryvaluetext": ["CHF"] * 3,
            },
        ),
        "diagnosis": _write(
            tmp_path,
            "diagnosis",
            {
                "patientunitstayid": ["10", "10"],
                "diagnosisid": ["1", "2"],
                "activeupondischarge": ["False", "True"],
                "diagnosisoffset": ["30", "40"],
                "diagnosisstring": ["cardiovascular|shock", "renal|AKI"],
            },
        ),
    }
    extra: dict[str, object] = {}
    mods = {m.raw.name: m for m in text_modalities(tables, False, INDEX, extra)}
    assert list(mods) == ["history", "diagnosis"]  # no physicalExam table: no exam modality
    history = mods["history"]
    assert history.texts[0] == "Admission diagnosis:\nElective / Yes\nPast history:\nCardiac / CHF"
    assert history.texts[1] == "Admission diagnosis:\nSepsis" and 2 not in history.texts  # stay 30: outside
    assert [HISTORY_PROVENANCE[history.provenance[r]] for r in (0, 1)] == ["admissionDx+pastHistory", "admissionDx"]
    assert history.raw.provenance_codes == HISTORY_PROVENANCE
    assert mods["diagnosis"].texts == {0: "cardiovascular / shock"} and mods["diagnosis"].provenance == {}
    assert extra["diagnosis_rows_active_upon_discharge_excluded"] == 1
    with_pre = {m.raw.name: m for m in text_modalities(tables, True, INDEX, {})}
    assert with_pre["history"].texts[2] == "Past history:\nCardiac / CHF"  # offset -10 joins; 1,500 never
    assert HISTORY_PROVENANCE[with_pre["history"].provenance[2]] == "pastHistory"
