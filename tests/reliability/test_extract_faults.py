"""Fault suite, stage one: what `omnifuse extract` does with changed, bad or hostile inputs and a failing disk.

Each case runs a real extraction (small manifests, images and arrays written by the test; the bundled eICU
demo with a small ``limit``) and asserts the exit code or exception, the one-line message, and that no
stored number is wrong or stale: a store is compared with a fresh extraction of the same inputs.
"""

from __future__ import annotations

import errno
import gzip
import json
import logging
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import zarr.storage._local as zarr_local
from PIL import Image
from typer.testing import CliRunner

from omnifuse.cache import CacheError, CacheWriter, IncompleteCacheError, cache_fingerprint, cache_info, load_cache
from omnifuse.cli import app
from omnifuse.extract import pipeline
from omnifuse.extract.datasets.base import Cohort, Item, RawModality
from omnifuse.extract.datasets.eicu.adapter import EicuAdapter
from omnifuse.extract.datasets.eicu.readers import demo_root
from omnifuse.extract.datasets.manifest import ManifestAdapter, ManifestError
from omnifuse.extract.encoders import build_image_encoder, build_text_encoder
from omnifuse.extract.images import MAX_IMAGE_PIXELS
from omnifuse.extract.pipeline import extract
from omnifuse.extract.run import extract_dataset
from tests.helpers import assert_same_cache

IMAGE_SIZE = 64
RUN = dict(rows_per_block=2, batch_size=4, progress=False, num_workers=0, decode_threads=0)
REPORTS = [
    "No acute cardiopulmonary process.",
    "Small left pleural effusion.",
    "Endotracheal tube 4 cm above the carina.",
    "Mild pulmonary edema.",
    "Right lower lobe opacity.",
    "Stable cardiomegaly.",
    "Clear lungs.",
    "Low lung volumes.",
]
SPEC = """
name = "faults"
version = "1"
[modalities.cxr]
input = "image"
column = "image"
[modalities.report]
input = "text"
column = "report"
[modalities.labs]
input = "tabular"
columns = ["age", "lactate"]
[tasks.died]
kind = "binary"
column = "died"
"""
LABS_SPEC = """
name = "labs"
[modalities.labs]
input = "tabular"
columns = ["age", "lactate"]
[tasks.died]
kind = "binary"
column = "died"
"""
runner = CliRunner()


@pytest.fixture(scope="module")
def encoders():
    ie = build_image_encoder("random:resnet34", device="cpu", precision="fp32", size=IMAGE_SIZE)
    te = build_text_encoder("minilm", pooling="mean", max_words=20, max_tokens=32, device="cpu", precision="fp32")
    return ie, te


def _png(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (40 + seed, 48), dtype=np.uint8), mode="L").save(path)


def _dataset(root: Path, spec: str = SPEC) -> dict[str, Path]:
    """Eight stays: a PNG each (row 6 has none), a report, age and lactate, a label."""
    for i in range(8):
        _png(root / "img" / f"i{i}.png", i)
    rows = {
        "stay_id": [str(101 + i) for i in range(8)],
        "subject_id": [f"p{i // 2}" for i in range(8)],
        "image": [f"img/i{i}.png" if i != 6 else "" for i in range(8)],
        "report": REPORTS,
        "age": [str(40 + 5 * i) for i in range(8)],
        "lactate": [str(1.0 + 0.5 * i) for i in range(8)],
        "died": [str(i % 2) for i in range(8)],
    }
    pl.DataFrame(rows).write_csv(root / "manifest.csv")
    (root / "spec.toml").write_text(spec)
    return {"root": root, "manifest": root / "manifest.csv", "spec": root / "spec.toml"}


def _edit(ds: dict[str, Path], column: str, row: int, value: str) -> None:
    df = pl.read_csv(ds["manifest"], infer_schema=False)
    df = df.with_columns(df[column].scatter(row, value))
    df.write_csv(ds["manifest"])


def _extract(ds: dict[str, Path], out: Path, encoders, **kw):
    ie, te = encoders
    return extract(ManifestAdapter(ds["manifest"], ds["spec"]), out, image_encoder=ie, text_encoder=te, **{**RUN, **kw})


def _one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------ resume and changes


def test_resume_re_encodes_rows_whose_inputs_changed_and_rewrites_labels(encoders, tmp_path):
    ie, te = encoders
    ds = _dataset(tmp_path / "data")
    out = tmp_path / "c.zarr"
    first = _extract(ds, out, encoders)
    assert first.finalized and first.seconds > 0
    assert open_attrs(out)["summary"]["extract"]["seconds"] > 0  # the stored summary says how long it took
    before = cache_fingerprint(out)

    _png(ds["root"] / "img" / "new.png", 11)
    _edit(ds, "image", 2, "img/new.png")  # block [2, 4) of cxr
    _edit(ds, "report", 5, "Large right pneumothorax.")  # block [4, 6) of report
    _edit(ds, "lactate", 3, "9.5")  # block [2, 4) of labs
    _edit(ds, "died", 7, "0")  # a label: rewritten, nothing re-encoded for it
    images, texts = ie.items, te.items
    again = _extract(ds, out, encoders)
    assert again.resumed and again.finalized
    r = again.modalities
    assert (r["cxr"].rows_changed, r["cxr"].blocks_reencoded, r["cxr"].blocks_written) == (1, 1, 1)
    assert (r["report"].rows_changed, r["report"].blocks_reencoded) == (1, 1)
    assert (r["labs"].rows_changed, r["labs"].blocks_reencoded) == (1, 1)
    assert again.changed == {"labels died": 1}
    assert ie.items - images == 2 and te.items - texts == 2  # only the rows of the re-encoded blocks

    fresh = tmp_path / "fresh.zarr"
    _extract(ds, fresh, encoders)
    assert_same_cache(out, fresh)
    assert load_cache(out).labels["died"].y[7, 0] == 0
    after = cache_fingerprint(out)
    assert after["encoders_digest"] == before["encoders_digest"] and after["rows"] == before["rows"]
    assert after["inputs"] != before["inputs"] and after["labels"] != before["labels"]
    assert after == cache_fingerprint(fresh)  # the resumed store is the store of the edited inputs

    # an unchanged rerun encodes nothing and leaves the store as it was (attributes included)
    attrs = (out / "zarr.json").read_bytes()
    third = _extract(ds, out, encoders)
    assert third.finalized and all(m.blocks_written == 0 and m.rows_changed == 0 for m in third.modalities.values())
    assert third.changed == {} and (out / "zarr.json").read_bytes() == attrs
    assert cache_fingerprint(out) == after


def open_attrs(path: Path) -> dict:
    return json.loads((path / "zarr.json").read_text())["attributes"]["omnifuse"]


def test_a_file_replaced_in_place_is_encoded_again(encoders, tmp_path):
    ie, _ = encoders
    ds = _dataset(tmp_path / "data")
    out = tmp_path / "c.zarr"
    _extract(ds, out, encoders)
    target = ds["root"] / "img" / "i1.png"
    st = target.stat()
    _png(target, 21)  # same path, other pixels
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    again = _extract(ds, out, encoders)
    assert again.modalities["cxr"].rows_changed == 1 and again.modalities["cxr"].blocks_reencoded == 1
    ref = ie.encode(ie.load(target)[None])[0].numpy()
    np.testing.assert_allclose(load_cache(out).modalities["cxr"].x[1].astype(np.float32), ref, rtol=2e-3, atol=2e-3)


def test_killed_while_re_encoding_leaves_a_refused_store_that_resumes(encoders, tmp_path, monkeypatch):
    ds = _dataset(tmp_path / "data")
    out = tmp_path / "c.zarr"
    _extract(ds, out, encoders)
    _edit(ds, "report", 0, "Interval placement of a feeding tube.")
    _edit(ds, "died", 0, "0")

    def killed(self, *a, **k):
        raise KeyboardInterrupt  # the process dies here: nothing after this line runs in the pipeline

    monkeypatch.setattr(CacheWriter, "write_block", killed)
    with pytest.raises(KeyboardInterrupt):
        _extract(ds, out, encoders)
    monkeypatch.undo()
    with pytest.raises(IncompleteCacheError, match=r"pass --allow-incomplete \(allow_incomplete=True\)"):
        load_cache(out)  # the new label is written, the report's block is not: never read as finished
    again = _extract(ds, out, encoders)
    assert again.finalized and again.modalities["report"].blocks_written == 1
    fresh = tmp_path / "fresh.zarr"
    _extract(ds, fresh, encoders)
    assert_same_cache(out, fresh)


# ---------------------------------------------------------------------------------------- numeric values

NUMERIC_SPEC = """
name = "numbers"
[modalities.labs]
input = "tabular"
columns = ["age", "lactate"]
ranges = { age = [0, 120] }
[modalities.vitals]
input = "timeseries"
column = "vitals"
shape = [3, 2]
feature_names = ["hr", "sbp"]
[ranges]
lactate = [0, 30]
hr = [0, 300]
[tasks.died]
kind = "binary"
column = "died"
"""


def test_infinite_too_large_and_implausible_values_are_masked_and_counted(tmp_path):
    root = tmp_path / "data"
    (root / "ts").mkdir(parents=True)
    np.save(root / "ts" / "v0.npy", np.array([[80, 120], [np.inf, 118], [85, 1e39]]))
    np.save(root / "ts" / "v1.npy", np.array([[90, 130], [4000, 125], [88, np.nan]]))
    np.save(root / "ts" / "v2.npy", np.full((3, 2), np.nan))  # nothing observed: a skip, not a present row
    pl.DataFrame(
        {
            "stay_id": ["1", "2", "3", "4", "5", "6"],
            "subject_id": ["a", "b", "c", "d", "e", "f"],
            "age": ["1e39", "61", "70", "-inf", "", "1e39"],
            "lactate": ["1.5", "inf", "1e30", "2.0", "", "inf"],
            "vitals": ["ts/v0.npy", "ts/v1.npy", "ts/v2.npy", "", "", ""],
            "died": ["1", "0", "1", "0", "0", "1"],
        }
    ).write_csv(root / "manifest.csv")
    (root / "spec.toml").write_text(NUMERIC_SPEC)
    out = tmp_path / "n.zarr"
    args = ["extract", "--dataset", "manifest", "--manifest", str(root / "manifest.csv"), "--spec"]
    r = runner.invoke(app, [*args, str(root / "spec.toml"), "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output

    c = load_cache(out)
    labs, vitals = c.modalities["labs"], c.modalities["vitals"]
    nan = np.nan
    np.testing.assert_array_equal(labs.mask, [True, True, True, True, False, False])
    np.testing.assert_array_equal(labs.x[:4], np.array([[nan, 1.5], [61, nan], [70, nan], [nan, 2.0]], np.float32))
    np.testing.assert_array_equal(vitals.mask, [True, True, False, False, False, False])
    np.testing.assert_array_equal(vitals.x[0], np.array([[80, 120], [nan, 118], [85, nan]], np.float32))
    np.testing.assert_array_equal(vitals.x[1], np.array([[90, 130], [nan, 125], [88, nan]], np.float32))
    for m in (labs, vitals):
        assert not np.isinf(m.x).any() and not np.isnan(m.x[~m.mask]).any()  # no inf stored; absent rows 0

    info = {m["name"]: m for m in cache_info(out)["modalities"]}
    expected_labs = {"infinite": 3, "outside the plausible range": 1, "too large for float32": 2}
    assert info["labs"]["values_masked"] == expected_labs
    assert info["labs"]["skipped"] == {"no finite value": 1}  # row 6: both values masked
    assert info["vitals"]["values_masked"] == {
        "infinite": 1,
        "outside the plausible range": 1,
        "too large for float32": 1,
    }
    assert info["vitals"]["skipped"] == {"no finite value": 1}
    stored = open_attrs(out)["summary"]["extract"]["modalities"]
    assert stored["labs"]["values_masked"] == expected_labs
    assert stored["labs"]["masked_features"] == {"age": 3, "lactate": 3}
    assert stored["vitals"]["masked_features"] == {"hr": 2, "sbp": 1}
    assert c.spec.modality("labs").preprocessing["ranges"] == {"age": [0.0, 120.0], "lactate": [0.0, 30.0]}


def test_range_spec_errors_name_the_key(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    pl.DataFrame({"stay_id": ["1"], "subject_id": ["a"], "age": ["3"]}).write_csv(root / "m.csv")
    base = {"modalities": {"labs": {"input": "tabular", "columns": ["age"]}}}
    with pytest.raises(ManifestError, match=r"spec modalities.labs: ranges name features .*\['weight'\]"):
        ManifestAdapter(
            root / "m.csv",
            {**base, "modalities": {"labs": {**base["modalities"]["labs"], "ranges": {"weight": [0, 1]}}}},
        )
    with pytest.raises(ManifestError, match=r"range of 'age' must be \[low, high\] with low <= high"):
        ManifestAdapter(root / "m.csv", {**base, "ranges": {"age": [5, 1]}})
    with pytest.raises(ManifestError, match=r"spec \[ranges\]: no tabular.*\['height'\]"):
        ManifestAdapter(root / "m.csv", {**base, "ranges": {"height": [0, 250]}})


def test_eicu_implausible_and_overflowing_apache_values_are_masked(tmp_path):
    """The bundled demo, copied: one APACHE heart rate of 1e30 and one respiratory rate of 1e39 (issue 13,
    case 4) become "not observed" and counted; every other value equals the unmodified demo's."""
    root = tmp_path / "eicu"
    shutil.copytree(demo_root(), root)
    path = root / "apacheApsVar.csv.gz"
    df = pl.read_csv(path, infer_schema=False)
    stays = EicuAdapter(root).cohort().stay_id[:12].tolist()
    row = next(i for i, s in enumerate(stays) if (df["patientunitstayid"] == str(s)).sum() == 1)
    hit = df["patientunitstayid"] == str(stays[row])
    df = df.with_columns(
        heartrate=pl.when(hit).then(pl.lit("1e30")).otherwise(pl.col("heartrate")),
        respiratoryrate=pl.when(hit).then(pl.lit("1e39")).otherwise(pl.col("respiratoryrate")),
    )
    with gzip.open(path, "wb") as f:
        df.write_csv(f)
    kw = dict(limit=12, modalities=["apache"], progress=False, device="cpu")
    s = extract_dataset("eicu", tmp_path / "edited.zarr", root=root, **kw)
    ref = extract_dataset("eicu-demo", tmp_path / "demo.zarr", **kw)
    assert ref.values_masked == {}  # the demo itself holds no value outside the ranges
    # the adapter reads into float32, where 1e39 is already inf: counted as infinite
    assert s.values_masked["apache"] == {"infinite": 1, "outside the plausible range": 1}
    assert s.modalities["apache"].masked_features == {"aps_heartrate": 1, "aps_respiratoryrate": 1}
    a = load_cache(tmp_path / "edited.zarr", allow_incomplete=True).modalities["apache"]
    b = load_cache(tmp_path / "demo.zarr", allow_incomplete=True).modalities["apache"]
    names = a.feature_names
    assert names is not None
    hr, rr = names.index("aps_heartrate"), names.index("aps_respiratoryrate")
    assert np.isnan(a.x[row, hr]) and np.isnan(a.x[row, rr]) and np.isfinite(b.x[row, [hr, rr]]).all()
    same = np.ones(a.x.shape, bool)
    same[row, [hr, rr]] = False
    np.testing.assert_array_equal(a.x[same], b.x[same])  # NaN where the demo has NaN
    np.testing.assert_array_equal(a.mask, b.mask)


# --------------------------------------------------------------------------------------- per-row isolation


def _png_bomb(path: Path, side: int = 20000) -> None:
    """A valid grey PNG of ``side`` x ``side`` pixels (400 million for 20000), a few hundred kB on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(1)
    rows = bytes((side + 1) * 500)  # 500 rows of a filter byte and zero pixels
    data = b"".join(comp.compress(rows) for _ in range(side // 500)) + comp.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    _png_bomb(path)
    with pytest.raises(Image.DecompressionBombError, match="400000000 pixels"):
        Image.open(path)  # what stopped every extraction before (issue 13, case 5)
    return path


@pytest.mark.parametrize("decoding", ["inline", "threads", "worker"])
def test_a_decompression_bomb_is_masked_and_the_run_goes_on(encoders, tmp_path, bomb, decoding):
    ds = _dataset(tmp_path / "data")
    shutil.copy(bomb, ds["root"] / "img" / "bomb.png")
    _edit(ds, "image", 2, "img/bomb.png")
    out = tmp_path / "c.zarr"
    workers = {"inline": (0, 0), "threads": (0, 2), "worker": (1, 0)}[decoding]
    s = _extract(ds, out, encoders, num_workers=workers[0], decode_threads=workers[1])
    reason = f"image larger than the pixel limit ({MAX_IMAGE_PIXELS:,} pixels)"
    assert s.finalized and s.skipped["cxr"] == {reason: 1}
    assert load_cache(out).modalities["cxr"].mask.tolist() == [1, 1, 0, 1, 1, 1, 0, 1]
    again = _extract(ds, out, encoders, num_workers=workers[0], decode_threads=workers[1])
    assert again.finalized and all(m.blocks_written == 0 for m in again.modalities.values())  # no rerun loop


def test_any_exception_while_decoding_one_item_masks_that_item_only(encoders, tmp_path, monkeypatch, caplog):
    ds = _dataset(tmp_path / "data")
    secret = "Patient John Doe, MRN 123"
    real_load = pipeline.load_image
    real_prepare = type(encoders[1]).prepare

    def load_image(path, prep):
        if Path(path).name == "i3.png":
            raise RuntimeError(secret)
        return real_load(path, prep)

    def prepare(self, text):
        if text == REPORTS[4]:
            raise ValueError(secret)
        return real_prepare(self, text)

    monkeypatch.setattr(pipeline, "load_image", load_image)
    monkeypatch.setattr(type(encoders[1]), "prepare", prepare)
    caplog.set_level(logging.DEBUG, logger="omnifuse")
    s = _extract(ds, tmp_path / "c.zarr", encoders, decode_threads=2)
    assert s.finalized
    assert s.skipped["cxr"] == {"unreadable image (RuntimeError)": 1}
    assert s.skipped["report"] == {"text cannot be prepared (ValueError)": 1}
    c = load_cache(tmp_path / "c.zarr")
    assert c.modalities["cxr"].mask.tolist() == [1, 1, 1, 0, 1, 1, 0, 1]
    assert c.modalities["report"].mask.tolist() == [1, 1, 1, 1, 0, 1, 1, 1]
    assert "stay_id 104 masked: unreadable image (RuntimeError)" in caplog.text
    assert secret not in caplog.text  # the exception's message (it may hold patient text) is never logged


class _ArrayAdapter:
    """Two rows of a 2-feature tabular modality; the second row's value cannot become an array."""

    name = "arrays"
    version = "1"

    class _Hostile:
        def __array__(self, *a, **k):
            raise MemoryError("cannot allocate")

    def options(self) -> dict:
        return {}

    def cohort(self) -> Cohort:
        return Cohort(np.array([1, 2]), np.array(["a", "b"]))

    def modalities(self) -> list[RawModality]:
        return [RawModality("tab", "array", shape=(2,), kind="tabular", feature_names=["u", "v"])]

    def inputs(self, modality, rows):
        values = [Item(np.array([1.0, 2.0])), Item(self._Hostile())]
        return [values[int(r)] for r in rows]


def test_an_array_that_cannot_be_read_masks_its_row(tmp_path):
    s = extract(_ArrayAdapter(), tmp_path / "a.zarr", progress=False)
    assert s.finalized and s.skipped == {"tab": {"array is not numeric": 1}}
    assert load_cache(tmp_path / "a.zarr").modalities["tab"].mask.tolist() == [True, False]


# ------------------------------------------------------------------------------------- one-line errors


def test_manifest_with_bytes_that_are_not_utf8_names_the_file_and_line(tmp_path):
    ds = _dataset(tmp_path / "data")
    raw = ds["manifest"].read_bytes().replace(b"Mild pulmonary edema.", b"Mild pulmonary \xe9dema.")
    ds["manifest"].write_bytes(raw)
    r = runner.invoke(
        app,
        [
            "extract",
            "--dataset",
            "manifest",
            "--manifest",
            str(ds["manifest"]),
            "--spec",
            str(ds["spec"]),
            "--out",
            str(tmp_path / "c.zarr"),
            "--no-progress",
        ],
    )
    line = _one_line_error(r, f"manifest {ds['manifest']}: line 5 is not valid UTF-8", "byte 0xe9")
    assert "save the file as UTF-8" in line and not (tmp_path / "c.zarr").exists()


def _fail_writes(monkeypatch, fragment: str, err: int, after: int = 0) -> list[str]:
    """Make the Zarr store's file writes whose path contains ``fragment`` fail with ``err`` (after ``after``
    of them succeeded), as a full disk or a read-only folder does; returns the paths refused."""
    real_put = zarr_local._put
    seen: list[str] = []

    def put(path, value, exclusive=False):
        if fragment in str(path):
            seen.append(str(path))
            if len(seen) > after:
                raise OSError(err, os.strerror(err), str(path))
        return real_put(path, value, exclusive=exclusive)

    monkeypatch.setattr(zarr_local, "_put", put)
    return seen


def test_disk_full_during_a_block_write_is_one_line_and_the_rerun_resumes(encoders, tmp_path, monkeypatch):
    ds = _dataset(tmp_path / "data")
    out = tmp_path / "c.zarr"
    _fail_writes(monkeypatch, f"{os.sep}report{os.sep}x{os.sep}c{os.sep}", errno.ENOSPC, after=2)  # 3rd chunk
    with pytest.raises(CacheError) as e:
        _extract(ds, out, encoders)
    msg = str(e.value)
    assert msg.startswith(f"{out}: cannot write block [4, 6) of 'report': no space left on device") and "\n" not in msg
    assert "run the same command again: it resumes" in msg
    monkeypatch.undo()
    s = _extract(ds, out, encoders)
    assert s.resumed and s.finalized
    assert s.modalities["cxr"].blocks_already_done == 4 and s.modalities["report"].blocks_already_done == 2
    assert s.modalities["report"].blocks_written == 2
    fresh = tmp_path / "fresh.zarr"
    _extract(ds, fresh, encoders)
    assert_same_cache(out, fresh)


def test_disk_full_from_the_command_line_is_an_error_line_with_exit_code_2(tmp_path, monkeypatch):
    ds = _dataset(tmp_path / "data", spec=LABS_SPEC)
    out = tmp_path / "c.zarr"
    _fail_writes(monkeypatch, f"{os.sep}labs{os.sep}x{os.sep}c{os.sep}", errno.ENOSPC)
    args = ["extract", "--dataset", "manifest", "--manifest", str(ds["manifest"]), "--spec", str(ds["spec"])]
    r = runner.invoke(app, [*args, "--out", str(out), "--no-progress"])
    _one_line_error(r, f"error: {out}: cannot write block [0, 8) of 'labs': no space left on device")
    monkeypatch.undo()
    r = runner.invoke(app, [*args, "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert load_cache(out).modalities["labs"].x[0].tolist() == [40.0, 1.0]


def test_a_read_only_output_folder_is_named_in_one_line(tmp_path, monkeypatch):
    ds = _dataset(tmp_path / "data", spec=LABS_SPEC)
    folder = tmp_path / "readonly"
    folder.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: refuse the writes as a read-only folder does
        _fail_writes(monkeypatch, str(folder), errno.EACCES)
    else:
        folder.chmod(0o555)
    args = ["extract", "--dataset", "manifest", "--manifest", str(ds["manifest"]), "--spec", str(ds["spec"])]
    r = runner.invoke(app, [*args, "--out", str(folder / "c.zarr"), "--no-progress"])
    folder.chmod(0o755)
    _one_line_error(r, f"cannot create the cache {folder / 'c.zarr'}: the folder {folder} is read-only or not writable")
    assert list(folder.iterdir()) == []  # nothing half-created left behind
