"""The paired test, mean ± sd, fold bootstrap and the summary bookkeeping against hand-computed values."""

import math

import numpy as np
import pytest
from scipy import special
from sklearn.metrics import average_precision_score, roc_auc_score

from omnifuse.experiments.stats import FoldPred, fold_bootstrap_ci, mean_sd, metric_fn, paired_ttest, pick, summarize

A = [0.80, 0.82, 0.78, 0.85, 0.81]
B = [0.78, 0.80, 0.79, 0.80, 0.78]


def test_paired_ttest_matches_hand_computation():
    # d = [0.02, 0.02, -0.01, 0.05, 0.03]; mean 0.022; sum of squared deviations 0.00188 -> sd = sqrt(0.00047)
    # t = 0.022 / (sqrt(0.00047) / sqrt(5)) = 2.26913; df = 4; p = 2 * P(T_4 < -t)
    r = paired_ttest(A, B)
    t = 0.022 / (math.sqrt(0.00188 / 4) / math.sqrt(5))
    assert r.t == pytest.approx(t, rel=1e-9) and r.t == pytest.approx(2.26913, abs=1e-5)
    assert r.p == pytest.approx(2 * special.stdtr(4, -t), rel=1e-9)
    assert r.p == pytest.approx(0.085810, abs=1e-6)
    assert r.mean_diff == pytest.approx(0.022) and r.n == 5
    rb = paired_ttest(B, A)
    assert rb.t == pytest.approx(-r.t) and rb.p == pytest.approx(r.p)


def test_paired_ttest_drops_nan_pairs_and_refuses_degenerate_input():
    r = paired_ttest(A + [math.nan], B + [0.5])
    assert r.n == 5 and r.t == pytest.approx(paired_ttest(A, B).t)
    one = paired_ttest([0.8], [0.7])
    assert one.n == 1 and math.isnan(one.t) and math.isnan(one.p) and one.mean_diff == pytest.approx(0.1)
    same = paired_ttest([0.8, 0.7, 0.6], [0.7, 0.6, 0.5])  # constant differences: sd 0, no t
    assert math.isnan(same.p) and same.mean_diff == pytest.approx(0.1)
    with pytest.raises(ValueError, match="differ in length"):
        paired_ttest([0.1, 0.2], [0.1])


def test_mean_sd():
    mu, sd, n = mean_sd([0.7, 0.8, 0.9, math.nan])
    assert (mu, n) == (pytest.approx(0.8), 3) and sd == pytest.approx(0.1)
    assert mean_sd([0.5])[1] == 0.0 and math.isnan(mean_sd([])[0])


def test_fold_bootstrap_ci():
    y = np.array([0, 0, 1, 1, 0, 1, 0, 1])[:, None].astype(float)
    perfect = np.array([0.1, 0.2, 0.8, 0.9, 0.3, 0.7, 0.2, 0.95])[:, None]
    lo, hi = fold_bootstrap_ci(metric_fn("auroc", "binary"), [(y, perfect), (y, perfect)], n_boot=50, seed=1)
    assert lo == hi == 1.0
    rng = np.random.default_rng(0)
    folds = []
    for _ in range(3):
        yy = rng.integers(0, 2, 60).astype(float)[:, None]
        folds.append((yy, np.clip(yy * 0.3 + rng.random((60, 1)) * 0.7, 0, 1)))
    f = metric_fn("auroc", "binary")
    lo, hi = fold_bootstrap_ci(f, folds, n_boot=200, seed=3)
    mean = np.mean([f(a, b) for a, b in folds])
    assert lo < mean < hi and hi - lo < 0.3
    assert (lo, hi) == fold_bootstrap_ci(f, folds, n_boot=200, seed=3)


def _fp(method, fold, p, y=(0, 0, 1, 1), group="overall", subset="as_is"):
    return FoldPred(method, 0, fold, group, subset, np.array(y, float)[:, None], np.array(p, float)[:, None])


def test_summarize_fold_bookkeeping_by_hand():
    # AUROC by hand (y = 0 0 1 1): "x" folds 0.75, 1.0, 0.5; "ref" folds 0.5, 0.75, 0.25
    x = [[0.1, 0.4, 0.35, 0.8], [0.1, 0.2, 0.3, 0.4], [0.1, 0.6, 0.2, 0.5]]
    ref = [[0.1, 0.6, 0.2, 0.5], [0.1, 0.4, 0.35, 0.8], [0.3, 0.6, 0.1, 0.5]]
    preds = [_fp("x", k, p) for k, p in enumerate(x)] + [_fp("ref", k, p) for k, p in enumerate(ref)]
    summary, recs = summarize(preds, "binary", against=["ref"], n_boot=0)
    assert [r["auroc"] for r in recs if r["method"] == "x"] == [0.75, 1.0, 0.5]
    assert [r["auroc"] for r in recs if r["method"] == "ref"] == [0.5, 0.75, 0.25]
    for r in recs:
        assert r["auroc"] == pytest.approx(roc_auc_score([0, 0, 1, 1], preds[recs.index(r)].p[:, 0]))
        assert r["auprc"] == pytest.approx(average_precision_score([0, 0, 1, 1], preds[recs.index(r)].p[:, 0]))
    row = pick(summary, method="x")[0]
    assert row["auroc_mean"] == pytest.approx(0.75) and row["auroc_sd"] == pytest.approx(0.25)
    assert row["n_folds"] == 3 and row["n_rows"] == 12
    # differences 0.25, 0.25, 0.25: constant, so no t statistic (sd 0) but the mean difference
    assert row["diff_auroc_vs_ref"] == pytest.approx(0.25) and math.isnan(row["p_auroc_vs_ref"])
    assert "p_auroc_vs_ref" not in pick(summary, method="ref")[0]
    # make the differences vary: ref fold 2 -> AUROC 0.0 (d = 0.25, 0.25, 0.5)
    preds[-1] = _fp("ref", 2, [0.9, 0.8, 0.1, 0.2])
    summary, _ = summarize(preds, "binary", against=["ref"], n_boot=0)
    row = pick(summary, method="x")[0]
    d = np.array([0.25, 0.25, 0.5])
    t = d.mean() / (d.std(ddof=1) / math.sqrt(3))
    assert row["t_auroc_vs_ref"] == pytest.approx(t) and row["p_auroc_vs_ref"] == pytest.approx(
        2 * special.stdtr(2, -t)
    )
    assert row["n_pairs_vs_ref"] == 3


def test_summarize_pairs_only_common_folds_and_cells():
    # x: 0.75, 1.0, 0.5; ref: 0.5 (fold 0), none (fold 1), 0.0 (fold 2)
    preds = [
        _fp("x", 0, [0.1, 0.4, 0.35, 0.8]),
        _fp("x", 1, [0.1, 0.2, 0.3, 0.4]),
        _fp("x", 2, [0.1, 0.6, 0.2, 0.5]),
        _fp("ref", 0, [0.1, 0.6, 0.2, 0.5]),
        _fp("ref", 2, [0.9, 0.8, 0.1, 0.2]),
        _fp("x", 0, [0.1, 0.2, 0.3, 0.4], group="a+b", subset="complete"),
    ]
    summary, _ = summarize(preds, "binary", against=["ref"], n_boot=0)
    row = pick(summary, method="x", group="overall")[0]
    assert row["n_pairs_vs_ref"] == 2  # fold 1 has no ref
    assert row["diff_auroc_vs_ref"] == pytest.approx(((0.75 - 0.5) + (0.5 - 0.0)) / 2)
    d = np.array([0.25, 0.5])
    assert row["t_auroc_vs_ref"] == pytest.approx(d.mean() / (d.std(ddof=1) / math.sqrt(2)))  # = 3
    assert "p_auroc_vs_ref" not in pick(summary, method="x", group="a+b")[0]  # ref has no such cell


@pytest.mark.parametrize("name", ["auroc", "auprc"])
def test_fast_bootstrap_equals_the_loop(name):
    from omnifuse.experiments.stats import fast_fold_bootstrap_ci

    rng = np.random.default_rng(4)
    folds = []
    for n in (40, 31, 3):
        y = rng.integers(0, 2, n).astype(float)[:, None]
        p = np.round(np.clip(0.3 * y + 0.7 * rng.random((n, 1)), 0, 1), 1)  # rounded: many tied scores
        folds.append((y, p))
    slow = fold_bootstrap_ci(metric_fn(name, "binary"), folds, n_boot=300, seed=9)
    fast = fast_fold_bootstrap_ci(name, "binary", folds, n_boot=300, seed=9)
    assert fast == pytest.approx(slow, abs=1e-12)
    assert not math.isnan(fast[0])


def test_calibration_columns_before_and_after():
    """ECE and Brier per fold (calibrated) with the same before calibration where the cell carries ``p_raw``;
    pooled metrics of both; a cell without ``p_raw`` (an old run, a reference score) has no such key."""
    from omnifuse.fuse import metrics

    y = (0, 0, 1, 1)
    raw = [[0.05, 0.4, 0.35, 0.99], [0.01, 0.2, 0.3, 0.9]]
    cal = [[0.1, 0.4, 0.38, 0.8], [0.1, 0.25, 0.3, 0.7]]
    preds = [
        FoldPred(
            "x", 0, k, "overall", "as_is", np.array(y, float)[:, None], np.array(c)[:, None], 0.0, np.array(r)[:, None]
        )
        for k, (c, r) in enumerate(zip(cal, raw, strict=True))
    ] + [_fp("old", k, r) for k, r in enumerate(raw)]
    summary, recs = summarize(preds, "binary", n_boot=0)
    for r, fp in zip(recs[:2], preds[:2], strict=True):
        assert r["ece"] == pytest.approx(metrics.expected_calibration_error(fp.y, fp.p, "binary", 15))
        assert r["brier_uncalibrated"] == pytest.approx(np.mean((fp.p_raw - fp.y) ** 2))
        assert r["ece_uncalibrated"] == pytest.approx(metrics.expected_calibration_error(fp.y, fp.p_raw, n_bins=15))
        assert r["auroc_uncalibrated"] == r["auroc"]
    row = pick(summary, method="x")[0]
    assert row["brier_uncalibrated_mean"] == pytest.approx(np.mean([r["brier_uncalibrated"] for r in recs[:2]]))
    assert row["ece_mean"] == pytest.approx(np.mean([r["ece"] for r in recs[:2]]))
    yy = np.concatenate([fp.y for fp in preds[:2]])
    assert row["auroc_pooled_uncalibrated"] == pytest.approx(roc_auc_score(yy, np.concatenate(raw)))
    assert row["auroc_pooled"] == pytest.approx(roc_auc_score(yy, np.concatenate(cal)))
    assert row["ece_pooled"] == pytest.approx(metrics.expected_calibration_error(yy, np.concatenate(cal), n_bins=15))
    old = pick(summary, method="old")[0]
    assert "brier_uncalibrated_mean" not in old and "auroc_pooled_uncalibrated" not in old
    assert "brier_uncalibrated" not in recs[-1] and old["brier_pooled"] == row["brier_pooled_uncalibrated"]
