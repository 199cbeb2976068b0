"""``omnifuse experiment compare``: the paper's table 3 from one cache.

Every method on the same patient-grouped folds and the same seeded missingness masks; per modality
combination (the modalities outside it masked for every test row; rows lacking one of its modalities
reported separately as ``partial``); mean ± sd over folds, fold-bootstrap 95 % CIs, Brier score, paired
t-tests of every method against OmniFuse and against its DWFuse-only variant (``dwfuse_only``: TLA, IMP-fw
and IMP-bw off, the paper's table 3 column) over the same folds, a reliability figure, and the cache's
reference score (APACHE IVa on eICU) on the test rows that have one, with every method scored on those same
rows.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from omnifuse.experiments import collect as C
from omnifuse.experiments import figures as F
from omnifuse.experiments.report import Section, StudyResult, fci, fms, fp, write_config, write_study
from omnifuse.experiments.runner import VARIANTS, StudyContext, build_context, fold_specs, run_all
from omnifuse.experiments.stats import pick, summarize

log = logging.getLogger(__name__)

AGAINST = ("omnifuse", "dwfuse_only")


class CompareResult(StudyResult):
    """A :class:`StudyResult` of :func:`compare`."""


def default_methods() -> list[str]:
    """Every registered method, then the DWFuse-only OmniFuse variant."""
    from omnifuse.fuse.base import METHODS, get_method

    get_method("omnifuse")  # populates the registry
    names = sorted(METHODS, key=lambda n: (n != "omnifuse", n))
    return names + ["dwfuse_only"]


def study_config(name: str, cache: Any, task: str, ctx: StudyContext, **kw: Any) -> dict[str, Any]:
    """The resolved configuration written to ``config.json``."""
    from omnifuse.fuse.tla import combination_name

    return {"study": name, "cache": str(cache) if isinstance(cache, (str, Path)) else None, "task": task,
            "modalities": ctx.modalities, "folds": len(ctx.folds[0]), "repeats": len(ctx.folds), "seed": ctx.seed,
            "combinations": [combination_name(c, ctx.modalities) for c in ctx.combos],
            "train": {k: v for k, v in ctx.cfg.to_json().items() if k not in ("method", "method_params", "task")},
            "variants": {k: {"method": v[0], "params": v[1]} for k, v in VARIANTS.items()}, **kw}


STUDY_DEFAULTS: dict[str, Any] = {"mining_rows": 512}
"""Training options the studies change from :class:`TrainConfig`'s defaults: TLA mines its lazy combination
on a fixed random subset of 512 training rows (the trainer's default 2048 costs 2^M - 1 forward passes of
up to 2048 rows after every epoch: on the eICU demo's five modalities that is most of OmniFuse's time)."""


def train_options(epochs: int | None, options: dict[str, Any] | None) -> dict[str, Any]:
    """:data:`STUDY_DEFAULTS` < ``options`` < ``epochs``."""
    opts = {**STUDY_DEFAULTS, **dict(options or {})}
    if epochs is not None:
        opts["epochs"] = int(epochs)
    return opts


def compare(
    cache: Any,
    task: str,
    methods: Sequence[str] | None = None,
    folds: int = 5,
    repeats: int = 1,
    seed: int = 0,
    out: str | Path = "experiments/compare",
    epochs: int | None = None,
    n_jobs: int = 1,
    progress: bool = True,
    method_overrides: dict[str, dict[str, Any]] | None = None,
    *,
    modalities: list[str] | None = None,
    combinations: str | Sequence[str] = "full+single",
    missing_rate: float = 0.0,
    missing_mode: str = "random",
    n_boot: int = 200,
    options: dict[str, Any] | None = None,
    threads: int | None = None,
    print_table: bool = True,
) -> CompareResult:
    """Cross-validated comparison of ``methods`` (registry names or ``dwfuse_only``; default: all of them and
    ``dwfuse_only``) on ``task`` of ``cache`` (a path or loaded data), written to ``out``.

    ``folds`` x ``repeats`` patient-grouped folds (repeat r seeded by ``seed + r``); ``epochs`` (default the
    trainer's 30, early stopping with patience 5 on an inner validation split); ``combinations``:
    ``"full+single"`` (all modalities and each one alone: cheap), ``"loo"``, ``"all"`` (2^M - 1) or a list
    such as ``["vitals+apache"]``; ``missing_rate``/``missing_mode`` (``random`` or a modality): simulated
    missingness of every row, the same mask for every method (seeded by fold and rate);
    ``method_overrides``: ``{method or variant: {param: value}}``; ``options``: other training options
    (:class:`omnifuse.fuse.config.TrainConfig` fields, e.g. ``batch_size``, ``lr``, ``device``);
    ``n_jobs``: runs trained at once (joblib processes); ``threads``: torch threads per run (None: torch's
    setting when ``n_jobs`` = 1, CPU count / ``n_jobs`` otherwise; on 2 cores ``n_jobs=2, threads=1`` is
    fastest). Resumable: finished runs under ``out/runs`` are reused.

    Writes config.json, results.csv (summary), folds.csv, results.json, results.md, reliability.png and
    auroc_by_combination.png; prints the tables.

    Measured on the eICU demo cache (2,492 labelled stays, 5 modalities, MiniLM mean-pooled text) on 2 CPU
    cores shared with other jobs (about 4x oversubscribed), ``n_jobs=2, threads=1``: ``["omnifuse", "concat"]``
    x 5 folds 4.5 min wall (134 CPU s of training); all 10 methods x 5 folds 16.7 min wall (OmniFuse 24-46
    CPU s per fold, the baselines 3-15). Unshared, the CPU times give about a quarter of the wall times.
    """
    t0 = time.perf_counter()
    out = Path(out)
    methods = list(methods) if methods else default_methods()
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods listed twice: {methods}")
    ctx = build_context(cache, task, modalities=modalities, folds=folds, repeats=repeats, seed=seed,
                        combinations=combinations, out=out, train_options=train_options(epochs, options))
    config = study_config("compare", cache, task, ctx, methods=methods, method_overrides=method_overrides or {},
                          missing_rate=missing_rate, missing_mode=missing_mode, n_boot=n_boot, n_jobs=n_jobs)
    write_config(out, config)
    specs = fold_specs(ctx, methods, method_overrides, rate=missing_rate, mode=missing_mode)
    stats = run_all(ctx, specs, out, n_jobs=n_jobs, threads=threads, progress=progress)
    refs = C.load_references(cache)
    data = ctx.data()
    preds = C.collect(ctx, stats.folders, specs, references=refs)
    preds += C.reference_preds(ctx, refs, data.task_kind, missing_rate)
    against = [a for a in AGAINST if a in methods] + [f"reference:{r}" for r in refs if data.task_kind == "binary"]
    summary, fold_recs = summarize(preds, data.task_kind, against=against, n_boot=n_boot, seed=seed,
                                   ci_subsets=("as_is", "complete"))
    sections = compare_sections(summary, methods, ctx, against, refs)
    figs = compare_figures(out, ctx, stats.folders, specs, summary, methods, refs, data.task_kind)
    seconds = {m: float(np.mean([_run_seconds(stats.folders[s]) for s in specs if s.label == m])) for m in methods}
    res = CompareResult(out=out, config=config, summary=summary, folds=fold_recs, sections=sections, figures=figs,
                        runs_trained=stats.trained, runs_reused=stats.reused, seconds=time.perf_counter() - t0,
                        extra={"mean_run_seconds": seconds})
    return write_study(res, print_table, title=f"compare: {task}")


def _run_seconds(folder: Path) -> float:
    import json

    return float(json.loads((folder / "run.json").read_text())["seconds"])


def _p_cols(against: Sequence[str]) -> list[str]:
    return [f"p AUROC vs {a}" for a in against]


def compare_sections(summary: list[dict[str, Any]], methods: Sequence[str], ctx: StudyContext,
                     against: Sequence[str], refs: dict) -> list[Section]:
    from omnifuse.fuse.tla import combination_name

    main = [a for a in against if not a.startswith("reference:")]
    rows = []
    for m in methods:
        r = pick(summary, method=m, group="overall", subset="as_is")
        if not r:
            continue
        r = r[0]
        rows.append([m, str(r["n_folds"]), fms(r["auroc_mean"], r["auroc_sd"]), fci(r["auroc_ci"]),
                     fms(r["auprc_mean"], r["auprc_sd"]), fci(r["auprc_ci"]), fms(r["brier_mean"], r["brier_sd"]),
                     *(fp(r.get(f"p_auroc_vs_{a}")) for a in main)])
    secs = [Section("Overall: test rows with the modalities they hold (mean ± sd over folds)",
                    ["method", "folds", "AUROC", "AUROC 95% CI", "AUPRC (AP)", "AUPRC 95% CI", "Brier", *_p_cols(main)],
                    rows, "CI: fold bootstrap of the mean over folds; p: paired t-test over the same folds.")]
    names = [combination_name(c, ctx.modalities) for c in ctx.combos]
    for metric, label in (("auroc", "AUROC"), ("auprc", "AUPRC (AP)")):
        rows = []
        for m in methods:
            cells = []
            for g in names:
                r = pick(summary, method=m, group=g, subset="complete")
                if not r:
                    cells.append("-")
                    continue
                r = r[0]
                mark = ""
                p = r.get(f"p_{metric}_vs_omnifuse")
                if p is not None and p == p and p < 0.05:
                    mark = " *"
                cells.append(fms(r[f"{metric}_mean"], r[f"{metric}_sd"]) + mark)
            rows.append([m, *cells])
        ns = []
        for g in names:
            r = pick(summary, method=methods[0], group=g, subset="complete")
            ns.append(f"{g} (n={r[0]['n_rows']})" if r else g)
        secs.append(Section(f"{label} per modality combination: test rows holding it, the other modalities masked",
                            ["method", *ns], rows, "*: p < 0.05 against omnifuse (paired t-test over folds)."))
    rows = []
    for m in methods:
        cells = []
        for g in names:
            r = pick(summary, method=m, group=g, subset="partial")
            cells.append(f"{fms(r[0]['auroc_mean'], r[0]['auroc_sd'])} (n={r[0]['n_rows']})" if r and r[0]["n_rows"] else "-")
        rows.append([m, *cells])
    if any(c != "-" for r in rows for c in r[1:]):
        secs.append(Section("AUROC of the rows lacking some modality of the combination (scored with what they hold "
                            "of it), reported separately", ["method", *names], rows))
    for ref in refs:
        g = f"reference_subset:{ref}"
        rows = []
        for m in [f"reference:{ref}", *methods]:
            r = pick(summary, method=m, group=g, subset="as_is")
            if not r:
                continue
            r = r[0]
            rows.append([m, str(r["n_rows"]), fms(r["auroc_mean"], r["auroc_sd"]), fci(r["auroc_ci"]),
                         fms(r["auprc_mean"], r["auprc_sd"]), fms(r["brier_mean"], r["brier_sd"]),
                         fp(r.get(f"p_auroc_vs_reference:{ref}"))])
        if rows:
            secs.append(Section(f"Reference score {ref}: the test rows where it is valid, every method on the same rows",
                                ["method", "rows", "AUROC", "AUROC 95% CI", "AUPRC (AP)", "Brier", f"p AUROC vs {ref}"],
                                rows, f"{ref} is a score computed by the source, never an input."))
    return secs


def compare_figures(out: Path, ctx: StudyContext, folders: dict, specs: list, summary: list[dict[str, Any]],
                    methods: Sequence[str], refs: dict, kind: str) -> list[Path]:
    from omnifuse.fuse.tla import combination_name

    pooled = C.pooled(ctx, folders, specs)
    curves = {m: pooled[m] for m in methods if m in pooled}
    data = ctx.data()
    if kind == "binary":
        for ref, (vals, valid) in refs.items():
            rows = np.concatenate([te for _, te in ctx.folds[0]])
            rows = rows[valid[rows]]
            curves[f"reference:{ref} (its rows)"] = (data.labels_numpy(rows), vals[rows][:, None].astype(np.float64))
    figs = [F.reliability_figure(out / "reliability.png", curves, kind,
                                 title=f"Reliability, out-of-fold predictions ({ctx.task})")]
    names = [combination_name(c, ctx.modalities) for c in ctx.combos]
    rows = [r for r in summary if r["subset"] == "complete"]
    figs.append(F.group_bars(out / "auroc_by_combination.png", rows, methods, names, "auroc",
                             title="AUROC per modality combination (mean ± sd over folds)"))
    return figs
