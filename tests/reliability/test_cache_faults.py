"""Fault suite, the cache: its fingerprint tells caches apart (issue 13, cases 1 to 3), a store that is not
finalized is refused, and a failing disk is named in one line. Real data: the bundled eICU demo, 30 stays."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr.storage._local as zarr_local
from typer.testing import CliRunner

from omnifuse.cache import (
    CacheError,
    CacheWriter,
    IncompleteCacheError,
    cache_fingerprint,
    fingerprint_differences,
    load_cache,
    open_cache,
)
from omnifuse.cli import app
from omnifuse.extract.run import extract_dataset
from tests.helpers import synthetic_cache_data

runner = CliRunner()
KEYS = {"schema", "dataset", "adapter_options", "modalities", "rows", "inputs", "labels", "encoders_digest", "digest"}
DEMO = dict(limit=30, progress=False, device="cpu")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fp") / "demo.zarr"
    extract_dataset("eicu-demo", out, **DEMO)
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_fingerprint_keys_and_what_they_cover(demo):
    fp = cache_fingerprint(demo)
    assert set(fp) == KEYS
    assert fp["schema"] == 3 and fp["dataset"] == {"name": "eicu-demo", "version": "2.0.1"}
    assert fp["adapter_options"]["root"] == "<bundled>/eicu-demo-2.0.1"
    assert list(fp["modalities"]) == ["vitals", "apache", "history", "diagnosis", "exam", "admission", "exam_values", "treatments"]
    hist = fp["modalities"]["history"]
    assert set(hist) == {"kind", "shape", "dtype", "encoder", "encoder_hash", "preprocessing", "feature_names"}
    assert hist["encoder"] == "sentence-transformers/all-MiniLM-L6-v2" and len(hist["encoder_hash"]) == 64
    assert hist["preprocessing"]["pooling"] == "mean" and hist["preprocessing"]["licence"].startswith("Apache-2.0")
    assert fp["modalities"]["apache"]["preprocessing"]["ranges"]["aps_heartrate"] == [0.0, 300.0]
    for k in ("rows", "inputs", "labels", "encoders_digest", "digest"):
        assert len(fp[k]) == 64 and int(fp[k], 16) >= 0
    assert json.loads(json.dumps(fp)) == fp  # JSON-ready: a run records it as it is
    # the same whatever it is given, and from a copy of the store
    c = open_cache(demo)
    assert cache_fingerprint(c) == fp == cache_fingerprint(str(demo)) == cache_fingerprint(load_cache(demo))
    assert fingerprint_differences(fp, fp) == []


def test_fingerprint_reads_no_embedding(demo, tmp_path):
    """Cheap: it reads attributes and the one-number-per-row arrays, never ``<m>/x``."""
    copy = _copy(demo, tmp_path / "copy.zarr")
    removed = set()
    for m in cache_fingerprint(demo)["modalities"]:
        if (copy / m / "x" / "c").exists():  # a modality no row of the 30 holds has no chunk written
            shutil.rmtree(copy / m / "x" / "c")
            removed.add(m)
    assert {"vitals", "apache", "history", "admission"} <= removed
    assert cache_fingerprint(copy) == cache_fingerprint(demo)


def test_a_cache_rebuilt_with_another_pooling_has_another_encoders_digest(demo, tmp_path):
    """Issue 13, cases 1 and 2: same shapes, other numbers; the fingerprint names the difference."""
    other = _copy(demo, tmp_path / "other.zarr")
    args = ["extract", "--dataset", "eicu-demo", "--limit", "30", "--device", "cpu", "--no-progress"]
    r = runner.invoke(app, [*args, "--text-pooling", "cls", "--out", str(other), "--overwrite"])
    assert r.exit_code == 0, r.output
    a, b = cache_fingerprint(demo), cache_fingerprint(other)
    assert b["modalities"]["history"]["shape"] == a["modalities"]["history"]["shape"] == [384]
    assert a["encoders_digest"] != b["encoders_digest"] and a["digest"] != b["digest"]
    assert (a["rows"], a["inputs"], a["labels"]) == (b["rows"], b["inputs"], b["labels"])  # same rows and inputs
    diff = fingerprint_differences(a, b, encoders_only=True)
    assert diff == [
        f'modality {m!r}: preprocessing.pooling is "cls", expected "mean"' for m in ("history", "diagnosis", "exam")
    ]
    assert fingerprint_differences(a, b, encoders_only=True, modalities=["vitals", "apache"]) == []


def test_fingerprint_differences_name_weights_rows_and_labels(demo):
    a = cache_fingerprint(demo)
    b = json.loads(json.dumps(a))
    b["modalities"]["exam"]["encoder_hash"] = "0" * 64
    b["labels"] = "1" * 64
    del b["modalities"]["vitals"]
    diff = fingerprint_differences(a, b)
    assert "modality 'vitals' is not in the cache" in diff
    weights = a["modalities"]["exam"]["encoder_hash"][:12]
    assert f"modality 'exam': encoder_hash is '{'0' * 12}...', expected '{weights}...'" in diff
    assert any(d.startswith("labels differ") for d in diff)
    assert fingerprint_differences(a, b, encoders_only=True, modalities=["history"]) == []


def test_info_shows_the_fingerprint(demo):
    fp = cache_fingerprint(demo)
    r = runner.invoke(app, ["info", str(demo)])
    assert r.exit_code == 0, r.output
    assert f"fingerprint {fp['digest']}" in r.output and f"encoders    {fp['encoders_digest']}" in r.output
    r = runner.invoke(app, ["info", str(demo), "--json"])
    assert json.loads(r.output)["fingerprint"] == fp


def test_fingerprint_needs_a_stored_cache():
    with pytest.raises(CacheError, match="needs a stored cache"):
        cache_fingerprint(synthetic_cache_data(n=20))


def _set_finalized(path: Path, value: bool) -> None:
    doc = json.loads((path / "zarr.json").read_text())
    doc["attributes"]["omnifuse"]["finalized"] = value
    (path / "zarr.json").write_text(json.dumps(doc))


def test_a_store_written_but_not_finalized_is_refused_unless_allowed(demo, tmp_path):
    store = _copy(demo, tmp_path / "unfinished.zarr")
    _set_finalized(store, False)  # every block written; killed before finalize, or being updated
    msg = (
        r"unfinished.zarr is not finalized: its extraction did not finish .*; re-run `omnifuse extract` with the "
        r"same options to finish it, or pass --allow-incomplete \(allow_incomplete=True\) to use it as it is"
    )
    with pytest.raises(IncompleteCacheError, match=msg):
        load_cache(store)
    data = load_cache(store, allow_incomplete=True)
    ref = load_cache(demo)
    np.testing.assert_array_equal(data.modalities["apache"].x, ref.modalities["apache"].x)
    r = runner.invoke(app, ["info", str(store)])
    assert r.exit_code == 0 and "NOT finalized" in r.output
    # a rerun of the same extraction finishes it without encoding anything
    s = extract_dataset("eicu-demo", store, **DEMO)
    assert s.finalized and all(m.blocks_written == 0 for m in s.modalities.values())
    assert load_cache(store).n == 30 and cache_fingerprint(store)["digest"] == cache_fingerprint(demo)["digest"]


def test_a_partial_extraction_is_refused_then_completed(tmp_path):
    out = tmp_path / "part.zarr"
    s = extract_dataset("eicu-demo", out, modalities=["apache"], limit=10, progress=False, device="cpu")
    assert not s.finalized
    with pytest.raises(IncompleteCacheError, match=r"'vitals' has 10 rows not yet written.*--allow-incomplete"):
        load_cache(out)
    with pytest.raises(IncompleteCacheError, match="is not finalized"):
        load_cache(out, modalities=["apache"])  # its blocks are written, the store is not finished
    assert load_cache(out, modalities=["apache"], allow_incomplete=True).modalities["apache"].mask.sum() > 0


def test_a_failing_disk_is_named_in_one_line_by_the_writer(tmp_path, monkeypatch):
    cd = synthetic_cache_data(n=20)
    w = CacheWriter.create(tmp_path / "c.zarr", cd.spec, cd.stay_id, cd.subject_id)
    real_put = zarr_local._put

    def full(path, value, exclusive=False):
        if f"{os.sep}labels{os.sep}" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_put(path, value, exclusive=exclusive)

    monkeypatch.setattr(zarr_local, "_put", full)
    lab = cd.labels["mortality"]
    with pytest.raises(CacheError) as e:
        w.write_labels("mortality", lab.y, lab.mask)
    assert str(e.value) == (
        f"{tmp_path / 'c.zarr'}: cannot write labels 'mortality': no space left on device; free some space, then "
        "run the same command again: it resumes"
    )
    monkeypatch.undo()
    assert w.write_labels("mortality", lab.y, lab.mask) == int(lab.mask.sum())  # rows that differ from the fill
    assert w.write_labels("mortality", lab.y, lab.mask) == 0  # the same labels again: nothing written
