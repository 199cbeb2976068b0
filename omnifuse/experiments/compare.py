"""``omnifuse experiment compare``: the paper's table 3 from one cache.

Every method on the same patient-grouped folds and the same seeded missingness masks; per modality
combination (the modalities outside it masked for every test row; rows lacking one of its modalities
reported separately as ``partial``); mean ± sd over folds, fold-bootstrap 95 % CIs, Brier score and ECE,
paired t-tests of every method against OmniFuse and against its DWFuse-only variant (``dwfuse_only``: TLA,
IMP-fw and IMP-bw off, the paper's table 3 column) over the same folds, the calibration of every method
(per-fold temperatures, Brier, ECE and pooled AUROC before and after temperature scaling), a reliability
figure before and after calibration, and the cache's reference score (APACHE IVa on eICU) on the test rows
that have one, with every method scored on those same rows. With ``attribution``, every fusion network's
per-stay Shapley values of each modality, summarised per method and missingness pattern
(:mod:`omnifuse.experiments.shapley`). At the end, ``report.md``: the study's report
(:func:`omnifuse.experiments.run_report.write_report`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from omnifuse.experiments import collect, figures, shapley
from omnifuse.experiments.config import CompareConfig, study_config
from omnifuse.experiments.report import Section, StudyResult, calibration_section, fci, fms, fnum, fp, write_config
from omnifuse.experiments.runner import (
    StudyContext,
    finish_study,
    fold_specs,
    load_run,
    run_study,
    study_context,
    study_record,
    test_train_ratio,
)
from omnifuse.experiments.stats import pick, pick_one, summarize
from omnifuse.fuse import metrics
from omnifuse.fuse.methods import METHODS
from omnifuse.fuse.tla import combination_name

log = logging.getLogger(__name__)

AGAINST = ("omnifuse", "dwfuse_only")


class CompareResult(StudyResult):
    """A :class:`StudyResult` of :func:`compare`."""


def default_methods() -> list[str]:
    """Every registered method (not the variants), the DWFuse-only OmniFuse variant, then the reference
    learners."""
    names = sorted((n for n, e in METHODS.items() if e.kind == "method"), key=lambda n: (n != "omnifuse", n))
    return [*names, "dwfuse_only", *sorted(n for n, e in METHODS.items() if e.kind == "reference")]


def compare(
    cache: Any, task: str | None = None, methods: Sequence[str] | None = None, *, config: Any = None, **overrides: Any
) -> CompareResult:
    """Cross-validated comparison of ``methods`` (registry entries, variants included; default: every method and
    ``dwfuse_only``) on ``task`` of ``cache`` (a path or loaded data). Options: :class:`CompareConfig` (file <
    keyword overrides).

    Every method sees the same ``folds`` x ``repeats`` patient-grouped folds and the same simulated
    missingness (``missing_rate``, ``missing_mode``); per modality combination (``combinations``) both views of
    :func:`omnifuse.fuse.fold.combination_views`; ``method_overrides``: ``{method or variant: {param: value}}``;
    ``options``: other training options (``TrainConfig`` fields); ``n_jobs`` runs at once (joblib processes)
    with ``threads`` torch threads each (on 2 cores ``n_jobs=2, threads=1`` is fastest). Resumable: finished
    runs under ``out/runs`` are reused.

    ``attribution=True``: every fusion network's run also stores its test rows' Shapley values of each modality
    (exact up to 8 modalities per stay; :mod:`omnifuse.experiments.shapley`), and the study writes their
    summary (``attribution.csv``: mean |value| per method, modality and missingness pattern),
    ``attribution.png``, ``attribution_patterns.png`` and a section of results.md; runs finished without values
    are retrained (a study run keeps no model). Reference learners are not attributed. Measured on the eICU demo
    (8 modalities, every method of the README's comparison, fold 0): attribution adds 52 % to the runs' CPU time
    (28 % for OmniFuse, 51 to 87 % for the smaller networks; ``benchmarks/study_attribution.py``), hence off by
    default.

    Writes config.json, results.csv (summary), folds.csv, results.json, results.md, reliability.png (before and
    after calibration), auroc_by_combination.png and report.md (:mod:`omnifuse.experiments.run_report`: the
    configuration, data, metrics, calibration, attribution and TLA trace; figure ``report-tla.png``); prints
    the tables.

    Cost on the eICU demo cache with eight modalities (2,492 labelled stays), ``n_jobs=2, threads=1``, timed on
    2 quiet cores: the twelve entries of table 3 with the reference learners at 5 folds x 3 repeats 13 min 34 s
    (180 runs; 18 min 24 s on the same host while it ran slower); all 20 default entries at ``repeats=1`` 13 min
    41 s (100 runs; README, docs/methods.md), so about 38 min at 5 x 3.
    """
    t0 = time.perf_counter()
    cfg = study_config(CompareConfig, config, task=task, methods=list(methods) if methods else None, **overrides)
    out = Path(cfg.out)
    names = list(cfg.methods) if cfg.methods else default_methods()
    if len(set(names)) != len(names):
        raise ValueError(f"methods listed twice: {names}")
    ctx = study_context(cache, cfg)
    ctx.attribution = bool(cfg.attribution)
    record = study_record("compare", cache, ctx, cfg, methods=names)
    write_config(out, record)
    specs = fold_specs(ctx, names, cfg.method_overrides, rate=cfg.missing_rate, mode=cfg.missing_mode)
    stats = run_study(ctx, specs, cfg)
    refs = collect.load_references(cache)
    data = ctx.data()
    preds = collect.collect(ctx, stats.folders, specs, references=refs)
    preds += collect.reference_preds(ctx, refs, data.task_kind, cfg.missing_rate)
    against = [a for a in AGAINST if a in names] + [f"reference:{r}" for r in refs if data.task_kind == "binary"]
    summary, fold_recs = summarize(
        preds,
        data.task_kind,
        against=against,
        n_boot=cfg.n_boot,
        seed=cfg.seed,
        ci_subsets=("as_is", "complete", "all_masked"),
        test_train_ratio=test_train_ratio(ctx),
    )
    per_method = {m: _run_summary([stats.folders[s] for s in specs if s.label == m]) for m in names}
    sections = compare_sections(summary, names, ctx, against, refs, per_method)
    figs = compare_figures(out, ctx, stats.folders, specs, summary, names, refs, data.task_kind)
    extra: dict[str, Any] = {"per_method": per_method}
    if cfg.attribution:
        att_secs, att_figs, cost = _attribution(out, ctx, stats.folders, specs, names)
        sections, figs = sections + att_secs, figs + att_figs
        extra["attribution"] = cost
    res = finish_study(
        "compare",
        cfg,
        record,
        stats,
        t0,
        (summary, fold_recs, sections, figs),
        extra=extra,
        result_cls=CompareResult,
    )
    from omnifuse.experiments.run_report import write_report

    t1 = time.perf_counter()
    path = write_report(out)
    log.info("report written to %s (%.1f s)", path, time.perf_counter() - t1)
    return res


def _attribution(
    out: Path, ctx: StudyContext, folders: dict, specs: Sequence[Any], names: Sequence[str]
) -> tuple[list[Section], list[Path], dict[str, Any]]:
    """The attribution summary of the study's runs (:func:`omnifuse.experiments.shapley.write_attribution`):
    sections, figures and its cost (attribution and training wall seconds of the attributed runs)."""
    attributed = [s for s in specs if shapley.attributable(s.method)]
    recs = [json.loads((folders[s] / "run.json").read_text()) for s in attributed]
    train = sum(float(r.get("seconds") or 0.0) for r in recs)
    spent = sum(float((r.get("attribution") or {}).get("seconds") or 0.0) for r in recs)
    cpu = sum(float((r.get("attribution") or {}).get("cpu_seconds") or 0.0) for r in recs)
    runs = [(s.label, folders[s]) for s in attributed]
    _, secs, figs = shapley.write_attribution(out, ctx.modalities, runs, names, train_seconds=train)
    return secs, figs, {"seconds": spent, "cpu_seconds": cpu, "train_seconds": train, "runs": len(attributed)}


def _run_summary(folders: list[Path]) -> dict[str, Any]:
    """Mean wall seconds per run, the parameter count, how many runs ended on their last allowed epoch and
    every run's temperatures (``temperature``: one list per run; None for a run stored before calibration
    existed)."""
    runs = [load_run(f)[1] for f in folders]
    return {
        "seconds": float(np.mean([r["seconds"] for r in runs])),
        "parameters": runs[0].get("parameters"),
        "best_epoch_is_last": int(sum(bool(r.get("best_epoch_is_last")) for r in runs)),
        "runs": len(runs),
        "temperature": [r.get("temperature") for r in runs],
    }


def _p_cols(against: Sequence[str]) -> list[str]:
    return [f"p AUROC vs {a} (corrected)" for a in against]


VIEW_TITLES = {
    "complete": "test rows holding it",
    "all_masked": "every test row (the paper's table 3; rows lacking some of it keep what they hold of it)",
}


def _combination_section(
    summary: list[dict[str, Any]], methods: Sequence[str], names: list[str], view: str, metric: str, title: str
) -> Section:
    """One table: a row per method, a column per combination, ``metric`` mean ± sd of ``view``."""
    rows = []
    for m in methods:
        cells = []
        for g in names:
            r = pick(summary, method=m, group=g, subset=view)
            if not r:
                cells.append("-")
                continue
            p = r[0].get(f"pc_{metric}_vs_omnifuse")
            mark = " *" if p is not None and p == p and p < 0.05 else ""
            cells.append(fms(r[0][f"{metric}_mean"], r[0][f"{metric}_sd"]) + mark)
        rows.append([m, *cells])
    ns = []
    for g in names:
        r = pick(summary, method=methods[0], group=g, subset=view)
        ns.append(f"{g} (n={r[0]['n_rows']})" if r else g)
    return Section(
        title, ["method", *ns], rows, "*: p < 0.05 against omnifuse (corrected resampled t-test over folds)."
    )


def compare_sections(
    summary: list[dict[str, Any]],
    methods: Sequence[str],
    ctx: StudyContext,
    against: Sequence[str],
    refs: dict,
    extra: dict[str, dict[str, Any]] | None = None,
) -> list[Section]:
    """The tables of :func:`compare`; ``extra[method]`` holds ``parameters`` and ``seconds`` (mean per run)."""
    extra = extra or {}
    main = [a for a in against if not a.startswith("reference:")]
    rows = []
    for m in methods:
        r = pick_one(summary, method=m, group="overall", subset="as_is")
        if r is None:
            continue
        e = extra.get(m, {})
        rows.append(
            [
                m,
                "-" if e.get("parameters") is None else f"{e['parameters']:,}",
                str(r["n_folds"]),
                fms(r["auroc_mean"], r["auroc_sd"]),
                fci(r["auroc_ci"]),
                fnum(r["auroc_pooled"]),
                fms(r["auprc_mean"], r["auprc_sd"]),
                fnum(r["auprc_pooled"]),
                fms(r["brier_mean"], r["brier_sd"]),
                fms(r["ece_mean"], r["ece_sd"]),
                *(fp(r.get(f"pc_auroc_vs_{a}")) for a in main),
                fnum(e.get("seconds"), 1),
            ]
        )
    secs = [
        Section(
            "Overall: test rows with the modalities they hold (mean ± sd over folds; pooled: all out-of-fold "
            "predictions of a repeat scored together, mean over repeats)",
            [
                "method",
                "parameters",
                "folds",
                "AUROC",
                "AUROC 95% CI",
                "AUROC pooled",
                "AUPRC (AP)",
                "AUPRC pooled",
                "Brier",
                "ECE",
                *_p_cols(main),
                "s / run",
            ],
            rows,
            "CI: fold bootstrap of the mean over folds; p: the corrected resampled t-test (Nadeau and Bengio 2003) "
            "over the same repeats x folds (results.csv also holds the plain paired t-test, p_auroc_vs_*, "
            "optimistic over overlapping training sets). Probabilities calibrated per fold (temperature scaling "
            f"on the inner validation split) when the runs were; ECE: {metrics.ECE_BINS} equal-width bins. logreg "
            "and gbm are reference learners on the cached features.",
        )
    ]
    secs.append(calibration_section(summary, methods, extra))
    names = [combination_name(c, ctx.modalities) for c in ctx.combos]
    for view, what in VIEW_TITLES.items():
        for metric, label in (("auroc", "AUROC"), ("auprc", "AUPRC (AP)")):
            secs.append(
                _combination_section(
                    summary,
                    methods,
                    names,
                    view,
                    metric,
                    f"{label} per modality combination: {what}, the other modalities masked",
                )
            )
    rows = []
    for m in methods:
        cells = []
        for g in names:
            part = pick_one(summary, method=m, group=g, subset="partial")
            cells.append(
                f"{fms(part['auroc_mean'], part['auroc_sd'])} (n={part['n_rows']})" if part and part["n_rows"] else "-"
            )
        rows.append([m, *cells])
    if any(c != "-" for r in rows for c in r[1:]):
        secs.append(
            Section(
                "AUROC of the rows lacking some modality of the combination (scored with what they hold "
                "of it), reported separately",
                ["method", *names],
                rows,
            )
        )
    for ref in refs:
        g = f"reference_subset:{ref}"
        rows = []
        for m in [f"reference:{ref}", *methods]:
            r = pick_one(summary, method=m, group=g, subset="as_is")
            if r is None:
                continue
            rows.append(
                [
                    m,
                    str(r["n_rows"]),
                    fms(r["auroc_mean"], r["auroc_sd"]),
                    fci(r["auroc_ci"]),
                    fms(r["auprc_mean"], r["auprc_sd"]),
                    fms(r["brier_mean"], r["brier_sd"]),
                    fms(r["ece_mean"], r["ece_sd"]),
                    fp(r.get(f"pc_auroc_vs_reference:{ref}")),
                ]
            )
        if rows:
            secs.append(
                Section(
                    f"Reference score {ref}: the test rows where it is valid, every method on the same rows",
                    ["method", "rows", "AUROC", "AUROC 95% CI", "AUPRC (AP)", "Brier", "ECE", *_p_cols([ref])],
                    rows,
                    f"{ref} is a score computed by the source, never an input. p: the corrected resampled t-test "
                    "(Nadeau and Bengio 2003) over the same repeats x folds, as in the overall table (results.csv "
                    f"also holds the plain paired t-test, p_auroc_vs_reference:{ref}).",
                )
            )
    return secs


def compare_figures(
    out: Path,
    ctx: StudyContext,
    folders: dict,
    specs: list,
    summary: list[dict[str, Any]],
    methods: Sequence[str],
    refs: dict,
    kind: str,
) -> list[Path]:
    pooled = collect.pooled(ctx, folders, specs)
    raw = collect.pooled(ctx, folders, specs, raw=True)
    curves = {m: pooled[m] for m in methods if m in pooled}
    before = {m: raw[m] for m in methods if m in raw}
    data = ctx.data()
    if kind == "binary":
        for ref, (vals, valid) in refs.items():
            tested = np.concatenate([te for _, te in ctx.folds[0]])
            tested = tested[valid[tested]]
            curves[f"reference:{ref} (its rows)"] = (
                data.labels_numpy(tested),
                vals[tested][:, None].astype(np.float64),
            )
            before[f"reference:{ref} (its rows)"] = curves[f"reference:{ref} (its rows)"]  # a score: never scaled
    figs = [
        figures.reliability_figure(
            out / "reliability.png",
            curves,
            kind,
            title=f"Reliability, out-of-fold predictions ({ctx.task})",
            before=before if len(before) > sum(k.startswith("reference:") for k in before) else None,
        )
    ]
    names = [combination_name(c, ctx.modalities) for c in ctx.combos]
    complete = [r for r in summary if r["subset"] == "complete"]
    figs.append(
        figures.group_bars(
            out / "auroc_by_combination.png",
            complete,
            methods,
            names,
            "auroc",
            title="AUROC per modality combination (mean ± sd over folds)",
        )
    )
    return figs
