"""Writing the cache: chunks aligned to blocks, ids and blocks checked, resume after a half-written run or a
SIGKILL without recomputing or rewriting anything finished."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import zarr

from omnifuse.cache import (
    CacheError,
    CacheSpec,
    CacheWriter,
    IncompleteCacheError,
    ModalitySpec,
    load_cache,
    open_cache,
)
from omnifuse.cache.meta import read_meta
from tests.helpers import toy_cache_spec, write_toy_cache


def test_chunks_are_aligned_to_blocks(tmp_path):
    path = tmp_path / "c.zarr"
    write_toy_cache(path, n=37, block=8)
    g = zarr.open_group(str(path), mode="r")
    for m in ("img", "rep", "ehr"):
        b = int(g[m].attrs["block_rows"])
        for arr in ("x", "mask", "done"):
            if arr == "done":
                assert g[m][arr].chunks == (1,)
                continue
            rows = g[m][arr].chunks[0]
            assert b % rows == 0, (m, arr, rows, b)  # every chunk lies inside one block


def test_duplicate_stay_ids_are_refused(tmp_path):
    with pytest.raises(CacheError, match="duplicate stay_id.*\\[5\\]"):
        CacheWriter.create(tmp_path / "c.zarr", toy_cache_spec(), np.array([1, 5, 5]), np.array(["a", "b", "c"]))


def test_half_written_cache_is_refused_then_resumed(tmp_path):
    path = tmp_path / "c.zarr"
    spec = toy_cache_spec()
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
    w = CacheWriter.create(
        path, toy_cache_spec(), np.arange(20), np.array([str(i) for i in range(20)]), rows_per_block=8
    )
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


# ---------------------------------------------------------------------------- adding modalities to a store


def _files(folder) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def test_an_added_modality_is_written_while_the_store_stays_finalized(tmp_path):
    path = tmp_path / "c.zarr"
    spec, stay, subj, truth, _ = write_toy_cache(path, n=37, block=8)
    others = {m: _files(path / m) for m in ("img", "rep", "ehr")}
    w = CacheWriter.open(path)
    new = CacheSpec.from_json(spec.to_json())
    new.modalities.insert(1, ModalitySpec("img2", "vector", (3,), encoder="other", encoder_hash="def"))
    new.adapter_options = {"spec": "with img2"}
    w.add_modalities(new, {"img2": "img"}, rows_per_block=16)
    c = open_cache(path)
    assert [m.name for m in c.spec.modalities] == ["img", "img2", "rep", "ehr"]
    assert c.meta["finalized"] is True and c.spec.adapter_options == {"spec": "with img2"}
    assert c.meta["additions"]["img2"]["source"] == "img" and "finished" not in c.meta["additions"]["img2"]
    assert w.adding == {"img2"} and w.pending_blocks("img2") == [(0, 16), (16, 32), (32, 37)]
    # the other modalities read as before; the new one is incomplete, for itself only
    np.testing.assert_array_equal(load_cache(path, modalities=["img"]).modalities["img"].mask, truth["img"][1])
    with pytest.raises(IncompleteCacheError, match="'img2' has 37 rows not yet written"):
        load_cache(path)
    x = np.arange(37 * 3, dtype=np.float32).reshape(37, 3) / 100
    w.write_block("img2", 0, 16, x[:16], np.ones(16, bool))
    assert read_meta(path)["finalized"] is True  # a block of a modality being added leaves the flag alone
    got = load_cache(path, modalities=["img2"], allow_incomplete=True).modalities["img2"]
    assert got.mask.tolist() == [True] * 16 + [False] * 21
    assert w.finish_additions(["img2"]) == []  # not every block is done
    for s, e in w.pending_blocks("img2"):
        w.write_block("img2", s, e, x[s:e], np.ones(e - s, bool))
    assert w.finish_additions(["img2"], {"run": 1}, {"img2": {"present": 37}}) == ["img2"]
    meta = read_meta(path)
    assert meta["additions"]["img2"]["config"] == {"run": 1} and meta["summary"]["extract"]["modalities"]["img2"]
    assert meta["summary"]["cohort"] == {"too_short": 2}  # the first run's summary is kept
    np.testing.assert_allclose(load_cache(path).modalities["img2"].x.astype(np.float32), x, atol=1e-3)
    assert {m: _files(path / m) for m in others} == others  # byte for byte
    # rewriting a block of the finished addition marks it as being added again, not the store as unfinished
    w.invalidate_blocks("img2", [16])
    assert read_meta(path)["finalized"] is True and "finished" not in read_meta(path)["additions"]["img2"]
    assert CacheWriter.open(path).adding == {"img2"}


def test_adding_refuses_changes_to_what_the_store_has(tmp_path):
    path = tmp_path / "c.zarr"
    spec, *_ = write_toy_cache(path, n=20, block=8)
    w = CacheWriter.open(path)
    extra = ModalitySpec("new", "vector", (2,))
    changed = CacheSpec.from_json(spec.to_json())
    changed.modalities[0].encoder_hash = "zzz"
    changed.modalities.append(extra)
    with pytest.raises(CacheError, match=r"cannot change or remove the modalities \['img'\]"):
        w.add_modalities(changed, {"new": "new"})
    relabelled = CacheSpec.from_json(spec.to_json())
    relabelled.tasks = relabelled.tasks[:1]
    relabelled.modalities.append(extra)
    with pytest.raises(CacheError, match="cannot change the spec's tasks"):
        w.add_modalities(relabelled, {"new": "new"})
    with pytest.raises(CacheError, match="already has modality 'img'; remove it"):
        w.add_modalities(spec, {"img": "img"})
    assert not (path / "new").exists() and "additions" not in read_meta(path)


def test_a_stray_folder_of_a_killed_addition_is_replaced_and_a_modality_removed(tmp_path):
    path = tmp_path / "c.zarr"
    spec, *_ = write_toy_cache(path, n=20, block=8)
    (path / "new").mkdir()
    (path / "new" / "junk").write_text("left by a run killed before the attributes were written")
    new = CacheSpec.from_json(spec.to_json())
    new.modalities.append(ModalitySpec("new", "vector", (2,)))
    w = CacheWriter.open(path)
    w.add_modalities(new, {"new": "new"}, rows_per_block=8)
    assert not (path / "new" / "junk").exists() and w.pending_blocks("new") == [(0, 8), (8, 16), (16, 20)]
    w.remove_modality("rep")
    c = open_cache(path)
    assert [m.name for m in c.spec.modalities] == ["img", "ehr", "new"] and not (path / "rep").exists()
    assert c.meta["finalized"] is True
    w.remove_modality("new")
    assert "new" not in read_meta(path)["additions"]


def test_a_plain_resume_sets_aside_modalities_added_under_another_name(tmp_path):
    path = tmp_path / "c.zarr"
    spec, stay, subj, *_ = write_toy_cache(path, n=20, block=8)
    w = CacheWriter.open(path)
    new = CacheSpec.from_json(spec.to_json())
    new.modalities.append(ModalitySpec("img_b", "vector", (2,)))
    w.add_modalities(new, {"img_b": "img"})
    assert w.spec_differences(spec) == []  # the dataset's own spec resumes the store
    resumed = CacheWriter.create(path, spec, stay, subj)
    assert [m.name for m in resumed.spec.modalities] == ["img", "rep", "ehr", "img_b"]
    other = CacheSpec.from_json(spec.to_json())
    other.dataset_version = "2"
    assert w.spec_differences(other) == ["dataset_version"]
