import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from omnifuse.fuse import metrics


@pytest.fixture
def scores():
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.3).astype(int)
    p = np.clip(0.3 * y + rng.random(300) * 0.7, 0, 1)
    p[:40] = np.round(p[:40], 1)  # ties
    return y, p


def test_binary_equals_sklearn(scores):
    y, p = scores
    assert metrics.auroc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert metrics.auprc(y, p) == pytest.approx(average_precision_score(y, p), abs=1e-12)
    assert metrics.brier(y, p) == pytest.approx(brier_score_loss(y, p), abs=1e-12)


def test_multilabel_macro_micro_equal_sklearn():
    rng = np.random.default_rng(1)
    y = (rng.random((200, 4)) < 0.4).astype(int)
    p = np.clip(y * 0.3 + rng.random((200, 4)) * 0.8, 0, 1)
    for avg in ("macro", "micro"):
        assert metrics.auroc(y, p, "multilabel", avg) == pytest.approx(roc_auc_score(y, p, average=avg), abs=1e-12)
        assert metrics.auprc(y, p, "multilabel", avg) == pytest.approx(
            average_precision_score(y, p, average=avg), abs=1e-12
        )


def test_multiclass_ovr_macro_equals_sklearn():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 150)
    p = rng.random((150, 3)) + np.eye(3)[y] * 0.5
    p /= p.sum(1, keepdims=True)
    assert metrics.auroc(y, p, "multiclass") == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))


def test_single_class_label_is_nan_and_left_out_of_macro():
    y = np.array([[0, 1], [0, 0], [0, 1], [0, 0]])
    p = np.array([[0.1, 0.9], [0.2, 0.1], [0.3, 0.8], [0.4, 0.3]])
    assert np.isnan(metrics.per_label_auroc(y, p, "multilabel")[0])
    assert metrics.auroc(y, p, "multilabel") == 1.0


def test_bootstrap_ci_brackets_estimate_and_is_seeded(scores):
    y, p = scores
    lo, hi = metrics.bootstrap_ci(metrics.auroc, y, p, n_boot=200, seed=3)
    assert lo < metrics.auroc(y, p) < hi
    assert (lo, hi) == metrics.bootstrap_ci(metrics.auroc, y, p, n_boot=200, seed=3)


def test_reliability_matches_sklearn_calibration_curve(scores):
    y, p = scores
    r = metrics.reliability_curve(y, p, n_bins=5)
    frac, mean = calibration_curve(y, p, n_bins=5, strategy="uniform")
    np.testing.assert_allclose(r["fraction_positive"], frac)
    np.testing.assert_allclose(r["mean_predicted"], mean)
    assert sum(r["count"]) == len(y)


def test_ece_binary_by_hand():
    """5 bins of width 0.2; 0.8 sits on an inner edge and goes to the lower bin (0.6, 0.8]:
    (2/6)|0.5 - 0.125| + (1/6)|0 - 0.3| + (1/6)|1 - 0.5| + (1/6)|1 - 0.8| + (1/6)|1 - 0.95| = 0.3."""
    y = np.array([0, 1, 0, 1, 1, 1])
    p = np.array([0.1, 0.15, 0.3, 0.5, 0.8, 0.95])
    assert metrics.expected_calibration_error(y, p, "binary", n_bins=5) == pytest.approx(0.3, abs=1e-12)
    assert metrics.expected_calibration_error(y[:, None], p[:, None], n_bins=5) == pytest.approx(0.3, abs=1e-12)
    # one bin: |mean(y) - mean(p)|
    assert metrics.expected_calibration_error(y, p, n_bins=1) == pytest.approx(abs(4 / 6 - p.mean()), abs=1e-12)
    assert np.isnan(metrics.expected_calibration_error(np.zeros(0), np.zeros(0)))


def test_ece_multiclass_top_label_by_hand():
    """Top-label confidences 0.7 (right), 0.5 (wrong), 0.4 (right), 0.9 (wrong), 2 bins:
    (2/4)|0.5 - 0.45| + (2/4)|0.5 - 0.8| = 0.175."""
    p = np.array([[0.7, 0.2, 0.1], [0.4, 0.5, 0.1], [0.3, 0.3, 0.4], [0.9, 0.05, 0.05]])
    y = np.array([0, 0, 2, 1])
    assert metrics.expected_calibration_error(y, p, "multiclass", n_bins=2) == pytest.approx(0.175, abs=1e-12)


def test_ece_multilabel_is_the_mean_over_labels_by_hand():
    """Label 0: (2/4)|0 - 0.25| + (2/4)|1 - 0.75| = 0.25; label 1: (3/4)|1/3 - 7/30| + (1/4)|1 - 0.7| = 0.15."""
    y = np.array([[1, 0], [0, 0], [1, 1], [0, 1]])
    p = np.array([[0.9, 0.2], [0.2, 0.1], [0.6, 0.7], [0.3, 0.4]])
    assert metrics.expected_calibration_error(y, p, "multilabel", n_bins=2) == pytest.approx(0.2, abs=1e-12)


def test_ece_bins_are_the_reliability_curves(scores):
    """ECE = the count-weighted gap of the reliability curve's bins (one binning behind both)."""
    y, p = scores
    r = metrics.reliability_curve(y, p, n_bins=7)
    gap = np.abs(np.subtract(r["fraction_positive"], r["mean_predicted"]))
    want = float((gap * np.asarray(r["count"])).sum() / len(y))
    assert metrics.expected_calibration_error(y, p, n_bins=7) == pytest.approx(want, abs=1e-12)
    assert metrics.evaluate(y, p, "binary", n_boot=0)["ece"] == pytest.approx(
        metrics.expected_calibration_error(y, p, n_bins=metrics.ECE_BINS)
    )


@pytest.mark.parametrize("name", ["auroc", "auprc"])
@pytest.mark.parametrize("ties", [False, True])
def test_resampled_rows_equal_the_metric_of_each_resample(name, ties):
    """One sort per set of rows and counts per replicate give each bootstrap replicate's AUROC / AP as sorting
    the replicate itself does (and hence scikit-learn's), NaN where a replicate lacks a class, with ties."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    from omnifuse.fuse.metrics import binary_ap_rows, binary_auroc_rows, binary_resampled_rows

    rng = np.random.default_rng(11 + ties)
    for n in (1, 2, 7, 60, 301):
        y = (rng.random(n) < 0.2).astype(float)
        s = rng.random(n)
        if ties:
            s = np.round(s + 0.3 * y, 1)
        idx = rng.integers(0, n, size=(257, n))
        got = binary_resampled_rows(name, y, s, idx)
        ref = (binary_auroc_rows if name == "auroc" else binary_ap_rows)(y[idx], s[idx])
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        np.testing.assert_allclose(got[~np.isnan(got)], ref[~np.isnan(ref)], rtol=0, atol=1e-12)
        sk = roc_auc_score if name == "auroc" else average_precision_score
        for b in np.flatnonzero(~np.isnan(got))[:5]:
            assert got[b] == pytest.approx(sk(y[idx[b]], s[idx[b]]), abs=1e-12)
    with pytest.raises(ValueError, match="auroc"):
        binary_resampled_rows("brier", y, s, idx)
