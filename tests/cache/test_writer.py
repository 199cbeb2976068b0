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

from omnifuse.cache import CacheError, CacheSpec, CacheWriter, IncompleteCacheError, load_cache, open_cache
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
