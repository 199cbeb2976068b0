"""PNG figures of the studies, drawn with matplotlib's object API on the Agg canvas (no pyplot, no display).

- :func:`reliability_figure`: reliability diagram (mean predicted probability against observed frequency,
  equal-width bins, pooled out-of-fold predictions) with the Brier score and ECE per curve, before and after
  calibration when the probabilities before it are given;
- :func:`group_bars`: mean ± sd of a metric per group (modality combination, modality) and method;
- :func:`sweep_figure`: a metric against the simulated missing rate, mean ± sd band over folds (figures 4-6);
- :func:`imputation_curve`: cosine similarity of imputed to true embeddings and validation AUROC across
  epochs (figure 7);
- :func:`tsne_figure`: t-SNE map of real and imputed embeddings per modality (figure 8);
- :func:`tla_figure`: OmniFuse's TLA trace: which combination was lazy after each epoch, its distance and the
  L_TLA loss term per epoch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from omnifuse.fuse import metrics


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")  # keeps an outside legend and a long title in the image
    return path


def _scores(y: np.ndarray, p: np.ndarray, kind: str) -> tuple[float, float]:
    """(Brier score, ECE) of one curve's predictions."""
    return metrics.brier(y, p, kind), metrics.expected_calibration_error(y, p, kind, metrics.ECE_BINS)


def _curve(ax, y: np.ndarray, p: np.ndarray, kind: str, n_bins: int, color: str, label: str | None, **kw: Any):
    """One reliability curve on ``ax``: the line, and markers whose area follows the bin's row count."""
    rc = metrics.reliability_curve(y, p, n_bins=n_bins, kind=kind)
    cnt = np.asarray(rc["count"], dtype=float)
    ax.plot(rc["mean_predicted"], rc["fraction_positive"], marker="o", ms=3, lw=1.2, color=color, label=label, **kw)
    ax.scatter(
        rc["mean_predicted"],
        rc["fraction_positive"],
        s=8 + 80 * cnt / max(cnt.max(initial=0.0), 1),
        alpha=0.35 * kw.get("alpha", 1.0),
        color=color,
    )


def _frame(ax) -> None:
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)


def reliability_figure(
    path: Path,
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    kind: str = "binary",
    n_bins: int = 10,
    title: str = "Reliability",
    before: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> Path:
    """``curves``: label -> (labels, probabilities) pooled over folds (after calibration, as reported);
    ``before``: the same labels' probabilities before calibration, where known (a label absent from it is drawn
    after calibration only). Marker area follows the bin's row count; each curve's Brier score and ECE
    (:func:`omnifuse.fuse.metrics.expected_calibration_error`) are given.

    Without ``before``, up to four curves share one panel. With it, up to four curves get two panels, before
    (left) and after calibration (right), in the same colours. More than four curves get one small panel each
    (same axes), the curve after calibration solid and before it dashed, so every curve stays readable; there a
    label whose ``before`` is the very pair it has in ``curves`` (a score that is never scaled, such as a
    reference score) is drawn once."""
    items = [(k, v) for k, v in curves.items() if len(v[0])]
    prior = {k: v for k, v in (before or {}).items() if k in curves and len(v[0])}
    k = len(items)
    if k > 4:
        cols = min(4, k)
        rows = math.ceil(k / cols)
        fig = _figure(3.2 * cols, 3.1 * rows)
        for i, (label, (y, p)) in enumerate(items):
            ax = fig.add_subplot(rows, cols, i + 1)
            _frame(ax)
            color = f"C{i % 10}"
            b, e = _scores(y, p, kind)
            text = f"Brier {b:.3f}, ECE {e:.3f}"
            scaled = label in prior and prior[label] is not curves[label]
            if scaled:
                yb, pb = prior[label]
                _curve(ax, yb, pb, kind, n_bins, color, "before", ls="--", alpha=0.6)
                bb, eb = _scores(yb, pb, kind)
                text = f"after: Brier {b:.3f}, ECE {e:.3f}\nbefore: Brier {bb:.3f}, ECE {eb:.3f}"
            _curve(ax, y, p, kind, n_bins, color, "after" if scaled else None)
            ax.set_title(label, fontsize=8)
            ax.text(0.03, 0.97, text, fontsize=6.5, transform=ax.transAxes, va="top")
            ax.tick_params(labelsize=7)
            if scaled:
                ax.legend(fontsize=6, loc="lower right")
        what = " (solid: after calibration, dashed: before)" if prior else ""
        fig.suptitle(f"{title}: mean predicted probability (x) vs observed fraction of positives (y){what}", fontsize=9)
        return _save(fig, path)
    panels = [("before calibration", prior), ("after calibration", dict(items))] if prior else [("", dict(items))]
    fig = _figure(5.2 * len(panels), 5.0)
    colors = {label: f"C{j}" for j, (label, _) in enumerate(items)}
    for i, (name, group) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        _frame(ax)
        for label, (y, p) in group.items():
            b, e = _scores(y, p, kind)
            _curve(ax, y, p, kind, n_bins, colors[label], f"{label} (Brier {b:.3f}, ECE {e:.3f}, n={len(y)})")
        ax.set_xlabel("mean predicted probability")
        ax.set_ylabel("observed fraction of positives")
        ax.set_title(f"{title}: {name}" if name else title, fontsize=10 if name else None)
        ax.legend(fontsize=7, loc="upper left")
    return _save(fig, path)


def group_bars(
    path: Path,
    rows: Sequence[dict[str, Any]],
    methods: Sequence[str],
    groups: Sequence[str],
    metric: str = "auroc",
    title: str = "",
    ylabel: str | None = None,
    hlines: dict[str, float] | None = None,
) -> Path:
    """Grouped bars: for each group (x) one bar per method, height ``<metric>_mean``, error bar ``_sd``.
    ``rows`` need ``method``, ``group``, ``<metric>_mean`` and ``<metric>_sd``. ``hlines``: label -> y."""
    fig = _figure(min(14.0, max(7.5, 0.22 * len(groups) * max(1, len(methods)) + 2)), 4.6)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(groups))
    lo = 1.0
    for i, m in enumerate(methods):
        h, e = [], []
        for g in groups:
            r = next((r for r in rows if r["method"] == m and r["group"] == g), None)
            v = math.nan if r is None else r.get(f"{metric}_mean", math.nan)
            h.append(v)
            e.append(
                0.0
                if r is None or r.get(f"{metric}_sd") is None or math.isnan(r[f"{metric}_sd"])
                else r[f"{metric}_sd"]
            )
            if not math.isnan(v):
                lo = min(lo, v - e[-1])
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, h, width, yerr=e, capsize=2, label=m)
    for j, (lab, yv) in enumerate((hlines or {}).items()):
        ax.axhline(yv, ls="--", lw=1, color=f"C{len(methods) + j}", label=lab)
        lo = min(lo, yv)
    ax.set_xticks(x)
    ax.set_xticklabels([g if len(g) <= 28 else g[:26] + "…" for g in groups], rotation=20, ha="right", fontsize=8)
    if metric in ("auroc", "auprc"):
        ax.set_ylim(max(0.0, lo - 0.05), 1.0)
    ax.set_ylabel(ylabel or metric.upper())
    ax.set_title(title, fontsize=10)
    ax.legend(
        fontsize=7, ncol=2 if len(methods) + len(hlines or {}) > 5 else 1, loc="lower left", bbox_to_anchor=(1.01, 0.0)
    )
    return _save(fig, path)


def sweep_figure(
    path: Path,
    rows: Sequence[dict[str, Any]],
    methods: Sequence[str],
    metric: str = "auroc",
    group: str = "overall",
    subset: str = "as_is",
    title: str = "",
) -> Path:
    """``metric`` against the missing rate, one line per method with a ± sd band."""
    fig = _figure(6.0, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    for m in methods:
        pts = sorted(
            (r["rate"], r[f"{metric}_mean"], r[f"{metric}_sd"])
            for r in rows
            if r["method"] == m and r["group"] == group and r["subset"] == subset
        )
        if not pts:
            continue
        xs, mu, sd = (np.array(v, dtype=float) for v in zip(*pts, strict=True))
        sd = np.nan_to_num(sd)
        ax.plot(xs, mu, marker="o", label=m)
        ax.fill_between(xs, mu - sd, mu + sd, alpha=0.2)
    ax.set_xlabel("simulated missing rate")
    ax.set_ylabel(metric.upper())
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def imputation_curve(
    path: Path,
    records: Sequence[dict[str, Any]],
    modalities: Sequence[str],
    val_auroc: Sequence[float] | None = None,
    title: str = "",
) -> Path:
    """``records``: per epoch ``{"epoch", "cos": {m: mean cosine}, "cos_miss": {m: ...}}``; solid lines the
    CRA imputation, dotted the no-imputation placeholder v^miss; validation AUROC on the right axis."""
    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    ep = [r["epoch"] for r in records]
    for i, m in enumerate(modalities):
        ax.plot(
            ep, [r["cos"].get(m, math.nan) for r in records], color=f"C{i}", marker="o", ms=3, label=f"{m}: imputed"
        )
        ax.plot(
            ep, [r["cos_miss"].get(m, math.nan) for r in records], color=f"C{i}", ls=":", lw=1, label=f"{m}: v^miss"
        )
    ax.set_xlabel("epoch (-1: before training)")
    ax.set_ylabel("cosine similarity to the true embedding")
    ax.grid(alpha=0.3)
    if val_auroc is not None and len(val_auroc):
        ax2 = ax.twinx()
        ax2.plot(range(len(val_auroc)), val_auroc, color="black", lw=1.5, ls="--", label="validation AUROC")
        ax2.set_ylabel("validation AUROC")
        ax2.legend(fontsize=7, loc="lower right")
    ax.legend(fontsize=6, loc="upper left", ncol=2)
    ax.set_title(title)
    return _save(fig, path)


def tsne_figure(path: Path, maps: dict[str, tuple[np.ndarray, np.ndarray]], title: str = "") -> Path:
    """``maps``: modality -> (2-D points of the real embeddings [n, 2], of the imputed ones [n, 2])."""
    k = max(1, len(maps))
    cols = min(3, k)
    rows = math.ceil(k / cols)
    fig = _figure(4.0 * cols, 3.7 * rows)
    for i, (m, (real, imp)) in enumerate(maps.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.scatter(real[:, 0], real[:, 1], s=6, alpha=0.6, label="real", color="C0")
        ax.scatter(imp[:, 0], imp[:, 1], s=6, alpha=0.6, label="imputed", color="C3")
        ax.set_title(f"{m} (n={len(real)})", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if i == 0:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def tla_figure(path: Path, traces: dict[str, list[dict[str, Any]]], title: str = "", max_rows: int = 12) -> Path:
    """OmniFuse's TLA trace (eq. 15-17), one row of two panels per method of ``traces`` (the first six):
    ``{label: [run, ...]}``,
    a run being ``{"lazy": [per-epoch record of the lazy combination: {"epoch", "lazy", "distances": {combination:
    {"distance", "n"}}}], "history": [per-epoch training record with "loss_tla"], "best_epoch": int}``.

    Left: for each combination that was ever lazy (the ``max_rows`` most frequent), the share of runs in which it
    was the lazy one after each epoch (a heat map; white: none). Right: the distance (mean cross-entropy) of the
    lazy combination per epoch, mean ± sd over the runs, and on the right axis the L_TLA term of the training
    loss (eq. 17), mean over the runs; dotted vertical lines: the runs' selected epochs."""
    from matplotlib.ticker import MaxNLocator

    labels = list(traces)[:6]
    fig = _figure(11.0, 3.4 * max(1, len(labels)))
    for i, label in enumerate(labels):
        runs = traces[label]
        n_ep = max((int(r.get("epoch", 0)) + 1 for run in runs for r in run["lazy"]), default=1)
        counts: dict[str, int] = {}
        for run in runs:
            for r in run["lazy"]:
                name = r.get("lazy") or "(none)"
                counts[name] = counts.get(name, 0) + 1
        names = [k for k, _ in sorted(counts.items(), key=lambda kv: -kv[1])][:max_rows]
        grid = np.zeros((len(names), n_ep))
        dist = np.full((len(runs), n_ep), np.nan)
        tla = np.full((len(runs), n_ep), np.nan)
        for j, run in enumerate(runs):
            for r in run["lazy"]:
                e, name = int(r.get("epoch", 0)), r.get("lazy") or "(none)"
                if name in names:
                    grid[names.index(name), e] += 1.0 / len(runs)
                d = (r.get("distances") or {}).get(name, {}).get("distance")
                if d is not None:
                    dist[j, e] = float(d)
            for h in run.get("history") or []:
                e = int(h.get("epoch", -1))
                if 0 <= e < n_ep and h.get("loss_tla") is not None:
                    tla[j, e] = float(h["loss_tla"])
        ax = fig.add_subplot(len(labels), 2, 2 * i + 1)
        im = ax.imshow(grid, aspect="auto", cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels([n if len(n) <= 34 else n[:32] + "…" for n in names], fontsize=6)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{label}: lazy combination after each epoch ({len(runs)} runs)", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        cb = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
        cb.set_label("share of runs", fontsize=7)
        cb.ax.tick_params(labelsize=6)
        ax2 = fig.add_subplot(len(labels), 2, 2 * i + 2)
        ep = np.arange(n_ep)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an epoch no run reached: NaN, not drawn
            mu, sd = np.nanmean(dist, 0), np.nanstd(dist, 0)
            tl = np.nanmean(tla, 0)
        ax2.plot(ep, mu, color="C0", marker="o", ms=2.5, lw=1.2, label="lazy distance (mean CE)")
        ax2.fill_between(ep, mu - sd, mu + sd, color="C0", alpha=0.2)
        for run in runs:
            b = run.get("best_epoch")
            if isinstance(b, int) and b >= 0:
                ax2.axvline(b, color="grey", lw=0.6, ls=":")
        ax2.set_xlabel("epoch", fontsize=8)
        ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax2.set_ylabel("distance of the lazy combination", fontsize=7)
        ax2.tick_params(labelsize=7)
        ax2.grid(alpha=0.3)
        if np.isfinite(tl).any():
            ax3 = ax2.twinx()
            ax3.plot(ep, tl, color="C3", lw=1.2, ls="--", label="L_TLA (training loss term)")
            ax3.set_ylabel("L_TLA", fontsize=7)
            ax3.tick_params(labelsize=7)
            ax3.legend(fontsize=6, loc="upper right")
        ax2.legend(fontsize=6, loc="upper left")
        ax2.set_title("distance of the lazy combination and L_TLA (dotted: selected epochs)", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)
