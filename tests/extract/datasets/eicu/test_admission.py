"""eicu.admission: patient columns for every stay, categorical codes and their mapping, the structured
admission diagnosis from the window (the latest entry wins; 23 h in, 25 h out; before admission only with
pre_admission), diagnosis groups."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from omnifuse.cache.schema import FeatureKind, ModalitySpec
from omnifuse.extract.datasets.eicu import variables
from omnifuse.extract.datasets.eicu.admission import _dx_group, build_admission
from omnifuse.extract.datasets.eicu.cohort import PATIENT_COLUMNS, read_patients, stay_rows

ALL = "admission diagnosis|All Diagnosis"
CABG = "CABG alone, coronary artery bypass grafting"
SEPSIS = "Sepsis, pulmonary"
DKA = "Diabetic ketoacidosis"


def _patients(tmp_path) -> pl.DataFrame:
    cols = {c: [""] * 3 for c in PATIENT_COLUMNS}
    cols.update(
        patientunitstayid=["10", "20", "30"],
        uniquepid=["a", "b", "c"],
        gender=["Female", "Male", ""],
        age=["> 89", "45", "70"],
        admissionheight=["160", "", "20"],  # 20 cm: out of range
        admissionweight=["", "80", "70"],
        unittype=["MICU", "Neuro ICU", "a unit not listed"],
        unitstaytype=["readmit", "admit", ""],
        unitadmitsource=["Floor", "Operating Room", ""],
        hospitaladmitsource=["", "Emergency Department", "Floor"],
        hospitaladmitoffset=["-90", "0", "120"],  # after the unit admission: inconsistent, missing
        unitvisitnumber=["2", "1", "1"],
    )
    path = tmp_path / "patient.csv"
    pl.DataFrame(cols).write_csv(path)
    return read_patients(path)


def _admission_dx(tmp_path) -> dict:
    rows = [
        # (id, stay, entered offset, path)
        (1, 10, 30, f"{ALL}|Non-operative|Diagnosis|Respiratory|{SEPSIS}"),
        (2, 10, 1380, f"{ALL}|Operative|Diagnosis|Cardiovascular|{CABG}"),  # 23 h: in, and the latest
        (3, 10, 1500, f"{ALL}|Non-operative|Diagnosis|Metabolic/Endocrine|{DKA}"),  # 25 h: never read
        (4, 10, 1380, "admission diagnosis|Elective|Yes"),
        (
            5,
            10,
            40,
            "admission diagnosis|Was the patient admitted from the O.R. or went to the O.R. within 4 "
            "hours of admission?|Yes",
        ),
        (6, 20, -60, f"{ALL}|Non-operative|Diagnosis|Metabolic/Endocrine|{DKA}"),  # before unit admission
        (7, 20, -60, variables.ADMIT_DX_TRANSFER_48H + "|" + variables.ADMIT_DX_TRANSFER_48H.split("|")[1]),
        (
            8,
            20,
            10,
            "admission diagnosis|Was the patient admitted from the O.R. or went to the O.R. within 4 "
            "hours of admission?|No",
        ),
    ]
    path = tmp_path / "admissionDx.csv"
    pl.DataFrame(
        {
            "admissiondxid": [str(r[0]) for r in rows],
            "patientunitstayid": [str(r[1]) for r in rows],
            "admitdxenteredoffset": [str(r[2]) for r in rows],
            "admitdxpath": [r[3] for r in rows],
            "admitdxname": [""] * len(rows),
            "admitdxtext": [""] * len(rows),
        }
    ).write_csv(path)
    return {"admissionDx": path}


def _col(raw, x, name):
    return x[:, raw.feature_names.index(name)]


def test_patient_columns_every_stay_codes_and_mapping(tmp_path):
    pat = _patients(tmp_path)
    x, present, raw = build_admission({}, pat, stay_rows(pat), False)
    assert raw.name == "admission" and raw.kind == "tabular" and x.dtype == np.float32
    assert raw.feature_names == [
        "age",
        "admission_height",
        "admission_weight",
        "sex_male",
        "unit_type",
        "unit_stay_type",
        "unit_admit_source",
        "hospital_admit_source",
        "pre_icu_los_h",
        "unit_visit_number",
    ]  # no admissionDx table: no diagnosis columns
    assert present.tolist() == [True, True, True] and x.shape == (3, 10)
    assert _col(raw, x, "age").tolist() == [90.0, 45.0, 70.0]
    h = _col(raw, x, "admission_height")
    assert h[0] == 160.0 and np.isnan(h[1:]).all()
    assert _col(raw, x, "sex_male")[:2].tolist() == [0.0, 1.0] and math.isnan(_col(raw, x, "sex_male")[2])
    # codes are positions in the fixed lists; empty or unlisted values are missing
    ut = _col(raw, x, "unit_type")
    assert ut[:2].tolist() == [variables.UNIT_TYPES.index("MICU"), variables.UNIT_TYPES.index("Neuro ICU")]
    assert math.isnan(ut[2])
    assert _col(raw, x, "unit_stay_type")[:2].tolist() == [1.0, 0.0] and math.isnan(_col(raw, x, "unit_stay_type")[2])
    src = _col(raw, x, "hospital_admit_source")
    assert math.isnan(src[0]) and src[1] == variables.HOSPITAL_ADMIT_SOURCES.index("Emergency Department")
    los = _col(raw, x, "pre_icu_los_h")
    assert los[0] == pytest.approx(1.5) and los[1] == 0.0 and math.isnan(los[2])
    assert _col(raw, x, "unit_visit_number").tolist() == [2.0, 1.0, 1.0]
    pre = raw.preprocessing
    assert pre["categories"]["unit_type"] == list(variables.UNIT_TYPES)
    assert pre["categories"]["unit_stay_type"] == ["admit", "readmit", "transfer", "stepdown/other"]
    kinds = dict(zip(raw.feature_names, pre["feature_kinds"], strict=True))
    assert kinds["age"] == "numeric" and kinds["sex_male"] == "binary" and kinds["pre_icu_los_h"] == "numeric:log"
    assert (
        kinds["unit_type"] == f"categorical:{len(variables.UNIT_TYPES)}" and kinds["unit_stay_type"] == "categorical:4"
    )
    assert [raw.feature_names[j] for j in pre["continuous"]] == [
        "age",
        "admission_height",
        "admission_weight",
        "pre_icu_los_h",
        "unit_visit_number",
    ]
    assert raw.ranges is not None and raw.ranges["unit_type"] == (0, len(variables.UNIT_TYPES) - 1)
    assert raw.ranges["sex_male"] == (0, 1) and raw.ranges["pre_icu_los_h"] == variables.PRE_ICU_LOS_RANGE


def test_admission_diagnosis_window_latest_entry_and_codes(tmp_path):
    pat = _patients(tmp_path)
    x, present, raw = build_admission(_admission_dx(tmp_path), pat, stay_rows(pat), False)
    names = raw.feature_names
    assert names[10:] == [
        "admit_operative",
        "admit_elective",
        "admit_from_or",
        "admit_transfer_48h",
        "admit_organ_system",
        "admit_dx_group",
        "admit_dx",
    ]
    cats = raw.preprocessing["categories"]
    # the stays' diagnoses (the latest in the window), sorted: Sepsis (stay 10) is superseded at 23 h, DKA is
    # before admission (stay 20) or after 24 h (stay 10)
    assert cats["admit_dx"] == [CABG]
    assert cats["admit_organ_system"] == list(variables.ADMIT_ORGAN_SYSTEMS)
    groups = [g for g, _ in variables.ADMIT_DX_GROUPS] + ["Other"]
    assert cats["admit_dx_group"] == groups
    # stay 10: the 23 h entry is the latest in the window (the 25 h one is never read)
    assert _col(raw, x, "admit_operative")[0] == 1.0
    assert _col(raw, x, "admit_organ_system")[0] == variables.ADMIT_ORGAN_SYSTEMS.index("Cardiovascular")
    assert _col(raw, x, "admit_dx")[0] == cats["admit_dx"].index(CABG)
    assert _col(raw, x, "admit_dx_group")[0] == groups.index("Cardiac surgery")
    assert _col(raw, x, "admit_elective")[0] == 1.0 and _col(raw, x, "admit_from_or")[0] == 1.0
    assert _col(raw, x, "admit_transfer_48h")[0] == 0.0  # stay 10 has entries, none of them the transfer box
    # stay 20: its diagnosis and transfer entries precede unit admission -> not read; the O.R. answer is
    for name in ("admit_operative", "admit_organ_system", "admit_dx", "admit_dx_group", "admit_elective"):
        assert math.isnan(_col(raw, x, name)[1]), name
    assert _col(raw, x, "admit_from_or")[1] == 0.0 and _col(raw, x, "admit_transfer_48h")[1] == 0.0
    # stay 30: no admissionDx entry at all: every diagnosis column missing, the stay still present
    assert np.isnan(x[2, 10:]).all() and present.tolist() == [True, True, True]
    assert raw.preprocessing["feature_kinds"][names.index("admit_dx")] == "categorical:1"
    ModalitySpec("admission", "tabular", raw.shape, "float32", preprocessing=raw.preprocessing, feature_names=names)

    # with pre_admission (the pre_admission_text option) stay 20's entries before admission are read
    x2, _, raw2 = build_admission(_admission_dx(tmp_path), pat, stay_rows(pat), True)
    cats2 = raw2.preprocessing["categories"]["admit_dx"]
    assert cats2 == [CABG, DKA]
    assert _col(raw2, x2, "admit_dx")[1] == cats2.index(DKA)
    assert _col(raw2, x2, "admit_dx_group")[1] == groups.index("Diabetic emergency")
    assert _col(raw2, x2, "admit_transfer_48h")[1] == 1.0 and _col(raw2, x2, "admit_operative")[1] == 0.0
    assert _col(raw2, x2, "admit_dx")[0] == cats2.index(CABG)  # the 25 h entry stays out either way


def test_diagnosis_groups_on_real_names():
    df = pl.DataFrame(
        {
            "dx": [
                "Sepsis, renal/UTI (including bladder)",
                "Cardiac arrest (with or without respiratory arrest; for respiratory arrest see Respiratory System)",
                "Infarction, acute myocardial (MI)",
                "Aortic valve replacement (isolated)",
                "Hemorrhage/hematoma, intracranial",
                "Encephalopathy, hepatic",
                "Encephalopathies (excluding hepatic)",
                "Bleeding, upper GI",
                "Head/multiple trauma",
                "Facial surgery (if related to trauma, see Trauma)",
                "Overdose, street drugs (opiates, cocaine, amphetamine)",
                "Appendectomy",
            ]
        }
    )
    got = df.select(g=_dx_group(pl.col("dx")))["g"].to_list()
    assert got == [
        "Sepsis",
        "Cardiac arrest",
        "Acute coronary syndrome",
        "Cardiac surgery",
        "Stroke, intracranial haemorrhage",
        "Hepatic failure",
        "Coma, encephalopathy",
        "GI bleeding",
        "Trauma",
        "Other",  # mentions trauma only to send trauma elsewhere
        "Overdose, withdrawal",
        "Other",
    ]
    assert FeatureKind.parse("categorical:23").n_categories == len(variables.ADMIT_DX_GROUPS) + 1
