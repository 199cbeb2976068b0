"""The reference learners: their features by hand, their fit on every task kind, and their place in the registry
and the fold runner (the same folds, rows and masks as the methods)."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from omnifuse.fuse.config import resolve_config
from omnifuse.fuse.data import Normalizer, load_fuse_data
from omnifuse.fuse.fold import FoldPlan, make_repeated_folds, run_fold
from omnifuse.fuse.methods import build_method, get_method, list_methods
from omnifuse.fuse.reference import (
    GBM_MAX_CATEGORIES,
    ReferenceLearner,
    _gbm_codes,
    _series_summary,
    categorical_columns,
    reference_features,
)
from tests.helpers import TINY_OPTIONS, kinds_cache_data, synthetic_cache_data


def test_time_series_summary_by_hand():
    nan = math.nan
    x = np.array([[[1.0, nan], [nan, nan], [3.0, 5.0]], [[nan, nan], [nan, nan], [nan, 2.0]]], dtype=np.float32)
    s = _series_summary(x)  # [n, 5 F]: last, mean, min, max, count
    np.testing.assert_allclose(s[0], [3, 5, 2, 5, 1, 5, 3, 5, 2, 1])
    assert np.isnan(s[1, [0, 2, 4, 6]]).all() and (s[1, [1, 3, 5, 7]] == 2).all() and list(s[1, 8:]) == [0, 1]


def test_features_mask_modalities_and_carry_indicators():
    d = load_fuse_data(synthetic_cache_data(n=60), "mortality", device="cpu")
    rows = np.arange(60)
    norm = Normalizer.fit(d, rows)
    f = reference_features(d, rows, norm)
    widths = {"img": 12 + 1, "rep": 8 + 1, "ehr": 5 * 4 + 1}  # vector, mean of tokens, series summaries
    assert f.shape == (60, sum(widths.values()))
    ind = np.cumsum(list(widths.values())) - 1
    np.testing.assert_array_equal(f[:, ind].astype(bool), d.mask.numpy())
    keep = torch.tensor([[True, False, False]]).expand(60, -1)
    g = reference_features(d, rows, norm, keep)
    assert np.isnan(g[:, 13:-1][:, :8]).all() and (g[:, ind[1:]] == 0).all()
    np.testing.assert_array_equal(g[:, :13], f[:, :13])


@pytest.mark.parametrize("task,width", [("mortality", 1), ("pheno", 3), ("subtype", 3)])
@pytest.mark.parametrize("name", ["logreg", "gbm"])
def test_fit_every_task_kind(name, task, width):
    d = load_fuse_data(synthetic_cache_data(n=200, seed=4), task, device="cpu")
    rows = np.arange(200)
    norm = Normalizer.fit(d, rows[:150])
    learner = build_method(name, d.model_info(norm), seed=0).fit(d, rows[:150], norm)
    p = learner.predict_proba(d, rows[150:], norm)
    assert p.shape == (50, width) and np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
    if task == "subtype":
        np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5)
    if task == "mortality":  # the synthetic signal is learnable
        assert roc_auc_score(d.labels_numpy(rows[150:])[:, 0], p[:, 0]) > 0.6


def test_registered_like_methods_and_run_by_the_fold_runner():
    assert {"logreg", "gbm"} <= set(list_methods("reference"))
    assert get_method("gbm").kind == "reference"
    d = load_fuse_data(synthetic_cache_data(n=160, seed=2), "mortality", device="cpu")
    tr, te = make_repeated_folds(d, 2, 1, 0)[0][0]
    cfg = resolve_config(None, task="mortality", progress=False, **TINY_OPTIONS)
    run = run_fold(d, FoldPlan("logreg", tr, te, seed=3, combos=[d.modalities, ["img"]]), cfg)
    assert run.overall.shape == (len(te), 1) and sorted(run.combos) == [0, 1]
    np.testing.assert_allclose(run.combos[0], run.overall)  # every modality = the rows as they are
    assert run.n_train == len(tr) and run.n_val == 0 and run.history == []
    with pytest.raises(ValueError, match="has no parameter 'depth'"):
        run_fold(d, FoldPlan("gbm", tr, te, seed=3, params={"depth": 3}), cfg)


def test_categorical_columns_are_one_hot_for_logreg_and_native_for_gbm():
    d = load_fuse_data(kinds_cache_data(n=200), "mortality", device="cpu")
    rows = np.arange(200)
    norm = Normalizer.fit(d, rows)
    cats = categorical_columns(d, norm)
    assert cats == [(12 + 1 + 3, 3)]  # img [12] and its indicator, then lab's fourth column
    f = reference_features(d, rows, norm)
    raw = d.x["lab"][:, 3].numpy()
    np.testing.assert_array_equal(f[:, 16], np.where(d.mask[:, 1].numpy(), raw, np.nan))  # the codes as they are
    info = d.model_info(norm)
    lr = ReferenceLearner(info, "logreg").fit(d, rows, norm)
    cols = lr.models[0][0]  # the ColumnTransformer: standardised numbers, then the one-hot block
    x = f[:4].copy()
    x[:, 16] = [0.0, 2.0, np.nan, 7.0]
    onehot = cols.transform(x)[:, -3:]
    np.testing.assert_array_equal(onehot, [[1, 0, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0]])  # missing, unseen: 0
    gbm = ReferenceLearner(info, "gbm").fit(d, rows, norm)
    is_cat = gbm.models[0].is_categorical_
    assert is_cat[16] and is_cat.sum() == 1
    p = gbm.predict_proba(d, rows[:10], norm)
    assert p.shape == (10, 1) and np.isfinite(p).all()


def test_gbm_pools_rare_categories_beyond_its_bins():
    n = 70  # more categories than the gbm's bins hold: code k appears 70 - k times
    codes = np.r_[np.repeat(np.arange(n), np.arange(n, 0, -1)), [np.nan] * 3]
    x = np.stack([np.zeros_like(codes), codes], axis=1)
    (lut,) = _gbm_codes(x, [(1, n)], None)
    keep = GBM_MAX_CATEGORIES - 1  # the most frequent categories keep a code of their own
    np.testing.assert_array_equal(lut[:keep], np.arange(keep))
    assert (lut[keep:] == keep).all() and np.isnan(x[-3:, 1]).all() and np.nanmax(x[:, 1]) == keep
    y = np.array([[5.0, 3.0], [5.0, 69.0], [5.0, 80.0]])
    _gbm_codes(y, [(1, n)], [lut])
    np.testing.assert_array_equal(y[:, 1], [3.0, keep, np.nan])
