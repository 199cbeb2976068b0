"""``omnifuse report FOLDER``: one Markdown file per run or study that a reviewer can read on its own.

FOLDER is either a run folder of ``omnifuse train`` (``config.json``, ``metrics.json``, ``predictions.csv``,
``lazy_combinations.json``, ``fold<k>/``) or a study folder of ``omnifuse experiment`` (``config.json`` with a
``study`` key, ``results.json``, ``runs/``); :func:`detect` tells which, and refuses anything else, or an
unfinished one, with one line naming the folder and the file that is missing. The report
(:func:`write_report`, default ``FOLDER/report.md``) holds, in order:

1. **Configuration**: the method(s) and their parameters, every training option (``TrainConfig``), the task,
   folds, repeats and seed, and the cache: its path, its fingerprint digest and what it records of its
   provenance (dataset and version, adapter options, each modality's kind, shape, encoder and weights hash).
2. **Data**: rows, labelled rows tested, positives, each modality's coverage and the missingness patterns
   (of the test rows, after any simulated missingness, which is stated).
3. **Metrics**: AUROC and AUPRC (average precision) as fold mean ± sd with the fold-bootstrap 95 % CI, and
   pooled out of fold with a bootstrap CI of its own (stays resampled; for repeated cross-validation the
   same stays in every repeat, the statistic being the mean over repeats of the pooled metric, as in
   ``results.csv``), Brier score and ECE; for a study the corrected resampled t-tests (Nadeau and Bengio
   2003) against the study's reference method(s), exactly as ``results.csv`` gives them.
4. **Calibration**: temperatures, Brier score and ECE before and after temperature scaling, and a
   reliability figure before and after.
5. **Modality attribution**: mean |Shapley value| per modality, overall and by missingness pattern, with a
   figure. A study's values are those it stored (``attribution.csv``: ``compare --attribution``); a run's are
   computed from its fold checkpoints on its cache (:func:`omnifuse.fuse.predict.predict` with attribution:
   each stay by the fold model that did not train on it) unless ``attribution=False`` or the cache is not
   found.
6. **TLA trace** (OmniFuse and the ablation rows with TLA): the lazy combination mined after every epoch
   (eq. 15) in every fold, how often each combination was lazy, and the distance (mean cross-entropy) of the
   lazy combination with the L_TLA loss term (eq. 17) per epoch, as a table and a figure.
7. For a study, every table of its ``results.md``.

Figures are PNG files beside the Markdown file, named ``<stem>-<figure>.png`` (``report-tla.png``...), so
several reports can share a folder; a study's own figures (``reliability.png``, ``attribution.png``...) are
linked when the report is in the study folder and copied as ``<stem>-<name>`` otherwise. Every number comes
from the folder's files; nothing is retrained (a run's attribution re-predicts with its checkpoints).
"""

from __future__ import annotations

import csv
import datetime
import json
import logging
import math
import re
import shutil
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from omnifuse.experiments import figures
from omnifuse.experiments.report import Section, calibration_section, fci, fms, fnum, fp, to_markdown
from omnifuse.fuse import metrics

log = logging.getLogger(__name__)


class ReportError(ValueError):
    """A folder cannot be reported on (neither a run nor a study, unfinished, a file unreadable)."""


PATTERNS_SHOWN = 12
"""Missingness patterns listed in the data summary (the rest counted together)."""

FIGURE_CAPTIONS = (
    "Mean |Shapley value| per modality (all stays)",
    "Mean |Shapley value| per modality, all stays and by missingness pattern",
)
"""Captions of the two attribution figures (:func:`omnifuse.experiments.shapley.draw`)."""


# ------------------------------------------------------------------------------------------ reading
def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ReportError(f"{path} is missing") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReportError(f"{path} is not readable JSON ({type(e).__name__}: {str(e)[:120]})") from e


def detect(folder: str | Path) -> str:
    """``"run"`` (a run folder of ``omnifuse train``) or ``"study"`` (a study folder of ``omnifuse
    experiment``); :class:`ReportError` in one line naming the folder otherwise, or when it is unfinished."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ReportError(f"{folder} is not a folder (give a run folder of `omnifuse train` or a study folder)")
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        raise ReportError(
            f"{folder} is neither a run folder of `omnifuse train` nor a study folder of `omnifuse experiment` "
            "(no config.json)"
        )
    cfg = _json(cfg_path)
    if isinstance(cfg, dict) and "study" in cfg:
        if not (folder / "results.json").exists():
            raise ReportError(
                f"{folder} is an unfinished {cfg['study']} study (no results.json): run the study again to finish it"
            )
        return "study"
    if isinstance(cfg, dict) and "method" in cfg and "task" in cfg:
        for f in ("metrics.json", "predictions.csv"):
            if not (folder / f).exists():
                raise ReportError(f"{folder} is an unfinished run of `omnifuse train` (no {f})")
        return "run"
    raise ReportError(
        f"{folder} is neither a run folder of `omnifuse train` nor a study folder of `omnifuse experiment` "
        f"({cfg_path} names no study and no method)"
    )


def task_kind_of(y: np.ndarray) -> str:
    """The task kind of stored labels: [n] class indices (multiclass), [n, 1] (binary), [n, C] (multilabel)."""
    y = np.asarray(y)
    if y.ndim == 1:
        return "multiclass"
    return "binary" if y.shape[1] == 1 else "multilabel"


@dataclass
class StudyRun:
    """One finished run of a study folder (from its ``spec.json``)."""

    label: str
    method: str
    repeat: int
    fold: int
    rate: float
    mode: str
    folder: Path

    def load(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        with np.load(self.folder / "predictions.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        return arrays, _json(self.folder / "run.json")


@dataclass
class StudyFolder:
    """What :func:`read_study` read: ``config`` (config.json), ``results`` (results.json), ``summary`` (its
    rows), the study's ``methods`` (table order) and ``modalities``, and its finished ``runs`` made for this
    configuration (same cache fingerprint, options, modalities and combinations)."""

    folder: Path
    config: dict[str, Any]
    results: dict[str, Any]
    summary: list[dict[str, Any]]
    methods: list[str]
    modalities: list[str]
    runs: list[StudyRun] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.config.get("study"))


def _study_methods(cfg: dict[str, Any], summary: list[dict[str, Any]]) -> list[str]:
    """The study's methods in table order: the summary's, in first-seen order (reference scores last)."""
    seen: list[str] = []
    for r in summary:
        m = r.get("method")
        if isinstance(m, str) and m not in seen:
            seen.append(m)
    return [m for m in seen if not m.startswith("reference:")] + [m for m in seen if m.startswith("reference:")]


def _matches(spec: dict[str, Any], cfg: dict[str, Any]) -> bool:
    """A run's ``spec.json`` was made for the study of ``cfg`` (config.json): same cache, modalities,
    combinations and the training options both record."""
    if spec.get("cache") != cfg.get("cache_fingerprint"):
        return False
    if spec.get("modalities") != cfg.get("modalities") or spec.get("combos") != cfg.get("combinations"):
        return False
    train, mine = spec.get("train") or {}, cfg.get("train") or {}
    return all(train[k] == mine[k] for k in set(train) & set(mine))


def read_study(folder: Path) -> StudyFolder:
    """The study folder ``folder`` (see :class:`StudyFolder`); :class:`ReportError` naming a file it cannot
    read."""
    folder = Path(folder)
    cfg = _json(folder / "config.json")
    res = _json(folder / "results.json")
    if not isinstance(res, dict) or not isinstance(res.get("summary"), list):
        raise ReportError(f"{folder / 'results.json'} holds no summary rows")
    summary = [r for r in res["summary"] if isinstance(r, dict)]
    methods = _study_methods(cfg, summary)
    st = StudyFolder(folder, cfg, res, summary, methods, list(cfg.get("modalities") or []))
    conf = cfg.get("config") or {}
    repeats, folds = int(conf.get("repeats") or 1), int(conf.get("folds") or 0)
    wanted = set(methods)
    for spec_path in sorted((folder / "runs").glob("*/*/*/spec.json")):
        run_dir = spec_path.parent
        if not (run_dir / "DONE").exists():
            continue
        try:
            fp_ = json.loads(spec_path.read_text())
        except (OSError, ValueError):
            continue
        s = fp_.get("spec") or {}
        label = str(s.get("label"))
        if label not in wanted and label.split(":")[0] not in wanted:
            continue
        if not _matches(fp_, cfg) or int(s.get("repeat", 0)) >= repeats or (folds and int(s.get("fold", 0)) >= folds):
            continue
        st.runs.append(
            StudyRun(
                label,
                str(s.get("method")),
                int(s.get("repeat", 0)),
                int(s.get("fold", 0)),
                float(s.get("rate", 0.0)),
                str(s.get("mode", "random")),
                run_dir,
            )
        )
    return st


@dataclass
class RunFolder:
    """What :func:`read_run` read of a run folder of ``omnifuse train``: ``config``, ``metrics``, the
    out-of-fold predictions (``fold`` [n], ``y``, ``p``, ``p_raw``; ``stay_id`` [n]) and the TLA trace
    (``lazy``: ``{fold<k>: [epoch records]}``)."""

    folder: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    stay_id: np.ndarray
    fold: np.ndarray
    y: np.ndarray
    p: np.ndarray
    p_raw: np.ndarray
    lazy: dict[str, list[dict[str, Any]]]

    @property
    def kind(self) -> str:
        return str(self.metrics.get("task_kind") or task_kind_of(self.y))


def read_run(folder: Path) -> RunFolder:
    """The run folder ``folder`` (see :class:`RunFolder`); :class:`ReportError` naming a file it cannot read."""
    folder = Path(folder)
    cfg = _json(folder / "config.json")
    met = _json(folder / "metrics.json")
    if not isinstance(met, dict) or not isinstance(met.get("folds"), list):
        raise ReportError(f"{folder / 'metrics.json'} holds no per-fold metrics")
    kind = str(met.get("task_kind") or "binary")
    path = folder / "predictions.csv"
    try:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader)
            rows = [r for r in reader if r]
    except (OSError, StopIteration, csv.Error, UnicodeDecodeError) as e:
        raise ReportError(f"{path} is not a readable predictions table ({type(e).__name__})") from e
    try:
        col = {h: i for i, h in enumerate(header)}
        lab = [h for h in header if h == "label" or h.startswith("label_")]
        raw = [h for h in header if h.startswith("score_uncalibrated")]
        sc = [h for h in header if h.startswith("score") and h not in raw]
        a = np.array(rows, dtype=object)
        if not len(a):
            raise ReportError(f"{path} holds no prediction")

        def num(cols: list[str], dtype: Any = np.float64) -> np.ndarray:
            return np.stack([a[:, col[c]].astype(np.float64) for c in cols], 1).astype(dtype)

        y = num(lab)
        y = y[:, 0].astype(np.int64) if kind == "multiclass" else y
        p = num(sc)
        p_raw = num(raw) if raw else p
        stay = a[:, col["stay_id"]].astype(np.int64)
        fold = a[:, col["fold"]].astype(np.int64)
    except (KeyError, ValueError, IndexError) as e:
        raise ReportError(f"{path} is not a predictions table of `omnifuse train` ({type(e).__name__}: {e})") from e
    lazy_path = folder / "lazy_combinations.json"
    lazy = _json(lazy_path) if lazy_path.exists() else {}
    return RunFolder(folder, cfg, met, stay, fold, y, p, p_raw, lazy if isinstance(lazy, dict) else {})


# ------------------------------------------------------------------------------------- statistics
def pooled_ci(
    name: str,
    kind: str,
    repeats: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    n_boot: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the pooled metric ``name`` averaged over repeats: ``repeats`` = per repeat
    (row ids [n], labels, probabilities), every labelled row once per repeat. Each replicate resamples the rows
    (the same draw in every repeat, rows matched by id) and averages the repeats' pooled metrics; repeats that
    do not hold the same rows are resampled each on their own."""
    if n_boot <= 0 or not repeats or not len(repeats[0][0]):
        return math.nan, math.nan
    from omnifuse.experiments.stats import metric_fn

    order = [np.argsort(r, kind="stable") for r, _, _ in repeats]
    aligned = [(y[o], p[o]) for (_, y, p), o in zip(repeats, order, strict=True)]
    same = all(np.array_equal(np.sort(r), np.sort(repeats[0][0])) for r, _, _ in repeats)
    rng = np.random.default_rng(seed)
    n = len(repeats[0][0])
    shared = rng.integers(0, n, size=(n_boot, n)) if same else None
    per = []
    for y, p in aligned:
        idx = shared if shared is not None else rng.integers(0, len(y), size=(n_boot, len(y)))
        if kind == "binary" and name in ("auroc", "auprc"):
            yy = np.asarray(y, dtype=np.float64).reshape(len(y), -1)[:, 0]
            pp = np.asarray(p, dtype=np.float64).reshape(len(p), -1)[:, 0]
            per.append(metrics.binary_resampled_rows(name, yy, pp, idx))
        else:
            f = metric_fn(name, kind)
            per.append(np.array([f(y[i], p[i]) for i in idx], dtype=np.float64))
    v = np.nanmean(np.stack(per, 1), axis=1) if len(per) > 1 else per[0]
    v = v[~np.isnan(v)]
    if not v.size:
        return math.nan, math.nan
    return float(np.quantile(v, alpha / 2)), float(np.quantile(v, 1 - alpha / 2))


# --------------------------------------------------------------------------------------- helpers
def _kv(title: str, items: dict[str, Any], note: str = "") -> Section:
    def cell(v: Any) -> str:
        if isinstance(v, (dict, list)):
            return json.dumps(v, sort_keys=True, default=str)
        return "-" if v is None else str(v)

    return Section(title, ["option", "value"], [[k, cell(v)] for k, v in items.items()], note)


def _provenance(fp_: dict[str, Any] | None, cache: Any, digest: str | None) -> list[Section]:
    """The cache's identity: path, digests, dataset, adapter options and per modality its encoder."""
    items: dict[str, Any] = {"cache path": cache, "fingerprint digest": digest or (fp_ or {}).get("digest")}
    if not fp_:
        return [_kv("Cache", items, "The cache's provenance is not recorded in this folder.")]
    ds = fp_.get("dataset") or {}
    items.update(
        {
            "dataset": f"{ds.get('name')} {ds.get('version')}" if ds else None,
            "schema": fp_.get("schema"),
            "encoders digest": fp_.get("encoders_digest"),
            "adapter options": fp_.get("adapter_options"),
        }
    )
    secs = [_kv("Cache", {k: v for k, v in items.items() if v is not None})]
    mods = fp_.get("modalities") or {}
    if isinstance(mods, dict) and mods:
        rows = []
        for name, m in mods.items():
            pre = m.get("preprocessing") or {}
            rows.append(
                [
                    name,
                    str(m.get("kind")),
                    "x".join(str(s) for s in m.get("shape") or []),
                    str(m.get("dtype")),
                    str(m.get("encoder")),
                    str(m.get("encoder_hash") or "-")[:12],
                    str(pre.get("source") or "-"),
                ]
            )
        secs.append(
            Section(
                "Modalities of the cache (stage one)",
                ["modality", "kind", "shape", "dtype", "encoder", "weights hash", "source"],
                rows,
            )
        )
    return secs


def _cache_fingerprint(path: Any) -> dict[str, Any] | None:
    """The fingerprint of the cache at ``path`` when it is there and readable (None otherwise)."""
    if not path or not Path(str(path)).exists():
        return None
    try:
        from omnifuse.cache import cache_fingerprint

        return cache_fingerprint(str(path))
    except Exception as e:  # a moved or damaged cache only loses the provenance table
        log.info("cannot read the fingerprint of %s: %s", path, e)
        return None


def _positives(y: np.ndarray, kind: str, classes: Sequence[str] = ()) -> str:
    """Positives of labels ``y``: binary ``k (x %)``; multilabel per label; multiclass per class."""
    n = len(y)
    if not n:
        return "-"
    if kind == "binary":
        k = int(np.asarray(y).reshape(n, -1)[:, 0].sum())
        return f"{k:,} ({100 * k / n:.1f} %)"
    if kind == "multilabel":
        s = np.asarray(y).sum(0)
        names = list(classes) if len(classes) == len(s) else [str(i) for i in range(len(s))]
        return "; ".join(f"{c} {int(v):,}" for c, v in zip(names, s, strict=True))
    cnt = Counter(np.asarray(y).astype(int).tolist())
    names = list(classes)
    return "; ".join(f"{names[c] if c < len(names) else c} {cnt[c]:,}" for c in sorted(cnt))


def _data_sections(
    n_rows: Any, tested: int, positives: str, modalities: Sequence[str], patterns: dict[str, int], note: str
) -> list[Section]:
    """The data summary: counts, coverage per modality and the most frequent missingness patterns."""
    total = sum(patterns.values())
    cover = []
    for m in modalities:
        k = sum(n for p, n in patterns.items() if m in p.split("+"))
        cover.append([m, f"{k:,}", f"{100 * k / total:.1f} %" if total else "-"])
    pats = sorted(patterns.items(), key=lambda kv: -kv[1])
    rows = [[p, f"{n:,}", f"{100 * n / total:.1f} %"] for p, n in pats[:PATTERNS_SHOWN]]
    if len(pats) > PATTERNS_SHOWN:
        rest = sum(n for _, n in pats[PATTERNS_SHOWN:])
        rows.append([f"({len(pats) - PATTERNS_SHOWN} other patterns)", f"{rest:,}", f"{100 * rest / total:.1f} %"])
    return [
        Section(
            "Rows",
            ["rows of the task", "labelled rows tested (out of fold)", "positives"],
            [[f"{n_rows:,}" if isinstance(n_rows, int) else str(n_rows), f"{tested:,}", positives]],
            note,
        ),
        Section("Modality coverage (rows tested)", ["modality", "rows holding it", "share"], cover),
        Section(
            f"Missingness patterns (rows tested; {len(pats)} patterns)", ["modalities present", "rows", "share"], rows
        ),
    ]


def _tla_section(traces: dict[str, list[dict[str, Any]]]) -> list[Section]:
    """Per method: each combination that was ever lazy, its epochs lazy (share of every run's epochs), the runs
    where it was lazy at the selected epoch, and its mean distance when lazy."""
    secs = []
    for label, runs in traces.items():
        count: Counter[str] = Counter()
        at_best: Counter[str] = Counter()
        dist: dict[str, list[float]] = defaultdict(list)
        epochs = 0
        for r in runs:
            for rec in r["lazy"]:
                epochs += 1
                name = rec.get("lazy") or "(none)"
                count[name] += 1
                d = (rec.get("distances") or {}).get(name, {}).get("distance")
                if d is not None:
                    dist[name].append(float(d))
            best = r.get("best_epoch")
            rec_best = next((x for x in r["lazy"] if x.get("epoch") == best), None)
            if rec_best is not None:
                at_best[rec_best.get("lazy") or "(none)"] += 1
        rows = [
            [
                name,
                f"{k} ({100 * k / max(epochs, 1):.0f} %)",
                str(at_best.get(name, 0)),
                fnum(float(np.mean(dist[name])), 3) if dist[name] else "-",
            ]
            for name, k in count.most_common()
        ]
        scored = {int(x.get("n_scored") or 0) for r in runs for x in r["lazy"]}
        secs.append(
            Section(
                f"TLA trace of {label}: the lazy combination mined after each epoch ({len(runs)} run(s), "
                f"{epochs} epochs in all)",
                ["lazy combination", "epochs lazy", "runs: lazy at the selected epoch", "mean distance when lazy"],
                rows,
                "Eq. 15: after each epoch the training (mining) rows are predicted with each candidate combination "
                "of modalities, the others masked and imputed; the combination with the largest mean cross-entropy "
                "is lazy and the next epoch adds L_TLA (eq. 17) on the rows whose modalities equal it. Candidates "
                f"scored per epoch: {', '.join(str(s) for s in sorted(scored)) or '-'}. The selected epoch is the "
                "one whose weights were kept (early stopping).",
            )
        )
    return secs


def _md_figure(path: Path, caption: str) -> str:
    return f"![{caption}]({path.name})\n\n*{caption}*\n"


def _chapter(title: str, body: list[str | Section | Sequence[Section]]) -> str:
    parts = [f"## {title}\n"]
    for b in body:
        if isinstance(b, str):
            parts.append(b.rstrip() + "\n")
        elif isinstance(b, Section):
            parts.append(to_markdown([b]))
        else:
            parts.append(to_markdown(list(b)))
    return "\n".join(parts) + "\n"


def _header(kind: str, title: str, folder: Path) -> str:
    import omnifuse

    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"# {title}\n\n"
        f"Report of the {kind} folder `{folder}`, written by omnifuse {omnifuse.__version__} on {when} from the "
        "folder's own files (nothing retrained). Probabilities are calibrated (temperature scaling per fold) "
        "where the runs were; AUPRC is average precision; ECE uses "
        f"{metrics.ECE_BINS} equal-width bins; CIs are 95 % percentile bootstrap intervals.\n\n"
    )


# ----------------------------------------------------------------------------------------- a study
def _study_report(st: StudyFolder, out: Path, n_boot: int | None) -> str:
    from omnifuse.experiments.shapley import ATTRIBUTION_CSV, draw, read_summary, sections

    stem = out.stem
    figdir = out.parent
    cfg, conf = st.config, st.config.get("config") or {}
    n_boot = int(conf.get("n_boot", 200) if n_boot is None else n_boot) or 200
    seed = int(conf.get("seed") or 0)
    task = conf.get("task") or cfg.get("task")
    text: list[str] = [_header("study", f"Report: {st.name} study, task {task}", st.folder)]

    # 1. configuration
    study_items = {
        "study": st.name,
        "task": task,
        "methods": [m for m in st.methods if not m.startswith("reference:")],
        "reference scores (not inputs)": [m[len("reference:") :] for m in st.methods if m.startswith("reference:")]
        or None,
        "modalities": st.modalities,
        "combinations evaluated": cfg.get("combinations"),
        **{
            k: conf.get(k)
            for k in ("folds", "repeats", "seed", "missing_rate", "missing_mode", "rates", "modality", "n_boot")
            if k in conf
        },
        "runs trained / reused (last call)": f"{st.results.get('runs_trained')} / {st.results.get('runs_reused')}",
        "study wall time (last call)": f"{float(st.results.get('seconds') or 0):.0f} s",
    }
    params: dict[str, Any] = {}
    for m in st.methods:
        first_run = next((r for r in st.runs if r.label == m), None)
        if first_run is not None:
            params[m] = _json(first_run.folder / "run.json").get("method_params")
    fp_ = cfg.get("cache_provenance") or _cache_fingerprint(cfg.get("cache"))
    digest = cfg.get("cache_fingerprint")
    note = ""
    if fp_ is not None and digest and fp_.get("digest") and fp_.get("digest") != digest:
        note = (
            "The cache now at this path has another fingerprint than the study's runs (it changed since): its "
            "provenance is not shown."
        )
        fp_ = None
    text.append(
        _chapter(
            "1. Configuration",
            [
                _kv("Study", study_items),
                Section(
                    "Method parameters (registry defaults with the study's overrides)",
                    ["method", "parameters"],
                    [[m, json.dumps(p, sort_keys=True, default=str)] for m, p in params.items()],
                ),
                _kv(
                    "Training options (TrainConfig, every run)",
                    {k: v for k, v in (cfg.get("train") or {}).items() if k not in ("progress", "n_boot")},
                    "Every run of the study trains through the same fold code path with these options.",
                ),
                *(([note] if note else []) + _provenance(fp_, cfg.get("cache"), digest)),
            ],
        )
    )

    # 2. data (the first method's runs of repeat 0 at the lowest rate: every labelled row once)
    main = [r for r in st.summary if r.get("group") == "overall" and r.get("subset") == "as_is"]
    rates = sorted({float(r.get("rate") or 0.0) for r in main}) or [0.0]
    first = next((m for m in st.methods if any(r.label == m for r in st.runs)), None)
    base = sorted(
        (r for r in st.runs if r.label == first and r.repeat == 0 and r.rate == rates[0]), key=lambda r: r.fold
    )
    kind = "binary"
    if base:
        loaded = [r.load()[0] for r in base]
        ys = [a["y"] for a in loaded]
        pres = np.concatenate([a["present"] for a in loaded])
        kind = task_kind_of(ys[0])
        patterns: Counter[str] = Counter(
            "+".join(m for m, k in zip(st.modalities, row, strict=True) if k) or "(none)" for row in pres.tolist()
        )
        y_all = np.concatenate(ys)
        sim = f" after simulated missingness (rate {rates[0]:g}, {base[0].mode})" if rates[0] > 0 else ""
        folds_json = st.folder / "folds.json"
        n_rows = _json(folds_json).get("n_rows") if folds_json.exists() else "-"
        text.append(
            _chapter(
                "2. Data",
                [
                    *_data_sections(
                        n_rows,
                        len(y_all),
                        _positives(y_all, kind),
                        st.modalities,
                        dict(patterns),
                        f"Counted on the test rows of repeat 0 (each labelled row once), as the runs saw them{sim}.",
                    )
                ],
            )
        )
    else:
        text.append(_chapter("2. Data", ["No finished run of this study's configuration was found under runs/."]))

    # 3. metrics
    against: list[str] = []
    for row in main:
        for k in row:
            if k.startswith("pc_auroc_vs_") and k[len("pc_auroc_vs_") :] not in against:
                against.append(k[len("pc_auroc_vs_") :])
    order = {m: i for i, m in enumerate(st.methods)}
    against.sort(key=lambda a: (a.startswith("reference:"), order.get(a, len(order))))  # the study's order
    by_cell: dict[tuple[str, float], list[StudyRun]] = defaultdict(list)
    for sr in st.runs:
        by_cell[(sr.label, sr.rate)].append(sr)
    rows = []
    for r in main:
        m, rate = str(r["method"]), float(r.get("rate") or 0.0)
        runs = by_cell.get((m, rate), [])
        reps: dict[int, list[tuple]] = defaultdict(list)
        for run in runs:
            a, _ = run.load()
            reps[run.repeat].append((a["test_rows"], a["y"], a["overall"]))
        pooled_in: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = [
            (np.concatenate([t[0] for t in v]), np.concatenate([t[1] for t in v]), np.concatenate([t[2] for t in v]))
            for _, v in sorted(reps.items())
        ]
        ci_a = pooled_ci("auroc", kind, pooled_in, n_boot, seed) if pooled_in else (math.nan, math.nan)
        ci_p = pooled_ci("auprc", kind, pooled_in, n_boot, seed + 1) if pooled_in else (math.nan, math.nan)
        rows.append(
            [
                m,
                *([f"{rate:g}"] if len(rates) > 1 else []),
                str(r.get("n_folds")),
                fms(r.get("auroc_mean"), r.get("auroc_sd")),
                fci(r.get("auroc_ci")),
                fnum(r.get("auroc_pooled")),
                fci(ci_a),
                fms(r.get("auprc_mean"), r.get("auprc_sd")),
                fci(r.get("auprc_ci")),
                fnum(r.get("auprc_pooled")),
                fci(ci_p),
                fms(r.get("brier_mean"), r.get("brier_sd")),
                fms(r.get("ece_mean"), r.get("ece_sd")),
                *(fp(r.get(f"pc_auroc_vs_{a}")) for a in against),
            ]
        )
    headers = [
        "method",
        *(["missing rate"] if len(rates) > 1 else []),
        "folds",
        "AUROC",
        "AUROC 95% CI",
        "AUROC pooled",
        "pooled 95% CI",
        "AUPRC (AP)",
        "AUPRC 95% CI",
        "AUPRC pooled",
        "AUPRC pooled 95% CI",
        "Brier",
        "ECE",
        *(f"p AUROC vs {a} (corrected)" for a in against),
    ]
    text.append(
        _chapter(
            "3. Metrics",
            [
                Section(
                    "Overall: every test row with the modalities it holds",
                    headers,
                    rows,
                    "AUROC, AUPRC, Brier, ECE: mean ± sd over the repeats x folds; 95% CI: fold bootstrap of the "
                    "mean over folds (results.csv); pooled: every out-of-fold prediction of a repeat scored together, "
                    f"mean over repeats, its CI a bootstrap of the stays ({n_boot} replicates, the same stays drawn in "
                    "every repeat); p: the corrected resampled t-test of Nadeau and Bengio (2003) on the fold AUROCs "
                    "paired over the same repeats x folds (results.csv pc_auroc_vs_*)."
                    if rows
                    else "This study has no overall cell; its own tables are in section 7.",
                )
            ],
        )
    )

    # 4. calibration
    cal_methods = [m for m in st.methods if not m.startswith("reference:")]
    extra = {
        m: {"temperature": [_json(r.folder / "run.json").get("temperature") for r in st.runs if r.label == m]}
        for m in cal_methods
    }
    cal = calibration_section([r for r in main if float(r.get("rate") or 0.0) == rates[0]], cal_methods, extra)
    cal_body: list[Any] = [cal]
    curves, before = {}, {}
    shown = _reuse(st.folder, "reliability.png", figdir, stem)  # compare draws it (with the reference score)
    for m in cal_methods if shown is None else []:
        runs = sorted(
            (r for r in st.runs if r.label == m and r.repeat == 0 and r.rate == rates[0]), key=lambda r: r.fold
        )
        if not runs:
            continue
        arrs = [r.load()[0] for r in runs]
        curves[m] = (np.concatenate([a["y"] for a in arrs]), np.concatenate([a["overall"] for a in arrs]))
        if all("overall_raw" in a for a in arrs):
            before[m] = (np.concatenate([a["y"] for a in arrs]), np.concatenate([a["overall_raw"] for a in arrs]))
    if curves:
        shown = figures.reliability_figure(
            figdir / f"{stem}-reliability.png",
            curves,
            kind,
            title=f"Reliability, out-of-fold predictions of repeat 0 ({task})",
            before=before or None,
        )
    if shown is not None:
        cal_body.append(_md_figure(shown, "Reliability before and after temperature scaling (pooled, repeat 0)"))
    text.append(_chapter("4. Calibration", cal_body))

    # 5. attribution
    att_path = st.folder / ATTRIBUTION_CSV
    if att_path.exists():
        att_rows = read_summary(att_path)
        skipped = [m for m in cal_methods if m not in {r["method"] for r in att_rows}]
        reused = [_reuse(st.folder, n, figdir, stem) for n in ("attribution.png", "attribution_patterns.png")]
        figs = [f for f in reused if f is not None] if all(reused) else draw(figdir, att_rows, prefix=f"{stem}-")
        text.append(
            _chapter(
                "5. Modality attribution",
                [
                    sections(att_rows, st.modalities, skipped),
                    *(_md_figure(f, c) for f, c in zip(figs, FIGURE_CAPTIONS, strict=False)),
                ],
            )
        )
    else:
        text.append(
            _chapter(
                "5. Modality attribution",
                [
                    "Not computed for this study: `omnifuse experiment compare --attribution` stores every fusion "
                    "method's per-stay Shapley values with its runs (the runs keep no checkpoint, so they are "
                    "computed while training)."
                ],
            )
        )

    # 6. TLA
    traces: dict[str, list[dict[str, Any]]] = {}
    for m in cal_methods:
        for sr in sorted((x for x in st.runs if x.label == m), key=lambda x: (x.rate, x.repeat, x.fold)):
            rec = _json(sr.folder / "run.json")
            lazy = (rec.get("records") or {}).get("lazy_combination") or []
            if lazy:
                traces.setdefault(m, []).append(
                    {"lazy": lazy, "history": rec.get("history") or [], "best_epoch": rec.get("best_epoch")}
                )
    text.append(_tla_chapter(traces, figdir, stem))

    # 7. the study's own tables
    md_path = st.folder / "results.md"
    if md_path.exists():
        md = md_path.read_text()
        md = re.sub(r"^# .*\n+", "", md, count=1)
        figs_md = [line for line in md.splitlines() if line.startswith("![")]  # after the last table
        tail = [line for line in md.splitlines() if re.match(r"\d+ run\(s\) trained", line)]
        md = "\n".join(line for line in md.splitlines() if line not in figs_md and line not in tail)
        parts = re.split(r"(?m)^(?=### )", md)  # one part per table; shown above already: calibration, attribution
        md = "".join(p for p in parts if not p.startswith(("### Calibration:", "### Modality attribution")))
        md = re.sub(r"^### ", "#### ", md, flags=re.M).rstrip() + "\n\n"
        md += "".join(f"{line}\n\n" for line in figs_md if "attribution" not in line) + "".join(tail)
        md = _relink(md, st.folder, figdir, stem)
        text.append(f"## 7. Every table of the study (results.md)\n\n{md}\n")
    return "".join(text)


def _reuse(src: Path, name: str, dst: Path, stem: str) -> Path | None:
    """The study's own figure ``src/name`` for the report in ``dst``: itself when the report is beside it, else a
    copy ``dst/<stem>-<name>``; None when the study has no such figure (the report draws its own)."""
    p = src / name
    if not p.exists():
        return None
    if src.resolve() == dst.resolve():
        return p
    new = dst / f"{stem}-{name}"
    shutil.copyfile(p, new)
    return new


def _relink(md: str, src: Path, dst: Path, stem: str) -> str:
    """Image links of ``md`` (relative to ``src``) made valid beside the report in ``dst``: the PNGs are copied
    as ``<stem>-<name>`` when the report is written elsewhere."""
    if src.resolve() == dst.resolve():
        return md

    def sub(m: re.Match[str]) -> str:
        name = m.group(2)
        p = src / name
        if not p.exists():
            return m.group(0)
        new = f"{stem}-{Path(name).name}"
        shutil.copyfile(p, dst / new)
        return f"![{m.group(1)}]({new})"

    return re.sub(r"!\[([^\]]*)\]\(([^)]+)\)", sub, md)


def _tla_chapter(traces: dict[str, list[dict[str, Any]]], figdir: Path, stem: str) -> str:
    if not traces:
        return _chapter(
            "6. TLA trace",
            ["No method of this folder mined lazy combinations (TLA is OmniFuse's; off in its variants without it)."],
        )
    f = figures.tla_figure(figdir / f"{stem}-tla.png", traces)
    return _chapter(
        "6. TLA trace",
        [
            _tla_section(traces),
            _md_figure(f, "TLA: share of runs in which each combination was lazy, per epoch; lazy distance and L_TLA"),
        ],
    )


# ------------------------------------------------------------------------------------------- a run
def _run_report(rf: RunFolder, out: Path, n_boot: int | None, attribution: bool, cache: Any) -> str:
    stem, figdir = out.stem, out.parent
    cfg, met = rf.config, rf.metrics
    kind = rf.kind
    n_boot = int(cfg.get("n_boot", 200) if n_boot is None else n_boot) or 200
    seed = int(cfg.get("seed") or 0)
    method, task = cfg.get("method"), cfg.get("task")
    text = [_header("run", f"Report: {method} on {task}", rf.folder)]

    # 1. configuration
    skip = {"cache_fingerprint", "method_params_resolved", "n_rows", "cache", "method_params", "method", "task"}
    skip.add("progress")
    fp_ = cfg.get("cache_fingerprint")
    text.append(
        _chapter(
            "1. Configuration",
            [
                _kv(
                    "Run",
                    {
                        "method": method,
                        "task": task,
                        "task kind": kind,
                        "folds": len(met["folds"]),
                        "method parameters (resolved)": cfg.get("method_params_resolved") or cfg.get("method_params"),
                    },
                ),
                _kv("Training options (TrainConfig)", {k: v for k, v in cfg.items() if k not in skip}),
                *_provenance(fp_ if isinstance(fp_, dict) else None, cfg.get("cache"), None),
            ],
        )
    )

    # 2. data
    patterns: Counter[str] = Counter()
    for fm in met["folds"]:
        for name, v in (fm.get("by_pattern") or {}).items():
            patterns[name] += int(v.get("n") or 0)
    mods = list(cfg.get("modalities") or [])
    rate = float(cfg.get("missing_rate") or 0.0)
    sim = f" after simulated missingness (rate {rate:g}, {cfg.get('missing_mode')})" if rate > 0 else ""
    text.append(
        _chapter(
            "2. Data",
            [
                *_data_sections(
                    cfg.get("n_rows", "-"),
                    len(rf.y),
                    _positives(rf.y, kind, []),
                    mods,
                    dict(patterns),
                    f"Counted on the out-of-fold test rows (each labelled row once), as the folds saw them{sim}.",
                )
            ],
        )
    )

    # 3. metrics
    from omnifuse.experiments.stats import fast_fold_bootstrap_ci, mean_sd

    folds = sorted(set(rf.fold.tolist()))
    per = [(rf.y[rf.fold == k], rf.p[rf.fold == k]) for k in folds]
    rows = []
    for fm in met["folds"]:
        rows.append(
            [
                str(fm.get("fold")),
                str(fm.get("n_test")),
                fnum(fm.get("auroc")),
                fci(fm.get("auroc_ci")),
                fnum(fm.get("auprc")),
                fci(fm.get("auprc_ci")),
                fnum(fm.get("brier")),
                fnum(fm.get("ece")),
                str(fm.get("best_epoch")),
            ]
        )
    summary_rows = []
    for name, label in (("auroc", "AUROC"), ("auprc", "AUPRC (AP)"), ("brier", "Brier"), ("ece", "ECE")):
        mu, sd, _ = mean_sd([fm.get(name) for fm in met["folds"] if fm.get(name) is not None])
        pooled = (met.get("pooled") or {}).get(name)
        if name in ("auroc", "auprc"):
            s = seed + (name == "auprc")
            ci = fci(fast_fold_bootstrap_ci(name, kind, per, n_boot, seed=s))
            pci = fci(pooled_ci(name, kind, [(rf.stay_id, rf.y, rf.p)], n_boot, s))
        else:
            ci = pci = "-"
        summary_rows.append([label, fms(mu, sd), ci, fnum(pooled), pci])
    text.append(
        _chapter(
            "3. Metrics",
            [
                Section(
                    "Summary",
                    ["metric", "fold mean ± sd", "95% CI (fold bootstrap)", "pooled out of fold", "pooled 95% CI"],
                    summary_rows,
                    f"Fold mean over {len(per)} folds; its CI resamples every fold's test rows ({n_boot} replicates); "
                    "pooled: every fold's test predictions scored together (metrics.json pooled), its CI resamples the "
                    "stays. One run has no method to test against: `omnifuse experiment compare` pairs methods on the "
                    "same folds with the corrected resampled t-test.",
                ),
                Section(
                    "Per fold",
                    [
                        "fold",
                        "n test",
                        "AUROC",
                        "AUROC 95% CI",
                        "AUPRC (AP)",
                        "AUPRC 95% CI",
                        "Brier",
                        "ECE",
                        "best epoch",
                    ],
                    rows,
                    "Per-fold CIs: bootstrap of the fold's test rows (metrics.json).",
                ),
            ],
        )
    )

    # 4. calibration
    crow = []
    for fm in met["folds"]:
        t = fm.get("temperature") or []
        crow.append(
            [
                str(fm.get("fold")),
                ", ".join(fnum(v, 3) for v in t) or "-",
                f"{fnum(fm.get('brier_uncalibrated'))} → {fnum(fm.get('brier'))}",
                f"{fnum(fm.get('ece_uncalibrated'))} → {fnum(fm.get('ece'))}",
            ]
        )
    mean = met.get("mean") or {}
    crow.append(
        [
            "mean",
            "",
            f"{fnum(mean.get('brier_uncalibrated'))} → {fnum(mean.get('brier'))}",
            f"{fnum(mean.get('ece_uncalibrated'))} → {fnum(mean.get('ece'))}",
        ]
    )
    pooled, praw = met.get("pooled") or {}, met.get("pooled_uncalibrated") or {}
    if pooled:
        crow.append(
            [
                "pooled",
                "",
                f"{fnum(praw.get('brier'))} → {fnum(pooled.get('brier'))}",
                f"{fnum(praw.get('ece'))} → {fnum(pooled.get('ece'))}",
            ]
        )
    f = figures.reliability_figure(
        figdir / f"{stem}-reliability.png",
        {str(method): (rf.y, rf.p)},
        kind,
        title=f"Reliability, out-of-fold predictions ({task})",
        before={str(method): (rf.y, rf.p_raw)} if not np.array_equal(rf.p, rf.p_raw) else None,
    )
    text.append(
        _chapter(
            "4. Calibration",
            [
                Section(
                    "Temperature scaling: before → after",
                    ["fold", "temperature", "Brier", "ECE"],
                    crow,
                    f"{met.get('calibration', '')}. Pooled AUROC before → after: "
                    f"{fnum(praw.get('auroc'))} → {fnum(pooled.get('auroc'))} (fold AUROC does not change with a "
                    "temperature for binary and multilabel tasks).",
                ),
                _md_figure(f, "Reliability before and after temperature scaling (pooled out of fold)"),
            ],
        )
    )

    # 5. attribution
    text.append(_run_attribution(rf, figdir, stem, attribution, cache))

    # 6. TLA
    traces: dict[str, list[dict[str, Any]]] = {}
    hist = met.get("history") or []
    for i, fm in enumerate(met["folds"]):
        lazy = rf.lazy.get(f"fold{fm.get('fold')}") or []
        if lazy:
            traces.setdefault(str(method), []).append(
                {"lazy": lazy, "history": hist[i] if i < len(hist) else [], "best_epoch": fm.get("best_epoch")}
            )
    text.append(_tla_chapter(traces, figdir, stem))
    return "".join(text)


def _run_attribution(rf: RunFolder, figdir: Path, stem: str, attribution: bool, cache: Any) -> str:
    """Section 5 of a run's report: Shapley values of every stay of the run's cache by its fold checkpoints."""
    from omnifuse.experiments.report import write_csv
    from omnifuse.experiments.shapley import draw, sections
    from omnifuse.fuse.attribution import shapley_summary

    title = "5. Modality attribution"
    if not attribution:
        return _chapter(title, ["Not computed (`--no-attribution`)."])
    if not list(rf.folder.glob("fold*/model.json")):
        return _chapter(
            title,
            [
                "Not computed: the run has no fold checkpoint (a reference learner, or trained without "
                "checkpoints); reference learners are not modality-structured networks."
            ],
        )
    path = cache or rf.config.get("cache")
    if not path or not Path(str(path)).exists():
        return _chapter(
            title,
            [
                f"Not computed: the run's cache ({path}) is not there; `omnifuse report {rf.folder} --cache CACHE` "
                "attributes with a copy of it."
            ],
        )
    from omnifuse.fuse.predict import predict

    res = predict(rf.folder, path)
    mods = [k[len("present_") :] for k in res if k.startswith("present_")]
    present = np.stack([np.asarray(res[f"present_{m}"], dtype=bool) for m in mods], 1)
    vals = np.stack([np.asarray(res[f"shap_{m}"], dtype=np.float64) for m in mods], 1)
    rows = [{"method": str(rf.config.get("method")), **r} for r in shapley_summary(vals, present, mods)]
    base = np.asarray(res.get("shap_baseline", np.zeros(1)), dtype=np.float64)
    rows[0].update({"baseline_mean": float(base.mean()), "runs": 1, "sampled_rows": 0, "n_permutations": 0})
    if "shap_permutations" in res:
        perm = np.asarray(res["shap_permutations"])
        rows[0].update({"sampled_rows": int((perm > 0).sum()), "n_permutations": int(perm.max(initial=0))})
    csv_path = figdir / f"{stem}-attribution.csv"
    write_csv(csv_path, rows)
    figs = draw(figdir, rows, prefix=f"{stem}-")
    where = np.asarray(res["scored_by"]).astype(str)
    oof = int(np.char.startswith(where, "out_of_fold:").sum())
    return _chapter(
        title,
        [
            f"Every stay of the cache `{path}` ({len(where):,} stays; {oof:,} scored out of fold by the fold model "
            "that did not train on them, the rest by the mean of the fold models), through `omnifuse predict`'s "
            f"attribution; the values are in `{csv_path.name}`.",
            sections(rows, mods),
            *(_md_figure(f, c) for f, c in zip(figs, FIGURE_CAPTIONS, strict=False)),
        ],
    )


# ----------------------------------------------------------------------------------------- entry
def write_report(
    folder: str | Path,
    out: str | Path | None = None,
    *,
    attribution: bool = True,
    cache: str | Path | None = None,
    n_boot: int | None = None,
) -> Path:
    """Write the report of ``folder`` (a run or a study, :func:`detect`) to ``out`` (default
    ``folder/report.md``) with its figures beside it; returns the path. ``attribution`` and ``cache``: a run's
    attribution section (computed from its checkpoints on ``cache``, default the run's recorded cache);
    ``n_boot``: bootstrap replicates of the pooled CIs (default the run's or study's ``n_boot``)."""
    folder = Path(folder)
    kind = detect(folder)
    out = Path(out) if out is not None else folder / "report.md"
    if out.suffix.lower() != ".md":
        raise ReportError(f"--out {out}: the report is a Markdown file (.md)")
    out.parent.mkdir(parents=True, exist_ok=True)
    if kind == "study":
        text = _study_report(read_study(folder), out, n_boot)
    else:
        text = _run_report(read_run(folder), out, n_boot, attribution, cache)
    out.write_text(text)
    return out


def study_attribution(study_dir: str | Path) -> list[dict[str, Any]]:
    """Rewrite ``attribution.csv`` and its figures from the runs of a finished study folder (e.g. after
    ``compare(..., attribution=True)``): the study's modalities and methods from its ``config.json``, the values
    from every finished run's ``shapley.npz`` made from the study's cache. Returns the summary rows (empty
    when no run holds values)."""
    from omnifuse.experiments.shapley import write_attribution

    st = read_study(Path(study_dir))
    runs = [(r.label, r.folder) for r in st.runs]
    rows, _, _ = write_attribution(st.folder, st.modalities, runs, st.methods)
    return rows
