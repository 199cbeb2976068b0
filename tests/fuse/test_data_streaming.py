"""Stage two with features streamed from the cache (issue 17, item 7): the batches, the normaliser, the trained
weights and every prediction equal the in-memory path's; rows read in a known order come back in that order
whatever the room for rows read ahead; the normaliser's moments match numpy's float64 ones; ``auto`` streams
the largest modalities when the memory budget is small; a damaged chunk met mid-epoch is one line naming it."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

from omnifuse.cache import CacheError, CacheWriter, load_cache
from omnifuse.cache.reader import RowReader, stream_rows
from omnifuse.cli import app
from omnifuse.fuse import data as fdata
from omnifuse.fuse.config import resolve_config
from omnifuse.fuse.data import (
    DataError,
    Normalizer,
    StreamedRows,
    load_fuse_data,
    make_folds,
    streamed_modalities,
)
from omnifuse.fuse.fold import FoldPlan, run_fold
from omnifuse.fuse.train import train
from omnifuse.fuse.trainer import Trainer
from tests.helpers import FAST, synthetic_cache_data

KINDS = {"img": ("vector", (12,)), "rep": ("sequence", (6, 8)), "ehr": ("timeseries", (5, 4))}
CHUNK = 8


def _write(path: Path, n: int = 200, seed: int = 0) -> Path:
    """The rows of :func:`synthetic_cache_data` written in blocks (hence chunks) of 8 rows."""
    cd = synthetic_cache_data(n=n, kinds=KINDS, seed=seed)
    w = CacheWriter.create(path, cd.spec, cd.stay_id, cd.subject_id, overwrite=True, rows_per_block=CHUNK)
    for name, lab in cd.labels.items():
        w.write_labels(name, lab.y, lab.mask)
    for name, md in cd.modalities.items():
        for a, b in w.pending_blocks(name):
            tm = None if md.tokens_mask is None else md.tokens_mask[a:b]
            w.write_block(name, a, b, x=md.x[a:b], mask=md.mask[a:b], tokens_mask=tm)
    w.finalize()
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return _write(tmp_path_factory.mktemp("stream") / "c.zarr")


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The same values (NaN where the other has NaN), shape and dtype."""
    return a.dtype == b.dtype and torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(0), b.nan_to_num(0))


def _both(path: Path, room_rows: int = 5):
    """The cache in memory and streamed with room for ``room_rows`` rows read ahead (so rows are dropped)."""
    mem = load_fuse_data(path, "mortality", device="cpu", in_memory="yes")
    st = load_fuse_data(path, "mortality", device="cpu", in_memory="no", stream_cache_bytes=room_rows * 6 * 8 * 2)
    return mem, st


def test_streamed_rows_read_what_memory_holds(cache):
    mem, st = _both(cache)
    assert mem.streamed == [] and st.streamed == ["img", "rep", "ehr"]
    assert isinstance(st.x["rep"], StreamedRows) and st.x["rep"].shape == mem.x["rep"].shape
    assert st.x["rep"].dtype == torch.float16 and st.x["ehr"].dtype == torch.float32
    for name in KINDS:
        a, b = mem.x[name], st.x[name]
        idx = torch.tensor([57, 3, 3, 199, 8])
        assert _same(a[idx], b[idx]) and _same(a[idx.numpy()], b[idx.numpy()])
        assert _same(a[10:40:3], b[10:40:3]) and _same(a[7], b[7])
        sel = torch.zeros(200, dtype=torch.bool)
        sel[[1, 50, 51]] = True
        assert _same(a[sel], b[sel]) and _same(a[:, 0], b[:, 0])
    for key in ("mask", "natural_mask", "y", "y_mask"):
        assert torch.equal(getattr(mem, key), getattr(st, key))
    assert torch.equal(mem.tokens_mask["rep"], st.tokens_mask["rep"])
    again = pickle.loads(pickle.dumps(st.x["rep"].reader))  # process workers get a reopened reader
    assert np.array_equal(again.read(np.array([5, 4])), mem.x["rep"][[5, 4]].numpy())


def test_batches_and_normaliser_equal_in_memory(cache):
    mem, st = _both(cache)
    rows = np.flatnonzero(mem.y_mask.numpy())[::2]
    nm, ns = Normalizer.fit(mem, rows), Normalizer.fit(st, rows)
    assert nm.stats == ns.stats
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    mask = torch.rand(len(rows), 3, generator=torch.Generator().manual_seed(1)) > 0.3
    pairs = list(
        zip(
            mem.iter_batches(rows, 16, nm, shuffle=True, generator=g1, mask=mask),
            st.iter_batches(rows, 16, ns, shuffle=True, generator=g2, mask=mask),
            strict=True,
        )
    )
    assert len(pairs) == -(-len(rows) // 16)
    for a, b in pairs:
        assert torch.equal(a.index, b.index) and torch.equal(a.mask, b.mask)
        for name in KINDS:
            assert torch.equal(a.x[name], b.x[name]), name
        assert torch.equal(a.tokens_mask["rep"], b.tokens_mask["rep"])
    assert not torch.equal(pairs[0][0].index, torch.as_tensor(rows[:16]))  # shuffled
    assert torch.equal(mem.batch(rows[:9], nm).x["rep"], st.batch(rows[:9], ns).x["rep"])


@pytest.mark.parametrize("method", ["omnifuse", "logreg"])
def test_trained_weights_and_predictions_equal_in_memory(cache, method):
    mem, st = _both(cache)
    cfg = resolve_config(None, task="mortality", method=method, **{**FAST, "epochs": 1, "method_params": {}})
    params = FAST["method_params"] if method == "omnifuse" else {}
    tr, te = make_folds(mem, 3, seed=0)[0]
    runs = [
        run_fold(d, FoldPlan(method, tr, te, seed=7, params=dict(params), combos=[["img"], ["rep", "ehr"]]), cfg)
        for d in (mem, st)
    ]
    a, b = runs
    assert np.array_equal(a.overall, b.overall) and np.array_equal(a.overall_raw, b.overall_raw)
    assert all(np.array_equal(a.combos[i], b.combos[i]) for i in a.combos)
    assert a.history == [{**h, "seconds": a.history[i]["seconds"]} for i, h in enumerate(b.history)]
    if method != "logreg":
        sa, sb = a.model.state_dict(), b.model.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_train_with_data_in_memory_no_gives_the_same_run(cache, tmp_path):
    opts = {**FAST, "epochs": 1, "method_params": {"d": 8, "hidden": 8}}
    r_mem = train(cache, "mortality", "concat", folds=2, out=tmp_path / "m", data_in_memory="yes", **opts)
    r_st = train(cache, "mortality", "concat", folds=2, out=tmp_path / "s", data_in_memory="no", **opts)
    for fa, fb in zip(r_mem.folds, r_st.folds, strict=True):
        assert np.array_equal(fa.probs, fb.probs) and fa.best_epoch == fb.best_epoch
    assert (tmp_path / "m" / "predictions.csv").read_text() == (tmp_path / "s" / "predictions.csv").read_text()
    assert '"streamed_modalities": [\n  "img",' in (tmp_path / "s" / "config.json").read_text()


def test_stream_rows_returns_the_order_whatever_the_room(cache):
    r = RowReader(cache, "rep")
    full = load_cache(cache, ["rep"]).modalities["rep"].x
    assert r.chunk_rows == CHUNK
    order = np.random.default_rng(0).permutation(200)[:150]
    chunks = np.unique(order // CHUNK).size
    decoded = {}
    for room in (0, 10, 40, 10_000):
        r.chunks_decoded = 0
        got = np.concatenate([b["rep"] for b in stream_rows({"rep": r}, order, 16, room * r.row_bytes)])
        assert np.array_equal(got, full[order])
        decoded[room] = r.chunks_decoded
    # more room, fewer decodes; room for every row decodes each chunk once; none decodes per batch
    assert decoded[10_000] == chunks < decoded[40] < decoded[10] < decoded[0]
    batches = [np.unique(b // CHUNK).size for b in np.array_split(order, range(16, 150, 16))]
    assert decoded[0] == sum(batches)
    r.chunks_decoded = 0
    rows = np.arange(0, 200, 3)  # sorted: each chunk once, even with no room
    got = np.concatenate([b["rep"] for b in stream_rows({"rep": r}, rows, 5, 0)])
    assert np.array_equal(got, full[rows]) and r.chunks_decoded <= np.unique(rows // CHUNK).size + len(rows) // 5
    twice = np.array([3, 9, 3, 150, 9])  # repeated rows: read batch by batch
    assert np.array_equal(np.concatenate([b["rep"] for b in stream_rows({"rep": r}, twice, 2, 10**6)]), full[twice])


def test_chunks_decoded_here_equal_zarr_and_unwritten_rows_read_as_zeros(tmp_path):
    cd = synthetic_cache_data(n=203, kinds=KINDS, seed=2)  # 203 rows: the last chunk holds 3
    path = tmp_path / "part.zarr"
    w = CacheWriter.create(path, cd.spec, cd.stay_id, cd.subject_id, rows_per_block=CHUNK)
    for name, lab in cd.labels.items():
        w.write_labels(name, lab.y, lab.mask)
    for name, md in cd.modalities.items():
        for a, b in w.pending_blocks(name):
            if name == "rep" and a == 5 * CHUNK:
                continue  # a block an interrupted extraction never wrote: no chunk file
            tm = None if md.tokens_mask is None else md.tokens_mask[a:b]
            w.write_block(name, a, b, x=md.x[a:b], mask=md.mask[a:b], tokens_mask=tm)
    rows = np.r_[0:12, 37:45, 190:203]
    for name in KINDS:
        here, through_zarr = RowReader(path, name), RowReader(path, name)
        through_zarr._folder = None  # every read through Zarr
        assert here._chunk_folder() == path / name / "x"
        assert _same(torch.from_numpy(here.read(rows)), torch.from_numpy(through_zarr.read(rows)))
        want = cd.modalities[name].x.copy()
        if name == "rep":
            want[5 * CHUNK : 6 * CHUNK] = 0  # never written: Zarr's fill value
        assert _same(torch.from_numpy(here.read(rows[::-1])), torch.from_numpy(want[rows[::-1]]))
    with pytest.raises(CacheError, match="not yet written"):
        load_fuse_data(path, "mortality", device="cpu", in_memory="no")
    mem = load_fuse_data(path, "mortality", device="cpu", in_memory="yes", allow_incomplete=True)
    st = load_fuse_data(path, "mortality", device="cpu", in_memory="no", allow_incomplete=True)
    gone = np.arange(5 * CHUNK, 6 * CHUNK)
    assert not mem.mask[gone, 1].any() and torch.equal(mem.mask, st.mask)
    assert torch.equal(st.x["rep"][gone], torch.zeros(CHUNK, 6, 8, dtype=torch.float16))
    assert _same(mem.x["rep"][np.arange(203)], st.x["rep"][np.arange(203)])


def _moment_data(path: Path, n: int = 300) -> Path:
    """A cache whose embeddings sit far from 0 (mean 40, sd 0.5): a naive float32 sum of squares would lose
    the variance."""
    cd = synthetic_cache_data(n=n, kinds={"v": ("vector", (16,)), "s": ("sequence", (7, 16))}, seed=3)
    rng = np.random.default_rng(0)
    for md in cd.modalities.values():
        shifted = 40.0 + 0.5 * rng.normal(size=md.x.shape) + np.linspace(0, 3, 16)
        keep = md.mask.reshape((-1,) + (1,) * (md.x.ndim - 1))
        if md.tokens_mask is not None:
            keep = keep & md.tokens_mask[..., None]
        md.x = np.where(keep, shifted, 0).astype(np.float16)
    w = CacheWriter.create(path, cd.spec, cd.stay_id, cd.subject_id, overwrite=True, rows_per_block=CHUNK)
    for name, lab in cd.labels.items():
        w.write_labels(name, lab.y, lab.mask)
    for name, md in cd.modalities.items():
        for a, b in w.pending_blocks(name):
            tm = None if md.tokens_mask is None else md.tokens_mask[a:b]
            w.write_block(name, a, b, x=md.x[a:b], mask=md.mask[a:b], tokens_mask=tm)
    w.finalize()
    return path


def test_normaliser_moments_match_numpy_float64(tmp_path, monkeypatch):
    path = _moment_data(tmp_path / "m.zarr")
    monkeypatch.setattr(fdata, "EMB_BLOCK_BYTES", 7 * 16 * 4 * 3)  # blocks of 3 rows: many merges
    rows = np.arange(0, 300, 2)
    for in_memory in ("yes", "no"):
        d = load_fuse_data(path, "mortality", device="cpu", in_memory=in_memory)
        st = Normalizer.fit(d, rows).stats
        for j, name in enumerate(d.modalities):
            present = rows[d.mask[rows, j].numpy()]
            x = load_cache(path, [name]).modalities[name].x[present].astype(np.float64)
            if name == "s":
                x = x[load_cache(path, [name]).modalities[name].tokens_mask[present]]
            np.testing.assert_allclose(st[name]["mean"], x.mean(0), rtol=1e-6)
            np.testing.assert_allclose(st[name]["std"], x.std(0), rtol=1e-6)
            assert st[name]["n_rows"] == present.size
    off = Normalizer.fit(d, rows, embeddings=False).stats["v"]
    assert off["mean"] == [0.0] * 16 and off["std"] == [1.0] * 16


def test_embedding_normalisation_is_the_formula(cache):
    d = load_fuse_data(cache, "mortality", device="cpu", in_memory="yes")
    norm = Normalizer.fit(d, np.arange(150))
    x = d.x["rep"][:20].float()
    x[0, 0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    mean, std = (torch.tensor(norm.stats["rep"][k]) for k in ("mean", "std"))
    want = torch.where(torch.isfinite(x), (x - mean) / std, torch.zeros_like(x))
    before = x.clone()
    assert torch.equal(norm.apply("rep", x), want)
    torch.testing.assert_close(x, before, rtol=0, atol=0, equal_nan=True)  # float32 input: not scaled in place


def test_auto_streams_the_largest_until_the_rest_fits(cache):
    sizes = {"a": 100, "b": 50, "c": 10}
    assert streamed_modalities(sizes, "auto", 1000) == []
    assert streamed_modalities(sizes, "auto", 70) == ["a"]
    assert streamed_modalities(sizes, "auto", 59, fixed=5) == ["a", "b"]
    assert streamed_modalities(sizes, "auto", 1) == ["a", "b", "c"]
    assert streamed_modalities(sizes, "yes", 1) == [] and streamed_modalities(sizes, False, 10**9) == ["a", "b", "c"]
    with pytest.raises(DataError, match="in_memory must be one of"):
        streamed_modalities(sizes, "maybe", 1)
    n = 200
    rep, ehr, img = n * 6 * 8 * 2, n * 5 * 4 * 4, n * 12 * 2  # bytes of each modality's features
    fixed = n * (3 + 6 + 64)
    assert load_fuse_data(cache, "mortality", device="cpu").streamed == []  # the default budget: memory
    small = img + ehr + fixed  # room for all but the report tokens
    assert load_fuse_data(cache, "mortality", device="cpu", memory_budget_bytes=small).streamed == ["rep"]
    assert load_fuse_data(cache, "mortality", device="cpu", memory_budget_bytes=small - 1).streamed == ["rep", "ehr"]
    assert load_fuse_data(cache, "mortality", device="cpu", memory_budget_bytes=10).streamed == ["img", "rep", "ehr"]
    assert load_fuse_data(cache, "mortality", device="cpu", memory_budget_bytes=rep + small).streamed == []


def _damage_chunk(path: Path, modality: str, chunk: int) -> Path:
    f = path / modality / "x" / "c" / str(chunk) / "0" / "0"
    f.write_bytes(b"not zstd" * 16)
    return f


def test_a_damaged_chunk_met_mid_epoch_is_named_in_one_line(tmp_path):
    path = _write(tmp_path / "c.zarr")
    d = load_fuse_data(path, "mortality", device="cpu", in_memory="no")
    tr, _ = make_folds(d, 3, seed=0)[0]
    norm = Normalizer.fit(d, tr)
    cfg = resolve_config(None, task="mortality", method="concat", **{**FAST, "method_params": {}})
    from omnifuse.fuse.methods import build_method

    model = build_method("concat", d.model_info(norm))
    trainer = Trainer(model, d, tr, tr[:10], norm, cfg, seed=0)
    opt = model.configure_optimizer(cfg.lr, cfg.weight_decay)
    trainer._train_epoch(opt)  # a whole epoch reads every training row: fine
    chunk = int(np.sort(tr)[-1]) // CHUNK  # a chunk of the last batches' rows, damaged after the run began
    _damage_chunk(path, "rep", chunk)
    with pytest.raises(CacheError) as e:
        trainer._train_epoch(opt)
    a, b = chunk * CHUNK, chunk * CHUNK + CHUNK - 1
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}: modality 'rep': chunk {chunk} (rows {a} to {b}, file rep/x/c/")
    assert "cannot be read (RuntimeError: Zstd decompression error" in msg and msg.endswith("into a new folder")
    # the same store in memory fails at load with the same line; the command line prints it as its one error
    with pytest.raises(CacheError, match=f"chunk {chunk} \\(rows {a} to {b}"):
        load_fuse_data(path, "mortality", device="cpu", in_memory="yes")
    r = CliRunner().invoke(
        app,
        [
            "train",
            "-c",
            str(path),
            "-t",
            "mortality",
            "-m",
            "concat",
            "--data-in-memory",
            "no",
            "--folds",
            "2",
            "--epochs",
            "1",
            "--no-progress",
            "--device",
            "cpu",
        ],
    )
    lines = r.output.strip().splitlines()
    assert (
        r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and f"chunk {chunk} (rows" in lines[0]
    )


def test_a_non_finite_streamed_embedding_is_named_not_read(tmp_path, caplog):
    path = _write(tmp_path / "c.zarr")
    mem = load_fuse_data(path, "mortality", device="cpu", in_memory="yes")
    row = int(np.flatnonzero(mem.mask[:, 0].numpy())[4])
    arr = zarr.open_group(str(path), mode="r+", zarr_format=3)["img/x"]
    arr[row, 2] = np.nan  # a damaged store: the writer refuses this
    d = load_fuse_data(path, "mortality", device="cpu", in_memory="yes")
    assert not bool(d.mask[row, 0]) and "non-finite embeddings; masked as missing" in caplog.text
    st = load_fuse_data(path, "mortality", device="cpu", in_memory="no")
    with pytest.raises(CacheError, match=f"modality 'img': row {row} \\(chunk {row // CHUNK}\\) holds a non-finite"):
        st.x["img"][np.arange(200)]
