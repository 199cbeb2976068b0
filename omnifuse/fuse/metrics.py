"""Evaluation metrics: AUROC, AUPRC (= average precision, the step-wise area of scikit-learn's
``average_precision_score``, not the trapezoidal area), macro and micro averages for multilabel, Brier
score, log loss, expected calibration error (ECE), bootstrap confidence intervals and reliability-curve data.

Inputs are numpy arrays: binary ``y`` [N] or [N, 1] in {0, 1} with scores [N] or [N, 1]; multilabel
``y`` [N, C] with per-label probabilities [N, C]; multiclass ``y`` [N] class indices with probabilities
[N, C] (macro one-vs-rest). A label column with a single class has no AUROC: it is left out of the macro
mean (and reported as NaN per label); a metric with no defined label at all is NaN, never a made-up value.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import rankdata


def binary_auroc_rows(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """AUROC of every row: labels ``y`` [B, n] in {0, 1}, scores ``s`` [B, n] -> [B] (the Mann-Whitney U
    statistic with tied ranks); NaN for a row with one class only. The one AUROC computation of omnifuse
    (bootstrap replicates are rows)."""
    y = np.asarray(y, dtype=np.float64)
    r = rankdata(np.asarray(s, dtype=np.float64), axis=1)
    n_pos = y.sum(1)
    n_neg = y.shape[1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        out = ((r * y).sum(1) - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), out, np.nan)


def binary_ap_rows(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Average precision of every row: ``y``, ``s`` [B, n] -> [B] (scikit-learn's step-wise definition, the
    sum over distinct thresholds of (R_i - R_{i-1}) P_i: each positive contributes the precision at the last
    row of its group of tied scores); NaN for a row without positives. The one AP computation of omnifuse."""
    y = np.asarray(y, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64)
    B, n = s.shape
    order = np.argsort(-s, axis=1, kind="stable")
    ss = np.take_along_axis(s, order, 1)
    ys = np.take_along_axis(y, order, 1)
    tp = np.cumsum(ys, axis=1)
    is_last = np.ones((B, n), dtype=bool)
    is_last[:, :-1] = ss[:, :-1] != ss[:, 1:]
    last = np.where(is_last, np.arange(n)[None, :], n)
    last = np.minimum.accumulate(last[:, ::-1], axis=1)[:, ::-1]  # index of the last row of each row's group
    prec = np.take_along_axis(tp, last, 1) / (last + 1.0)
    n_pos = ys.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (ys * prec).sum(1) / n_pos
    return np.where(n_pos > 0, out, np.nan)


def binary_resampled_rows(name: str, y: np.ndarray, s: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """AUROC (``name="auroc"``) or average precision (``"auprc"``) of every resample of one set of rows:
    labels ``y`` [n] in {0, 1}, scores ``s`` [n], row indices ``idx`` [B, m] (bootstrap replicates) -> [B].

    Equal, up to floating-point rounding, to :func:`binary_auroc_rows` / :func:`binary_ap_rows` of
    ``(y[idx], s[idx])`` (tested), without sorting every replicate: the rows are sorted once by score, each
    replicate is the count of every row in it ([B, n], a weight), and both metrics are sums over the groups of
    tied scores in that one order. AUROC, the Mann-Whitney U with tied ranks: each positive weight of a group
    counts the negative weight of the lower-scored groups plus half of its own group's. AP, scikit-learn's
    step-wise area: each group's positive weight times the precision at its end (cumulated positive over
    cumulated weight), over the positive weight. NaN where a replicate has one class only (AUROC) or no positive
    (AP), as the per-replicate functions give."""
    y = np.asarray(y, dtype=np.float64).ravel()
    s = np.asarray(s, dtype=np.float64).ravel()
    idx = np.asarray(idx, dtype=np.int64)
    n, b = s.shape[0], idx.shape[0]
    order = np.argsort(-s, kind="stable")  # highest score first
    pos_of = np.empty(n, dtype=np.int64)
    pos_of[order] = np.arange(n)
    flat = (np.arange(b, dtype=np.int64)[:, None] * n + pos_of[idx]).ravel()
    counts = np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)  # [B, n] in score order
    ss, ys = s[order], y[order]
    starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])  # the first row of each group of tied scores
    gpos = np.add.reduceat(counts * ys, starts, axis=1)  # [B, G]
    gall = np.add.reduceat(counts, starts, axis=1)
    w_pos = gpos.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        if name == "auroc":
            gneg = gall - gpos
            w_neg = gneg.sum(1)
            below = w_neg[:, None] - np.cumsum(gneg, axis=1)  # negative weight scored lower than the group
            out = (gpos * (below + 0.5 * gneg)).sum(1) / (w_pos * w_neg)
            return np.where((w_pos > 0) & (w_neg > 0), out, np.nan)
        if name == "auprc":
            cpos, call = np.cumsum(gpos, axis=1), np.cumsum(gall, axis=1)
            prec = np.where(call > 0, cpos / np.where(call > 0, call, 1.0), 0.0)
            out = (gpos * prec).sum(1) / w_pos
            return np.where(w_pos > 0, out, np.nan)
    raise ValueError(f"resampled metric must be 'auroc' or 'auprc', got {name!r}")


def _binary_auroc(y: np.ndarray, s: np.ndarray) -> float:
    """AUROC of scores ``s`` [N] for labels ``y`` [N]: :func:`binary_auroc_rows` of one row."""
    y = np.asarray(y).astype(np.float64).ravel()
    if y.size == 0:
        return float("nan")
    return float(binary_auroc_rows(y[None, :], np.asarray(s, dtype=np.float64).ravel()[None, :])[0])


def _binary_ap(y: np.ndarray, s: np.ndarray) -> float:
    """Average precision of scores ``s`` [N] for labels ``y`` [N]: :func:`binary_ap_rows` of one row."""
    y = np.asarray(y).astype(np.float64).ravel()
    if y.size == 0:
        return float("nan")
    return float(binary_ap_rows(y[None, :], np.asarray(s, dtype=np.float64).ravel()[None, :])[0])


def _as_2d(y: np.ndarray, p: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores as [N, C] indicator / score matrices (multiclass: one-hot of the class index)."""
    p = np.asarray(p, dtype=np.float64)
    if kind == "multiclass":
        y = np.asarray(y).astype(np.int64).ravel()
        if p.ndim != 2:
            raise ValueError(f"multiclass scores must be [N, C], got shape {p.shape}")
        return np.eye(p.shape[1], dtype=np.float64)[y], p
    y = np.asarray(y, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if p.ndim == 1:
        p = p[:, None]
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and scores {p.shape} differ in shape")
    return y, p


def _per_label(fn: Callable[[np.ndarray, np.ndarray], float], y: np.ndarray, p: np.ndarray) -> np.ndarray:
    return np.array([fn(y[:, c], p[:, c]) for c in range(y.shape[1])], dtype=np.float64)


def _macro(v: np.ndarray) -> float:
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")


def _averaged(
    fn: Callable[[np.ndarray, np.ndarray], float], y: np.ndarray, p: np.ndarray, kind: str, average: str
) -> float:
    y2, p2 = _as_2d(y, p, kind)
    if average == "micro":
        return fn(y2.ravel(), p2.ravel())
    if average != "macro":
        raise ValueError(f"average must be 'macro' or 'micro', got {average!r}")
    return _macro(_per_label(fn, y2, p2))


def auroc(y: np.ndarray, p: np.ndarray, kind: str = "binary", average: str = "macro") -> float:
    """Area under the ROC curve. ``average``: "macro" (mean over labels with both classes) or "micro"
    (all label cells pooled); binary tasks have one label, so both give the same number."""
    return _averaged(_binary_auroc, y, p, kind, average)


def auprc(y: np.ndarray, p: np.ndarray, kind: str = "binary", average: str = "macro") -> float:
    """Area under the precision-recall curve, computed as average precision (step-wise, no interpolation)."""
    return _averaged(_binary_ap, y, p, kind, average)


average_precision = auprc


def brier(y: np.ndarray, p: np.ndarray, kind: str = "binary") -> float:
    """Brier score: mean squared difference between probability and outcome, averaged over labels
    (multiclass: over the one-hot classes, i.e. the multiclass Brier score divided by C)."""
    y2, p2 = _as_2d(y, p, kind)
    return float(np.mean((p2 - y2) ** 2))


def log_loss(y: np.ndarray, p: np.ndarray, kind: str = "binary", eps: float = 1e-7) -> float:
    """Mean cross-entropy of probabilities ``p``: binary and multilabel, the binary cross-entropy averaged over
    rows and labels; multiclass, the categorical cross-entropy of the true class. Probabilities are clipped to
    [eps, 1 - eps]. NaN for no row."""
    y2, p2 = _as_2d(y, p, kind)
    if y2.shape[0] == 0:
        return float("nan")
    q = np.clip(p2, eps, 1 - eps)
    if kind == "multiclass":
        return float(-np.mean(np.log((q * y2).sum(1))))
    return float(-np.mean(y2 * np.log(q) + (1 - y2) * np.log(1 - q)))


def per_label_auroc(y: np.ndarray, p: np.ndarray, kind: str = "binary") -> list[float]:
    y2, p2 = _as_2d(y, p, kind)
    return _per_label(_binary_auroc, y2, p2).tolist()


def bootstrap_ci(
    metric: Callable[[np.ndarray, np.ndarray], float],
    y: np.ndarray,
    p: np.ndarray,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap (rows resampled with replacement) ``(lo, hi)`` of ``metric(y, p)`` at level
    1 - alpha. Resamples where the metric is undefined (NaN, e.g. one class only) are dropped; with none
    left the interval is (NaN, NaN)."""
    y = np.asarray(y)
    p = np.asarray(p)
    n = y.shape[0]
    if n == 0 or n_boot <= 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    vals = np.empty(n_boot, dtype=np.float64)
    for b in range(n_boot):
        idx = rng.integers(0, n, size=n)
        vals[b] = metric(y[idx], p[idx])
    vals = vals[~np.isnan(vals)]
    if vals.size == 0:
        return float("nan"), float("nan")
    return float(np.quantile(vals, alpha / 2)), float(np.quantile(vals, 1 - alpha / 2))


def probability_bins(p: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin index in ``[0, n_bins)`` of each probability ``p`` (any shape) over ``n_bins`` equal-width bins of
    [0, 1]: bin ``b`` is ``(b / n_bins, (b + 1) / n_bins]`` and the first also holds 0, so a value on an inner
    edge goes to the lower bin (scikit-learn's ``calibration_curve(strategy="uniform")``). The one binning
    behind :func:`reliability_curve` and :func:`expected_calibration_error`."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], np.asarray(p, dtype=np.float64))


def _binned_gap(outcome: np.ndarray, conf: np.ndarray, n_bins: int) -> float:
    """``sum_b (n_b / n) |mean(outcome_b) - mean(conf_b)|`` over the non-empty equal-width bins of ``conf`` [n];
    NaN for no row."""
    n = conf.shape[0]
    if n == 0:
        return float("nan")
    ids = probability_bins(conf, n_bins)
    s_out = np.bincount(ids, weights=outcome, minlength=n_bins)
    s_conf = np.bincount(ids, weights=conf, minlength=n_bins)
    return float(np.abs(s_out - s_conf).sum() / n)  # n_b |mean_out - mean_conf| = |sum_out - sum_conf|


def expected_calibration_error(y: np.ndarray, p: np.ndarray, kind: str = "binary", n_bins: int = 15) -> float:
    """Expected calibration error over ``n_bins`` equal-width bins of [0, 1] (:func:`probability_bins`):
    ``ECE = sum_b (n_b / n) |o_b - c_b|``, where per bin ``c_b`` is the mean confidence and ``o_b`` the observed
    frequency of the rows in it (Naeini et al., AAAI 2015; Guo et al., ICML 2017, eq. 3).

    - binary: confidence = the positive-class probability ``p`` [N] or [N, 1], outcome = the label;
    - multiclass: confidence = the top-label probability ``max_c p`` of ``p`` [N, C], outcome = whether the
      top label is the true class ``y`` [N] (ties: the first class);
    - multilabel: the binary ECE of every label ``p[:, c]`` against ``y[:, c]``, averaged over the C labels.

    NaN for no row. The one ECE computation of omnifuse (studies, ``omnifuse train``, figures)."""
    if kind == "multiclass":
        yy = np.asarray(y).astype(np.int64).ravel()
        pp = np.asarray(p, dtype=np.float64)
        if pp.ndim != 2:
            raise ValueError(f"multiclass scores must be [N, C], got shape {pp.shape}")
        if yy.shape[0] != pp.shape[0]:
            raise ValueError(f"labels {yy.shape} and scores {pp.shape} differ in rows")
        return _binned_gap((pp.argmax(1) == yy).astype(np.float64), pp.max(1, initial=0.0), n_bins)
    y2, p2 = _as_2d(y, p, kind)
    if y2.shape[0] == 0:
        return float("nan")
    return float(np.mean([_binned_gap(y2[:, c], p2[:, c], n_bins) for c in range(y2.shape[1])]))


def reliability_curve(y: np.ndarray, p: np.ndarray, n_bins: int = 10, kind: str = "binary") -> dict[str, list]:
    """Reliability-diagram data over equal-width probability bins (all label cells pooled): per non-empty
    bin the mean predicted probability, the observed fraction of positives and the count (the bins of
    :func:`probability_bins`, those of scikit-learn's ``calibration_curve(strategy="uniform")``)."""
    y2, p2 = _as_2d(y, p, kind)
    yy, pp = y2.ravel(), p2.ravel()
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ids = probability_bins(pp, n_bins)
    out: dict[str, list] = {"mean_predicted": [], "fraction_positive": [], "count": [], "bin_lower": []}
    for b in range(n_bins):
        sel = ids == b
        if sel.any():
            out["mean_predicted"].append(float(pp[sel].mean()))
            out["fraction_positive"].append(float(yy[sel].mean()))
            out["count"].append(int(sel.sum()))
            out["bin_lower"].append(float(edges[b]))
    return out


ECE_BINS = 15
"""Bins of the ECE every table reports (equal width)."""


def evaluate(
    y: np.ndarray, p: np.ndarray, kind: str, n_boot: int = 1000, seed: int = 0, reliability_bins: int = 10
) -> dict:
    """All metrics of one set of predictions (probabilities ``p``), with bootstrap CIs for AUROC and AUPRC.

    Keys: n, auroc, auroc_ci, auprc (average precision), auprc_ci, brier, ece (:data:`ECE_BINS` bins), and for
    multilabel also auroc_micro, auprc_micro and auroc_per_label; reliability (curve data)."""
    res: dict = {"n": int(np.asarray(y).shape[0])}
    res["auroc"] = auroc(y, p, kind)
    res["auroc_ci"] = list(bootstrap_ci(lambda a, b: auroc(a, b, kind), y, p, n_boot, seed=seed))
    res["auprc"] = auprc(y, p, kind)
    res["auprc_ci"] = list(bootstrap_ci(lambda a, b: auprc(a, b, kind), y, p, n_boot, seed=seed + 1))
    res["brier"] = brier(y, p, kind)
    res["ece"] = expected_calibration_error(y, p, kind, ECE_BINS)
    if kind == "multilabel":
        res["auroc_micro"] = auroc(y, p, kind, average="micro")
        res["auprc_micro"] = auprc(y, p, kind, average="micro")
        res["auroc_per_label"] = per_label_auroc(y, p, kind)
    if reliability_bins:
        res["reliability"] = reliability_curve(y, p, reliability_bins, kind)
    return res
