"""eicu.care_limitation: code status flags from carePlanGeneral in the window; the adapter reads it only
when asked (the option is off by default and its help says why)."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from omnifuse.extract.datasets.eicu import EicuAdapter, EicuDataError, EicuDemoOptions, EicuOptions
from omnifuse.extract.datasets.eicu.care_limitation import build_care_limitation
from omnifuse.extract.datasets.registry import build_adapter
from omnifuse.options import declared

INDEX = pl.DataFrame({"stay": [10, 20, 30], "row": [0, 1, 2]})


def _care_plan(tmp_path):
    rows = [
        # (stay, offset, group, value)
        (10, 30, "Care Limitation", "Full therapy"),
        (10, 1380, "Care Limitation", "Do not resuscitate"),  # 23 h: in
        (10, 1500, "Care Limitation", "Comfort measures only"),  # 25 h: out
        (10, 40, "Ventilation", "Ventilated - chronic dependency"),  # another group
        (20, -60, "Care Limitation", "No CPR"),  # before unit admission: out
        (20, 10, "Care Limitation", "No intubation"),
        (30, 2000, "Care Limitation", "Full therapy"),
    ]
    path = tmp_path / "carePlanGeneral.csv"
    pl.DataFrame(
        {
            "cplgeneralid": [str(i) for i in range(len(rows))],
            "patientunitstayid": [str(r[0]) for r in rows],
            "activeupondischarge": ["True"] * len(rows),
            "cplitemoffset": [str(r[1]) for r in rows],
            "cplgroup": [r[2] for r in rows],
            "cplitemvalue": [r[3] for r in rows],
        }
    ).write_csv(path)
    return path


def test_care_limitation_flags_in_the_window(tmp_path):
    x, present, raw = build_care_limitation(_care_plan(tmp_path), INDEX)
    assert raw.feature_names == [
        "cl_full_therapy",
        "cl_do_not_resuscitate",
        "cl_comfort_measures_only",
        "cl_other_limitation",
    ]
    assert present.tolist() == [True, True, False]
    assert x[0].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert x[1].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert all(math.isnan(v) for v in x[2])
    assert raw.preprocessing["feature_kinds"] == ["binary"] * 4 and "predicts death" in raw.preprocessing["warning"]


def test_option_off_by_default_and_documented(tmp_path):
    for cls in (EicuOptions, EicuDemoOptions):
        opt = next(d for d in declared(cls) if d.name == "care_limitation")
        assert opt.default is False
        assert "clinician's decision that predicts death" in opt.info.help
    demo = build_adapter("eicu-demo")
    assert demo.options()["care_limitation"] is False
    assert "care_limitation" not in [m.name for m in demo.modalities()]
    on = build_adapter("eicu-demo", care_limitation=True)
    assert on.options()["care_limitation"] is True
    assert [m.name for m in on.modalities()][-1] == "care_limitation"
    assert on.cohort().extra["coverage"]["care_limitation"] == 2107
    # a folder without carePlanGeneral cannot give it
    root = tmp_path / "eicu"
    root.mkdir()
    demo_patient = demo.tables["patient"]
    (root / "patient.csv.gz").symlink_to(demo_patient)
    with pytest.raises(EicuDataError, match="carePlanGeneral"):
        EicuAdapter(root, care_limitation=True).cohort()
    assert np.all(EicuAdapter(root).cohort().stay_id == demo.cohort().stay_id)
