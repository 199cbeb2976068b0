"""MIMIC-CXR matching (window, view, latest), report FINDINGS extraction, on a small MIMIC-CXR-JPG layout
written here for subjects of the real MIMIC-IV demo."""

from __future__ import annotations

import csv
import gzip
import zipfile
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from omnifuse.extract.datasets.base import Item, Skip
from omnifuse.extract.datasets.mimic import MimicAdapter
from omnifuse.extract.datasets.mimic.cxr import findings_text, report_sections
from tests.helpers import MIMIC_IV_DEMO as D4

REPORT_FULL = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PORTABLE AP)

 INDICATION:  ___ year old man with intubation  // ETT position?

 COMPARISON:  ___

 FINDINGS:
 
 Endotracheal tube tip terminates 4.5 cm above the carina.  Enteric tube courses
 below the diaphragm.  Heart size is normal.  There is a small left pleural
 effusion with adjacent atelectasis.  No pneumothorax.
 
 IMPRESSION:
 
 1.  Appropriately positioned endotracheal tube.
 2.  Small left pleural effusion.
"""  # noqa: W293 - the report's blank lines hold a space, as MIMIC-CXR's do
REPORT_IMPRESSION_ONLY = """                                 FINAL REPORT
 INDICATION:  Hypoxia.

 IMPRESSION:  Moderate pulmonary edema, worse than prior.
"""
REPORT_NONE = """                                 FINAL REPORT
 WET READ: ___ ___ 10:12 PM
  No acute process.
"""


def _rows(path):
    with gzip.open(path, "rt", newline="") as f:
        return list(csv.DictReader(f))


def _fmt(t: datetime) -> tuple[str, str]:
    return t.strftime("%Y%m%d"), str(int(t.strftime("%H%M%S"))) + ".125"  # leading zeros dropped, a fraction


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """Three stays of the demo cohort: A (>= 48 h), B (< 48 h), C (lateral views only)."""
    root = tmp_path_factory.mktemp("cxr")
    probe = MimicAdapter(D4, workdir=root / "probe")
    st = probe.stays()  # cohort stays with intime/outtime
    long_ = st.filter(st["los_h"] >= 60).row(0, named=True)
    short = st.filter((st["los_h"] < 40) & (st["los_h"] > 5)).row(0, named=True)
    third = st.filter((st["los_h"] >= 60) & (st["subject_id"] != long_["subject_id"])).row(0, named=True)
    A, B, C = long_, short, third
    h = lambda s, x: s["intime"] + timedelta(hours=x)  # noqa: E731
    studies = [  # (subject, study, dicom, view, time, write_jpeg, report)
        (A, 50000001, "a-early", "AP", h(A, 10), True, REPORT_IMPRESSION_ONLY),
        (A, 50000002, "a-chosen", "AP", h(A, 30), True, REPORT_FULL),
        (A, 50000003, "a-pa", "PA", h(A, 40), True, REPORT_FULL.replace("small left", "large right")),
        (A, 50000004, "a-after", "AP", h(A, 50), True, REPORT_FULL),
        (A, 50000005, "a-before", "AP", h(A, -1), True, REPORT_FULL),
        (B, 50000006, "b-in", "AP", h(B, 1), True, REPORT_IMPRESSION_ONLY),
        (B, 50000007, "b-after-out", "AP", B["outtime"] + timedelta(hours=1), True, REPORT_FULL),
        (C, 50000008, "c-lat", "LATERAL", h(C, 5), True, REPORT_FULL),
    ]
    meta, split = [], []
    for s, study, dicom, view, t, jpeg, rep in studies:
        sid = str(s["subject_id"])
        date, tm = _fmt(t)
        meta.append(
            {
                "dicom_id": dicom,
                "subject_id": sid,
                "study_id": study,
                "PerformedProcedureStepDescription": "CHEST (PORTABLE AP)",
                "ViewPosition": view,
                "Rows": 64,
                "Columns": 64,
                "StudyDate": date,
                "StudyTime": tm,
                "ProcedureCodeSequence_CodeMeaning": "",
                "ViewCodeSequence_CodeMeaning": "",
                "PatientOrientationCodeSequence_CodeMeaning": "",
            }
        )
        split.append({"dicom_id": dicom, "study_id": study, "subject_id": sid, "split": "test" if s is B else "train"})
        d = root / "files" / f"p{sid[:2]}" / f"p{sid}" / f"s{study}"
        d.mkdir(parents=True, exist_ok=True)
        if jpeg:
            Image.fromarray((np.random.default_rng(study).random((64, 64)) * 255).astype(np.uint8)).save(
                d / f"{dicom}.jpg"
            )
        (d.parent / f"s{study}.txt").write_text(rep)
    for name, rows in (("metadata", meta), ("split", split)):
        with gzip.open(root / f"mimic-cxr-2.0.0-{name}.csv.gz", "wt", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return root, A, B, C


def _row(c, stay):
    return int(np.flatnonzero(c.stay_id == stay["stay_id"])[0])


def test_window_view_and_latest(layout, tmp_path):
    root, A, B, C = layout
    a = MimicAdapter(D4, cxr_root=root, workdir=tmp_path)
    c = a.cohort()
    rows = np.array([_row(c, A), _row(c, B), _row(c, C)])
    cx = a.inputs("cxr", rows)
    assert isinstance(cx[0], Item) and Path(cx[0].value).name == "a-chosen.jpg" and Path(cx[0].value).is_file()
    assert isinstance(cx[1], Item) and Path(cx[1].value).name == "b-in.jpg"  # after ICU discharge: not chosen
    assert cx[2] is None  # lateral only
    rep = a.inputs("report", rows)
    assert rep[0].provenance == 0 and rep[0].value.startswith("Endotracheal tube tip terminates 4.5 cm")
    assert rep[0].value.endswith("No pneumothorax.") and "IMPRESSION" not in rep[0].value
    assert rep[1].provenance == 1 and rep[1].value == "Moderate pulmonary edema, worse than prior."
    assert rep[2] is None
    assert c.extra["cxr"]["stays_with_chosen_image"] == 2
    sp = c.splits["mimic_cxr"]
    assert sp[rows[0]] == "train" and sp[rows[1]] == "test"
    assert set(np.unique(sp)) <= {"train", "test", "none"}


def test_include_pa_and_phenotyping_window(layout, tmp_path):
    root, A, B, C = layout
    a = MimicAdapter(D4, cxr_root=root, include_pa=True, workdir=tmp_path / "pa")
    c = a.cohort()
    assert Path(a.inputs("cxr", np.array([_row(c, A)]))[0].value).name == "a-pa.jpg"
    assert "large right" in a.inputs("report", np.array([_row(c, A)]))[0].value
    # phenotyping: the window is the whole stay, so the 50 h study of A is the latest
    p = MimicAdapter(D4, cxr_root=root, task="phenotyping", workdir=tmp_path / "ph")
    cp = p.cohort()
    assert Path(p.inputs("cxr", np.array([_row(cp, A)]))[0].value).name == "a-after.jpg"


def _chosen(items):
    return [None if it is None else (type(it).__name__, getattr(it, "value", None)) for it in items]


def test_task_both_pairs_phenotyping_with_its_own_whole_stay_image(layout, tmp_path):
    """``--task both`` (with ``ehr_stay``): ``cxr``/``report`` keep the 48 h window (mortality's default), and
    ``cxr_stay``/``report_stay`` hold the image and report that ``--task phenotyping`` chooses, for every stay
    (A's 50 h study; B's in-stay study, not the one after discharge), an input of phenotyping only; without
    ``ehr_stay`` (``phenotype_hours=0``) and for the single-task adapters there is no second pair."""
    root, A, B, C = layout
    a = MimicAdapter(D4, cxr_root=root, workdir=tmp_path / "both")
    c = a.cohort()
    rows = np.array([_row(c, A), _row(c, B), _row(c, C)])
    names = [m.name for m in a.modalities()]
    assert names == ["ehr", "ehr_stay", "cxr", "report", "cxr_stay", "report_stay"]
    pre = {m.name: m.preprocessing for m in a.modalities()}
    assert pre["cxr"]["default_for"] == pre["report"]["default_for"] == ["mortality"]
    assert "input_for" not in pre["cxr"] and pre["cxr"]["window"] == "intime .. min(intime + hours, outtime)"
    assert pre["cxr_stay"]["input_for"] == pre["report_stay"]["input_for"] == ["phenotyping"]
    assert "default_for" not in pre["cxr_stay"] and pre["cxr_stay"]["views"] == ["AP"]
    assert Path(a.inputs("cxr", rows[:1])[0].value).name == "a-chosen.jpg"  # 48 h window
    stay = a.inputs("cxr_stay", rows)
    assert Path(stay[0].value).name == "a-after.jpg" and Path(stay[1].value).name == "b-in.jpg" and stay[2] is None
    assert a.inputs("report_stay", rows[1:2])[0].value == "Moderate pulmonary edema, worse than prior."
    ex = c.extra["cxr"]["cxr_stay"]
    assert ex["stays_with_chosen_image"] == 2 and ex["stays_whose_image_differs_from_cxr"] == 1  # A only
    # every stay: what the phenotyping adapter chooses, image and report
    p = MimicAdapter(D4, cxr_root=root, task="phenotyping", workdir=tmp_path / "ph")
    assert np.array_equal(p.cohort().stay_id, c.stay_id)
    every = np.arange(len(c))
    assert _chosen(a.inputs("cxr_stay", every)) == _chosen(p.inputs("cxr", every))
    assert _chosen(a.inputs("report_stay", every)) == _chosen(p.inputs("report", every))
    assert [m.name for m in p.modalities()] == ["ehr", "ehr_stay", "cxr", "report"]
    assert "default_for" not in {m.name: m for m in p.modalities()}["cxr"].preprocessing
    off = MimicAdapter(D4, cxr_root=root, phenotype_hours=0, workdir=tmp_path / "off")
    assert [m.name for m in off.modalities()] == ["ehr", "cxr", "report"]
    with pytest.raises(KeyError, match="cxr_stay"):
        off.inputs("cxr_stay", rows)


def test_missing_jpeg_and_reports_from_zip(layout, tmp_path):
    root, A, B, C = layout
    sid = str(A["subject_id"])
    jpg = root / "files" / f"p{sid[:2]}" / f"p{sid}" / "s50000002" / "a-chosen.jpg"
    reports = tmp_path / "reports"
    reports.mkdir()
    with zipfile.ZipFile(reports / "mimic-cxr-reports.zip", "w") as z:
        for p in (root / "files").rglob("*.txt"):
            z.write(p, "mimic-cxr-reports/" + str(p.relative_to(root)))
    moved = tmp_path / "moved.jpg"
    jpg.rename(moved)
    try:
        a = MimicAdapter(D4, cxr_root=root, reports_root=reports, workdir=tmp_path / "w")
        c = a.cohort()
        r = np.array([_row(c, A)])
        assert isinstance(a.inputs("cxr", r)[0], Skip)
        assert a.inputs("report", r)[0].value.startswith("Endotracheal tube tip")
    finally:
        moved.rename(jpg)


def test_findings_extraction_rules():
    secs = report_sections(REPORT_FULL)
    assert {"EXAMINATION", "INDICATION", "COMPARISON", "FINDINGS", "IMPRESSION"} <= set(secs)
    text, prov = findings_text(REPORT_FULL)
    assert prov == 0 and text.split()[:3] == ["Endotracheal", "tube", "tip"] and "\n" not in text
    assert findings_text(REPORT_IMPRESSION_ONLY) == ("Moderate pulmonary edema, worse than prior.", 1)
    assert findings_text(REPORT_NONE) is None
    both = "FINDINGS AND IMPRESSION: Lungs are clear. No effusion.\n"
    assert findings_text(both) == ("Lungs are clear. No effusion.", 0)
    empty_findings = "FINDINGS:\n\nIMPRESSION: Clear lungs.\n"
    assert findings_text(empty_findings) == ("Clear lungs.", 1)
    long_ = "FINDINGS: " + " ".join(f"w{i}" for i in range(400)) + "\nIMPRESSION: x\n"
    t, _ = findings_text(long_)
    assert t.split() == [f"w{i}" for i in range(150)]
