"""Temperature scaling (omnifuse.fuse.calibration): a known temperature recovered from synthetic logits for the
three task kinds, the likelihood never worse, ranks kept, the degenerate splits kept at T = 1 with a warning,
and the likelihood it minimises equal to scikit-learn's log loss."""

import logging

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from omnifuse.fuse import metrics
from omnifuse.fuse.calibration import (
    EPS,
    T_BOUNDS,
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    temperature_nll,
)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.fixture
def overconfident():
    """Labels drawn from sigmoid(z), reported as sigmoid(3 z): a model three times too sure."""
    rng = np.random.default_rng(0)
    z = rng.normal(-1.0, 1.5, 20000)
    y = (rng.random(z.size) < _sigmoid(z)).astype(np.float64)
    return y, _sigmoid(3.0 * z)[:, None], z


def test_binary_recovers_a_known_temperature(overconfident):
    y, p, z = overconfident
    t = fit_temperature(y, p, "binary")
    assert t.shape == (1,) and t[0] == pytest.approx(3.0, rel=0.05)
    q = apply_temperature(p, t, "binary")
    ok = (p[:, 0] > EPS) & (p[:, 0] < 1 - EPS)  # beyond the clip the logit is +-16.1
    assert ok.mean() > 0.99
    np.testing.assert_allclose(q[ok, 0], _sigmoid(z[ok] * 3.0 / t[0]), atol=1e-5)  # the rescaled logits
    assert temperature_nll(y, p, t, "binary") < temperature_nll(y, p, 1.0, "binary")
    assert metrics.auroc(y, q) == pytest.approx(metrics.auroc(y, p), abs=1e-6)  # ranks kept (float32 ties aside)
    assert expected_calibration_error(y, q, "binary") < 0.3 * expected_calibration_error(y, p, "binary")


def test_the_likelihood_is_scikit_learns_log_loss(overconfident):
    y, p, _ = overconfident
    for t in (0.5, 1.0, 2.5):
        c = np.clip(p[:, 0], EPS, 1 - EPS)
        q = _sigmoid(np.log(c / (1 - c)) / t)  # float64: apply_temperature's float32 rounds 1 - 1e-9 to 1
        np.testing.assert_allclose(apply_temperature(p, t, "binary")[:, 0], q, atol=1e-6)
        assert temperature_nll(y, p, t, "binary") == pytest.approx(log_loss(y, q), rel=1e-5)


def test_calibrated_predictions_keep_t_close_to_one_and_never_lose_likelihood():
    rng = np.random.default_rng(1)
    z = rng.normal(0.0, 2.0, 5000)
    y = (rng.random(z.size) < _sigmoid(z)).astype(np.float64)
    p = _sigmoid(z)[:, None]
    t = fit_temperature(y, p, "binary")
    assert t[0] == pytest.approx(1.0, abs=0.1)
    assert temperature_nll(y, p, t, "binary") <= temperature_nll(y, p, 1.0, "binary")
    # underconfident (reported sigmoid(z / 2)): T below one sharpens it back
    t2 = fit_temperature(y, _sigmoid(z / 2.0)[:, None], "binary")
    assert t2[0] == pytest.approx(0.5, rel=0.1)


def test_multilabel_fits_one_temperature_per_label():
    rng = np.random.default_rng(2)
    z = rng.normal(-0.5, 1.5, (20000, 3))
    y = (rng.random(z.shape) < _sigmoid(z)).astype(np.float64)
    true_t = np.array([3.0, 0.5, 1.0])
    p = _sigmoid(z / true_t)  # label c reported with logits z / T_c
    t = fit_temperature(y, p, "multilabel")
    assert t.shape == (3,)
    np.testing.assert_allclose(t, 1.0 / true_t, rtol=0.08)  # undoes each label's scale
    q = apply_temperature(p, t, "multilabel")
    assert q.shape == p.shape
    for c in range(3):
        # ranks kept (up to ties made by the float32 output)
        assert roc_auc_score(y[:, c], q[:, c]) == pytest.approx(roc_auc_score(y[:, c], p[:, c]), abs=1e-6)
    assert temperature_nll(y, p, t, "multilabel") < temperature_nll(y, p, 1.0, "multilabel")


def test_multiclass_fits_one_temperature():
    rng = np.random.default_rng(3)
    z = rng.normal(0.0, 1.5, (20000, 4))
    y = np.array([rng.choice(4, p=row) for row in _softmax(z)])
    p = _softmax(2.0 * z)
    t = fit_temperature(y, p, "multiclass")
    assert t.shape == (1,) and t[0] == pytest.approx(2.0, rel=0.05)
    q = apply_temperature(p, t, "multiclass")
    np.testing.assert_allclose(q.sum(1), 1.0, rtol=1e-5)
    assert (q.argmax(1) == p.argmax(1)).all()  # the predicted class stays
    ok = (p > EPS).all(1)  # rows without a clipped class probability
    assert ok.mean() > 0.99
    np.testing.assert_allclose(q[ok], _softmax(z[ok] * 2.0 / t[0]), atol=1e-5)
    assert temperature_nll(y, p, t, "multiclass") < temperature_nll(y, p, 1.0, "multiclass")
    assert temperature_nll(y, p, 1.0, "multiclass") == pytest.approx(log_loss(y, p), rel=1e-6)


def test_degenerate_splits_keep_t_at_one_and_say_so(caplog):
    p = np.array([[0.1], [0.3], [0.2]])
    with caplog.at_level(logging.WARNING, logger="omnifuse.fuse.calibration"):
        assert fit_temperature(np.zeros(3), p, "binary", where="fold 4").tolist() == [1.0]
    assert "fold 4: calibration split holds no positive: temperature kept at 1" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="omnifuse.fuse.calibration"):
        assert fit_temperature(np.zeros((0, 2)), np.zeros((0, 2)), "multilabel").tolist() == [1.0, 1.0]
        assert fit_temperature(np.array([2, 2]), np.full((2, 3), 1 / 3), "multiclass").tolist() == [1.0]
    assert "no row" in caplog.text and "1 class(es)" in caplog.text
    # one multilabel label without a negative: that label only stays at 1
    rng = np.random.default_rng(4)
    z = rng.normal(0, 2, (4000, 2))
    y = (rng.random(z.shape) < _sigmoid(z)).astype(float)
    y[:, 1] = 1.0
    t = fit_temperature(y, _sigmoid(2 * z), "multilabel")
    assert t[1] == 1.0 and t[0] == pytest.approx(2.0, rel=0.1)


def test_a_separable_split_stops_at_the_lower_bound(caplog):
    y = np.array([0, 0, 1, 1], dtype=float)
    p = np.array([[0.2], [0.3], [0.7], [0.8]])
    with caplog.at_level(logging.WARNING, logger="omnifuse.fuse.calibration"):
        t = fit_temperature(y, p, "binary")
    assert t[0] == pytest.approx(T_BOUNDS[0], rel=1e-3) and "on a bound" in caplog.text


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="differ in shape"):
        fit_temperature(np.zeros((4, 2)), np.zeros((4, 1)), "multilabel")
    with pytest.raises(ValueError, match="class indices"):
        fit_temperature(np.array([0, 3]), np.full((2, 3), 1 / 3), "multiclass")
    with pytest.raises(ValueError, match="finite and positive"):
        apply_temperature(np.full((2, 1), 0.5), 0.0, "binary")
