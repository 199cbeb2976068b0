"""eicu.apache: -1 and empty read as missing, one row per stay, patient features, the continuous columns."""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from omnifuse.extract.datasets.eicu import variables
from omnifuse.extract.datasets.eicu.apache import build_apache, patient_features

INDEX = pl.DataFrame({"stay": [10, 20, 30], "row": [0, 1, 2]})


def _patients() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "stay": [10, 20, 30],
            "gender": ["Male", "Female", "Unknown"],
            "age": ["> 89", "45", ""],
            "admissionheight": ["170", "20", ""],  # 20 cm: out of range
            "admissionweight": ["80", "", "70"],
            "unittype": ["MICU", "SICU", "Not a unit"],
            "unitadmitsource": ["Floor", "", "ICU"],
        }
    )


def test_patient_features():
    df, numeric, onehot, units = patient_features(_patients())
    assert numeric == ["age", "admission_height", "admission_weight"]
    assert df["age"].to_list() == [90.0, 45.0, None] and df["admission_height"].to_list() == [170.0, None, None]
    assert df["sex_male"].to_list() == [1.0, 0.0, None]
    assert df["unit_type=MICU"].to_list() == [1.0, 0.0, 0.0] and df["unit_admit_source=ICU"].to_list() == [0, 0, 1]
    assert len(onehot) == len(variables.UNIT_TYPES) + len(variables.UNIT_ADMIT_SOURCES)
    assert units["sex_male"].startswith("0/1") and units["age"] == "years"


def test_build_apache(tmp_path):
    aps = {c: [""] * 3 for c in variables.APACHE_APS}
    aps.update(
        patientunitstayid=["10", "10", "20"],
        apacheapsvarid=["2", "1", "3"],
        heartrate=["100", "-1", "90"],
        vent=["1", "0", "0"],
    )
    pl.DataFrame(aps).write_csv(tmp_path / "apacheApsVar.csv")
    x, present, raw = build_apache({"apacheApsVar": tmp_path / "apacheApsVar.csv"}, _patients(), INDEX)
    names = raw.feature_names
    assert names[: len(variables.APACHE_APS)] == [f"aps_{c}" for c in variables.APACHE_APS]  # no apachePredVar
    assert x.shape == (3, len(names)) and x.dtype == np.float32 and raw.shape == (len(names),)
    assert present.tolist() == [True, True, False]  # stay 30 has no APACHE row: missing, patient data unused
    hr, vent, age = names.index("aps_heartrate"), names.index("aps_vent"), names.index("age")
    assert math.isnan(x[0, hr]) and x[0, vent] == 0.0  # the lowest row id wins; -1 is "not recorded"
    assert x[1, hr] == 90.0 and x[0, age] == 90.0 and np.isnan(x[2]).all()
    cont = raw.preprocessing["continuous"]
    assert hr in cont and age in cont and vent not in cont and names.index("sex_male") not in cont
