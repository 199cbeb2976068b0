"""Modality attribution in the studies: per-stay Shapley values of each modality for every fusion method's
out-of-fold predictions, summarised per cohort.

A study run keeps no checkpoint, so the values are computed inside the run, while its fold model is in memory
(:func:`run_attribution`, called by :func:`omnifuse.experiments.runner.execute_run` when the study asks for
attribution): for every test row, :func:`omnifuse.fuse.attribution.modality_shapley` with the run's normaliser
and calibration (the calibrated fused risk is attributed, as ``omnifuse predict`` does). The value of a subset
``S`` of the row's modalities is the fold model's prediction with the modalities outside ``S`` masked
(``v({})``: every modality masked). Exact for rows holding at most
:data:`omnifuse.fuse.attribution.MAX_EXACT` (8) modalities: ``2^m`` predictions per row and fold model, ``m``
its modalities, the rows grouped by missingness pattern so that each subset is one batched pass; beyond that,
:data:`omnifuse.fuse.attribution.N_PERMUTATIONS` (64) sampled permutations per row (antithetic pairs; the
count is stored per row and stated in the tables). At ``m`` = 8 exact is also the cheaper: 64 sampled orders
visit up to 450 prefix subsets, the exact sum 256. An ensemble (``ensemble`` > 1) is attributed through its
averaged, then calibrated, probability (the score the run reports).

Stored per run: ``shapley.npz`` (:data:`SHAPLEY_FILE`): ``values`` [n, M] (binary: the positive class;
multiclass: the class the row's prediction ranks first, ``target``) or [n, M, C] (multilabel), NaN where the
row lacks the modality; ``baseline`` (``v({})``), ``full`` (``v(P)``, the run's calibrated prediction of the
row), ``present`` [n, M], ``n_permutations`` [n] (0: exact) and ``modalities`` (names). ``run.json`` gets
``attribution``: seconds, CPU seconds and the subsets predicted.

Reference learners (``logreg``, ``gbm``) are skipped: they are not modality-structured networks (their
features are the modalities' columns side by side with one indicator each, and masking one is a column
change, not a missing branch), so their "modality" values would not be comparable with the networks'.

Summaries (:func:`gather`, :func:`summary_rows`): per method, the mean absolute value per modality over every
out-of-fold prediction (each stay once per repeat; a modality over the predictions of stays holding it) and per
missingness pattern (:func:`omnifuse.fuse.attribution.shapley_summary`); written to ``attribution.csv``
(:func:`write_attribution`; from a finished study folder:
:func:`omnifuse.experiments.run_report.study_attribution`), drawn in ``attribution.png`` (every method, all stays) and
``attribution_patterns.png`` (one method per pattern), and a section of ``results.md``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from omnifuse.experiments import figures
from omnifuse.experiments.report import Section, fnum, write_csv
from omnifuse.fuse.attribution import MAX_EXACT, N_PERMUTATIONS, modality_shapley, shapley_figure, shapley_summary
from omnifuse.fuse.data import FuseData, Normalizer
from omnifuse.fuse.methods import get_method
from omnifuse.fuse.trainer import predict_probs
from omnifuse.utils import save_arrays

log = logging.getLogger(__name__)

SHAPLEY_FILE = "shapley.npz"
"""The file of a study run's folder holding its test rows' Shapley values (see the module docstring)."""

ATTRIBUTION_CSV = "attribution.csv"
"""The study's summary: one row per (method, pattern), ``pattern`` = ``all stays`` first."""

PATTERNS_SHOWN = 8
"""The most frequent missingness patterns drawn and tabulated in ``results.md`` (``attribution.csv`` holds
them all)."""

SKIPPED_NOTE = (
    "Reference learners (logreg, gbm) are not attributed: they are not modality-structured networks (a masked "
    "modality is a block of their feature columns set missing), so their values would not compare with the "
    "networks'."
)


def attributable(method: str) -> bool:
    """True for a registry entry whose runs get Shapley values: every fusion network and variant, not the
    reference learners."""
    return get_method(method).kind != "reference"


class _Ensemble:
    """The averaged probability [n, C] of a fold's ensemble members, as a ``predict_proba(data, rows, norm,
    mask)`` model for :func:`omnifuse.fuse.attribution.modality_shapley` (the run's score is the mean of its
    members, then calibrated)."""

    def __init__(self, members: Sequence[Any], batch_size: int) -> None:
        self.members, self.batch_size = list(members), batch_size

    def predict_proba(self, data: FuseData, rows: np.ndarray, norm: Normalizer, mask: Any = None) -> np.ndarray:
        probs = [predict_probs(m, data, rows, norm, self.batch_size, mask) for m in self.members]
        return np.mean(probs, axis=0).astype(np.float32)


def run_attribution(
    run: Any,
    data: FuseData,
    batch_size: int,
    seed: int = 0,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays of ``shapley.npz``, the ``run.json`` record) of a finished fold run (:class:`FoldRun`) on its
    test rows: the Shapley values of ``data``'s modalities (the run's, after simulated missingness) for the
    run's calibrated probability. ``seed`` seeds the sampled permutations (rows beyond ``MAX_EXACT``
    modalities)."""
    t0, c0 = time.perf_counter(), time.process_time()
    model = run.model if len(run.members) <= 1 else _Ensemble(run.members, batch_size)
    rows = np.asarray(run.test_rows, dtype=np.int64)
    sv = modality_shapley(model, data, rows, run.normalizer, batch_size, temperature=run.temperature, seed=seed)
    arrays: dict[str, np.ndarray] = {
        "values": sv.values,
        "baseline": sv.baseline,
        "full": sv.full,
        "present": sv.present,
        "n_permutations": sv.n_permutations,
        "modalities": np.array(sv.modalities, dtype=str),
    }
    if sv.target is not None:
        arrays["target"] = sv.target
    held = sv.present.sum(1)
    exact = sv.n_permutations == 0
    sampled = N_PERMUTATIONS * (held - 1) + 2  # at most: every order's proper prefixes, the empty and full sets
    record = {
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,
        "rows": int(len(rows)),
        "subsets_per_row": float(np.mean(np.where(exact, 2.0**held, np.minimum(2.0**held, sampled))))
        if len(rows)
        else 0.0,
        "max_exact": MAX_EXACT,
        "sampled_rows": int((~exact).sum()),
        "n_permutations": N_PERMUTATIONS if (~exact).any() else 0,
    }
    return arrays, record


def save_run_attribution(folder: Path, arrays: dict[str, np.ndarray]) -> None:
    save_arrays(folder / SHAPLEY_FILE, arrays)


# ------------------------------------------------------------------------------------------ gathering
@dataclass
class MethodAttribution:
    """Every out-of-fold Shapley value of one method, on the study's modalities: ``values`` [n, M] or
    [n, M, C] (multilabel), NaN where the row lacks the modality or the model does not see it; ``present``
    [n, M]; ``baseline`` [n] or [n, C]; ``runs``: how many runs contributed; ``sampled_rows``: rows attributed
    by sampled permutations (``n_permutations`` each); ``seconds``: wall time spent on attribution."""

    method: str
    values: np.ndarray
    present: np.ndarray
    baseline: np.ndarray
    runs: int
    sampled_rows: int
    n_permutations: int
    seconds: float
    cpu_seconds: float


def load_run_attribution(folder: Path) -> dict[str, np.ndarray] | None:
    """``shapley.npz`` of a run folder (None when the run has none)."""
    p = Path(folder) / SHAPLEY_FILE
    if not p.exists():
        return None
    with np.load(p, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def gather(modalities: Sequence[str], runs: Iterable[tuple[str, Path]]) -> dict[str, MethodAttribution]:
    """Per method label, the values of its runs (``(label, folder)`` pairs; folders without ``shapley.npz``
    are left out) on the study's ``modalities`` (a modality a run's model does not see: NaN and not present)."""
    names = list(modalities)
    acc: dict[str, dict[str, list]] = {}
    for label, folder in runs:
        a = load_run_attribution(folder)
        if a is None:
            continue
        own = [str(m) for m in a["modalities"]]
        n = a["values"].shape[0]
        vals = np.full((n, len(names), *a["values"].shape[2:]), np.nan)
        present = np.zeros((n, len(names)), dtype=bool)
        for j, m in enumerate(own):
            if m in names:
                vals[:, names.index(m)] = a["values"][:, j]
                present[:, names.index(m)] = a["present"][:, j]
        rec = attribution_record(folder)
        d = acc.setdefault(label, {"values": [], "present": [], "baseline": [], "sampled": [], "perm": [], "sec": []})
        d["values"].append(vals)
        d["present"].append(present)
        d["baseline"].append(a["baseline"])
        d["sampled"].append(int((a["n_permutations"] > 0).sum()))
        d["perm"].append(int(a["n_permutations"].max(initial=0)))
        d["sec"].append((float(rec.get("seconds", 0.0)), float(rec.get("cpu_seconds", 0.0))))
    return {
        k: MethodAttribution(
            k,
            np.concatenate(d["values"]),
            np.concatenate(d["present"]),
            np.concatenate(d["baseline"]),
            len(d["values"]),
            int(sum(d["sampled"])),
            int(max(d["perm"])),
            float(sum(s for s, _ in d["sec"])),
            float(sum(c for _, c in d["sec"])),
        )
        for k, d in acc.items()
    }


def attribution_record(folder: Path) -> dict[str, Any]:
    """``run.json``'s ``attribution`` record of a run (``seconds``, ``cpu_seconds``, ``rows``...; empty when
    absent)."""
    try:
        return dict(json.loads((Path(folder) / "run.json").read_text()).get("attribution") or {})
    except (OSError, ValueError, AttributeError):
        return {}


def summary_rows(attr: dict[str, MethodAttribution], modalities: Sequence[str]) -> list[dict[str, Any]]:
    """``attribution.csv``'s rows: per method (in ``attr``'s order) :func:`shapley_summary` of its values (the
    ``all stays`` row, then one per missingness pattern), each with ``method`` first and, on the ``all stays``
    row, ``baseline_mean`` (mean all-masked prediction), ``runs``, ``sampled_rows`` and ``n_permutations``."""
    out = []
    for m, a in attr.items():
        rows = shapley_summary(a.values, a.present, modalities)
        for i, r in enumerate(rows):
            extra: dict[str, Any] = {}
            if i == 0:
                extra = {
                    "baseline_mean": float(np.mean(a.baseline)) if a.baseline.size else math.nan,
                    "runs": a.runs,
                    "sampled_rows": a.sampled_rows,
                    "n_permutations": a.n_permutations,
                }
            out.append({"method": m, **r, **extra})
    return out


def read_summary(path: Path) -> list[dict[str, Any]]:
    """The rows of an ``attribution.csv`` with numbers as floats (empty cells NaN) and counts as ints."""
    import csv

    out = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            row: dict[str, Any] = {}
            for k, v in r.items():
                if k in ("method", "pattern"):
                    row[k] = v
                elif k in ("n", "runs", "sampled_rows", "n_permutations") or k.startswith("n_"):
                    row[k] = int(float(v)) if v not in ("", None) else 0
                else:
                    row[k] = float(v) if v not in ("", None) else math.nan
            out.append(row)
    return out


def _modalities_of(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The modality columns of summary rows (every ``n_<m>`` column names one)."""
    return [k[2:] for k in rows[0] if k.startswith("n_") and k != "n_permutations"] if rows else []


# ------------------------------------------------------------------------------------- tables, figures
def _fmt(v: Any) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else fnum(v, 4)


def sections(
    rows: Sequence[dict[str, Any]],
    modalities: Sequence[str] | None = None,
    skipped: Sequence[str] = (),
    focus: str | None = None,
    seconds: tuple[float, float] | None = None,
) -> list[Section]:
    """The attribution tables: every method's mean |Shapley value| per modality over all stays, then the
    :data:`PATTERNS_SHOWN` most frequent missingness patterns of ``focus`` (default: ``omnifuse`` when it was
    attributed, else the first method). ``skipped``: methods of the study not attributed (reference learners);
    ``seconds``: (attribution wall seconds summed over runs, training seconds summed over the same runs)."""
    if not rows:
        return []
    mods = list(modalities or _modalities_of(rows))
    overall = [r for r in rows if r["pattern"] == "all stays"]
    methods = [r["method"] for r in overall]
    sampled = sum(int(r.get("sampled_rows") or 0) for r in overall)
    how = (
        f"exact (every subset of a stay's modalities; at most {MAX_EXACT} modalities per stay)"
        if not sampled
        else f"exact up to {MAX_EXACT} modalities; {sampled:,} stay predictions with more were estimated from "
        f"{max(int(r.get('n_permutations') or 0) for r in overall)} sampled permutations each"
    )
    cost = ""
    if seconds is not None and seconds[1] > 0:
        cost = (
            f" Attribution took {seconds[0]:.0f} s of run time beside {seconds[1]:.0f} s of training "
            f"({100 * seconds[0] / seconds[1]:.0f} %)."
        )
    note = (
        "Mean |Shapley value| of each modality for the calibrated fused probability (binary: of the positive "
        "class; multilabel: averaged over labels; multiclass: of the predicted class), over every out-of-fold "
        "prediction of the stays holding the modality (each stay once per repeat). A modality's value: its "
        "average marginal effect on the stay's risk when added to subsets of the stay's other modalities, the "
        "absent ones masked as missing (imputed by methods that impute); baseline: the prediction with every "
        f"modality masked. Computation: {how}.{cost} "
        + (f"Not attributed: {', '.join(skipped)}. " if skipped else "")
        + SKIPPED_NOTE
    )
    secs = [
        Section(
            "Modality attribution: mean |Shapley value| per modality (all stays)",
            ["method", "stays", *mods, "baseline"],
            [
                [r["method"], f"{int(r['n']):,}", *(_fmt(r.get(m)) for m in mods), _fmt(r.get("baseline_mean"))]
                for r in overall
            ],
            note,
        )
    ]
    focus = focus if focus in methods else ("omnifuse" if "omnifuse" in methods else methods[0])
    pats = [r for r in rows if r["method"] == focus and r["pattern"] != "all stays"]
    pats = sorted(pats, key=lambda r: -int(r["n"]))[:PATTERNS_SHOWN]
    n_all = sum(1 for r in rows if r["method"] == focus and r["pattern"] != "all stays")
    secs.append(
        Section(
            f"Modality attribution of {focus} by missingness pattern (the {len(pats)} most frequent of {n_all})",
            ["pattern", "stays", *mods],
            [[r["pattern"], f"{int(r['n']):,}", *(_fmt(r.get(m)) for m in mods)] for r in pats],
            f"Blank: the pattern lacks the modality. {ATTRIBUTION_CSV} holds every pattern of every method.",
        )
    )
    return secs


def draw(out: Path, rows: Sequence[dict[str, Any]], focus: str | None = None, prefix: str = "") -> list[Path]:
    """``<prefix>attribution.png`` (bars: every method's mean |Shapley value| per modality, all stays) and
    ``<prefix>attribution_patterns.png`` (``focus``'s all-stays row and its :data:`PATTERNS_SHOWN` most frequent
    patterns, :func:`omnifuse.fuse.attribution.shapley_figure`) in ``out``."""
    if not rows:
        return []
    mods = _modalities_of(rows)
    overall = [r for r in rows if r["pattern"] == "all stays"]
    methods = [r["method"] for r in overall]
    bars = [
        {"method": r["method"], "group": m, "attr_mean": r.get(m, math.nan), "attr_sd": None}
        for r in overall
        for m in mods
    ]
    figs = [
        figures.group_bars(
            Path(out) / f"{prefix}attribution.png",
            bars,
            methods,
            mods,
            "attr",
            title="Modality attribution: mean |Shapley value| of the calibrated risk (all stays)",
            ylabel="mean |Shapley value|",
        )
    ]
    focus = focus if focus in methods else ("omnifuse" if "omnifuse" in methods else methods[0])
    mine = [r for r in rows if r["method"] == focus]
    pats = sorted(mine[1:], key=lambda r: -int(r["n"]))[:PATTERNS_SHOWN]
    figs.append(
        shapley_figure(
            Path(out) / f"{prefix}attribution_patterns.png",
            [mine[0], *pats],
            mods,
            title=f"{focus}: mean |Shapley value| per modality, all stays and by missingness pattern",
        )
    )
    return figs


def write_attribution(
    out: Path,
    modalities: Sequence[str],
    runs: Iterable[tuple[str, Path]],
    methods: Sequence[str],
    train_seconds: float | None = None,
    draw_figures: bool = True,
) -> tuple[list[dict[str, Any]], list[Section], list[Path]]:
    """Gather the runs' values (:func:`gather`), write ``attribution.csv``, draw the figures and build the
    sections; ``methods``: the study's methods in table order (those not attributed are named as skipped);
    ``train_seconds``: the training wall seconds of the attributed runs (for the cost line); ``draw_figures``:
    False writes the table only. Returns (rows, sections, figures); nothing is written when no run holds
    values."""
    attr = gather(modalities, runs)
    attr = {m: attr[m] for m in methods if m in attr}
    if not attr:
        return [], [], []
    rows = summary_rows(attr, modalities)
    write_csv(Path(out) / ATTRIBUTION_CSV, rows)
    skipped = [m for m in methods if m not in attr]
    secs_used = sum(a.seconds for a in attr.values())
    secs = sections(rows, modalities, skipped, seconds=None if train_seconds is None else (secs_used, train_seconds))
    return rows, secs, draw(Path(out), rows) if draw_figures else []
