"""Fault suite, adding a modality to a finished cache (``--add-modality``).

An addition killed between two blocks (the suite's in-process kill: ``KeyboardInterrupt`` from the writer,
nothing after it runs; a SIGKILL at any moment leaves the same store, ``tests/cache/test_writer.py``) leaves
a store whose other modalities read as before (byte for byte, still finalized) while the new one reads as
incomplete for itself only; rerunning the same command encodes only its unfinished blocks and gives the
store an uninterrupted addition writes."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from omnifuse.cache import CacheWriter, IncompleteCacheError, cache_fingerprint, cache_info, load_cache, open_cache
from omnifuse.extract.datasets.manifest import ManifestAdapter
from omnifuse.extract.encoders import build_text_encoder
from omnifuse.extract.pipeline import extract
from tests.helpers import assert_same_cache

N = 12
RUN = dict(rows_per_block=2, batch_size=2, progress=False)
LABS = 'name = "ward"\n[modalities.labs]\ninput = "tabular"\ncolumns = ["age", "sbp"]\n'
REPORT = '[modalities.report]\ninput = "text"\ncolumn = "report"\n'
TASK = '[tasks.died]\nkind = "binary"\ncolumn = "died"\n'


def _files(folder: Path) -> dict[str, str]:
    return {
        str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest() for f in folder.rglob("*") if f.is_file()
    }


@pytest.fixture(scope="module")
def text_encoder():
    return build_text_encoder("minilm", pooling="mean", max_words=20, max_tokens=32, device="cpu", precision="fp32")


def test_a_killed_addition_reads_incomplete_for_itself_only_and_resumes_its_unfinished_blocks(
    text_encoder, tmp_path, monkeypatch
):
    data = tmp_path / "data"
    data.mkdir()
    reports = [f"Report {i}: {'clear lungs' if i % 3 else 'small effusion'}, heart size normal." for i in range(N)]
    pl.DataFrame(
        {
            "stay_id": [str(500 + i) for i in range(N)],
            "subject_id": [f"p{i // 3}" for i in range(N)],
            "age": [str(30 + 3 * i) for i in range(N)],
            "sbp": [str(95 + i) for i in range(N)],
            "report": reports,
            "died": [str(int(i % 4 == 0)) for i in range(N)],
        }
    ).write_csv(data / "m.csv")
    (data / "labs.toml").write_text(LABS + TASK)
    (data / "full.toml").write_text(LABS + REPORT + TASK)
    out = tmp_path / "c.zarr"
    extract(ManifestAdapter(data / "m.csv", data / "labs.toml"), out, **RUN)
    untouched = tmp_path / "untouched.zarr"
    shutil.copytree(out, untouched)
    labs = _files(out / "labs")
    labs_before = load_cache(out).modalities["labs"]

    writes = []
    real_write = CacheWriter.write_block

    def killed_at_the_fourth_block(self, modality, start, *a, **k):
        if len(writes) == 3:
            raise KeyboardInterrupt  # the process dies here: nothing after this line runs in the pipeline
        real_write(self, modality, start, *a, **k)
        writes.append((modality, start))

    monkeypatch.setattr(CacheWriter, "write_block", killed_at_the_fourth_block)
    with pytest.raises(KeyboardInterrupt):
        extract(
            ManifestAdapter(data / "m.csv", data / "full.toml"),
            out,
            text_encoder=text_encoder,
            add_modalities=["report"],
            **RUN,
        )
    monkeypatch.undo()
    assert writes == [("report", 0), ("report", 2), ("report", 4)]

    # in between: the store is still finalized, the labs read as before, the report is incomplete for itself
    c = open_cache(out)
    assert c.meta["finalized"] is True and "finished" not in c.meta["additions"]["report"]
    assert _files(out / "labs") == labs
    np.testing.assert_array_equal(load_cache(out, modalities=["labs"]).modalities["labs"].x, labs_before.x)
    with pytest.raises(IncompleteCacheError, match=r"modality 'report' has 6 rows not yet written.*--allow-incomplete"):
        load_cache(out)
    partial = load_cache(out, allow_incomplete=True).modalities["report"]
    assert partial.mask.tolist() == [True] * 6 + [False] * 6
    info = {m["name"]: m for m in cache_info(out)["modalities"]}
    assert info["report"]["incomplete_rows"] == 6 and info["labs"]["incomplete_rows"] == 0
    first_chunk = out / "report" / "x" / "c" / "0" / "0"
    written_at = first_chunk.stat().st_mtime_ns

    # the same command again: only the three unfinished blocks of the report are encoded
    items = text_encoder.items
    again = extract(
        ManifestAdapter(data / "m.csv", data / "full.toml"),
        out,
        text_encoder=text_encoder,
        add_modalities=["report"],
        **RUN,
    )
    rep = again.modalities["report"]
    assert (rep.blocks_already_done, rep.blocks_written, rep.items_encoded) == (3, 3, 6)
    assert text_encoder.items - items == 6 and again.finalized
    assert first_chunk.stat().st_mtime_ns == written_at  # nothing finished was rewritten
    assert _files(out / "labs") == labs
    assert "finished" in open_cache(out).meta["additions"]["report"]

    # the store an uninterrupted addition writes
    extract(
        ManifestAdapter(data / "m.csv", data / "full.toml"),
        untouched,
        text_encoder=text_encoder,
        add_modalities=["report"],
        **RUN,
    )
    assert_same_cache(out, untouched)
    assert cache_fingerprint(out) == cache_fingerprint(untouched)
