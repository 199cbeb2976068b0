import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from omnifuse.fuse.data import (
    CLIP_QUANTILES,
    DataError,
    Normalizer,
    inner_split,
    load_fuse_data,
    make_folds,
    simulate_missing,
)


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
    norm = Normalizer.fit(d, rows)
    st = norm.stats["ehr"]
    present = rows[d.mask[rows, 2].numpy()]
    raw = d.x["ehr"][present].numpy().reshape(-1, 4)
    col = raw[:, 0].astype(np.float64)
    lo = np.nanquantile(col, CLIP_QUANTILES[0], method="higher")
    hi = np.nanquantile(col, CLIP_QUANTILES[1], method="lower")
    assert (st["low"][0], st["high"][0]) == (pytest.approx(lo, rel=1e-5), pytest.approx(hi, rel=1e-5))
    assert st["mean"][0] == pytest.approx(np.nanmean(np.clip(raw[:, 0], lo, hi)), rel=1e-4)
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
            k: {kk: vv for kk, vv in v.items() if kk not in ("low", "high")}
            for k, v in Normalizer.fit(d, np.arange(80)).stats.items()
        },
    }
    assert torch.isfinite(Normalizer.from_json(legacy).apply("ehr", d.x["ehr"][:3])).all()
