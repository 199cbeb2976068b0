"""The Zarr cache: round trip, chunk alignment, resume after SIGKILL, and clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from omnifuse.cache import (
    SCHEMA_VERSION,
    CacheError,
    CacheSpec,
    CacheWriter,
    IncompleteCacheError,
    ModalitySpec,
    SchemaMismatchError,
    TaskSpec,
    cache_info,
    load_cache,
    open_cache,
)


def _spec() -> CacheSpec:
    return CacheSpec(
        dataset="toy",
        dataset_version="1",
        modalities=[
            ModalitySpec("img", "vector", (8,), encoder="resnet34", encoder_hash="abc"),
            ModalitySpec("rep", "sequence", (5, 4), provenance_codes=["findings", "impression"]),
            ModalitySpec("ehr", "timeseries", (3, 2), dtype="float32", feature_names=["hr", "sbp"]),
        ],
        tasks=[
            TaskSpec("mort", "binary", ["died"]),
            TaskSpec("pheno", "multilabel", ["a", "b", "c"]),
            TaskSpec("stage", "multiclass", ["I", "II", "III"]),
        ],
        references=["apache"],
        splits=["official"],
        license="ODbL",
    )


def _fill(path: Path, n: int = 37, block: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    spec = _spec()
    stay = np.arange(n, dtype=np.int64) * 3 + 1000
    subj = np.array([f"002-{i // 2:04d}" for i in range(n)])
    w = CacheWriter.create(path, spec, stay, subj, rows_per_block=block)
    truth = {}
    for m in spec.modalities:
        x = rng.normal(size=(n, *m.shape)).astype(np.float32)
        mask = rng.random(n) > 0.3
        tm = rng.random((n, m.shape[0])) > 0.4 if m.kind == "sequence" else None
        prov = rng.integers(0, 2, n).astype(np.int8) if m.provenance_codes else None
        if m.kind == "timeseries":
            x[0, 0, 0] = np.nan  # raw time series keep NaN as "not observed"
        truth[m.name] = (x, mask, tm, prov)
        for s, e in w.pending_blocks(m.name):
            w.write_block(
                m.name, s, e, x[s:e], mask[s:e], None if tm is None else tm[s:e], None if prov is None else prov[s:e]
            )
    y = rng.random(n) > 0.7
    ym = rng.random(n) > 0.1
    w.write_labels("mort", y, ym)
    yp = (rng.random((n, 3)) > 0.5).astype(np.int8)
    w.write_labels("pheno", yp, np.ones(n, bool))
    yc = rng.integers(0, 3, n)
    w.write_labels("stage", yc, rng.random(n) > 0.5)
    ref = rng.random(n).astype(np.float32)
    refm = rng.random(n) > 0.5
    w.write_reference("apache", ref, refm)
    w.write_split("official", np.where(np.arange(n) % 4 == 0, "test", "train"))
    w.finalize({"cohort": {"too_short": 2}})
    return spec, stay, subj, truth, (y, ym, yp, yc, ref, refm)


def test_round_trip(tmp_path):
    path = tmp_path / "c.zarr"
    spec, stay, subj, truth, (y, ym, yp, yc, ref, refm) = _fill(path)
    d = load_cache(path)
    assert d.n == 37 and d.stay_id.dtype == np.int64
    np.testing.assert_array_equal(d.stay_id, stay)
    np.testing.assert_array_equal(d.subject_id, subj)  # strings kept faithfully
    for name, (x, mask, tm, prov) in truth.items():
        m = d.modalities[name]
        np.testing.assert_array_equal(m.mask, mask)
        assert m.x.dtype == np.dtype(spec.modality(name).dtype)
        expect = np.where(mask.reshape(-1, *[1] * (x.ndim - 1)), x, 0)
        if tm is not None:
            np.testing.assert_array_equal(m.tokens_mask, tm & mask[:, None])
            expect = np.where((tm & mask[:, None])[..., None], expect, 0)
        if prov is not None:
            np.testing.assert_array_equal(m.provenance, np.where(mask, prov, -1))
        np.testing.assert_allclose(m.x.astype(np.float32), expect, rtol=1e-3, atol=1e-3, equal_nan=True)
        assert (m.x[~mask] == 0).all()  # missing rows are zeros, never stale data
    assert np.isnan(d.modalities["ehr"].x[0, 0, 0]) == bool(truth["ehr"][1][0])
    np.testing.assert_array_equal(d.labels["mort"].y[:, 0], np.where(ym, y, 0))
    np.testing.assert_array_equal(d.labels["mort"].mask, ym)
    np.testing.assert_array_equal(d.labels["pheno"].y, yp)
    assert d.labels["stage"].y.dtype == np.int64 and d.labels["stage"].kind == "multiclass"
    np.testing.assert_array_equal(d.labels["stage"].y[d.labels["stage"].mask], yc[d.labels["stage"].mask])
    np.testing.assert_allclose(d.references["apache"][0][refm], ref[refm])
    np.testing.assert_array_equal(d.references["apache"][1], refm)
    assert d.splits["official"][0] == "test" and d.splits["official"][1] == "train"
    # selected modalities and rows
    rows = np.array([3, 17, 36])
    part = load_cache(path, modalities=["img"], rows=rows)
    assert list(part.modalities) == ["img"]
    np.testing.assert_array_equal(part.stay_id, stay[rows])
    np.testing.assert_array_equal(part.modalities["img"].mask, truth["img"][1][rows])


def test_attributes_describe_the_cache(tmp_path):
    path = tmp_path / "c.zarr"
    _fill(path)
    c = open_cache(path)
    assert c.meta["schema_version"] == SCHEMA_VERSION == 2 and c.meta["finalized"] is True
    assert c.spec.modality("img").encoder == "resnet34" and c.spec.modality("img").encoder_hash == "abc"
    assert {"python", "zarr", "numpy"} <= set(c.meta["software"])
    assert c.meta["created"] and c.spec.license == "ODbL"


def test_chunks_are_aligned_to_blocks(tmp_path):
    path = tmp_path / "c.zarr"
    _fill(path, n=37, block=8)
    g = zarr.open_group(str(path), mode="r")
    for m in ("img", "rep", "ehr"):
        b = int(g[m].attrs["block_rows"])
        for arr in ("x", "mask", "done"):
            if arr == "done":
                assert g[m][arr].chunks == (1,)
                continue
            rows = g[m][arr].chunks[0]
            assert b % rows == 0, (m, arr, rows, b)  # every chunk lies inside one block


def test_default_chunks_are_about_megabytes():
    from omnifuse.cache.store import block_rows, x_chunk_rows

    for shape, dtype in [((512,), "float16"), ((150, 768), "float16"), ((24, 76), "float32")]:
        r = x_chunk_rows(shape, dtype)
        nbytes = r * np.prod(shape) * (2 if dtype == "float16" else 4)
        assert 1 << 20 <= nbytes <= 4 << 20 or r == 4096, (shape, r, nbytes)
        assert block_rows(shape, dtype, 20000) % r == 0


def test_duplicate_stay_ids_are_refused(tmp_path):
    with pytest.raises(CacheError, match="duplicate stay_id.*\\[5\\]"):
        CacheWriter.create(tmp_path / "c.zarr", _spec(), np.array([1, 5, 5]), np.array(["a", "b", "c"]))


def test_other_schema_version_is_refused(tmp_path):
    path = tmp_path / "c.zarr"
    _fill(path)
    doc = json.loads((path / "zarr.json").read_text())
    doc["attributes"]["omnifuse"]["schema_version"] = 0
    (path / "zarr.json").write_text(json.dumps(doc))
    with pytest.raises(SchemaMismatchError, match="schema version 0.*re-run `omnifuse extract`"):
        open_cache(path)


def test_not_a_cache_is_refused(tmp_path):
    zarr.open_group(str(tmp_path / "z.zarr"), mode="w")
    with pytest.raises(SchemaMismatchError, match="not an omnifuse cache"):
        open_cache(tmp_path / "z.zarr")
    with pytest.raises(CacheError, match="no cache at"):
        open_cache(tmp_path / "absent.zarr")


def test_half_written_cache_is_refused_then_resumed(tmp_path):
    path = tmp_path / "c.zarr"
    spec = _spec()
    n = 20
    w = CacheWriter.create(path, spec, np.arange(n), np.array([str(i) for i in range(n)]), rows_per_block=8)
    s, e = w.pending_blocks("img")[0]
    w.write_block("img", s, e, np.ones((e - s, 8)), np.ones(e - s, bool))
    with pytest.raises(IncompleteCacheError, match="'img' has 12 rows not yet written"):
        load_cache(path, modalities=["img"])
    d = load_cache(path, modalities=["img"], allow_incomplete=True)
    assert d.modalities["img"].mask.tolist() == [True] * 8 + [False] * 12
    # same spec and ids: create() resumes instead of overwriting
    w2 = CacheWriter.create(path, spec, np.arange(n), np.array([str(i) for i in range(n)]))
    assert w2.pending_blocks("img") == [(8, 16), (16, 20)]
    with pytest.raises(CacheError, match="blocks not written"):
        w2.finalize()
    # another spec: refused with a clear message
    other = CacheSpec("toy", "2", spec.modalities, spec.tasks)
    with pytest.raises(CacheError, match="different specification.*dataset_version"):
        CacheWriter.create(path, other, np.arange(n), np.array([str(i) for i in range(n)]))


def test_bad_block_and_labels_are_refused(tmp_path):
    path = tmp_path / "c.zarr"
    w = CacheWriter.create(path, _spec(), np.arange(20), np.array([str(i) for i in range(20)]), rows_per_block=8)
    with pytest.raises(CacheError, match="not one block"):
        w.write_block("img", 4, 12, np.zeros((8, 8)), np.ones(8, bool))
    x = np.zeros((8, 8))
    x[2, 3] = np.nan
    with pytest.raises(CacheError, match="non-finite embedding in present row 2"):
        w.write_block("img", 0, 8, x, np.ones(8, bool))
    with pytest.raises(CacheError, match="stay_id 3\\) has class index 7"):
        w.write_labels("stage", np.array([0] * 3 + [7] + [0] * 16), np.ones(20, bool))
    with pytest.raises(CacheError, match="needs tokens_mask"):
        w.write_block("rep", 0, 8, np.zeros((8, 5, 4)), np.ones(8, bool))


def test_info_numbers(tmp_path):
    path = tmp_path / "c.zarr"
    spec, stay, subj, truth, (y, ym, yp, yc, ref, refm) = _fill(path)
    info = cache_info(path)
    assert info["rows"] == 37 and info["subjects"] == 19
    cov = {m["name"]: m["present"] for m in info["modalities"]}
    assert cov == {k: int(v[1].sum()) for k, v in truth.items()}
    assert sum(info["patterns"].values()) == 37
    allp = "img+rep+ehr"
    assert info["patterns"].get(allp, 0) == int((truth["img"][1] & truth["rep"][1] & truth["ehr"][1]).sum())
    mort = next(t for t in info["tasks"] if t["name"] == "mort")
    assert mort["labelled"] == int(ym.sum())
    assert mort["prevalence"]["died"] == pytest.approx(y[ym].mean())
    assert info["references"] == {"apache": int(refm.sum())}
    assert info["summary"]["cohort"] == {"too_short": 2}
    assert info["size_bytes"] > 0


WRITER_SCRIPT = textwrap.dedent(
    """
    import sys, time, numpy as np
    from omnifuse.cache import CacheWriter, CacheSpec, ModalitySpec
    path, log = sys.argv[1], sys.argv[2]
    n = 64
    spec = CacheSpec("toy", "1", [ModalitySpec("img", "vector", (16,)), ModalitySpec("txt", "vector", (4,))])
    w = CacheWriter.create(path, spec, np.arange(n) + 10, np.array([f"s{i}" for i in range(n)]), rows_per_block=4)
    for m in ("img", "txt"):
        for s, e in w.pending_blocks(m):
            with open(log, "a") as f:          # one line per encoder call, flushed before the work
                f.write(f"{m} {s} {e}\\n"); f.flush()
            x = (np.arange(s, e)[:, None] + np.zeros((1, spec.modality(m).shape[0]))) / 100.0
            time.sleep(0.05)
            w.write_block(m, s, e, x, np.ones(e - s, bool))
    w.finalize()
    """
)


def test_sigkill_resume_loses_and_rewrites_nothing(tmp_path):
    path, log = tmp_path / "c.zarr", tmp_path / "calls.log"
    script = tmp_path / "w.py"
    script.write_text(WRITER_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(path), str(log)])
    deadline = time.time() + 120
    done_before = 0
    while time.time() < deadline:  # wait until some blocks are done, reading the store as it is written
        if (path / "zarr.json").exists():
            c = open_cache(path)
            done_before = sum(int(np.asarray(c.group[m]["done"][:]).sum()) for m in ("img", "txt"))
            if done_before >= 6:
                break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    c = open_cache(path)
    done = {m: np.asarray(c.group[m]["done"][:]).astype(bool) for m in ("img", "txt")}
    n_done = sum(int(v.sum()) for v in done.values())
    assert 6 <= n_done < 32, "the writer should have been killed mid-run"
    first_calls = log.read_text().splitlines()
    subprocess.run([sys.executable, str(script), str(path), str(log)], check=True)
    second_calls = log.read_text().splitlines()[len(first_calls) :]
    # resumed run encodes exactly the blocks that were not done: nothing finished is recomputed
    expected = [f"{m} {k * 4} {k * 4 + 4}" for m in ("img", "txt") for k in range(16) if not done[m][k]]
    assert second_calls == expected
    d = load_cache(path)
    for m in ("img", "txt"):
        assert d.modalities[m].mask.all()
        np.testing.assert_allclose(d.modalities[m].x[:, 0].astype(np.float32), np.arange(64) / 100.0, atol=1e-3)
    assert open_cache(path).meta["finalized"] is True
