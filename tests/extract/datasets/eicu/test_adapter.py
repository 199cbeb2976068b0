"""The eICU adapters on the bundled real demo (2,520 stays): counts, coverage, known values, leakage guards,
declared plausible ranges that mask nothing of the real data.

Expected values are recomputed here from the raw CSV files with the standard library (csv + gzip), not with
the adapter's polars code.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from omnifuse.extract.datasets.base import Adapter, Item
from omnifuse.extract.datasets.eicu import EicuAdapter, EicuDataError, EicuDemoAdapter, demo_root
from omnifuse.extract.datasets.eicu.variables import URINE_LABELS, URINE_PATH_PREFIX
from omnifuse.extract.datasets.registry import build_adapter
from tests.helpers import masked_by_declared_ranges

DEMO = demo_root()
WINDOW = 1440
TEXT = ("history", "diagnosis", "exam")


def read_rows(table: str, root: Path = DEMO) -> list[dict[str, str]]:
    path = root / f"{table}.csv.gz"
    with gzip.open(path, "rt", newline="") as f:
        return list(csv.DictReader(f))


def fnum(s: str) -> float | None:
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


@pytest.fixture(scope="module")
def demo() -> EicuDemoAdapter:
    a = build_adapter("eicu-demo")
    assert isinstance(a, EicuDemoAdapter)
    return a


@pytest.fixture(scope="module")
def all_inputs(demo) -> dict[str, list]:
    rows = np.arange(len(demo.cohort()))
    return {m.name: demo.inputs(m.name, rows) for m in demo.modalities()}


@pytest.fixture(scope="module")
def row_of(demo) -> dict[int, int]:
    return {int(s): i for i, s in enumerate(demo.cohort().stay_id)}


# ------------------------------------------------------------------------------------------- registry
def test_registry_and_protocol(demo):
    assert isinstance(demo, Adapter)
    assert demo.name == "eicu-demo" and demo.version == "2.0.1"
    full = build_adapter("eicu", root=str(DEMO))
    assert isinstance(full, EicuAdapter) and full.name == "eicu"
    with pytest.raises(ValueError, match="--dataset eicu needs --root"):
        build_adapter("eicu")
    with pytest.raises(ValueError, match="--dataset eicu-demo does not use --root"):
        build_adapter("eicu-demo", root="/somewhere")
    with pytest.raises(EicuDataError, match="bundled copy"):  # the class itself, outside the registry
        EicuDemoAdapter(root="/somewhere")
    assert build_adapter("eicu-demo", pre_admission_text=True).options()["pre_admission_text"] is True


def test_bundled_copy_has_licence_and_checksums():
    assert (DEMO / "LICENSE.txt").read_text().startswith("## ODC Open Database License")
    sums = dict(reversed(line.split()) for line in (DEMO / "SHA256SUMS.txt").read_text().splitlines() if line)

    # every bundled table but intakeOutput (restored from another copy, see SOURCE.md) matches the official list
    for p in sorted(DEMO.glob("*.csv.gz")):
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
        if p.name == "intakeOutput.csv.gz":
            assert digest != sums[p.name]
        else:
            assert digest == sums[p.name], p.name


def test_bad_roots(tmp_path):
    with pytest.raises(EicuDataError, match="not a directory"):
        EicuAdapter(tmp_path / "nope")
    with pytest.raises(EicuDataError, match="patient"):
        EicuAdapter(tmp_path)
    (tmp_path / "patient.csv").write_text("patientunitstayid,age\n1,50\n")
    with pytest.raises(EicuDataError, match="lacks columns"):
        EicuAdapter(tmp_path).cohort()


# ------------------------------------------------------------------------------------ cohort, labels
def test_cohort_counts_pinned(demo):
    c = demo.cohort()
    assert len(c) == 2520
    assert np.all(np.diff(c.stay_id) > 0)
    assert len(set(c.subject_id.tolist())) == 1841
    assert c.subject_id[list(c.stay_id).index(141764)] == "002-1039"
    y, mask = c.labels["mortality"]
    assert y.shape == (2520, 1) and y.dtype == np.float32 and mask.shape == (2520,)
    assert int(y[mask].sum()) == 212  # expired
    assert int((mask & (y[:, 0] == 0)).sum()) == 2280  # alive
    assert int((~mask).sum()) == 28  # unlabelled: kept, masked
    assert [t.name for t in c.tasks] == ["mortality"] and c.tasks[0].classes == ["expired"]
    status = {int(r["patientunitstayid"]): r["hospitaldischargestatus"] for r in read_rows("patient")}
    for i, s in enumerate(c.stay_id):
        assert mask[i] == (status[int(s)] in ("Alive", "Expired"))
        assert y[i, 0] == (status[int(s)] == "Expired")


def test_apache_iva_reference(demo, row_of):
    ref, mask = demo.cohort().references["apache_iva"]
    assert int(mask.sum()) == 1683
    assert np.all((ref[mask] >= 0) & (ref[mask] <= 1)) and np.all(ref[~mask] == 0)
    expected = {}
    for r in read_rows("apachePatientResult"):
        if r["apacheversion"] == "IVa":
            expected[int(r["patientunitstayid"])] = float(r["predictedhospitalmortality"])
    assert len(expected) == 1838
    for stay, p in expected.items():
        i = row_of[stay]
        if p == -1:
            assert not mask[i]
        else:
            assert mask[i] and ref[i] == pytest.approx(p, rel=1e-6)
    assert ref[row_of[141765]] == pytest.approx(0.035813944311032138, rel=1e-6)  # IVa, not the IV row


# ------------------------------------------------------------------------------------------ coverage
def test_modalities_and_coverage_pinned(demo, all_inputs):
    ms = {m.name: m for m in demo.modalities()}
    assert list(ms) == ["vitals", "apache", "history", "diagnosis", "exam", "admission", "exam_values", "treatments"]
    v = ms["vitals"]
    assert v.input == "array" and v.kind == "timeseries" and v.shape == (24, len(v.feature_names))
    for t in ("apache", "admission", "exam_values", "treatments"):
        assert ms[t].input == "array" and ms[t].kind == "tabular" and ms[t].shape == (len(ms[t].feature_names),)
    assert all(ms[t].input == "text" for t in TEXT)
    coverage = {k: sum(x is not None for x in xs) for k, xs in all_inputs.items()}
    assert coverage == {
        "vitals": 2433,
        "apache": 2205,
        "history": 2236,
        "diagnosis": 1159,
        "exam": 2078,
        "admission": 2520,
        "exam_values": 2044,
        "treatments": 1981,
    }
    assert demo.cohort().extra["coverage"] == coverage
    for k, xs in all_inputs.items():
        for x in xs:
            if x is None:
                continue
            assert isinstance(x, Item)
            if k in TEXT:
                assert isinstance(x.value, str) and x.value.strip()
            else:
                assert x.value.dtype == np.float32 and x.value.shape == ms[k].shape
    for x in all_inputs["vitals"]:
        if x is not None:
            assert np.isfinite(x.value).any()  # present means at least one observed value


def _stays_with_rows(table: str, off_col: str, keep=lambda r: True, entry_col: str | None = None) -> set[int]:
    out = set()
    for r in read_rows(table):
        off = fnum(r[off_col])
        if off is None or not (0 <= off <= WINDOW):
            continue
        if entry_col and fnum(r[entry_col]) is not None and fnum(r[entry_col]) > WINDOW:
            continue
        if keep(r):
            out.add(int(r["patientunitstayid"]))
    return out


def test_masks_match_source_coverage(demo, all_inputs, row_of):
    ids = demo.cohort().stay_id
    present = {k: {int(ids[i]) for i, x in enumerate(xs) if x is not None} for k, xs in all_inputs.items()}
    history = _stays_with_rows("pastHistory", "pasthistoryenteredoffset") | _stays_with_rows(
        "admissionDx", "admitdxenteredoffset"
    )
    assert present["history"] == history
    diagnosis = _stays_with_rows("diagnosis", "diagnosisoffset", keep=lambda r: r["activeupondischarge"] != "True")
    assert present["diagnosis"] == diagnosis
    assert present["exam"] == _stays_with_rows("physicalExam", "physicalexamoffset")
    apache = {int(r["patientunitstayid"]) for r in read_rows("apacheApsVar")} | {
        int(r["patientunitstayid"]) for r in read_rows("apachePredVar")
    }
    assert present["apache"] == apache
    assert present["admission"] == set(row_of)  # every stay: patient has them all
    assert present["treatments"] == _stays_with_rows("treatment", "treatmentoffset") | _stays_with_rows(
        "infusiondrug", "infusionoffset"
    )
    assert present["exam_values"] == _stays_with_rows("physicalExam", "physicalexamoffset", keep=_exam_value)

    # vitals: any noninvasive systolic pressure in range in the window -> present; no row at all in the window
    # of any of the three sources -> missing
    def valid_sbp(r: dict) -> bool:
        v = fnum(r["noninvasivesystolic"])
        return v is not None and 25 <= v <= 300

    nibp = _stays_with_rows("vitalAperiodic", "observationoffset", keep=valid_sbp)
    assert nibp <= present["vitals"]
    any_row = (
        _stays_with_rows("vitalAperiodic", "observationoffset")
        | _stays_with_rows("respiratoryCharting", "respchartoffset")
        | _stays_with_rows("intakeOutput", "intakeoutputoffset")
    )
    assert present["vitals"] <= any_row
    assert len(set(row_of) - any_row) > 50  # the demo does have stays without any charted data in 24 h
    # history provenance: which of the two sources gave text
    adx = _stays_with_rows("admissionDx", "admitdxenteredoffset")
    phx = _stays_with_rows("pastHistory", "pasthistoryenteredoffset")
    for stay in list(history)[:300]:
        prov = all_inputs["history"][row_of[stay]].provenance
        assert prov == (0 if stay in adx and stay in phx else 1 if stay in adx else 2)


_EXAM = "notes/Progress Notes/Physical Exam/Physical Exam/"
_EXAM_RANGES = {
    "HR": (0, 300),
    "BP (systolic)": (25, 300),
    "BP (diastolic)": (1, 200),
    "Resp Rate": (0, 100),
    "O2 Sat%": (0, 100),
    "FiO2%": (21, 100),
    "PEEP": (0, 40),
    "Vent Rate": (0, 80),
}


def _exam_value(r: dict) -> bool:
    """A physicalExam row that gives exam_values a value: a GCS entry, a respiratory mode, or an allow-listed
    vital sign number within its range."""
    path = r["physicalexampath"]
    if path.startswith(_EXAM + "Neurologic/GCS/") or "/Resp Mode/" in path:
        return True
    vs = _EXAM + "Constitutional/Vital Sign and Physiological Data/"
    if not path.startswith(vs):
        return False
    item, _, leaf = path[len(vs) :].partition("/")
    if item not in _EXAM_RANGES or not (leaf.endswith(("Current", "Lowest", "Highest")) or leaf in ("FiO2%", "PEEP")):
        return False
    v = fnum(r["physicalexamtext"])
    if v is not None and item == "FiO2%" and 0 < v <= 1:
        v *= 100
    lo, hi = _EXAM_RANGES[item]
    return v is not None and lo <= v <= hi


# Stays of the demo with a value, per column of the tabular modalities added for issue #16 (docs/eicu.md).
NEW_COLUMN_COVERAGE = {
    "admission": {
        "age": 2516, "admission_height": 2439, "admission_weight": 2320, "sex_male": 2516, "unit_type": 2520,
        "unit_stay_type": 2520, "unit_admit_source": 2498, "hospital_admit_source": 1926, "pre_icu_los_h": 2505,
        "unit_visit_number": 2520, "admit_operative": 2039, "admit_elective": 316, "admit_from_or": 2039,
        "admit_transfer_48h": 2039, "admit_organ_system": 2039, "admit_dx_group": 2039, "admit_dx": 2039,
    },
    "exam_values": {
        "exam_hr_current": 1612, "exam_hr_lowest": 1526, "exam_hr_highest": 1527, "exam_sbp_current": 1648,
        "exam_sbp_lowest": 1557, "exam_sbp_highest": 1560, "exam_dbp_current": 1647, "exam_dbp_lowest": 1556,
        "exam_dbp_highest": 1557, "exam_resp_rate_current": 1502, "exam_resp_rate_lowest": 1396,
        "exam_resp_rate_highest": 1395, "exam_spo2_current": 1565, "exam_spo2_lowest": 1493,
        "exam_spo2_highest": 1493, "exam_fio2": 478, "exam_peep": 218, "exam_vent_rate": 185,
        "exam_gcs_eyes": 1971, "exam_gcs_verbal": 1971, "exam_gcs_motor": 1971, "exam_gcs_total": 1975,
        "exam_gcs_unable_meds": 2039, "exam_resp_mode_ventilated": 511,
    },
}  # fmt: skip


def _tabular(demo, all_inputs, name: str) -> tuple[list[str], np.ndarray]:
    m = next(m for m in demo.modalities() if m.name == name)
    x = np.full((len(demo.cohort()), m.shape[0]), np.nan, np.float32)
    for i, it in enumerate(all_inputs[name]):
        if it is not None:
            x[i] = it.value
    return m.feature_names, x


def test_new_tabular_coverage_per_column(demo, all_inputs, row_of):
    """Per-column coverage pinned (docs/eicu.md), and counts recomputed from the raw CSV files."""
    for name, pinned in NEW_COLUMN_COVERAGE.items():
        names, x = _tabular(demo, all_inputs, name)
        assert dict(zip(names, np.isfinite(x).sum(0).tolist(), strict=True)) == pinned, name
    names, x = _tabular(demo, all_inputs, "treatments")
    tx_stays = _stays_with_rows("treatment", "treatmentoffset")
    inf_stays = _stays_with_rows("infusiondrug", "infusionoffset")
    assert (len(tx_stays), len(inf_stays)) == (1881, 755)
    for j, f in enumerate(names):
        assert np.isfinite(x[:, j]).sum() == len(tx_stays if f.startswith("tx_") else inf_stays), f

    def positives(f: str) -> set[int]:
        return {int(demo.cohort().stay_id[i]) for i in np.flatnonzero(x[:, names.index(f)] == 1)}

    vent = _stays_with_rows(
        "treatment",
        "treatmentoffset",
        keep=lambda r: "mechanical ventilation" in r["treatmentstring"] and "non-invasive" not in r["treatmentstring"],
    )
    assert positives("tx_mechanical_ventilation") == vent and len(vent) == 384

    def norepi(r: dict) -> bool:
        rate = fnum(r["drugrate"])
        return "norepinephrine" in r["drugname"].lower() and not (rate is not None and rate <= 0)

    assert positives("inf_norepinephrine") == _stays_with_rows("infusiondrug", "infusionoffset", keep=norepi)
    # admission: age as in apache for every stay; the diagnosis of the stays with an All Diagnosis entry
    names, x = _tabular(demo, all_inputs, "admission")
    dx = _stays_with_rows("admissionDx", "admitdxenteredoffset", keep=lambda r: "|All Diagnosis|" in r["admitdxpath"])
    assert {int(demo.cohort().stay_id[i]) for i in np.flatnonzero(np.isfinite(x[:, names.index("admit_dx")]))} == dx
    cats = next(m for m in demo.modalities() if m.name == "admission").preprocessing["categories"]
    latest: dict[int, tuple[int, int, str]] = {}
    for r in read_rows("admissionDx"):
        off, path = fnum(r["admitdxenteredoffset"]), r["admitdxpath"]
        if "|All Diagnosis|" in path and off is not None and 0 <= off <= WINDOW:
            key = (int(off), int(r["admissiondxid"]), path.split("|")[5])
            latest[int(r["patientunitstayid"])] = max(latest.get(int(r["patientunitstayid"]), key), key)
    assert cats["admit_dx"] == sorted({v[2] for v in latest.values()}) and len(cats["admit_dx"]) == 224
    j = names.index("admit_dx")
    for stay, (_, _, name) in list(latest.items())[:300]:
        assert cats["admit_dx"][int(x[row_of[stay], j])] == name
    age = names.index("age")
    apache_names, apache_x = _tabular(demo, all_inputs, "apache")
    both = np.isfinite(apache_x[:, apache_names.index("age")])
    assert np.array_equal(x[both, age], apache_x[both, apache_names.index("age")])
    no_apache = np.array([it is None for it in all_inputs["apache"]])
    assert no_apache.sum() == 315 and np.isfinite(x[no_apache, age]).sum() == 314  # one has no age recorded
    assert np.isfinite(x[no_apache, names.index("unit_type")]).all()


# -------------------------------------------------------------------------------------- known values
def _hourly_last(rows: list[tuple[float, int, float]]) -> dict[int, float]:
    """(offset, row id, value) -> hour -> value of the latest offset (ties: larger row id)."""
    out: dict[int, tuple[float, int, float]] = {}
    for off, rid, val in rows:
        h = min(int(off // 60), 23)
        if h not in out or (off, rid) > out[h][:2]:
            out[h] = (off, rid, val)
    return {h: v[2] for h, v in out.items()}


def test_vitals_known_values_and_nothing_after_24h(demo, all_inputs, row_of):
    names = next(m for m in demo.modalities() if m.name == "vitals").feature_names
    by_stay: dict[int, list[tuple[float, int, float]]] = defaultdict(list)
    late: dict[int, int] = defaultdict(int)
    for r in read_rows("vitalAperiodic"):
        off, v = fnum(r["observationoffset"]), fnum(r["noninvasivesystolic"])
        if v is None:
            continue
        if off > WINDOW:
            late[int(r["patientunitstayid"])] += 1
        elif off >= 0 and 25 <= v <= 300:
            by_stay[int(r["patientunitstayid"])].append((off, int(r["vitalaperiodicid"]), v))
    # real stays with systolic pressures both inside and after the window
    chosen = sorted(s for s in late if s in by_stay)[:40]
    assert len(chosen) == 40
    j = names.index("nibp_systolic")
    for stay in chosen:
        x = all_inputs["vitals"][row_of[stay]].value[:, j]
        exp = _hourly_last(by_stay[stay])
        got = {h: float(x[h]) for h in range(24) if not math.isnan(x[h])}
        assert got == pytest.approx(exp), stay


def test_respiratory_fio2_and_urine_known_values(demo, all_inputs, row_of):
    names = next(m for m in demo.modalities() if m.name == "vitals").feature_names
    fio2: dict[int, list] = defaultdict(list)
    for r in read_rows("respiratoryCharting"):
        if r["respchartvaluelabel"] not in ("FiO2", "FIO2 (%)", "O2 Percentage"):
            continue
        off, entry = fnum(r["respchartoffset"]), fnum(r["respchartentryoffset"])
        v = fnum(r["respchartvalue"].strip().rstrip("%"))
        if v is None or not (0 <= off <= WINDOW) or entry > WINDOW:
            continue
        v = v * 100 if 0 < v <= 1 else v
        if 21 <= v <= 100:
            fio2[int(r["patientunitstayid"])].append((off, int(r["respchartid"]), v))
    j = names.index("fio2")
    for stay in sorted(fio2)[:40]:
        x = all_inputs["vitals"][row_of[stay]].value[:, j]
        got = {h: float(x[h]) for h in range(24) if not math.isnan(x[h])}
        assert got == pytest.approx(_hourly_last(fio2[stay])), stay
    # urine: the hour's sum of the allow-listed urine cells
    urine: dict[int, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    for r in read_rows("intakeOutput"):
        if r["celllabel"] not in URINE_LABELS or not r["cellpath"].startswith(URINE_PATH_PREFIX):
            continue
        off, entry, v = fnum(r["intakeoutputoffset"]), fnum(r["intakeoutputentryoffset"]), fnum(r["cellvaluenumeric"])
        if v is None or not (0 <= off <= WINDOW) or entry > WINDOW or not (0 <= v <= 5000):
            continue
        urine[int(r["patientunitstayid"])][min(int(off // 60), 23)] += v
    j = names.index("urine_ml")
    checked = 0
    for stay in sorted(urine):
        x = all_inputs["vitals"][row_of[stay]].value[:, j]
        got = {h: float(x[h]) for h in range(24) if not math.isnan(x[h])}
        assert got == pytest.approx(dict(urine[stay]), rel=1e-5), stay
        checked += 1
    assert checked > 1000


def test_apache_minus_one_age_and_sex(demo, all_inputs, row_of):
    names = next(m for m in demo.modalities() if m.name == "apache").feature_names
    for banned in ("diedinhospital", "dischargelocation", "var03hspxlos", "dischargeweight", "sicuday", "saps3day1"):
        assert not any(banned in n for n in names)
    aps = {int(r["patientunitstayid"]): r for r in read_rows("apacheApsVar")}
    pred = {int(r["patientunitstayid"]): r for r in read_rows("apachePredVar")}
    ph, elective = names.index("aps_ph"), names.index("pred_electivesurgery")
    n_minus, n_valid = 0, 0
    for stay, r in aps.items():
        x = all_inputs["apache"][row_of[stay]].value
        if r["ph"] == "-1":
            assert math.isnan(x[ph])
            n_minus += 1
        else:
            assert x[ph] == pytest.approx(float(r["ph"]))
            n_valid += 1
        e = pred[stay]["electivesurgery"]
        assert math.isnan(x[elective]) if e == "" else x[elective] == float(e)
    assert n_minus == 1800 and n_valid == 405
    age, sex, height = names.index("age"), names.index("sex_male"), names.index("admission_height")
    units = [i for i, n in enumerate(names) if n.startswith("unit_type=")]
    pat = {int(r["patientunitstayid"]): r for r in read_rows("patient")}
    n_old = 0
    for stay in aps:
        x, p = all_inputs["apache"][row_of[stay]].value, pat[stay]
        if p["age"] == "> 89":
            assert x[age] == 90.0
            n_old += 1
        elif p["age"] == "":
            assert math.isnan(x[age])
        else:
            assert x[age] == float(p["age"])
        assert math.isnan(x[sex]) if p["gender"] not in ("Male", "Female") else x[sex] == (p["gender"] == "Male")
        h = fnum(p["admissionheight"])
        assert math.isnan(x[height]) if h is None or not 100 <= h <= 250 else x[height] == pytest.approx(h)
        assert x[units].sum() == 1.0 and names[units[int(np.argmax(x[units]))]] == f"unit_type={p['unittype']}"
    assert n_old > 50
    cont = next(m for m in demo.modalities() if m.name == "apache").preprocessing["continuous"]
    assert names.index("aps_ph") in cont and names.index("age") in cont and units[0] not in cont


def test_diagnosis_text_known_answer(demo, all_inputs, row_of):
    rows: dict[int, list] = defaultdict(list)
    for r in read_rows("diagnosis"):
        off = int(r["diagnosisoffset"])
        if 0 <= off <= WINDOW and r["activeupondischarge"] != "True":
            rows[int(r["patientunitstayid"])].append((off, r["diagnosisstring"], int(r["diagnosisid"])))
    for stay in sorted(rows)[:200]:
        lines = []
        for _, s, _ in sorted(rows[stay]):
            line = " / ".join(p.strip() for p in s.split("|"))
            if line not in lines:
                lines.append(line)
        assert all_inputs["diagnosis"][row_of[stay]].value == "\n".join(lines)


def test_text_deterministic(demo):
    other = EicuDemoAdapter()
    rows = np.arange(0, 2520, 7)
    for m in TEXT:
        a = [x.value if x else None for x in demo.inputs(m, rows)]
        b = [x.value if x else None for x in other.inputs(m, rows)]
        assert a == b


def test_demo_has_no_value_outside_the_declared_ranges(demo):
    ranges = {r.name: r.ranges for r in demo.modalities() if r.input == "array"}
    assert ranges["apache"] is not None and len(ranges["apache"]) == 71  # every column has a range
    assert ranges["vitals"] is not None and ranges["vitals"]["urine_ml"] == (0, None)  # an hourly sum: >= 0 only
    assert ranges["vitals"]["nibp_systolic"] == (25, 300)
    assert masked_by_declared_ranges(demo) == {
        "vitals": 0,
        "apache": 0,
        "admission": 0,
        "exam_values": 0,
        "treatments": 0,
    }


# ------------------------------------------------------------------------------------- leakage guards
_TIME_COLS = {
    "vitalAperiodic": ["observationoffset"],
    "respiratoryCharting": ["respchartoffset", "respchartentryoffset"],
    "intakeOutput": ["intakeoutputoffset", "intakeoutputentryoffset"],
    "pastHistory": ["pasthistoryoffset", "pasthistoryenteredoffset"],
    "admissionDx": ["admitdxenteredoffset"],
    "diagnosis": ["diagnosisoffset"],
    "physicalExam": ["physicalexamoffset"],
    "treatment": ["treatmentoffset"],
    "infusiondrug": ["infusionoffset"],
    "carePlanGeneral": ["cplitemoffset"],
}


@pytest.fixture(scope="module")
def truncated_root(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    """A copy of the demo (plain .csv) without any row timed after 24 h, with outcome and discharge fields
    scrambled and no apachePatientResult: whatever the adapter's inputs read must be unchanged."""
    root = tmp_path_factory.mktemp("eicu_trunc")
    rng = np.random.default_rng(0)
    removed: dict[str, int] = {}
    for p in DEMO.glob("*.csv.gz"):
        name = p.name[: -len(".csv.gz")]
        if name in ("apachePatientResult", "carePlanEOL"):
            continue
        df = pl.read_csv(p, infer_schema=False)
        if name in _TIME_COLS:
            late = pl.any_horizontal([pl.col(c).cast(pl.Float64, strict=False) > WINDOW for c in _TIME_COLS[name]])
            keep = df.filter(~late.fill_null(False))
            removed[name] = df.height - keep.height
            df = keep
        if name == "patient":
            for c in (
                "hospitaldischargestatus",
                "hospitaldischargeoffset",
                "unitdischargeoffset",
                "dischargeweight",
                "unitdischargestatus",
                "unitdischargelocation",
                "hospitaldischargelocation",
            ):
                df = df.with_columns(df[c].sample(fraction=1.0, shuffle=True, seed=int(rng.integers(1 << 30))))
        if name == "apachePredVar":
            for c in ("diedinhospital", "dischargelocation", "var03hspxlos"):
                df = df.with_columns(pl.Series(c, rng.integers(0, 9, df.height).astype(str)))
        df.write_csv(root / f"{name}.csv")
    return root, removed


def test_no_value_after_24h_enters_any_modality(demo, all_inputs, truncated_root):
    root, removed = truncated_root
    assert all(removed[t] >= 89 for t in _TIME_COLS), removed  # real rows after 24 h were there to leak
    cut = EicuAdapter(root)
    assert [m.name for m in cut.modalities()] == [m.name for m in demo.modalities()]
    assert [m.feature_names for m in cut.modalities()] == [m.feature_names for m in demo.modalities()]
    assert [m.preprocessing.get("categories") for m in cut.modalities()] == [
        m.preprocessing.get("categories") for m in demo.modalities()
    ]
    assert np.array_equal(cut.cohort().stay_id, demo.cohort().stay_id)
    assert not cut.cohort().references["apache_iva"][1].any()
    rows = np.arange(len(demo.cohort()))
    for m in demo.modalities():
        got = cut.inputs(m.name, rows)
        for i, (a, b) in enumerate(zip(all_inputs[m.name], got, strict=True)):
            assert (a is None) == (b is None), (m.name, i)
            if a is None:
                continue
            if m.input == "text":
                assert a.value == b.value, (m.name, i)
            else:
                assert np.array_equal(a.value, b.value, equal_nan=True), (m.name, i)


def test_care_limitation_reads_nothing_after_24h(truncated_root):
    root, _ = truncated_root
    full, cut = EicuDemoAdapter(care_limitation=True), EicuAdapter(root, care_limitation=True)
    rows = np.arange(len(full.cohort()))
    a, b = full.inputs("care_limitation", rows), cut.inputs("care_limitation", rows)
    assert sum(x is not None for x in a) == 2107
    for x, y in zip(a, b, strict=True):
        assert (x is None) == (y is None) and (x is None or np.array_equal(x.value, y.value))


def single_feature_auroc(x: np.ndarray, y: np.ndarray, min_class: int = 10) -> float:
    """Best AUROC of one feature alone, either orientation, on the rows where it is observed (0.5 if too few)."""
    ok = ~np.isnan(x)
    xs, ys = x[ok], y[ok]
    if ys.sum() < min_class or (1 - ys).sum() < min_class or np.unique(xs).size < 2:
        return 0.5
    auc = roc_auc_score(ys, xs)
    return float(max(auc, 1 - auc))


def _feature_table(demo, all_inputs, y_mask) -> dict[str, np.ndarray]:
    """Every single input column (and summaries of each time-series column), every mask, every text token."""
    n = len(demo.cohort())
    out: dict[str, np.ndarray] = {}
    for m in demo.modalities():
        xs = all_inputs[m.name]
        out[f"{m.name}:mask"] = np.array([x is not None for x in xs], float)
        if m.input == "array":
            arr = np.full((n, *m.shape), np.nan, np.float32)
            for i, x in enumerate(xs):
                if x is not None:
                    arr[i] = x.value
            if m.kind == "tabular":
                for j, f in enumerate(m.feature_names):
                    out[f"{m.name}:{f}"] = arr[:, j]
            else:
                with np.errstate(all="ignore"):
                    for j, f in enumerate(m.feature_names):
                        col = arr[:, :, j]
                        seen = ~np.isnan(col)
                        cnt = seen.sum(1).astype(float)
                        last = np.array([c[s][-1] if s.any() else np.nan for c, s in zip(col, seen, strict=True)])
                        out[f"vitals:{f}:last"] = last
                        out[f"vitals:{f}:mean"] = np.where(cnt > 0, np.nansum(col, 1) / np.maximum(cnt, 1), np.nan)
                        out[f"vitals:{f}:min"] = np.where(cnt > 0, np.nanmin(np.where(seen, col, np.inf), 1), np.nan)
                        out[f"vitals:{f}:max"] = np.where(cnt > 0, np.nanmax(np.where(seen, col, -np.inf), 1), np.nan)
                        out[f"vitals:{f}:hours_observed"] = np.where(out[f"{m.name}:mask"] > 0, cnt, np.nan)
        else:
            docs = [set(re.findall(r"[a-z0-9]+", x.value.lower())) if x is not None else None for x in xs]
            support: dict[str, int] = defaultdict(int)
            for d, lab in zip(docs, y_mask, strict=True):
                if d is not None and lab:
                    for tok in d:
                        support[tok] += 1
            for tok, k in support.items():
                if k >= 20:
                    out[f"{m.name}:token:{tok}"] = np.array([np.nan if d is None else float(tok in d) for d in docs])
    return out


def test_single_feature_leakage_guard(demo, all_inputs):
    y, mask = demo.cohort().labels["mortality"]
    feats = _feature_table(demo, all_inputs, mask)
    assert len(feats) > 500  # columns, summaries and tokens were all examined
    scores = {k: single_feature_auroc(v[mask], y[mask, 0]) for k, v in feats.items()}
    worst = sorted(scores.items(), key=lambda kv: -kv[1])[:5]
    assert worst[0][1] <= 0.95, f"a single input predicts mortality alone: {worst}"
    assert worst[0][1] > 0.6  # real signal exists (the guard looks at informative columns)
    # the guard itself catches a leak: apachePredVar's diedinhospital, as the column it would be
    died = {int(r["patientunitstayid"]): float(r["diedinhospital"]) for r in read_rows("apachePredVar")}
    leak = np.array([died.get(int(s), np.nan) for s in demo.cohort().stay_id])
    assert single_feature_auroc(leak[mask], y[mask, 0]) > 0.95


# ------------------------------------------------------------------------ full-database tables (synthetic)
def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def test_full_database_tables_and_empty_text(tmp_path, demo):
    """vitalPeriodic, lab and nurseCharting (absent from the demo) join the time series when present."""
    root = tmp_path / "eicu"
    root.mkdir()
    for p in DEMO.glob("*.csv.gz"):
        if p.name != "physicalExam.csv.gz":
            (root / p.name).symlink_to(p)
    s1, s2 = 141765, 143870
    vp_cols = [
        "vitalperiodicid",
        "patientunitstayid",
        "observationoffset",
        "temperature",
        "sao2",
        "heartrate",
        "respiration",
        "cvp",
        "etco2",
        "systemicsystolic",
        "systemicdiastolic",
        "systemicmean",
        "pasystolic",
        "padiastolic",
        "pamean",
        "st1",
        "st2",
        "st3",
        "icp",
    ]

    def vp(i, stay, off, hr, temp=""):
        row = {c: "" for c in vp_cols}
        row.update(vitalperiodicid=i, patientunitstayid=stay, observationoffset=off, heartrate=hr, temperature=temp)
        return [row[c] for c in vp_cols]

    _write_csv(
        root / "vitalPeriodic.csv",
        vp_cols,
        [
            vp(1, s1, 5, 80, "37.1"),
            vp(2, s1, 50, 90),
            vp(3, s1, 1440, 100),
            vp(4, s1, 1441, 120, "39.0"),
            vp(5, s1, 130, 999),
            vp(6, s1, -5, 70),
            vp(7, s2, 61, 55),
        ],
    )
    _write_csv(
        root / "lab.csv",
        [
            "labid",
            "patientunitstayid",
            "labresultoffset",
            "labtypeid",
            "labname",
            "labresult",
            "labresulttext",
            "labmeasurenamesystem",
            "labmeasurenameinterface",
            "labresultrevisedoffset",
        ],
        [
            [1, s1, 30, 1, "potassium", "4.1", "4.1", "mmol/L", "", 2000],  # revised after 24 h: excluded
            [2, s1, 65, 1, "potassium", "3.9", "3.9", "mmol/L", "", 70],
            [3, s1, 66, 1, "sodium", "", "pending", "mmol/L", "", 70],  # no number: ignored
            [4, s1, 10, 1, "some other lab", "1.0", "1.0", "", "", 10],  # not allow-listed
        ],
    )
    _write_csv(
        root / "nurseCharting.csv",
        [
            "nursingchartid",
            "patientunitstayid",
            "nursingchartoffset",
            "nursingchartentryoffset",
            "nursingchartcelltypecat",
            "nursingchartcelltypevallabel",
            "nursingchartcelltypevalname",
            "nursingchartvalue",
        ],
        [
            [1, s1, 120, 125, "Scores", "Glasgow coma score", "GCS Total", "14"],
            [2, s1, 180, 185, "Scores", "Glasgow coma score", "GCS Total", "Unable to score due to medication"],
            [3, s1, 200, 1500, "Vital Signs", "Heart Rate", "Heart Rate", "88"],  # entered after 24 h
            [4, s2, 0, 0, "Vital Signs", "Temperature", "Temperature (C)", "36.6"],
        ],
    )
    # physicalExam: stay s1's only in-window entries are blank -> exam missing, not an empty string
    _write_csv(
        root / "physicalExam.csv",
        [
            "physicalexamid",
            "patientunitstayid",
            "physicalexamoffset",
            "physicalexampath",
            "physicalexamvalue",
            "physicalexamtext",
        ],
        [
            [1, s1, 10, "   ", " ", ""],
            [2, s2, 10, "notes/Progress Notes/Physical Exam/Physical Exam/Neurologic/GCS/15", "15", "15"],
            [3, s2, 2000, "notes/Progress Notes/Physical Exam/Physical Exam/Neurologic/GCS/3", "3", "3"],
        ],
    )
    a = EicuAdapter(root)
    vit = next(m for m in a.modalities() if m.name == "vitals")
    demo_names = next(m for m in demo.modalities() if m.name == "vitals").feature_names
    assert vit.feature_names[: len(demo_names)] == demo_names
    assert {"vp_heart_rate", "lab_potassium", "nc_gcs_total", "nc_temperature"} <= set(vit.feature_names)
    assert set(vit.preprocessing["sources"]) == {
        "vitalAperiodic",
        "vitalPeriodic",
        "respiratoryCharting",
        "intakeOutput",
        "nurseCharting",
        "lab",
    }
    row = {int(s): i for i, s in enumerate(a.cohort().stay_id)}
    x1, x2 = (a.inputs("vitals", np.array([row[s1], row[s2]]))[k].value for k in (0, 1))
    col = {n: i for i, n in enumerate(vit.feature_names)}
    hr = x1[:, col["vp_heart_rate"]]
    assert hr[0] == 90 and hr[23] == 100 and np.isnan(hr[2])  # last wins; 1,440 in; 999 out of range
    assert np.isnan(hr[[1, *range(3, 23)]]).all()  # 1,441 and -5 are outside the window
    temp = x1[:, col["vp_temperature"]]
    assert temp[0] == pytest.approx(37.1) and np.isnan(temp[1:]).all()
    k = x1[:, col["lab_potassium"]]
    assert k[1] == pytest.approx(3.9) and np.isnan(k[0]) and np.isnan(x1[:, col["lab_sodium"]]).all()
    assert x1[2, col["nc_gcs_total"]] == 14 and np.isnan(x1[3, col["nc_gcs_total"]])
    assert np.isnan(x1[:, col["nc_heart_rate"]]).all()
    assert x2[1, col["vp_heart_rate"]] == 55 and x2[0, col["nc_temperature"]] == pytest.approx(36.6)
    ex = a.inputs("exam", np.array([row[s1], row[s2]]))
    assert ex[0] is None
    assert ex[1].value == "Neurologic / GCS / 15"
    assert a.cohort().extra["coverage"]["exam"] == 1


def test_pre_admission_text_option(demo):
    """Entries recorded before unit admission (negative offsets) join the text only when asked."""
    a = EicuDemoAdapter(pre_admission_text=True)
    cov = a.cohort().extra["coverage"]
    assert cov == {
        "vitals": 2433,
        "apache": 2205,
        "history": 2252,
        "diagnosis": 1179,
        "exam": 2214,
        "admission": 2520,
        "exam_values": 2174,
        "treatments": 1981,
    }
    assert a.options()["pre_admission_text"] is True and demo.options()["pre_admission_text"] is False
