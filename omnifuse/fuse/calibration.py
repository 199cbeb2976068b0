"""Post-hoc calibration of reported probabilities: temperature scaling (Guo et al., ICML 2017).

A temperature ``T`` > 0 divides the logits: ``sigmoid(z / T)`` per label (binary, multilabel; one ``T`` per
label) or ``softmax(z / T)`` (multiclass; one ``T``). ``T`` = 1 leaves probabilities unchanged. For binary and
multilabel tasks the ranks of every label, hence AUROC and AUPRC, never change; for multiclass tasks every
row's predicted class (the argmax) stays, but one class's probabilities across rows can reorder, so its
one-vs-rest AUROC can move slightly. This module works on probabilities (what runs store and ``predict`` returns):
the logits are recovered as ``log(p / (1 - p))`` per label, or ``log p`` up to a constant per row for softmax.

:func:`fit_temperature` chooses ``T`` on held-out rows (a fold's inner validation split, never its test rows)
by minimising their negative log-likelihood, the mean of ``-log sigmoid(+-z / T)`` per label or of
``-log softmax(z / T)_y`` (Guo et al., section 4.2). The likelihood is that of a logistic (softmax) model with
the single coefficient ``1 / T`` and no intercept, convex in ``1 / T``, so it has one minimum along ``log T``:
a bounded 1-D search on ``log T`` (Brent's method, ``scipy.optimize.minimize_scalar(method="bounded")``) over
:data:`T_BOUNDS` finds it. :func:`expected_calibration_error` (defined in :mod:`omnifuse.fuse.metrics`, the one
computation) measures what it corrects.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable

import numpy as np
from scipy.optimize import minimize_scalar

from omnifuse.fuse.metrics import expected_calibration_error

__all__ = ["EPS", "T_BOUNDS", "apply_temperature", "expected_calibration_error", "fit_temperature", "temperature_nll"]

log = logging.getLogger(__name__)

EPS = 1e-7
"""Probabilities are clipped to [EPS, 1 - EPS] before the logit, so 0 and 1 stay finite (logits within
+-16.1)."""

T_BOUNDS = (0.05, 20.0)
"""The temperatures :func:`fit_temperature` searches (``log T`` in [log 0.05, log 20]): from sharpening the
probabilities twentyfold (logits x 20) to flattening them twentyfold (logits / 20, a prediction of 0.999 then
becomes 0.59). An optimum on a bound is kept and logged (a validation split the model separates perfectly
pulls ``T`` to the lower bound)."""


def _logits(probs: np.ndarray, kind: str) -> np.ndarray:
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1.0 - EPS)
    return np.log(p) if kind == "multiclass" else np.log(p) - np.log1p(-p)


def apply_temperature(probs: np.ndarray, temperature: float | np.ndarray | list[float], kind: str) -> np.ndarray:
    """Probabilities ``probs`` [n, C] rescaled by ``temperature`` (a scalar, or [C] per label for binary and
    multilabel tasks) for task ``kind``; float32 [n, C]. ``T`` = 1 returns the probabilities unchanged (up to
    the EPS clip)."""
    t = np.asarray(temperature, dtype=np.float64)
    if not np.all(np.isfinite(t)) or np.any(t <= 0):
        raise ValueError(f"temperatures must be finite and positive, got {t.tolist()}")
    z = _logits(probs, kind) / t
    if kind == "multiclass":
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def _sigmoid_nll(z: np.ndarray, y: np.ndarray, t: float) -> float:
    """Mean binary cross-entropy of ``sigmoid(z / t)`` for labels ``y`` (both [n]), computed from the logits
    (``log(1 + exp(-a))`` without overflow)."""
    a = z / t
    return float(np.mean(y * np.logaddexp(0.0, -a) + (1.0 - y) * np.logaddexp(0.0, a)))


def _softmax_nll(z: np.ndarray, y: np.ndarray, t: float) -> float:
    """Mean categorical cross-entropy of ``softmax(z / t)`` [n, C] for class indices ``y`` [n]."""
    a = z / t
    m = a.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(a - m).sum(axis=1, keepdims=True)))[:, 0]
    return float(np.mean(lse - a[np.arange(len(y)), y]))


def temperature_nll(
    y: np.ndarray, probs: np.ndarray, temperature: float | np.ndarray | list[float], kind: str
) -> float:
    """The negative log-likelihood that :func:`fit_temperature` minimises, of ``probs`` [n, C] rescaled by
    ``temperature`` (as :func:`apply_temperature` takes it): binary and multilabel, the binary cross-entropy
    averaged over rows and labels; multiclass, the cross-entropy of the true class. NaN for no row."""
    y2, z = _labels_and_logits(y, probs, kind)
    if z.shape[0] == 0:
        return math.nan
    t = np.broadcast_to(np.asarray(temperature, dtype=np.float64).ravel(), (1 if kind == "multiclass" else z.shape[1],))
    if kind == "multiclass":
        return _softmax_nll(z, y2, float(t[0]))
    return float(np.mean([_sigmoid_nll(z[:, c], y2[:, c], float(t[c])) for c in range(z.shape[1])]))


def _labels_and_logits(y: np.ndarray, probs: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels (multiclass: int64 [n]; else float64 [n, C]) and logits [n, C] of ``probs``, shapes checked."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 1:
        p = p[:, None]
    if p.ndim != 2:
        raise ValueError(f"probabilities must be [n, C], got shape {p.shape}")
    z = _logits(p, kind)
    if kind == "multiclass":
        yc = np.asarray(y).astype(np.int64).ravel()
        if yc.shape[0] != p.shape[0]:
            raise ValueError(f"{yc.shape[0]} labels for {p.shape[0]} rows of probabilities")
        if yc.size and (yc.min() < 0 or yc.max() >= p.shape[1]):
            raise ValueError(f"class indices must be in [0, {p.shape[1]}), got {yc.min()}..{yc.max()}")
        return yc, z
    if kind not in ("binary", "multilabel"):
        raise ValueError(f"task kind must be binary, multilabel or multiclass, got {kind!r}")
    yb = np.asarray(y, dtype=np.float64)
    if yb.ndim == 1:
        yb = yb[:, None]
    if yb.shape != p.shape:
        raise ValueError(f"labels {yb.shape} and probabilities {p.shape} differ in shape")
    return yb, z


def _minimise(nll: Callable[[float], float]) -> tuple[float, bool]:
    """The temperature in :data:`T_BOUNDS` minimising ``nll(T)`` (bounded Brent search on ``log T``, tolerance
    1e-9 in ``log T``, so runs whose predictions differ by float rounding get the same temperature to that
    rounding), and whether it lies on a bound. ``T`` = 1 is kept unless the search does better, so the
    likelihood never gets worse."""
    lo, hi = math.log(T_BOUNDS[0]), math.log(T_BOUNDS[1])
    res = minimize_scalar(
        lambda u: nll(math.exp(u)), bounds=(lo, hi), method="bounded", options={"xatol": 1e-9, "maxiter": 200}
    )
    t = float(math.exp(res.x))
    if not nll(t) < nll(1.0):
        return 1.0, False
    return t, bool(res.x - lo < 1e-3 or hi - res.x < 1e-3)


def fit_temperature(y: np.ndarray, probs: np.ndarray, kind: str, *, where: str = "") -> np.ndarray:
    """Temperatures minimising the negative log-likelihood of labels ``y`` under ``probs`` [n, C] rescaled
    (:func:`temperature_nll`; see the module docstring): float64 [C] for binary (C = 1) and multilabel tasks,
    one per label fitted on that label alone; [1] for multiclass tasks. ``y``: binary [n] or [n, 1] and
    multilabel [n, C] in {0, 1}; multiclass [n] class indices.

    A label whose rows hold no positive or no negative (or no row at all), and a multiclass split with fewer
    than two classes, keeps ``T`` = 1 with a logged warning (its likelihood has no finite minimum: ``T`` would
    run to a bound). A temperature on a bound of :data:`T_BOUNDS` is logged. ``where`` (e.g. ``"fold 2"``)
    starts those messages. ``apply_temperature(probs, fit_temperature(y, probs, kind), kind)`` gives the
    calibrated probabilities."""
    y2, z = _labels_and_logits(y, probs, kind)
    at = f"{where}: " if where else ""
    if kind == "multiclass":
        if len(np.unique(y2)) < 2:
            log.warning(
                "%scalibration split holds %d row(s) of %d class(es): temperature kept at 1",
                at,
                len(y2),
                len(np.unique(y2)),
            )
            return np.ones(1)
        t, edge = _minimise(lambda t: _softmax_nll(z, y2, t))
        if edge:
            log.warning("%stemperature %.3g is on a bound of %s", at, t, T_BOUNDS)
        return np.array([t])
    out = np.ones(z.shape[1])
    for c in range(z.shape[1]):
        pos = float(y2[:, c].sum())
        if pos == 0 or pos == y2.shape[0]:
            what = "no row" if y2.shape[0] == 0 else "no positive" if pos == 0 else "no negative"
            label = "" if z.shape[1] == 1 else f" for label {c}"
            log.warning("%scalibration split holds %s%s: temperature kept at 1", at, what, label)
            continue
        out[c], edge = _minimise(functools.partial(_sigmoid_nll, z[:, c], y2[:, c]))
        if edge:
            log.warning("%stemperature %.3g of label %d is on a bound of %s", at, out[c], c, T_BOUNDS)
    return out
