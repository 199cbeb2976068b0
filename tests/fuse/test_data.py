import json
import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch

from omnifuse.fuse import data as fdata
from omnifuse.fuse.data import (
    CLIP_QUANTILES,
    IQR_TO_SD,
    PLE_BINS,
    DataError,
    Normalizer,
    _fit_column,
    inner_split,
    load_fuse_data,
    make_folds,
    simulate_missing,
)
from tests.helpers import kinds_cache_data


def test_load_from_written_cache_keeps_float16(tiny_cache):
    d = load_fuse_data(tiny_cache, "mortality", device="cpu")
    assert d.modalities == ["img", "rep", "ehr"]
    assert d.x["img"].dtype == torch.float16 and d.x["ehr"].dtype == torch.float32
    assert d.y.shape == (160, 1) and d.mask.shape == (160, 3) and d.tokens_mask["rep"].shape == (160, 6)
    with pytest.raises(DataError, match="no task"):
        load_fuse_data(tiny_cache, "nope", device="cpu")
    with pytest.raises(DataError, match="no modality"):
        load_fuse_data(tiny_cache, "mortality", ["xray"], device="cpu")


def test_folds_are_patient_grouped_and_cover_labelled_rows(tiny_data):
    d = load_fuse_data(tiny_data, "mortality", device="cpu")
    folds = make_folds(d, 4, seed=0)
    labelled = set(np.flatnonzero(d.y_mask.numpy()))
    tests = np.concatenate([te for _, te in folds])
    assert sorted(tests) == sorted(labelled)
    for tr, te in folds:
        assert not set(d.subject_id[tr]) & set(d.subject_id[te])
        a, v = inner_split(d, tr, 0.2, seed=0)
        assert not set(d.subject_id[a]) & set(d.subject_id[v]) and not set(v) & set(te)
    with pytest.raises(DataError, match="patients"):
        make_folds(d, 10_000)


def test_normalizer_uses_training_rows_and_adds_indicators(tiny_data):
    d = load_fuse_data(tiny_data, "mortality", device="cpu")
    rows = np.arange(80)
    norm = Normalizer.fit(d, rows, scaling="robust")
    st = norm.stats["ehr"]
    present = rows[d.mask[rows, 2].numpy()]
    raw = d.x["ehr"][present].numpy().reshape(-1, 4)
    col = raw[:, 0].astype(np.float64)
    lo = np.nanquantile(col, CLIP_QUANTILES[0], method="higher")
    hi = np.nanquantile(col, CLIP_QUANTILES[1], method="lower")
    assert (st["low"][0], st["high"][0]) == (pytest.approx(lo, rel=1e-5), pytest.approx(hi, rel=1e-5))
    clipped = np.clip(col[np.isfinite(col)], lo, hi)
    q1, med, q3 = np.quantile(clipped, [0.25, 0.5, 0.75])
    assert st["transform"] == ["numeric", "numeric", "numeric", "identity"]  # an old cache: all numeric
    assert st["mean"][0] == pytest.approx(med, rel=1e-4) and st["std"][0] == pytest.approx((q3 - q1) / 1.349, rel=1e-4)
    assert st["low"][3] is None and st["high"][3] is None  # not standardised: not clipped
    assert st["mean"][3] == 0.0 and st["std"][3] == 1.0  # not in "continuous": passes as is
    assert st["indicators"] == [1, 2, 3]  # column 0 is never NaN
    b = d.batch(np.arange(10), norm)
    assert b.x["ehr"].shape == (10, 5, 7) and torch.isfinite(b.x["ehr"]).all()
    assert d.model_info(norm).modalities[2].shape == (5, 7)
    miss = ~b.mask[:, 2]
    assert (b.x["ehr"][miss] == 0).all()
    again = Normalizer.from_json(norm.to_json())
    assert torch.equal(again.apply("ehr", d.x["ehr"][:5]), norm.apply("ehr", d.x["ehr"][:5]))


def test_simulated_missingness_rate_and_never_all():
    mask = torch.ones(4000, 3, dtype=torch.bool)
    m = simulate_missing(mask, 0.5, seed=1)
    assert m.any(1).all()
    assert 0.4 < 1 - m.float().mean() < 0.5  # rate minus the rows given one back
    assert torch.equal(m, simulate_missing(mask, 0.5, seed=1))
    m2 = simulate_missing(mask, 0.3, "b", ["a", "b", "c"], seed=0)
    assert m2[:, [0, 2]].all() and abs(1 - m2[:, 1].float().mean() - 0.3) < 0.03
    only_b = torch.tensor([[False, True, False]] * 10)
    assert torch.equal(simulate_missing(only_b, 0.9, "b", ["a", "b", "c"]), only_b)
    with pytest.raises(DataError):
        simulate_missing(mask, 0.5, "xray", ["a", "b", "c"])


def test_one_absurd_value_neither_flattens_a_feature_nor_reaches_a_prediction(tiny_data):
    """A value of 1e30 in a training row: the feature's statistics stay those of the other rows (clip at the
    training quantiles); in a test row: clipped, finite (issue: mean 6.6e27, sd 8.1e28, NaN scores)."""
    d = load_fuse_data(tiny_data, "mortality", device="cpu")
    rows = np.arange(80)
    clean = Normalizer.fit(d, rows).stats["ehr"]
    present = rows[d.mask[rows, 2].numpy()]
    x = d.x["ehr"].clone()
    x[present[0], 0, 0] = 1e30
    x[present[1], 1, 0] = float("inf")  # inf is not observed, like NaN
    bad = replace(d, x={**d.x, "ehr": x})
    st = Normalizer.fit(bad, rows).stats["ehr"]
    assert st["mean"][0] == pytest.approx(clean["mean"][0], abs=0.05 * clean["std"][0])
    assert st["std"][0] == pytest.approx(clean["std"][0], rel=0.1)
    norm = Normalizer.fit(d, rows)
    test = torch.zeros((1, 5, 4))
    test[0, 0, 0] = 1e30
    z = norm.apply("ehr", test)
    assert torch.isfinite(z).all() and z[0, 0, 0] == pytest.approx(
        (clean["high"][0] - clean["mean"][0]) / clean["std"][0], rel=1e-4
    )


def test_a_corrupt_normalizer_is_refused_by_name(tiny_data, tmp_path):
    d = load_fuse_data(tiny_data, "mortality", device="cpu")
    js = Normalizer.fit(d, np.arange(80)).to_json()
    js["modalities"]["ehr"]["std"][0] = 0.0
    p = tmp_path / "normalizer.json"
    p.write_text(json.dumps(js))
    with pytest.raises(DataError, match=r"normalizer.json: modality 'ehr' has a standard deviation <= 0"):
        Normalizer.load(p)
    p.write_text("{not json")
    with pytest.raises(DataError, match="normalizer.json is not valid JSON"):
        Normalizer.load(p)
    legacy = {
        "version": 1,
        "modalities": {
            k: {kk: vv for kk, vv in v.items() if kk in ("kind", "mean", "std", "indicators", "n_rows")}
            for k, v in Normalizer.fit(d, np.arange(80)).stats.items()
        },
    }
    assert torch.isfinite(Normalizer.from_json(legacy).apply("ehr", d.x["ehr"][:3])).all()


def _kinds_fit(scaling="robust"):
    d = load_fuse_data(kinds_cache_data(n=200), "mortality", device="cpu")
    rows = np.arange(150)
    norm = Normalizer.fit(d, rows, scaling=scaling)
    present = rows[d.mask[rows, 1].numpy()]
    return d, norm, d.x["lab"][present].numpy().astype(np.float64)


@pytest.mark.parametrize("scaling", ["robust", "standard"])
def test_kinds_choose_the_transform_log_and_scaling_by_hand(scaling):
    """numeric:log: log1p of the clipped, shifted value then scaled; numeric: scaled (median and IQR / 1.349, or
    mean and sd); binary as it is; statistics from the present training rows only."""
    d, norm, raw = _kinds_fit(scaling)
    st = norm.stats["lab"]
    assert st["transform"] == ["numeric", "log", "binary", "categorical"] and st["indicators"] == [1, 2]
    test = d.x["lab"][150:].numpy().astype(np.float64)
    z = norm.apply("lab", d.x["lab"][150:]).numpy()
    for c, log in ((0, False), (1, True)):
        v = raw[np.isfinite(raw[:, c]), c]
        lo = np.quantile(v, CLIP_QUANTILES[0], method="higher")
        hi = np.quantile(v, CLIP_QUANTILES[1], method="lower")
        q1, q3 = np.quantile(v, [0.25, 0.75])
        lo, hi = max(lo, q1 - 20 * (q3 - q1)), min(hi, q3 + 20 * (q3 - q1))
        shift = max(0.0, -lo) if log else 0.0
        f = (lambda a: np.log1p(np.clip(a, lo, hi) + shift)) if log else (lambda a: np.clip(a, lo, hi))  # noqa: B023
        t1, med, t3 = np.quantile(f(v), [0.25, 0.5, 0.75])
        center, scale = (med, (t3 - t1) / IQR_TO_SD) if scaling == "robust" else (f(v).mean(), f(v).std())
        assert st["log_shift"][c] == pytest.approx(shift)
        want = np.where(np.isfinite(test[:, c]), (f(test[:, c]) - center) / scale, 0.0)
        np.testing.assert_allclose(z[:, c], want, rtol=1e-4, atol=1e-5)
        edges = np.quantile((f(v) - center) / scale, np.linspace(0, 1, PLE_BINS + 1))
        np.testing.assert_allclose(st["bin_edges"][c], edges, atol=2e-6)  # PLE bins: training quantiles
    # binary: the value as it is (not clipped, not scaled), missing 0 and its indicator
    ok = np.isfinite(test[:, 2])
    np.testing.assert_array_equal(z[:, 2], np.where(ok, test[:, 2], 0.0))
    assert set(np.unique(z[:, 2])) <= {0.0, 1.0} and st["low"][2] is None and (st["mean"][2], st["std"][2]) == (0, 1)
    np.testing.assert_array_equal(z[:, 5], ok.astype(np.float32))


def test_log_shift_makes_the_clipped_training_minimum_zero():
    v = torch.linspace(-3.0, 50.0, 1001, dtype=torch.float64)
    f = _fit_column(v, True, "robust", edges=False)
    assert f["low"] == pytest.approx(float(v[1])) and f["shift"] == pytest.approx(-float(v[1]))
    logged = np.log1p(np.clip(v.numpy(), f["low"], f["high"]) + f["shift"])
    assert logged.min() == 0.0
    assert f["center"] == pytest.approx(np.median(logged))


def test_robust_scale_falls_back_to_the_sd_when_the_iqr_is_zero():
    v = torch.tensor([1.0] * 20 + [2.0, 5.0], dtype=torch.float64)
    f = _fit_column(v, False, "robust", edges=True)
    sd = np.clip(v.numpy(), f["low"], f["high"]).std()  # of the clipped values (5 is clipped to 2)
    assert f["center"] == 1.0 and f["high"] == 2.0 and f["scale"] == pytest.approx(sd)
    assert _fit_column(torch.ones(5, dtype=torch.float64), False, "robust", edges=True)["scale"] == 1.0
    std = _fit_column(torch.arange(10, dtype=torch.float64), False, "standard", edges=False)
    clipped = np.clip(np.arange(10.0), 1, 8)  # the 0.1 % / 99.9 % quantiles of ten values: the 2nd and 9th
    assert (std["low"], std["high"]) == (1.0, 8.0)
    assert (std["center"], std["scale"]) == (pytest.approx(clipped.mean()), pytest.approx(clipped.std()))


def test_categorical_codes_pass_through_with_the_missing_index():
    """code k -> k + 1, missing / not a code -> 0; never standardised, no indicator; the model info says so."""
    d, norm, _ = _kinds_fit()
    st = norm.stats["lab"]
    assert (st["mean"][3], st["std"][3], st["low"][3], st["n_categories"][3]) == (0.0, 1.0, None, 3)
    x = torch.tensor([[60.0, 100.0, 1.0, c] for c in (0.0, 1.0, 2.0, float("nan"), 3.0, 1.5, -1.0)])
    np.testing.assert_array_equal(norm.apply("lab", x)[:, 3].numpy(), [1, 2, 3, 0, 0, 0, 0])
    z = d.batch(np.arange(200), norm).x["lab"]
    raw = d.x["lab"][:, 3].numpy()
    want = np.where(np.isfinite(raw), raw + 1, 0) * d.mask[:, 1].numpy()  # a missing modality reads as missing
    np.testing.assert_array_equal(z[:, 3].numpy(), want)
    info = d.model_info(norm).modalities[1]
    assert info.feature_kinds == ("numeric", "numeric", "binary", "categorical:3", "binary", "binary")
    assert info.bin_edges is not None and info.bin_edges[2] is None and len(info.bin_edges[0] or ()) == PLE_BINS + 1


def test_a_version_2_normalizer_still_loads_and_applies_as_before():
    v2 = {
        "version": 2,
        "clip_quantiles": [0.001, 0.999],
        "modalities": {
            "lab": {
                "kind": "tabular",
                "mean": [10.0, 0.0],
                "std": [2.0, 1.0],
                "low": [5.0, None],
                "high": [20.0, None],
                "indicators": [1],
                "n_rows": 9,
            }
        },
    }
    norm = Normalizer.from_json(json.loads(json.dumps(v2)))
    x = torch.tensor([[12.0, 3.0], [100.0, float("nan")], [float("nan"), 1.0]])
    want = torch.tensor([[1.0, 3.0, 1.0], [5.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    assert torch.equal(norm.apply("lab", x), want)
    assert norm.input_kinds("lab", 3) == (None, None)  # a plain MLP, as before kinds
    assert Normalizer.from_json(norm.to_json()).stats == norm.stats


# ----------------------------------------------------- normalised once per fold (issue 14, item 2)
def _per_batch(d, idx, norm, mask=None):
    """What a batch held before rows were normalised once: ``Normalizer.apply`` on the gathered rows, a missing
    modality's rows zeroed (the reference)."""
    idx = torch.as_tensor(idx)
    m = d.mask[idx] if mask is None else mask & d.mask[idx]
    return {
        n: norm.apply(n, d.x[n][idx]) * m[:, j, None, None].reshape(-1, *[1] * (d.x[n].dim() - 1))
        for j, n in enumerate(d.modalities)
    }


def _equal_to_per_batch(d, norm, rows, mask):
    """Every shuffled batch of ``iter_batches`` equals the per-batch reference bit for bit; the batches."""
    out = list(d.iter_batches(rows, 16, norm, shuffle=True, generator=torch.Generator().manual_seed(3), mask=mask))
    perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(3))
    for k, b in enumerate(out):
        sel = perm[k * 16 : (k + 1) * 16]
        want = _per_batch(d, torch.as_tensor(rows)[sel], norm, mask[sel])
        for n in d.modalities:
            assert b.x[n].dtype == torch.float32 and torch.equal(b.x[n], want[n]), n
    return out


@pytest.mark.parametrize("source", ["kinds", "tiny"])
def test_rows_normalised_once_give_the_batches_normalised_batch_by_batch(source, tiny_cache, monkeypatch):
    """log, categorical, binary and indicator columns (``kinds``), float16 vector and sequence embeddings and a
    time series (``tiny``): the batches are the per-batch ones bit for bit, and the rows were normalised once
    (the cache holds every in-memory modality, for this normaliser)."""
    d = load_fuse_data(kinds_cache_data(n=200) if source == "kinds" else tiny_cache, "mortality", device="cpu")
    rows = np.flatnonzero(d.y_mask.numpy())
    norm = Normalizer.fit(d, rows[: len(rows) // 2])
    mask = torch.rand(len(rows), len(d.modalities), generator=torch.Generator().manual_seed(1)) > 0.3
    cached = _equal_to_per_batch(d, norm, rows, mask)
    assert d._normed["norm"] is norm and sorted(d._normed["x"]) == sorted(d.modalities)
    z = d._normed["x"][d.modalities[-1]][2]
    assert torch.equal(z[rows[:7]], norm.apply(d.modalities[-1], d.x[d.modalities[-1]][rows[:7]]))
    # the same batches with no room for the normalised copy (every modality batch by batch)
    monkeypatch.setattr(fdata, "NORMALIZED_SHARE", 0.0)
    plain = load_fuse_data(kinds_cache_data(n=200) if source == "kinds" else tiny_cache, "mortality", device="cpu")
    g = torch.Generator().manual_seed(3)
    for a, b in zip(cached, plain.iter_batches(rows, 16, norm, shuffle=True, generator=g, mask=mask), strict=True):
        assert all(torch.equal(a.x[n], b.x[n]) for n in d.modalities)
    assert plain._normed["x"] == {}


def test_another_normaliser_replaces_the_rows_and_batch_reads_them(tiny_data):
    d = load_fuse_data(tiny_data, "mortality", device="cpu")
    rows = np.flatnonzero(d.y_mask.numpy())
    n1, n2 = Normalizer.fit(d, rows[:60]), Normalizer.fit(d, rows[60:])
    assert not d.batch(rows[:5], n1).x["img"].equal(d.batch(rows[:5], n2).x["img"])
    assert d._normed == {}  # batch() alone never normalises every row
    for norm in (n1, n2, n1):
        next(d.iter_batches(rows, 8, norm))
        assert d._normed["norm"] is norm
        b = d.batch(rows[3:20], norm)  # reads the normalised rows of this normaliser
        want = _per_batch(d, rows[3:20], norm)
        assert all(torch.equal(b.x[n], want[n]) for n in d.modalities)
    # a modality written to since is normalised batch by batch again (never stale rows)
    d.x["ehr"][rows[3]] += 1.0
    assert "ehr" not in d._normalized(n1, build=False) and "img" in d._normalized(n1, build=False)
    assert torch.equal(d.batch(rows[3:20], n1).x["ehr"], _per_batch(d, rows[3:20], n1)["ehr"])
    # the normalised rows never travel to a worker, nor to a copy with another mask
    assert pickle.loads(pickle.dumps(d))._normed == {}
    assert d.with_mask(d.mask.clone())._normed == {}


def test_streamed_modalities_stay_batch_by_batch_and_equal(tiny_cache, monkeypatch):
    """Part streamed (``rep``) and all streamed: the in-memory modalities are normalised once, the streamed
    ones per batch, and every batch equals the in-memory data's."""
    mem = load_fuse_data(tiny_cache, "mortality", device="cpu", in_memory="yes")
    rows = np.flatnonzero(mem.y_mask.numpy())
    norm = Normalizer.fit(mem, rows[::2])
    mask = torch.rand(len(rows), 3, generator=torch.Generator().manual_seed(2)) > 0.3
    want = _equal_to_per_batch(mem, norm, rows, mask)
    monkeypatch.setattr(fdata, "streamed_modalities", lambda *a, **k: ["rep"])
    part = load_fuse_data(tiny_cache, "mortality", device="cpu", in_memory="auto")
    monkeypatch.undo()
    full = load_fuse_data(tiny_cache, "mortality", device="cpu", in_memory="no")
    assert part.streamed == ["rep"] and full.streamed == ["img", "rep", "ehr"]
    for d, held in ((part, ["ehr", "img"]), (full, [])):
        g = torch.Generator().manual_seed(3)
        got = list(d.iter_batches(rows, 16, norm, shuffle=True, generator=g, mask=mask))
        assert sorted(d._normed["x"]) == held
        for a, b in zip(want, got, strict=True):
            assert all(torch.equal(a.x[n], b.x[n]) for n in mem.modalities)
