"""Statistics of a study from its stored predictions: fold-level metrics, mean ± sd, paired t-tests between
methods on the same folds, and bootstrap confidence intervals of the mean over folds.

- Paired t-test (``scipy.stats.ttest_rel``, two-sided): the pairs are the (repeat, fold) cells both methods
  have a defined metric for; ``t = mean(d) / (sd(d) / sqrt(n))`` with ``d`` the per-fold differences
  (method minus the other), ``n - 1`` degrees of freedom. Fewer than two pairs, or all differences equal
  (sd 0 up to rounding), give NaN: never a made-up p value.
- Bootstrap CI of the mean over folds: each replicate resamples the test rows of every fold with replacement
  (within the fold), recomputes each fold's metric and averages; the percentile interval of those means.
- Calibration: ``ece`` is the expected calibration error (:func:`omnifuse.fuse.metrics.expected_calibration_error`,
  :data:`omnifuse.fuse.metrics.ECE_BINS` equal-width bins). A cell whose predictions carry the probabilities
  before calibration (:attr:`FoldPred.p_raw`) also gets ``<metric>_uncalibrated`` for :data:`RAW_METRICS`
  (per fold, mean and sd, pooled); a cell without them (a run stored before calibration existed, a
  reference score) has no such key: no calibration information.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

from omnifuse.fuse import metrics

METRICS = ("auroc", "auprc", "brier", "ece")
RAW_METRICS = ("auroc", "brier", "ece")
"""The metrics also computed on the probabilities before calibration (AUROC: unchanged for binary and
multilabel tasks, it can move for multiclass ones; see :mod:`omnifuse.fuse.calibration`)."""


@dataclass
class PairedTest:
    """Result of a paired t-test: ``t``, two-sided ``p``, mean difference (a - b) and the number of pairs."""

    t: float
    p: float
    mean_diff: float
    n: int


def paired_ttest(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Paired t-test of ``a`` against ``b`` (same length, same folds in the same order); NaN pairs dropped."""
    x = np.asarray(a, dtype=np.float64)
    z = np.asarray(b, dtype=np.float64)
    if x.shape != z.shape:
        raise ValueError(f"paired samples differ in length: {x.shape} vs {z.shape}")
    ok = ~(np.isnan(x) | np.isnan(z))
    x, z = x[ok], z[ok]
    n = int(x.size)
    if n == 0:
        return PairedTest(math.nan, math.nan, math.nan, 0)
    d = x - z
    md = float(d.mean())
    if n < 2 or float(np.std(d, ddof=1)) <= 1e-12 * max(1.0, abs(md)):  # constant differences: no t
        return PairedTest(math.nan, math.nan, md, n)
    r = sps.ttest_rel(x, z)
    return PairedTest(float(r.statistic), float(r.pvalue), md, n)


def corrected_ttest(a: Sequence[float], b: Sequence[float], test_train_ratio: float) -> PairedTest:
    """The corrected resampled t-test of Nadeau and Bengio (Machine Learning 52, 2003, eq. for the "corrected
    resampled t"), for differences over J = repeats x folds resampled train/test splits whose training sets
    overlap: ``t = mean(d) / sqrt((1 / J + n_test / n_train) * var(d))`` with ``J - 1`` degrees of freedom,
    two-sided. The plain paired t-test ignores the overlap (``n_test / n_train`` = 0) and is optimistic.
    NaN pairs are dropped; fewer than two pairs or constant differences give NaN."""
    x = np.asarray(a, dtype=np.float64)
    z = np.asarray(b, dtype=np.float64)
    if x.shape != z.shape:
        raise ValueError(f"paired samples differ in length: {x.shape} vs {z.shape}")
    ok = ~(np.isnan(x) | np.isnan(z))
    d = x[ok] - z[ok]
    n = int(d.size)
    if n == 0:
        return PairedTest(math.nan, math.nan, math.nan, 0)
    md = float(d.mean())
    var = float(d.var(ddof=1)) if n > 1 else 0.0
    if n < 2 or math.sqrt(var) <= 1e-12 * max(1.0, abs(md)):
        return PairedTest(math.nan, math.nan, md, n)
    t = md / math.sqrt((1.0 / n + test_train_ratio) * var)
    return PairedTest(t, float(2 * sps.t.sf(abs(t), n - 1)), md, n)


def pooled_metrics(preds: Sequence[FoldPred], kind: str) -> dict[str, float]:
    """Every metric of :data:`METRICS` on the out-of-fold predictions pooled over the folds of each repeat,
    averaged over the repeats (``auroc_pooled``, ``auprc_pooled``, ``brier_pooled``, ``ece_pooled``): one score
    for every row, unlike the mean over folds, which hides folds on different probability scales. When every
    cell holds its probabilities before calibration, the same of those (``auroc_pooled_uncalibrated``...)."""
    by_repeat: dict[int, list[FoldPred]] = defaultdict(list)
    for fp in preds:
        by_repeat[fp.repeat].append(fp)
    raw = bool(preds) and all(fp.p_raw is not None for fp in preds)
    out: dict[str, float] = {}
    for m in METRICS:
        for suffix in ("", "_uncalibrated") if raw else ("",):
            vals = []
            for cells in by_repeat.values():
                y = np.concatenate([c.y for c in cells])
                p = np.concatenate([c.p if not suffix or c.p_raw is None else c.p_raw for c in cells])
                vals.append(metric_fn(m, kind)(y, p) if len(y) else math.nan)
            out[f"{m}_pooled{suffix}"] = mean_sd(vals)[0]
    return out


def mean_sd(v: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample sd with ddof=1, count) of the defined values; sd 0 for one value, NaN for none."""
    x = np.asarray([u for u in v if u is not None and not math.isnan(u)], dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan, 0
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else 0.0, int(x.size)


def metric_fn(name: str, kind: str) -> Callable[[np.ndarray, np.ndarray], float]:
    if name == "auroc":
        return lambda y, p: metrics.auroc(y, p, kind)
    if name == "auprc":
        return lambda y, p: metrics.auprc(y, p, kind)
    if name == "brier":
        return lambda y, p: metrics.brier(y, p, kind)
    if name == "ece":
        return lambda y, p: metrics.expected_calibration_error(y, p, kind, metrics.ECE_BINS)
    raise ValueError(f"unknown metric {name!r}; known: {METRICS}")


def _draws(folds: Sequence[tuple[np.ndarray, np.ndarray]], n_boot: int, seed: int) -> list[np.ndarray | None]:
    """Per fold the bootstrap row indices [n_boot, n_fold] (None for an empty fold), one seeded generator."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, y.shape[0], size=(n_boot, y.shape[0])) if y.shape[0] else None for y, _ in folds]


def _interval(per_fold: list[np.ndarray], alpha: float) -> tuple[float, float]:
    """Percentile interval of the replicate means over folds (NaN folds left out of a replicate's mean)."""
    if not per_fold:
        return math.nan, math.nan
    v = np.stack(per_fold, axis=1)  # [n_boot, folds]
    ok = ~np.isnan(v)
    cnt = ok.sum(1)
    means = np.where(ok, v, 0.0).sum(1)[cnt > 0] / cnt[cnt > 0]
    if means.size == 0:
        return math.nan, math.nan
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def fold_bootstrap_ci(
    metric: Callable[[np.ndarray, np.ndarray], float],
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    n_boot: int = 200,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over folds of ``metric(y, p)``; ``folds`` = [(y, p)] per fold.
    Replicates where a fold's metric is undefined average the folds that are defined; replicates with none
    are dropped; with none left the interval is (NaN, NaN)."""
    if n_boot <= 0 or not folds:
        return math.nan, math.nan
    per = []
    for (y, p), idx in zip(folds, _draws(folds, n_boot, seed), strict=True):
        if idx is not None:
            per.append(np.array([metric(y[i], p[i]) for i in idx], dtype=np.float64))
    return _interval(per, alpha)


def fast_fold_bootstrap_ci(
    name: str,
    kind: str,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    n_boot: int = 200,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """:func:`fold_bootstrap_ci` of ``auroc`` or ``auprc`` computed for all replicates at once (the same draws,
    the same interval up to rounding); binary tasks only, other kinds use the per-replicate loop."""
    if kind != "binary" or name not in ("auroc", "auprc"):
        return fold_bootstrap_ci(metric_fn(name, kind), folds, n_boot, alpha, seed)
    if n_boot <= 0 or not folds:
        return math.nan, math.nan
    per = []
    for (y, p), idx in zip(folds, _draws(folds, n_boot, seed), strict=True):
        if idx is not None:
            yy = np.asarray(y, dtype=np.float64).reshape(len(y), -1)[:, 0]
            pp = np.asarray(p, dtype=np.float64).reshape(len(p), -1)[:, 0]
            per.append(metrics.binary_resampled_rows(name, yy, pp, idx))  # one sort per fold, not per replicate
    return _interval(per, alpha)


# ---------------------------------------------------------------------------------- fold records
@dataclass
class FoldPred:
    """The predictions of one (method, repeat, fold, group, subset) cell: labels ``y`` and probabilities ``p``
    (calibrated when the run was); ``p_raw``: the same rows' probabilities before calibration (None: unknown)."""

    method: str
    repeat: int
    fold: int
    group: str
    subset: str
    y: np.ndarray
    p: np.ndarray
    rate: float = 0.0
    p_raw: np.ndarray | None = None


def fold_records(preds: Iterable[FoldPred], kind: str) -> list[dict[str, Any]]:
    """One record per cell: method, rate, repeat, fold, group, subset, n, auroc, auprc, brier, ece (NaN where
    the subset has no row or one class only) and, for a cell with ``p_raw``, ``<metric>_uncalibrated`` of
    :data:`RAW_METRICS`."""
    out = []
    for fp in preds:
        rec: dict[str, Any] = {
            "method": fp.method,
            "rate": fp.rate,
            "repeat": fp.repeat,
            "fold": fp.fold,
            "group": fp.group,
            "subset": fp.subset,
            "n": int(fp.y.shape[0]),
        }
        for m in METRICS:
            rec[m] = metric_fn(m, kind)(fp.y, fp.p) if fp.y.shape[0] else math.nan
        if fp.p_raw is not None:
            for m in RAW_METRICS:
                rec[f"{m}_uncalibrated"] = metric_fn(m, kind)(fp.y, fp.p_raw) if fp.y.shape[0] else math.nan
        out.append(rec)
    return out


def summarize(
    preds: Sequence[FoldPred],
    kind: str,
    *,
    against: Sequence[str] = (),
    n_boot: int = 200,
    seed: int = 0,
    ci_subsets: Sequence[str] | None = None,
    test_train_ratio: float = 0.0,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(summary rows, fold records) of a study's predictions.

    A summary row per (method, rate, group, subset): ``n_folds``, ``n_rows`` (summed over folds),
    ``<metric>_mean``/``_sd`` (:data:`METRICS`), ``<metric>_uncalibrated_mean``/``_sd`` (:data:`RAW_METRICS`,
    cells with probabilities before calibration), ``auroc_ci``/``auprc_ci`` (fold bootstrap, for subsets in
    ``ci_subsets``, all when None), ``<metric>_pooled`` (and ``_pooled_uncalibrated``: :func:`pooled_metrics`),
    and for each method ``r`` in ``against`` present in the cell, paired over (repeat, fold): ``pc_auroc_vs_<r>``
    and ``pc_auprc_vs_<r>`` (the corrected resampled t-test, :func:`corrected_ttest` with ``test_train_ratio``:
    n_test / n_train of the folds), ``p_auroc_vs_<r>``, ``t_auroc_vs_<r>`` and ``p_auprc_vs_<r>`` (the plain
    paired t-test, optimistic over overlapping training sets: labelled as such), ``diff_auroc_vs_<r>`` and
    ``n_pairs_vs_<r>``."""
    recs = fold_records(preds, kind)
    cells: dict[tuple, list[int]] = defaultdict(list)
    for i, r in enumerate(recs):
        cells[(r["method"], r["rate"], r["group"], r["subset"])].append(i)
    by_fold: dict[tuple, dict[tuple[int, int], dict[str, Any]]] = defaultdict(dict)
    for r in recs:
        by_fold[(r["method"], r["rate"], r["group"], r["subset"])][(r["repeat"], r["fold"])] = r
    rows = []
    for key, idx in cells.items():
        method, rate, group, subset = key
        cell = [recs[i] for i in idx]
        row: dict[str, Any] = {
            "method": method,
            "rate": rate,
            "group": group,
            "subset": subset,
            "n_folds": len(cell),
            "n_rows": int(sum(r["n"] for r in cell)),
        }
        for m in METRICS:
            mu, sd, k = mean_sd([r[m] for r in cell])
            row[f"{m}_mean"], row[f"{m}_sd"] = mu, sd
            if m == "auroc":
                row["n_folds_defined"] = k
        for m in RAW_METRICS:
            raw = [r[f"{m}_uncalibrated"] for r in cell if f"{m}_uncalibrated" in r]
            if raw:
                row[f"{m}_uncalibrated_mean"], row[f"{m}_uncalibrated_sd"], _ = mean_sd(raw)
        if ci_subsets is None or subset in ci_subsets:
            fp = [(preds[i].y, preds[i].p) for i in idx]
            row["auroc_ci"] = list(fast_fold_bootstrap_ci("auroc", kind, fp, n_boot, seed=seed))
            row["auprc_ci"] = list(fast_fold_bootstrap_ci("auprc", kind, fp, n_boot, seed=seed + 1))
        else:
            row["auroc_ci"] = row["auprc_ci"] = [math.nan, math.nan]
        row.update(pooled_metrics([preds[i] for i in idx], kind))
        mine = by_fold[key]
        for other in against:
            if other == method:
                continue
            theirs = by_fold.get((other, rate, group, subset))
            if not theirs:
                continue
            common = sorted(set(mine) & set(theirs))
            ta = paired_ttest([mine[c]["auroc"] for c in common], [theirs[c]["auroc"] for c in common])
            tp = paired_ttest([mine[c]["auprc"] for c in common], [theirs[c]["auprc"] for c in common])
            row[f"t_auroc_vs_{other}"] = ta.t
            row[f"p_auroc_vs_{other}"] = ta.p
            row[f"diff_auroc_vs_{other}"] = ta.mean_diff
            row[f"p_auprc_vs_{other}"] = tp.p
            row[f"n_pairs_vs_{other}"] = ta.n
            a_mine, a_theirs = [mine[c]["auroc"] for c in common], [theirs[c]["auroc"] for c in common]
            p_mine, p_theirs = [mine[c]["auprc"] for c in common], [theirs[c]["auprc"] for c in common]
            row[f"pc_auroc_vs_{other}"] = corrected_ttest(a_mine, a_theirs, test_train_ratio).p
            row[f"pc_auprc_vs_{other}"] = corrected_ttest(p_mine, p_theirs, test_train_ratio).p
        rows.append(row)
    return rows, recs


def pick(rows: Sequence[dict[str, Any]], **where: Any) -> list[dict[str, Any]]:
    """The rows whose fields equal ``where``."""
    return [r for r in rows if all(r.get(k) == v for k, v in where.items())]


def pick_one(rows: Sequence[dict[str, Any]], **where: Any) -> dict[str, Any] | None:
    """The first row whose fields equal ``where``, or None."""
    found = pick(rows, **where)
    return found[0] if found else None
