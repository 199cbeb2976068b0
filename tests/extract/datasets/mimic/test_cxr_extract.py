"""MIMIC-CXR image and report choice end to end: ``omnifuse extract --dataset mimic`` on the real MIMIC-IV demo
with a MIMIC-CXR-JPG layout written here (``cxr_layout``: the metadata's 12 columns, the ``files/`` tree, the
reports as files and as ``mimic-cxr-reports.zip``) around real demo stays, a random-weights ResNet34 and the
bundled MiniLM (no hub).

Each cached embedding is compared with the expected image or text encoded directly, so the test sees which
study was chosen: the window (before ICU admission, after ICU discharge, after 48 h, both ends inclusive with
the StudyTime fraction dropped), AP only or AP/PA (``--include-pa``), the latest study (ties: greatest study_id,
then dicom_id), FINDINGS or the IMPRESSION fallback (``provenance``), a chosen image whose JPEG is missing (its
report is still used), a study whose report is missing (its image is still used), a report without either
section, a study with a report but no image in the metadata, and a subject's two stays each getting their own.
"""

from __future__ import annotations

import csv
import gzip
import zipfile
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from omnifuse.cache.info import cache_info
from omnifuse.cache.reader import load_cache
from omnifuse.cache.schema import CacheError, check_task_inputs, task_inputs
from omnifuse.cli import app
from omnifuse.extract.datasets.mimic.cxr import findings_text
from omnifuse.extract.encoders import build_image_encoder, build_text_encoder
from tests.extract.datasets.mimic.cxr_layout import (
    METADATA_COLUMNS,
    Image,
    Study,
    dicom_id,
    image_file,
    study_date_time,
    write_cxr_jpg,
    write_reports,
)
from tests.helpers import MIMIC_IV_DEMO as D4

pytestmark = pytest.mark.skipif(not D4.is_dir(), reason="MIMIC-IV demo not present")

FULL = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PORTABLE AP)

 INDICATION:  ___ year old man with intubation  // ETT position?

 COMPARISON:  ___

 FINDINGS:
 
 Endotracheal tube tip terminates {cm} cm above the carina.  Heart size is normal.  There is a small left
 pleural effusion.  No pneumothorax.
 
 IMPRESSION:
 
 Small left pleural effusion.
"""  # noqa: W293 - the report's blank lines hold a space, as MIMIC-CXR's do
IMPRESSION_ONLY = """                                 FINAL REPORT
 INDICATION:  Hypoxia.

 IMPRESSION:  {what} pulmonary edema, worse than prior.
"""
COMBINED = """                                 FINAL REPORT
 FINDINGS AND IMPRESSION:  Lungs are clear.  No effusion.  Right internal jugular line tip in the SVC.
"""
NEITHER = """                                 FINAL REPORT
 WET READ: ___ ___ 10:12 PM
  No acute process.
"""

# real MIMIC-IV demo stays: (subject_id, stay_id, intime, outtime), checked against the cohort below
STAYS = {
    "A": (10016742, 30425410, "2178-07-22 08:19:00", "2178-07-25 16:42:43"),  # 80.4 h
    "A2": (10016742, 32314488, "2178-07-13 08:16:00", "2178-07-16 14:41:31"),  # the same subject, earlier
    "B": (10000032, 39553978, "2180-07-23 14:00:00", "2180-07-23 23:50:47"),  # 9.8 h
    "C": (10032725, 30101877, "2143-03-22 06:42:00", "2143-03-25 15:05:33"),
    "D": (10020640, 30849778, "2153-02-13 01:38:00", "2153-02-15 15:00:57"),
    "F": (10012853, 31338022, "2176-11-26 02:34:49", "2176-11-29 20:58:54"),
    "H": (10008454, 31959184, "2110-11-30 17:11:36", "2110-12-05 16:48:24"),
    "I": (10010471, 32119961, "2155-12-02 20:33:00", "2155-12-07 18:19:18"),
}


def _t(s: str) -> datetime:
    return datetime.strptime(s, "%Y-%m-%d %H:%M:%S")


def _at(stay: str, hours: float, seconds: int = 0) -> datetime:
    return _t(STAYS[stay][2]) + timedelta(hours=hours, seconds=seconds)


def studies() -> list[Study]:
    subj = {k: v[0] for k, v in STAYS.items()}
    return [
        # A: AP +10 h (IMPRESSION only), AP +30 h (FINDINGS), PA + lateral +40 h, AP +50 h, AP before ICU admission
        Study(subj["A"], 50000101, _at("A", 10), [Image("a-10h")], IMPRESSION_ONLY.format(what="Mild")),
        Study(subj["A"], 50000102, _at("A", 30), [Image("a-30h")], FULL.format(cm="4.5")),
        Study(
            subj["A"],
            50000103,
            _at("A", 40),
            [Image("a-40h-pa", "PA"), Image("a-40h-lat", "LATERAL")],
            IMPRESSION_ONLY.format(what="Moderate"),
        ),
        Study(subj["A"], 50000104, _at("A", 50), [Image("a-50h")], FULL.format(cm="3.0")),
        Study(subj["A"], 50000105, _at("A", -1), [Image("a-before")], FULL.format(cm="9.9")),
        # A2: the same subject's earlier stay has its own study (FINDINGS AND IMPRESSION header)
        Study(subj["A2"], 50000201, _at("A2", 5), [Image("a2-5h")], COMBINED),
        # B: an image without a report; a study after ICU discharge (inside 48 h)
        Study(subj["B"], 50000301, _at("B", 1), [Image("b-1h")], None, split="test"),
        Study(subj["B"], 50000302, _at("B", 11), [Image("b-after-out")], FULL.format(cm="2.0"), split="test"),
        # C: the chosen image's JPEG is missing; its report is there
        Study(subj["C"], 50000401, _at("C", 20), [Image("c-20h", jpeg=False)], FULL.format(cm="5.5")),
        # D: a report with no image in the metadata; lateral views only; a PA study (AP/PA only)
        Study(subj["D"], 50000501, _at("D", 8), [], FULL.format(cm="7.0")),
        Study(subj["D"], 50000502, _at("D", 6), [Image("d-lat", "LATERAL"), Image("d-ll", "LL")], COMBINED),
        Study(subj["D"], 50000503, _at("D", 3), [Image("d-pa", "PA")], FULL.format(cm="6.0")),
        # F: two studies at the same time (greatest study_id wins), two AP images in it (greatest dicom_id)
        Study(subj["F"], 50000601, _at("F", 6), [Image("f-x")], FULL.format(cm="1.0")),
        Study(subj["F"], 50000602, _at("F", 6), [Image("f-a"), Image("f-b")], FULL.format(cm="1.5"), fraction="002"),
        # H: AP at intime, AP at exactly +48 h (+0.999 s dropped: inside), AP at +48 h + 1 s (outside 48 h)
        Study(subj["H"], 50000701, _at("H", 0), [Image("h-0h")], FULL.format(cm="3.3"), fraction="000"),
        Study(subj["H"], 50000702, _at("H", 48), [Image("h-48h")], IMPRESSION_ONLY.format(what="No"), fraction="999"),
        Study(subj["H"], 50000703, _at("H", 48, 1), [Image("h-48h1s")], FULL.format(cm="3.8"), fraction="000"),
        # I: a report with neither FINDINGS nor IMPRESSION
        Study(subj["I"], 50000801, _at("I", 2), [Image("i-2h")], NEITHER),
        # a subject with no ICU stay in the demo
        Study(19999998, 50000901, _at("I", 2), [Image("z-none")], FULL.format(cm="8.0")),
    ]


F_CHOSEN = max(("f-a", "f-b"), key=dicom_id)
# expected (image name, study_id of the report, provenance) per stay; None: no image / no report
DEFAULT = {
    "A": ("a-30h", 50000102, 0),
    "A2": ("a2-5h", 50000201, 0),
    "B": ("b-1h", None, None),
    "C": (None, 50000401, 0),
    "D": (None, None, None),
    "F": (F_CHOSEN, 50000602, 0),
    "H": ("h-48h", 50000702, 1),
    "I": ("i-2h", None, None),
}
WITH_PA = {**DEFAULT, "A": ("a-40h-pa", 50000103, 1), "D": ("d-pa", 50000503, 0)}
PHENOTYPING = {**DEFAULT, "A": ("a-50h", 50000104, 0), "H": ("h-48h1s", 50000703, 0)}
runner = CliRunner()


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> tuple[Path, Path, list[Study]]:
    root = tmp_path_factory.mktemp("mimic-cxr-jpg")
    sts = studies()
    write_cxr_jpg(root, sts)
    reports = tmp_path_factory.mktemp("mimic-cxr") / "mimic-cxr-reports.zip"
    write_reports(reports.parent, sts, folder=True, zipped=True)
    return root, reports, sts


@pytest.fixture(scope="module")
def caches(layout, tmp_path_factory) -> dict[str, Path]:
    root, reports, _ = layout
    out = {}
    runs = {"default": [], "with_pa": ["--include-pa"], "phenotyping": ["--task", "phenotyping"]}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        torch.set_num_threads(1)
        for name, extra in runs.items():
            # the default run reads the zip, the others the unzipped reports folder
            rep = reports if name == "default" else reports.parent
            cache = tmp_path_factory.mktemp(name) / "mimic.zarr"
            args = ["extract", "--dataset", "mimic", "--root", str(D4), "--cxr-root", str(root)]
            args += ["--reports-root", str(rep), "--out", str(cache), *extra]
            args += ["--image-encoder", "random:resnet34", "--text-encoder", "minilm", "--text-pooling", "mean"]
            args += ["--max-tokens", "64", "--device", "cpu", "--precision", "fp32", "--no-progress"]
            r = runner.invoke(app, args)
            assert r.exit_code == 0, r.output
            out[name] = cache
    return out


@pytest.fixture(scope="module")
def encoders():
    image = build_image_encoder("random:resnet34", device="cpu", precision="fp32")
    text = build_text_encoder("minilm", pooling="mean", max_tokens=64, device="cpu", precision="fp32")
    return image, text


def test_the_layout_is_mimic_cxr_jpg(layout):
    root, reports, sts = layout
    with gzip.open(root / "mimic-cxr-2.0.0-metadata.csv.gz", "rt", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == METADATA_COLUMNS
    b = next(r for r in rows if r["dicom_id"] == dicom_id("b-1h"))
    assert len(b["dicom_id"]) == 44 and b["dicom_id"].count("-") == 4
    # 10000032's study one hour after its ICU admission at 14:00:00: "150000.531" (no leading zero needed)
    assert (b["subject_id"], b["study_id"], b["StudyDate"], b["StudyTime"]) == (
        "10000032",
        "50000301",
        "21800723",
        "150000.531",
    )
    assert b["ViewPosition"] == "AP" and b["ViewCodeSequence_CodeMeaning"] == "antero-posterior"
    assert study_date_time(datetime(2150, 1, 2, 9, 30, 12), "5") == ("21500102", "93012.5")  # leading zero dropped
    assert (root / "files/p10/p10000032/s50000301" / f"{dicom_id('b-1h')}.jpg").is_file()
    assert not image_file(root, STAYS["C"][0], 50000401, dicom_id("c-20h")).exists()  # listed, no JPEG
    with zipfile.ZipFile(reports) as z:
        names = set(z.namelist())
    assert "files/p10/p10016742/s50000102.txt" in names and "files/p10/p10000032/s50000301.txt" not in names
    assert (reports.parent / "files/p10/p10032725/s50000401.txt").is_file()
    assert len(rows) == sum(len(s.images) for s in sts)


def _rows(c) -> dict[str, int]:
    out = {}
    los = c.references["los_hours"][0]
    for name, (subject, stay, intime, outtime) in STAYS.items():
        r = np.flatnonzero(c.stay_id == stay)
        assert r.size == 1, f"stay {stay} not in the cohort"
        assert c.subject_id[r[0]] == str(subject)
        assert los[r[0]] == pytest.approx((_t(outtime) - _t(intime)).total_seconds() / 3600, abs=1e-3)
        out[name] = int(r[0])
    return out


@pytest.mark.parametrize("run, expected", [("default", DEFAULT), ("with_pa", WITH_PA), ("phenotyping", PHENOTYPING)])
def test_chosen_image_and_report_end_to_end(run, expected, caches, layout, encoders):
    root, reports, sts = layout
    image_enc, text_enc = encoders
    c = load_cache(caches[run])
    rows = _rows(c)
    cx, rep = c.modalities["cxr"], c.modalities["report"]
    assert cx.encoder == "random:resnet34" and rep.provenance_codes == ["findings", "impression"]
    by_study = {s.study_id: s for s in sts}
    jpegs = {
        im.name: image_file(root, s.subject_id, s.study_id, im.dicom_id) for s in sts for im in s.images if im.jpeg
    }
    names = sorted(jpegs)
    with torch.inference_mode():
        all_x = image_enc.encode(torch.stack([image_enc.load(jpegs[n]) for n in names])).numpy()
    for stay, (img, study, prov) in expected.items():
        r = rows[stay]
        assert bool(cx.mask[r]) == (img is not None), (run, stay)
        if img is not None:
            got = cx.x[r].astype(np.float32)
            want = all_x[names.index(img)]
            np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2 * np.abs(want).max())
            assert names[int(np.argmin(((all_x - got) ** 2).sum(1)))] == img  # no other image is as close
        assert bool(rep.mask[r]) == (study is not None), (run, stay)
        assert rep.provenance[r] == (-1 if prov is None else prov), (run, stay)
        if study is not None:
            text, p = findings_text(by_study[study].report or "")
            assert p == prov
            want_t = text_enc.encode([text_enc.prepare(text)])[0][0].numpy()
            np.testing.assert_allclose(rep.x[r].astype(np.float32), want_t, atol=5e-3)
    others = np.setdiff1d(np.arange(c.n), list(rows.values()))
    assert not cx.mask[others].any() and not rep.mask[others].any()  # no other stay has a study
    with_cxr = {str(s.subject_id) for s in sts}
    split = ["test" if s == "10000032" else "train" if s in with_cxr else "none" for s in c.subject_id]
    assert c.splits["mimic_cxr"].tolist() == split  # the subject's official split, "none" without MIMIC-CXR
    info = {m["name"]: m for m in cache_info(caches[run])["modalities"]}
    assert info["cxr"]["skipped"] == {"image file missing": 1}
    assert info["report"]["skipped"] == {
        "report file missing": 1,
        "report has neither FINDINGS nor IMPRESSION": 1,
    }


def test_findings_and_impression_texts(layout):
    """The texts behind the embeddings above: FINDINGS, the combined header, the IMPRESSION fallback."""
    _, _, sts = layout
    by_study = {s.study_id: s for s in sts}
    assert findings_text(by_study[50000102].report or "") == (
        "Endotracheal tube tip terminates 4.5 cm above the carina. Heart size is normal. There is a small left "
        "pleural effusion. No pneumothorax.",
        0,
    )
    assert findings_text(COMBINED) == (
        "Lungs are clear. No effusion. Right internal jugular line tip in the SVC.",
        0,
    )
    assert findings_text(by_study[50000103].report or "") == ("Moderate pulmonary edema, worse than prior.", 1)
    assert findings_text(NEITHER) is None


def test_task_both_caches_phenotypings_own_image_and_report(caches):
    """The default ``--task both`` cache holds ``cxr_stay``/``report_stay``, the very embeddings the
    ``--task phenotyping`` cache holds as ``cxr``/``report`` (its whole-stay window); stage two reads them for
    phenotyping by default, the 48 h ``cxr``/``report`` for mortality, and refuses ``cxr_stay`` for mortality."""
    both, pheno = load_cache(caches["default"]), load_cache(caches["phenotyping"])
    assert np.array_equal(both.stay_id, pheno.stay_id)
    for stay_name, name in (("cxr_stay", "cxr"), ("report_stay", "report")):
        got, want = both.modalities[stay_name], pheno.modalities[name]
        assert np.array_equal(got.mask, want.mask) and got.mask.any()
        np.testing.assert_array_equal(got.x[got.mask], want.x[want.mask])
    assert np.array_equal(both.modalities["report_stay"].provenance, pheno.modalities["report"].provenance)
    # the 48 h and the whole-stay image differ for some stay (a study after 48 h), else the test shows nothing
    assert not np.array_equal(both.modalities["cxr"].mask, both.modalities["cxr_stay"].mask) or not np.array_equal(
        both.modalities["cxr"].x, both.modalities["cxr_stay"].x
    )
    assert task_inputs(both.spec, "phenotyping") == ["ehr_stay", "cxr_stay", "report_stay"]
    assert task_inputs(both.spec, "mortality") == ["ehr", "cxr", "report"]
    check_task_inputs(both.spec, "phenotyping", ["ehr", "cxr", "report"])  # may be named for phenotyping
    with pytest.raises(CacheError, match="'cxr_stay' is an input of 'phenotyping' only"):
        check_task_inputs(both.spec, "mortality", ["ehr", "cxr_stay"])
