"""Per-stay modality attribution: Shapley values of each modality for a stay's fused risk.

For one stay holding the modalities ``P`` (``m = |P|``), the value of a subset ``S`` of ``P`` is the model's
fused probability with the modalities outside ``S`` masked as missing, exactly as the per-combination
evaluation masks them (:func:`omnifuse.fuse.fold.run_fold`: zero inputs, the mask off, imputed by methods
that impute). The Shapley value of a present modality ``i`` (Shapley 1953) is

    phi_i = sum_{S subset of P \\ {i}} |S|! (m - |S| - 1)! / m! * (v(S + {i}) - v(S))

and the values add up to the stay's own prediction minus the empty set's (efficiency):
``sum_i phi_i = v(P) - v({})``. A modality the stay lacks gets NaN (it has no value to attribute, not 0).

- ``v({})``, the empty set, is the model's prediction with every modality masked. Every registered method
  (fusion networks and reference learners alike) predicts a finite, row-independent probability from the
  all-masked input (checked for each of them; the fusion networks never train on it, since training drops
  keep at least one modality, so it is the network's prior, not the training prevalence). It is returned
  as ``baseline``.
- What is attributed: the positive class's probability (binary: ``values`` [n, M]); each label's
  (multilabel: [n, M, C]); for multiclass tasks the probability of one class per stay (``target``, by
  default the class the stay's own prediction ``v(P)`` ranks first; [n, M]).
- ``temperature`` (a fold's calibration, :func:`omnifuse.fuse.calibration.apply_temperature`) rescales
  every ``v(S)`` first: the calibrated risk is attributed.
- Exact for ``m <= max_exact`` (default :data:`MAX_EXACT` = 8): ``2^m`` predictions per stay, the empty set
  included. Beyond it, sampled permutations (Castro et al. 2009): ``n_permutations`` random orders of the
  stay's modalities, half of them the reverses of the other half (antithetic pairs), each giving every
  modality its marginal contribution ``v(prefix + {i}) - v(prefix)``; the estimate keeps efficiency exactly
  (each order telescopes) and ``n_permutations`` is stated per stay in the output (0 = exact).
- Efficient: stays are grouped by missingness pattern and every subset of the pattern is predicted for the
  whole group in batches of ``batch_size`` rows (distinct subsets of the sampled orders only once).

:func:`shapley_summary` and :func:`shapley_figure` summarise the values of a study: the mean absolute value
per modality overall and per missingness pattern, as a table and as bar charts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omnifuse.fuse.base import FusionMethod
from omnifuse.fuse.calibration import apply_temperature
from omnifuse.fuse.data import FuseData, Normalizer
from omnifuse.fuse.trainer import check_finite, predict_probs

MAX_EXACT = 8
"""Stays holding at most this many modalities get exact Shapley values (2^8 = 256 predictions each); beyond
it, sampled permutations."""

N_PERMUTATIONS = 64
"""Sampled permutations per stay beyond :data:`MAX_EXACT` modalities (32 antithetic pairs)."""

SUBSET_ROWS = 65_536
"""At most this many (stay, subset) predictions are held at once: a group of stays is processed in slices of
``SUBSET_ROWS // 2^m`` stays."""


@dataclass
class ModalityShapley:
    """Shapley values of ``n`` stays' modalities (see the module docstring).

    ``values``: [n, M] (binary: the positive class; multiclass: class ``target``) or [n, M, C] (multilabel),
    NaN where the stay lacks the modality; ``baseline``: v({}) and ``full``: v(P), [n] or [n, C];
    ``present`` [n, M] bool; ``n_permutations`` [n] int (0: exact; else the sampled permutations);
    ``target`` [n] int64 (multiclass: the class attributed) or None. Per stay and output,
    ``nansum(values) = full - baseline``."""

    modalities: list[str]
    values: np.ndarray
    baseline: np.ndarray
    full: np.ndarray
    present: np.ndarray
    n_permutations: np.ndarray
    target: np.ndarray | None = None


def exact_weights(m: int) -> np.ndarray:
    """[2^m, m] float64: ``phi = weights.T @ v`` for ``v`` [2^m] the values of the subsets in bitmask order
    (bit ``j`` of subset ``s`` set: modality ``j`` in it); entry ``(s, i)`` is ``+w(|s| - 1)`` when ``i`` is in
    ``s`` and ``-w(|s|)`` when not, ``w(k) = k! (m - k - 1)! / m!``."""
    s = np.arange(2**m)
    bits = ((s[:, None] >> np.arange(m)[None, :]) & 1).astype(bool)  # [2^m, m]
    size = bits.sum(1)
    fm = math.factorial(m)

    def w(k: np.ndarray) -> np.ndarray:
        return np.array([math.factorial(int(a)) * math.factorial(m - int(a) - 1) / fm for a in k])

    plus = w(np.clip(size - 1, 0, max(m - 1, 0))) if m else np.zeros(0)
    minus = w(np.clip(size, 0, max(m - 1, 0))) if m else np.zeros(0)
    return np.where(bits, plus[:, None], -minus[:, None]) if m else np.zeros((1, 0))


def _permutation_subsets(m: int, n_permutations: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n_permutations`` orders of ``m`` modalities (antithetic pairs: an order then its reverse) as
    (orders [P, m], prefixes [P, m + 1, m] bool: the first ``t`` modalities of each order)."""
    half = [rng.permutation(m) for _ in range((n_permutations + 1) // 2)]
    orders = np.array([p for pair in half for p in (pair, pair[::-1])][:n_permutations], dtype=np.int64)
    pos = np.empty_like(orders)
    pos[np.arange(len(orders))[:, None], orders] = np.arange(m)[None, :]
    prefixes = pos[:, None, :] < np.arange(m + 1)[None, :, None]  # [P, m+1, m]
    return orders, prefixes


class _Values:
    """v(S) of the rows of a model: fused probabilities [k, C] under presence masks [k, M], calibrated."""

    def __init__(
        self,
        model: Any,
        data: FuseData,
        normalizer: Normalizer,
        batch_size: int,
        temperature: float | Sequence[float] | np.ndarray | None,
    ) -> None:
        self.model, self.data, self.norm, self.batch_size = model, data, normalizer, batch_size
        self.temperature = None if temperature is None else np.asarray(temperature, dtype=np.float64)

    def __call__(self, rows: np.ndarray, mask: np.ndarray) -> np.ndarray:
        d = self.data
        if isinstance(self.model, FusionMethod):
            m = torch.as_tensor(mask, dtype=torch.bool, device=d.device)
            p = predict_probs(self.model, d, rows, self.norm, self.batch_size, m)
        else:  # a reference learner: predict_proba(data, rows, norm, mask)
            parts = [
                self.model.predict_proba(
                    d,
                    rows[s : s + self.batch_size],
                    self.norm,
                    torch.as_tensor(mask[s : s + self.batch_size], dtype=torch.bool, device=d.device),
                )
                for s in range(0, len(rows), self.batch_size)
            ]
            p = np.concatenate(parts) if parts else np.zeros((0, d.num_outputs), np.float32)
            p = check_finite(np.asarray(p, dtype=np.float32), d.stay_id[rows])
        if self.temperature is not None and not np.all(self.temperature == 1.0):
            p = apply_temperature(p, self.temperature, d.task_kind)
        return np.asarray(p, dtype=np.float64)


def modality_shapley(
    model: Any,
    data: FuseData,
    rows: np.ndarray | Sequence[int],
    normalizer: Normalizer,
    batch_size: int = 1024,
    *,
    temperature: float | Sequence[float] | np.ndarray | None = None,
    target: np.ndarray | None = None,
    max_exact: int = MAX_EXACT,
    n_permutations: int = N_PERMUTATIONS,
    seed: int = 0,
) -> ModalityShapley:
    """Shapley values of each modality for the fused probability of ``rows`` (positions in ``data``).

    ``model``: a fusion network (:class:`omnifuse.fuse.base.FusionMethod`, eval mode, no gradient) or a
    reference learner (``predict_proba(data, rows, norm, mask)``); ``normalizer``: the model's.
    ``temperature``: the model's calibration (None or 1: none). ``target`` [n] int: the class attributed per
    stay for multiclass tasks (default: the class the stay's own prediction ranks first). Stays with more
    than ``max_exact`` modalities get ``n_permutations`` sampled permutations (seeded by ``seed`` and the
    stay's pattern). The stays' presence is ``data.mask``. See the module docstring for the definition;
    returns :class:`ModalityShapley`."""
    rows = np.asarray(rows, dtype=np.int64)
    n, M, kind = len(rows), len(data.modalities), data.task_kind
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be at least 1, got {n_permutations}")
    value = _Values(model, data, normalizer, batch_size, temperature)
    present = data.mask[torch.as_tensor(rows, device=data.device)].cpu().numpy().astype(bool)
    C = 1 if kind == "multiclass" else data.num_outputs
    values = np.full((n, M, C), np.nan)
    baseline, full = np.zeros((n, C)), np.zeros((n, C))
    n_perm = np.zeros(n, dtype=np.int64)
    tgt = np.full(n, -1, dtype=np.int64)
    if target is not None:
        if kind != "multiclass":
            raise ValueError("target (a class per stay) is for multiclass tasks only")
        target = np.asarray(target, dtype=np.int64)
        if target.shape != (n,):
            raise ValueError(f"target must hold one class per row ({n}), got shape {target.shape}")
    patterns, inverse = np.unique(present, axis=0, return_inverse=True) if n else (np.zeros((0, M), bool), [])
    inverse = np.asarray(inverse).reshape(-1)
    for g, pattern in enumerate(patterns):
        idx = np.flatnonzero(inverse == g)
        cols = np.flatnonzero(pattern)
        m = len(cols)
        exact = m <= max_exact
        if exact:
            local = ((np.arange(2**m)[:, None] >> np.arange(m)[None, :]) & 1).astype(bool)  # [S, m]
            weights = exact_weights(m)
            empty, whole = 0, 2**m - 1
        else:
            key = int("".join("1" if b else "0" for b in pattern), 2)
            orders, prefixes = _permutation_subsets(m, n_permutations, np.random.default_rng([seed, key, M]))
            local, inv = np.unique(prefixes.reshape(-1, m), axis=0, return_inverse=True)
            pre = np.asarray(inv).reshape(len(orders), m + 1)
            empty, whole = int(pre[0, 0]), int(pre[0, m])
        S = len(local)
        masks = np.zeros((S, M), dtype=bool)
        masks[:, cols] = local
        step = max(1, SUBSET_ROWS // S)
        for a in range(0, len(idx), step):
            part = idx[a : a + step]
            k = len(part)
            v = value(np.repeat(rows[part], S), np.tile(masks, (k, 1))).reshape(k, S, -1)  # [k, S, C_out]
            if kind == "multiclass":
                t = target[part] if target is not None else v[:, whole].argmax(1)
                tgt[part] = t
                v = np.take_along_axis(v, t[:, None, None], axis=2)  # [k, S, 1]
            if exact:
                phi = np.einsum("ksc,sm->kmc", v, weights)
            else:
                diff = v[:, pre[:, 1:]] - v[:, pre[:, :-1]]  # [k, P, m, C]: step t adds orders[p, t]
                pos = np.argsort(orders, axis=1)  # [P, m]: where modality j comes in each order
                phi = np.take_along_axis(diff, pos[None, :, :, None], axis=2).mean(1)  # [k, m, C]
                n_perm[part] = len(orders)
            values[part[:, None], cols[None, :]] = phi
            baseline[part], full[part] = v[:, empty], v[:, whole]
    if kind == "multilabel":
        return ModalityShapley(list(data.modalities), values, baseline, full, present, n_perm, None)
    return ModalityShapley(
        list(data.modalities),
        values[..., 0],
        baseline[:, 0],
        full[:, 0],
        present,
        n_perm,
        tgt if kind == "multiclass" else None,
    )


# ------------------------------------------------------------------------------------------ summaries
def pattern_name(present: Sequence[bool] | np.ndarray, modalities: Sequence[str]) -> str:
    """``img+ehr`` for a presence row ``[True, False, True]`` of ``(img, rep, ehr)``; ``(none)`` when empty."""
    return "+".join(n for n, k in zip(modalities, present, strict=True) if k) or "(none)"


def shapley_summary(values: np.ndarray, present: np.ndarray, modalities: Sequence[str]) -> list[dict[str, Any]]:
    """Mean absolute Shapley value per modality, over all stays and per missingness pattern.

    ``values`` [n, M] or [n, M, C] (multilabel: the absolute values are averaged over the labels first),
    NaN where absent; ``present`` [n, M] bool. Returns rows ``{"pattern", "n", <modality>: mean |phi|}``:
    first ``"all stays"`` (each modality's mean over the stays holding it, its count in ``n_<modality>``),
    then one row per pattern, most modalities first (a modality the pattern lacks: NaN)."""
    values = np.asarray(values, dtype=np.float64)
    present = np.asarray(present, dtype=bool)
    if values.ndim == 3:
        values = np.abs(values).mean(axis=2)
    a = np.abs(values)
    if values.shape != present.shape or present.shape[1] != len(modalities):
        raise ValueError(
            f"values {values.shape} and presence {present.shape} do not match {len(modalities)} modalities"
        )
    overall: dict[str, Any] = {"pattern": "all stays", "n": int(len(a))}
    for j, name in enumerate(modalities):
        held = present[:, j]
        overall[name] = float(a[held, j].mean()) if held.any() else math.nan
        overall[f"n_{name}"] = int(held.sum())
    out = [overall]
    pats = sorted({tuple(bool(b) for b in p) for p in present.tolist()}, key=lambda p: (-sum(p), [not b for b in p]))
    for p in pats:
        sel = (present == np.array(p)).all(1)
        row: dict[str, Any] = {"pattern": pattern_name(p, modalities), "n": int(sel.sum())}
        for j, name in enumerate(modalities):
            row[name] = float(a[sel, j].mean()) if p[j] else math.nan
            row[f"n_{name}"] = int(sel.sum()) if p[j] else 0
        out.append(row)
    return out


def shapley_figure(
    path: str | Path, summary: Sequence[dict[str, Any]], modalities: Sequence[str], title: str = ""
) -> Path:
    """PNG of :func:`shapley_summary`'s rows: one bar chart per row (all stays, then each pattern) of the
    mean |Shapley value| per modality it holds, on a shared axis (matplotlib's Agg canvas, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = list(summary)
    if not rows:
        raise ValueError("no summary rows to draw")
    ncols = min(3, len(rows))
    nrows = math.ceil(len(rows) / ncols)
    fig = Figure(figsize=(3.4 * ncols, 2.6 * nrows), dpi=110)
    FigureCanvasAgg(fig)
    top = max((r[m] for r in rows for m in modalities if not math.isnan(r[m])), default=1.0) or 1.0
    for i, r in enumerate(rows):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        names = [m for m in modalities if not math.isnan(r[m])]
        ax.bar(range(len(names)), [r[m] for m in names], color=[f"C{list(modalities).index(m)}" for m in names])
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=7)
        ax.set_ylim(0, top * 1.1)
        ax.set_title(f"{r['pattern']} (n = {r['n']:,})", fontsize=8)
        if i % ncols == 0:
            ax.set_ylabel("mean |Shapley value|", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    return path
