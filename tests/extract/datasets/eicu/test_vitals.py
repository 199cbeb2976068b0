"""eicu.vitals: long rows from wide and keyed tables, intake/output rules, hourly binning into sparse rows."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from omnifuse.extract.datasets.eicu import variables
from omnifuse.extract.datasets.eicu.readers import EicuDataError
from omnifuse.extract.datasets.eicu.vitals import SOURCES, build_vitals, vital_sources, vitals_modality

INDEX = pl.DataFrame({"stay": [10, 20, 30], "row": [0, 1, 2]})


def _aperiodic(path):
    pl.DataFrame(
        {
            "vitalaperiodicid": ["1", "2", "3", "4", "5", "6", "7"],
            "patientunitstayid": ["10", "10", "10", "10", "10", "20", "99"],
            "observationoffset": ["5", "50", "50", "1440", "1441", "30", "10"],
            "noninvasivesystolic": ["120", "130", "125", "90", "200", "400", "100"],
        }
        | {c: [""] * 7 for c in variables.VITAL_APERIODIC if c != "noninvasivesystolic"}
    ).write_csv(path)


def _respiratory(path):
    pl.DataFrame(
        {
            "respchartid": ["1", "2", "3"],
            "patientunitstayid": ["10", "10", "20"],
            "respchartoffset": ["0", "70", "70"],
            "respchartentryoffset": ["0", "2000", "80"],  # entered after the window: never read
            "respchartvaluelabel": ["FiO2", "FiO2", "Not allow-listed"],
            "respchartvalue": ["0.4", "50", "1"],
        }
    ).write_csv(path)


def test_hourly_bins_last_value_ranges_and_window(tmp_path):
    _aperiodic(tmp_path / "vitalAperiodic.csv")
    _respiratory(tmp_path / "respiratoryCharting.csv")
    tables = {
        "vitalAperiodic": tmp_path / "vitalAperiodic.csv",
        "respiratoryCharting": tmp_path / "respiratoryCharting.csv",
    }
    sources, feats = vital_sources(tables)
    assert [s for s, _ in sources] == ["vitalAperiodic", "respiratoryCharting"]  # SOURCES order, not the dict's
    names = [f.name for f in feats]
    assert names[: len(variables.VITAL_APERIODIC)] == [v.name for v in variables.VITAL_APERIODIC.values()]
    assert names.count("fio2") == 1  # three labels, one feature
    series, counts = build_vitals(sources, feats, INDEX)
    sbp, fio2 = names.index("nibp_systolic"), names.index("fio2")
    x = series.dense(0)
    assert x.shape == (24, len(feats)) and x.dtype == np.float32
    assert x[0, sbp] == 125.0  # offset 50: two rows, the later row id wins a tie on offset
    assert x[23, sbp] == 90.0  # offset 1,440 is in the last bin; 1,441 is outside the window
    assert x[0, fio2] == 40.0  # 0.4 read as a fraction: 40 %
    assert np.isnan(x[1, fio2])  # entered after the window
    assert series.dense(1) is None  # stay 20: 400 mmHg is out of range, the label not allow-listed
    assert series.dense(2) is None and series.present().tolist() == [True, False, False]
    assert counts["rows_out_of_range"] == 1 and counts["cells"] == 3
    raw = vitals_modality(sources, feats)
    assert raw.shape == (24, len(feats)) and raw.preprocessing["sources"] == ["vitalAperiodic", "respiratoryCharting"]
    assert raw.preprocessing["valid_range"]["nibp_systolic"] == [25, 300]


def test_intake_output_totals_count_only_times_with_cells_of_their_kind(tmp_path):
    io = "flowsheet|Flowsheet Cell Labels|I&O|"
    rows = [  # id, stay, off, path, label, cell, intake, output, net
        ("1", "10", "10", io + "Intake (ml)|IV", "IV", "100", "100", "0", "100"),
        ("2", "10", "20", io + "Weight|Bodyweight (kg)", "Bodyweight (kg)", "80", "0", "0", "0"),
        ("3", "10", "30", variables.URINE_PATH_PREFIX + "Urine", "Urine", "40", "0", "40", "-40"),
        ("4", "10", "40", variables.URINE_PATH_PREFIX + "Urine", "Urine", "60", "0", "60", "-60"),
    ]
    cols = [
        "intakeoutputid",
        "patientunitstayid",
        "intakeoutputoffset",
        "cellpath",
        "celllabel",
        "cellvaluenumeric",
        "intaketotal",
        "outputtotal",
        "nettotal",
    ]
    df = pl.DataFrame({c: [r[i] for r in rows] for i, c in enumerate(cols)})
    df.with_columns(intakeoutputentryoffset=pl.lit("0")).write_csv(tmp_path / "intakeOutput.csv")
    sources, feats = vital_sources({"intakeOutput": tmp_path / "intakeOutput.csv"})
    series, _ = build_vitals(sources, feats, INDEX)
    x = series.dense(0)[0]
    value = {f.name: x[i] for i, f in enumerate(feats)}
    assert value["intake_ml"] == 100.0  # the weight-only time's 0 is not "no intake"
    assert value["output_ml"] == 100.0 and value["urine_ml"] == 100.0  # summed over the hour
    assert value["net_balance_ml"] == 0.0 and value["bodyweight"] == 80.0


def test_no_source_gives_no_rows_and_sources_are_declared_once(tmp_path):
    series, counts = build_vitals([], [], INDEX)
    assert series.present().tolist() == [False, False, False] and counts == {}
    assert list(SOURCES) == [
        "vitalAperiodic",
        "respiratoryCharting",
        "intakeOutput",
        "vitalPeriodic",
        "nurseCharting",
        "lab",
    ]
    assert all(math.isfinite(v.lo) and v.lo < v.hi for _, vs in SOURCES.values() for v in vs)
    (tmp_path / "lab.csv").write_text("labid,patientunitstayid,labresultoffset\n1,10,5\n")
    with pytest.raises(EicuDataError, match="eICU table 'lab' lacks columns"):
        vital_sources({"lab": tmp_path / "lab.csv"})
