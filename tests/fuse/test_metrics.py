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
