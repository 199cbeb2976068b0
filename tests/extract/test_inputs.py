"""Input fingerprints (``extract.inputs``): a file's path, size and modification time, every file of a folder,
a text's or an array's content, and why an input is missing."""

from __future__ import annotations

import os

import numpy as np

from omnifuse.cache import CacheSpec, CacheWriter, ModalitySpec
from omnifuse.extract.datasets.base import Item, Skip
from omnifuse.extract.inputs import input_hash, input_hashes, stale_blocks


def test_file_fingerprint_follows_path_size_and_modification_time(tmp_path):
    f = tmp_path / "a.png"
    f.write_bytes(b"12345")
    h = input_hash("image", Item(str(f)))
    assert h == input_hash("image", Item(f)) != 0  # str or Path alike
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert input_hash("image", Item(f)) != h
    g = tmp_path / "b.png"
    g.write_bytes(b"12345")
    assert input_hash("image", Item(g)) != input_hash("image", Item(f))  # another path
    assert input_hash("image", Item(tmp_path / "absent.png")) != input_hash("image", Item(f))


def test_folder_fingerprint_covers_every_file_under_it(tmp_path):
    series = tmp_path / "ct"
    (series / "sub").mkdir(parents=True)
    (series / "1.dcm").write_bytes(b"a")
    (series / "sub" / "2.dcm").write_bytes(b"b")
    h = input_hash("volume", Item(series))
    (series / "sub" / "2.dcm").write_bytes(b"bb")  # a file deep inside changes size
    assert input_hash("volume", Item(series)) != h


def test_text_array_missing_and_skip_fingerprints():
    assert input_hash("text", Item("Mild edema.")) == input_hash("text", Item("Mild edema."))
    assert input_hash("text", Item("Mild edema.")) != input_hash("text", Item("Mild edema"))
    assert input_hash("text", Item("x", provenance=0)) != input_hash("text", Item("x", provenance=1))
    a = np.array([1.0, np.nan, 3.0], np.float32)
    other_nan = a.copy().view(np.uint32)
    other_nan[1] = 0x7FC00001  # a NaN with another payload
    assert input_hash("array", Item(a)) == input_hash("array", Item(a.astype(np.float64)))
    assert input_hash("array", Item(a)) == input_hash("array", Item(other_nan.view(np.float32)))
    assert input_hash("array", Item(a)) != input_hash("array", Item(a.reshape(3, 1)))  # the shape counts
    assert input_hash("array", None) == input_hash("image", None) != input_hash("array", Skip("file not found"))
    assert input_hash("array", Skip("file not found")) != input_hash("array", Skip("unreadable array file"))
    got = input_hashes("text", [Item("a"), None, Skip("empty report")])
    assert got.dtype == np.uint64 and got.shape == (3,) and len(set(got.tolist())) == 3


def test_stale_blocks_are_the_done_blocks_whose_inputs_changed(tmp_path):
    texts = [f"report {i}" for i in range(10)]
    spec = CacheSpec("toy", "1", [ModalitySpec("rep", "vector", (2,))])
    w = CacheWriter.create(tmp_path / "c.zarr", spec, np.arange(10), np.array(["p"] * 10), rows_per_block=4)
    for start, stop in w.pending_blocks("rep")[:2]:  # blocks [0, 4) and [4, 8) written; [8, 10) not yet
        hashes = input_hashes("text", [Item(t) for t in texts[start:stop]])
        w.write_block("rep", start, stop, np.ones((stop - start, 2)), np.ones(stop - start, bool), input_hash=hashes)
    now: list[str | None] = list(texts)

    def inputs(start: int, stop: int) -> list[Item | Skip | None]:
        return [None if t is None else Item(t) for t in now[start:stop]]

    assert stale_blocks(w, "rep", "text", inputs) == ([], 0)
    now[5], now[6], now[9] = "edited", None, "edited"  # row 9 lies in a block not written: nothing to redo
    assert stale_blocks(w, "rep", "text", inputs) == ([4], 2)
