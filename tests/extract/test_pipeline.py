"""The extraction pipeline end to end: shapes, masks, known embeddings, skips, --limit, the encoders' source and
licence in the cache attributes, resume after SIGKILL, decoding threads and worker counts."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import torch

from omnifuse.cache import CacheError, load_cache, open_cache
from omnifuse.extract.config import ExtractConfig
from omnifuse.extract.datasets.manifest import ManifestAdapter
from omnifuse.extract.encoders import (
    MINILM,
    RANDOM_LICENCE,
    RANDOM_SOURCE,
    VolumeEncoder,
    build_text_encoder,
    get_encoder_entry,
)
from omnifuse.extract.pipeline import _thread_batches, default_num_workers, extract
from tests.helpers import IMAGE_SIZE, MAX_SLICES, MAX_TOKENS, assert_same_cache, minilm_dir

RUN = dict(max_slices=MAX_SLICES, batch_size=4, rows_per_block=2, progress=False)


def _extract(toy, out, ie, te, **kw):
    return extract(
        ManifestAdapter(toy["manifest"], toy["spec"]), out, image_encoder=ie, text_encoder=te, **{**RUN, **kw}
    )


@pytest.fixture(scope="module")
def extracted(toy, image_encoder, text_encoder, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "toy.zarr"
    logger = logging.getLogger("omnifuse")
    records: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    h = _Keep(level=logging.DEBUG)
    old = logger.level
    logger.addHandler(h)
    logger.setLevel(logging.DEBUG)
    try:
        summary = _extract(toy, out, image_encoder, text_encoder, num_workers=1)
    finally:
        logger.removeHandler(h)
        logger.setLevel(old)
    return summary, load_cache(out), "\n".join(records)


def test_shapes_masks_and_labels(extracted):
    summary, c, _ = extracted
    assert summary.finalized and summary.rows == 8
    assert c.stay_id.tolist() == list(range(101, 109))
    mods = c.modalities
    assert mods["cxr"].x.shape == (8, 512) and mods["cxr"].kind == "vector"
    assert mods["cxr"].mask.tolist() == [1, 1, 1, 0, 0, 0, 1, 1]
    assert mods["report"].x.shape == (8, MAX_TOKENS, 384) and mods["report"].kind == "sequence"
    assert mods["report"].mask.tolist() == [1, 1, 0, 1, 0, 1, 1, 1]
    assert mods["report"].tokens_mask[3].sum() == MAX_TOKENS  # the long report fills the cap
    assert mods["ct"].x.shape == (8, MAX_SLICES, 512)
    assert mods["ct"].mask.tolist() == [1, 0, 0, 1, 0, 0, 0, 0]
    assert mods["ct"].tokens_mask.sum(1).tolist() == [3, 0, 0, 4, 0, 0, 0, 0]  # 3 slices; 6 sampled to 4
    assert mods["labs"].x.shape == (8, 2) and mods["labs"].x.dtype == np.float32
    assert mods["labs"].feature_names == ["age", "lactate"]
    assert mods["vitals"].x.shape == (8, 4, 2) and mods["vitals"].mask.tolist() == [1, 1, 0, 1, 0, 0, 0, 0]
    # masked rows hold zeros; present embedding rows are never all-zero
    for m in ("cxr", "report", "ct"):
        x, mk = mods[m].x.astype(np.float32), mods[m].mask
        assert np.all(x[~mk] == 0) and np.all(np.abs(x[mk]).reshape(mk.sum(), -1).max(1) > 0)
    assert c.labels["died"].y[:, 0].tolist() == [1, 0, 0, 1, 0, 1, 0, 1]
    assert c.labels["severity"].mask.tolist() == [1, 1, 1, 0, 1, 1, 1, 1]
    assert c.splits["official"].tolist()[2] == "test"
    spec = c.spec.modality("cxr")
    assert spec.encoder == "random:resnet34" and len(spec.encoder_hash) == 64
    assert spec.preprocessing["image_size"] == IMAGE_SIZE


def test_summary_counts_skips_by_reason(extracted):
    summary, _, _ = extracted
    sk = summary.skipped
    assert sk["cxr"]["file not found"] == 1
    assert sum(v for k, v in sk["cxr"].items() if k.startswith("unreadable image")) == 1
    assert sk["report"] == {"empty report": 1}
    assert sk["ct"] == {"mixed DICOM series in folder": 1}
    assert sk["vitals"] == {"file not found": 1}
    assert "labs" not in sk
    r = summary.modalities
    assert (r["cxr"].present, r["cxr"].missing) == (5, 3)
    assert (r["labs"].present, r["labs"].items_encoded) == (7, 7)
    assert open_cache(summary.out).attrs["summary"]["extract"]["modalities"]["cxr"]["skipped"]["file not found"] == 1


def test_logs_name_stays_but_never_report_text(extracted, toy):
    _, _, logs = extracted
    assert "stay_id 103 masked: empty report" in logs
    assert "stay_id 104" in logs and "unreadable image" in logs
    for text in toy["reports"]:
        if text and text.strip():
            assert text.strip()[:20] not in logs


def test_cached_embeddings_equal_direct_encoder_calls(extracted, toy, image_encoder, text_encoder):
    _, c, _ = extracted
    root = toy["root"]
    for row, name in [(0, "img/a.png"), (1, "img/b.jpg"), (2, "img/c16.png"), (7, "img/h.png")]:
        ref = image_encoder.encode(image_encoder.load(root / name)[None])[0].numpy()
        np.testing.assert_allclose(c.modalities["cxr"].x[row].astype(np.float32), ref, rtol=2e-3, atol=2e-3)
    for row in (0, 3, 5):
        x, tm = text_encoder.encode([text_encoder.prepare(toy["reports"][row])])
        n = int(tm[0].sum())
        assert c.modalities["report"].tokens_mask[row].sum() == n
        np.testing.assert_allclose(
            c.modalities["report"].x[row, :n].astype(np.float32), x[0, :n].numpy(), rtol=2e-3, atol=2e-3
        )
    v = VolumeEncoder(image_encoder, max_slices=MAX_SLICES)
    ref, smask = v.encode_volume(v.load(root / "ct" / "s4"))
    np.testing.assert_allclose(c.modalities["ct"].x[3].astype(np.float32), ref.numpy(), rtol=2e-3, atol=2e-3)
    assert c.modalities["ct"].tokens_mask[3].tolist() == smask.tolist()
    np.testing.assert_array_equal(c.modalities["labs"].x[0], [61.0, 1.5])
    assert np.isnan(c.modalities["labs"].x[1, 1])  # raw tabular keeps NaN as "not observed"


def test_limit_and_pooled_text(toy, image_encoder, minilm_path, tmp_path):
    s = _extract(
        toy,
        tmp_path / "l.zarr",
        image_encoder,
        minilm_path,
        limit=3,
        text_pooling="mean",
        max_words=20,
        max_tokens=MAX_TOKENS,
        device="cpu",
        precision="fp32",
        num_workers=0,
    )
    c = load_cache(tmp_path / "l.zarr")
    assert s.rows == 3 and c.stay_id.tolist() == [101, 102, 103]
    assert c.modalities["report"].x.shape == (3, 384) and c.modalities["report"].kind == "vector"
    assert c.modalities["report"].tokens_mask is None


def test_rerun_with_other_settings_is_refused(extracted, toy, image_encoder, text_encoder):
    summary, _, _ = extracted
    with pytest.raises(CacheError, match="different specification"):
        _extract(toy, summary.out, image_encoder, text_encoder, max_slices=MAX_SLICES + 1)
    again = _extract(toy, summary.out, image_encoder, text_encoder)  # same settings: nothing left to do
    assert again.resumed and all(r.blocks_written == 0 for r in again.modalities.values())


def test_configuration_saved_with_the_cache(extracted, image_encoder, text_encoder):
    _, c, _ = extracted
    saved = c.attrs["summary"]["extract_config"]
    assert saved["image_encoder"] == image_encoder.name and saved["text_encoder"] == text_encoder.name
    assert saved["batch_size"] == 4 and saved["rows_per_block"] == 2 and saved["num_workers"] == 1
    assert saved["dataset"] == "toy" and saved["max_slices"] == MAX_SLICES  # direct calls: the adapter's name
    assert json.loads(json.dumps(saved)) == saved


def test_config_object_overrides_and_unset_encoders(toy, image_encoder, tmp_path):
    adapter = ManifestAdapter(toy["manifest"], toy["spec"])
    with pytest.raises(ValueError, match="image_encoder is not set"):
        extract(adapter, tmp_path / "a.zarr", progress=False)
    with pytest.raises(ValueError, match="unknown ExtractConfig option.*batchsize"):
        extract(adapter, tmp_path / "a.zarr", batchsize=3)
    with pytest.raises(ValueError, match="no output path"):
        extract(adapter, image_encoder=image_encoder)
    cfg = ExtractConfig(text_encoder="bert-base-uncased", text_pooling=None, batch_size=3, progress=False)
    with pytest.raises(ValueError, match="text_encoder and text_pooling must be set"):
        extract(adapter, tmp_path / "b.zarr", cfg, image_encoder=image_encoder)
    assert not (tmp_path / "a.zarr").exists() and not (tmp_path / "b.zarr").exists()  # refused before writing


def test_source_and_licence_reach_the_cache_attributes(toy, image_encoder, tmp_path):
    text = build_text_encoder("minilm", max_words=20, max_tokens=MAX_TOKENS, device="cpu", precision="fp32")
    out = tmp_path / "small.zarr"
    _extract(toy, out, image_encoder, text, limit=2, num_workers=0)
    mods = load_cache(out).modalities
    minilm = get_encoder_entry("minilm")
    report = mods["report"].preprocessing
    assert (report["source"], report["licence"]) == (MINILM, minilm.licence)
    for name in ("cxr", "ct"):
        prep = mods[name].preprocessing
        assert (prep["source"], prep["licence"]) == (RANDOM_SOURCE, RANDOM_LICENCE)
        assert prep["image_size"] == IMAGE_SIZE and prep["init"] == "random(seed=0)"  # the other attributes stay
    assert mods["ct"].preprocessing["max_slices"] == MAX_SLICES
    assert mods["report"].preprocessing["max_tokens"] == MAX_TOKENS
    assert "licence" not in mods["labs"].preprocessing  # arrays pass through without an encoder


CHILD = """
import sys, time
from omnifuse.cache.writer import CacheWriter
from omnifuse.extract import encoders as E
from omnifuse.extract.datasets.manifest import ManifestAdapter
from omnifuse.extract.pipeline import extract

manifest, spec, out, minilm = sys.argv[1:5]
written = [0]
orig_write = CacheWriter.write_block
def write_block(self, *a, **k):
    orig_write(self, *a, **k)
    written[0] += 1
    print("BLOCK", a[0], a[1], flush=True)
CacheWriter.write_block = write_block
orig_encode = E.ImageEncoder.encode
def encode(self, x):
    if written[0] >= 3:  # killed while the 4th block is in flight
        print("STUCK", flush=True)
        time.sleep(600)
    return orig_encode(self, x)
E.ImageEncoder.encode = encode
ie = E.build_image_encoder("random:resnet34", device="cpu", precision="fp32", size=%(size)d)
te = E.build_text_encoder(minilm, max_words=20, max_tokens=%(tokens)d, device="cpu", precision="fp32")
extract(ManifestAdapter(manifest, spec), out, image_encoder=ie, text_encoder=te, max_slices=%(slices)d,
        batch_size=%(batch)d, rows_per_block=2, progress=False, num_workers=0)
"""


def test_resume_after_sigkill_recomputes_nothing(toy, image_encoder, text_encoder, tmp_path):
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD % dict(size=IMAGE_SIZE, tokens=MAX_TOKENS, slices=MAX_SLICES, batch=2)))
    out = tmp_path / "k.zarr"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(toy["manifest"]), str(toy["spec"]), str(out), minilm_dir()],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines = []
    try:
        deadline = time.time() + 240
        for line in proc.stdout:
            lines.append(line.strip())
            if line.startswith("STUCK") or time.time() > deadline:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert "STUCK" in lines, lines
    # rows 4-5 (no image, missing file) need no encoding and are written first; rows 6-7 are in flight
    assert sorted(x for x in lines if x.startswith("BLOCK")) == ["BLOCK cxr 0", "BLOCK cxr 2", "BLOCK cxr 4"]

    with pytest.raises(CacheError):  # incomplete: the reader refuses by default
        load_cache(out)
    chunk = out / "cxr" / "x" / "c" / "0" / "0"
    before_mtime = chunk.stat().st_mtime_ns

    items0, calls_t0 = image_encoder.items, text_encoder.items
    s = _extract(toy, out, image_encoder, text_encoder, batch_size=2, num_workers=0)
    assert s.resumed and s.finalized
    assert s.modalities["cxr"].blocks_already_done == 3 and s.modalities["cxr"].blocks_written == 1
    # only rows 107 and 108 (two images) of the last cxr block, plus 3 + 4 CT slices
    assert s.modalities["cxr"].items_encoded == 2
    assert image_encoder.items - items0 == 2 + 7
    assert text_encoder.items - calls_t0 == 6
    assert chunk.stat().st_mtime_ns == before_mtime  # nothing done was rewritten

    fresh = tmp_path / "fresh.zarr"
    _extract(toy, fresh, image_encoder, text_encoder, batch_size=2, num_workers=0)
    assert_same_cache(out, fresh)  # the resumed store is the one a single run writes


@pytest.mark.parametrize(
    "cpus, local, cuda, cpu",
    [(2, None, 1, 0), (16, None, 15, 4), (16, "2", 7, 3), (64, None, 16, 4), (128, "8", 15, 4), (4, "8", 1, 0)],
)
def test_default_workers_share_the_node_between_local_ranks(monkeypatch, cpus, local, cuda, cpu):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    if local is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
    assert default_num_workers(torch.device("cuda")) == cuda
    assert default_num_workers(torch.device("cpu")) == cpu


@pytest.mark.parametrize("threads", [0, 2])
def test_decoding_in_threads_or_inline_gives_the_worker_store(
    extracted, toy, image_encoder, text_encoder, tmp_path, threads
):
    summary, ref, _ = extracted  # decoded in a DataLoader worker process
    s = _extract(
        toy,
        tmp_path / "t.zarr",
        image_encoder,
        text_encoder,
        num_workers=0,
        decode_threads=threads,
        modalities=["cxr", "ct"],
    )
    c = load_cache(tmp_path / "t.zarr", allow_incomplete=True)
    for m in ("cxr", "ct"):
        np.testing.assert_array_equal(c.modalities[m].mask, ref.modalities[m].mask)
        np.testing.assert_array_equal(c.modalities[m].x, ref.modalities[m].x)
        assert s.skipped[m] == summary.skipped[m]
    np.testing.assert_array_equal(c.modalities["ct"].tokens_mask, ref.modalities["ct"].tokens_mask)


def test_thread_batches_keep_order_run_at_lowest_priority_and_surface_errors():
    seen: dict[int, tuple[str, int]] = {}

    class DS:
        def __init__(self, n: int, bad: int | None = None) -> None:
            self.n, self.bad = n, bad

        def __len__(self) -> int:
            return self.n

        def __getitem__(self, i: int):
            if i == self.bad:
                raise RuntimeError(f"decoder crashed on {i}")
            time.sleep(0.001 * (i % 3))  # finish out of order
            seen[i] = (threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            return i

    batches = list(_thread_batches(DS(23), 5, list, threads=2))
    assert batches == [list(range(a, min(a + 5, 23))) for a in range(0, 23, 5)]
    assert {name.split("_")[0] for name, _ in seen.values()} == {"omnifuse-decode"}
    assert {nice for _, nice in seen.values()} == {19}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) != 19  # the caller keeps its priority
    with pytest.raises(RuntimeError, match="decoder crashed on 7"):
        list(_thread_batches(DS(40, bad=7), 4, list, threads=2))
    time.sleep(0.05)
    assert not [t for t in threading.enumerate() if t.name.startswith("omnifuse-decode")]
