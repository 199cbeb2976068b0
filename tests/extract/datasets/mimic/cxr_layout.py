"""A faithful MIMIC-CXR layout written by tests (no binary data is committed): MIMIC-CXR-JPG 2.0.0's tables
and image tree and MIMIC-CXR 2.0.0's reports, for studies a test describes with ``Study`` and ``Image``.

What the real datasets hold (PhysioNet ``mimic-cxr-jpg/2.0.0`` and ``mimic-cxr/2.0.0``):

- ``mimic-cxr-2.0.0-metadata.csv.gz``, one row per image, the columns of ``METADATA_COLUMNS`` in that order:
  ``dicom_id`` (44 characters: five dash-separated groups of 8 hex digits), ``subject_id`` (8 digits, starts
  with 1; the MIMIC-IV subject id), ``study_id`` (8 digits, starts with 5), ``PerformedProcedureStepDescription``
  (e.g. ``CHEST (PORTABLE AP)``, ``CHEST (PA AND LAT)``), ``ViewPosition`` (``AP``, ``PA``, ``LATERAL``, ``LL``,
  ... or empty), ``Rows``, ``Columns`` (pixels, e.g. 3056 x 2544), ``StudyDate`` (``YYYYMMDD``, shifted like
  MIMIC-IV's dates), ``StudyTime`` (``HHMMSS.fff`` written as a number, so a time before 10:00 has five digits
  before the point: 09:30:12.5 is ``93012.5``), ``ProcedureCodeSequence_CodeMeaning``,
  ``ViewCodeSequence_CodeMeaning`` (``antero-posterior``, ``postero-anterior``, ``lateral``, ``left lateral``)
  and ``PatientOrientationCodeSequence_CodeMeaning`` (``Erect``, ``Recumbent`` or empty).
- ``mimic-cxr-2.0.0-split.csv.gz``: dicom_id, study_id, subject_id, split (``train``, ``validate``, ``test``).
- ``mimic-cxr-2.0.0-chexpert.csv.gz``: subject_id, study_id and the 14 CheXpert labels (1.0, 0.0, -1.0 or empty).
- Images: ``files/p<first two digits of subject_id>/p<subject_id>/s<study_id>/<dicom_id>.jpg``.
- Reports (MIMIC-CXR 2.0.0): ``mimic-cxr-reports.zip``, whose tree is ``files/pXX/pSUBJECT/sSTUDY.txt`` (one
  free-text report per study; unzipped, the same tree), upper-case section headers such as ``FINDINGS:``.

``write_cxr_jpg(root, studies)`` writes the three tables and one small JPEG per image (``Image.jpeg=False``:
listed in the metadata, no file), each with its own pixels (``pixels(dicom_id)``), so an embedding tells which
image was encoded. ``write_reports(root, studies)`` writes the studies' reports (``Study.report=None``: none)
as files under ``root/files`` and as ``root/mimic-cxr-reports.zip``.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import zipfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

METADATA_COLUMNS = [
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
]
CHEXPERT_LABELS = [
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
]
VIEW_MEANING = {"AP": "antero-posterior", "PA": "postero-anterior", "LATERAL": "lateral", "LL": "left lateral"}
JPEG_SIZE = (40, 48)  # width, height: small, not square (MIMIC-CXR-JPG images are 2544 x 3056 and the like)


@dataclass
class Image:
    """One image of a study: ``name`` (a test's label, turned into a real-looking dicom_id), its view, and
    whether its JPEG exists on disk."""

    name: str
    view: str = "AP"
    jpeg: bool = True

    @property
    def dicom_id(self) -> str:
        return dicom_id(self.name)


@dataclass
class Study:
    """One study of ``subject_id`` taken at ``time`` (``StudyTime`` keeps ``fraction`` seconds beyond it, as
    the real column's milliseconds); ``report=None``: no report file."""

    subject_id: int
    study_id: int
    time: datetime
    images: list[Image] = field(default_factory=list)
    report: str | None = None
    split: str = "train"
    fraction: str = "531"


def dicom_id(name: str) -> str:
    """A 44-character MIMIC-CXR dicom_id derived from ``name`` (five groups of 8 hex digits)."""
    h = hashlib.sha1(name.encode()).hexdigest()
    return "-".join(h[i : i + 8] for i in range(0, 40, 8))


def study_date_time(t: datetime, fraction: str = "531") -> tuple[str, str]:
    """``StudyDate`` and ``StudyTime`` as MIMIC-CXR writes them (leading zeros of the time dropped)."""
    return t.strftime("%Y%m%d"), f"{int(t.strftime('%H%M%S'))}.{fraction}"


def pixels(dicom: str) -> np.ndarray:
    """uint8 [48, 40] grey pixels of the image ``dicom`` (seeded by its id: each image differs)."""
    rng = np.random.default_rng(int(dicom[:8], 16))
    return (rng.random(JPEG_SIZE[::-1]) * 255).astype(np.uint8)


def image_file(root: Path, subject_id: int, study_id: int, dicom: str) -> Path:
    s = str(subject_id)
    return root / "files" / f"p{s[:2]}" / f"p{s}" / f"s{study_id}" / f"{dicom}.jpg"


def report_name(subject_id: int, study_id: int) -> str:
    s = str(subject_id)
    return f"files/p{s[:2]}/p{s}/s{study_id}.txt"


def _write_gz_csv(path: Path, columns: list[str], rows: list[list[object]]) -> None:
    with gzip.open(path, "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows(rows)


def write_cxr_jpg(root: Path, studies: list[Study]) -> None:
    """The MIMIC-CXR-JPG 2.0.0 tables and JPEGs of ``studies`` under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    meta, split, chexpert = [], [], []
    for st in studies:
        date, time = study_date_time(st.time, st.fraction)
        portable = any(im.view == "AP" for im in st.images)
        procedure = "CHEST (PORTABLE AP)" if portable else "CHEST (PA AND LAT)"
        for im in st.images:
            lateral = im.view in ("LATERAL", "LL")
            meta.append(
                [
                    im.dicom_id,
                    st.subject_id,
                    st.study_id,
                    procedure,
                    im.view,
                    3050 if lateral else 3056,
                    2539 if lateral else 2544,
                    date,
                    time,
                    procedure,
                    VIEW_MEANING.get(im.view, ""),
                    "Recumbent" if portable else "Erect",
                ]
            )
            split.append([im.dicom_id, st.study_id, st.subject_id, st.split])
            if im.jpeg:
                p = image_file(root, st.subject_id, st.study_id, im.dicom_id)
                p.parent.mkdir(parents=True, exist_ok=True)
                PILImage.fromarray(pixels(im.dicom_id)).save(p, quality=95)
        labels = np.random.default_rng(st.study_id).choice(["", "1.0", "0.0", "-1.0"], size=len(CHEXPERT_LABELS))
        chexpert.append([st.subject_id, st.study_id, *labels.tolist()])
    _write_gz_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", METADATA_COLUMNS, meta)
    _write_gz_csv(root / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"], split)
    _write_gz_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", ["subject_id", "study_id", *CHEXPERT_LABELS], chexpert)


def write_reports(root: Path, studies: list[Study], folder: bool = True, zipped: bool = True) -> None:
    """The reports of ``studies`` as ``root/files/pXX/pSUBJECT/sSTUDY.txt`` and in ``root/mimic-cxr-reports.zip``."""
    root.mkdir(parents=True, exist_ok=True)
    have = [st for st in studies if st.report is not None]
    if folder:
        for st in have:
            p = root / report_name(st.subject_id, st.study_id)
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(st.report or "")
    if zipped:
        with zipfile.ZipFile(root / "mimic-cxr-reports.zip", "w", zipfile.ZIP_DEFLATED) as z:
            for st in have:
                z.writestr(report_name(st.subject_id, st.study_id), st.report or "")
