import numpy as np
import pytest
import torch

from omnifuse.fuse.data import DataError, Normalizer, inner_split, load_fuse_data, make_folds, simulate_missing


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
    assert st["mean"][0] == pytest.approx(np.nanmean(raw[:, 0]), rel=1e-4)
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
