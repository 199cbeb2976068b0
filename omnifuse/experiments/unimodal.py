"""``omnifuse experiment unimodal``: the paper's table 2 and figure 2 (modality laziness).

For every modality m: a unimodal model (``unimodal_method``, default ``concat``: with one modality it is
that modality's encoder and a classifier head) trained on the fold's training rows that hold m, against each
fused model (``fused``) evaluated on the same test rows with only m given (every other modality masked and,
for methods that impute, imputed). A fused model that scores below the unimodal model of m when given only m
has not learnt to use m on its own: the modality is "lazy" in that model. The fused models' score with all
modalities is shown beside. Paired t-tests (same folds) of each fused model given only m against the
unimodal model of m.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omnifuse.experiments import collect, figures
from omnifuse.experiments.config import UnimodalConfig, study_config
from omnifuse.experiments.report import Section, StudyResult, fms, fp, write_config
from omnifuse.experiments.runner import (
    RunSpec,
    finish_study,
    fold_specs,
    freeze_params,
    method_params,
    run_study,
    study_context,
    study_record,
    test_train_ratio,
)
from omnifuse.experiments.stats import FoldPred, corrected_ttest, paired_ttest, pick, summarize


def unimodal(
    cache: Any, task: str | None = None, fused: Sequence[str] | None = None, *, config: Any = None, **overrides: Any
) -> StudyResult:
    """Unimodal models of every modality against the ``fused`` models given that modality alone. Options:
    :class:`UnimodalConfig`.

    Same folds (and options) as :func:`omnifuse.experiments.compare.compare`; a fused run of a compare study
    is not shared (each study keeps its own runs). Writes config.json, results.csv/json/md, folds.csv and
    unimodal.png (figure 2); prints the table.

    Measured on the eICU demo cache (5 modalities) on 2 CPU cores shared with other jobs, 1 thread, 5 folds
    (35 runs): 12.1 min wall.
    """
    t0 = time.perf_counter()
    cfg = study_config(UnimodalConfig, config, task=task, fused=list(fused) if fused else None, **overrides)
    out, fused = Path(cfg.out), list(cfg.fused)
    ctx = study_context(cache, cfg, combinations="full+single")
    record = study_record("unimodal", cache, ctx, cfg)
    write_config(out, record)
    fused_specs = fold_specs(ctx, fused, cfg.method_overrides)
    params = freeze_params(method_params(cfg.unimodal_method, cfg.method_overrides))
    uni_specs = [
        RunSpec(
            label=f"unimodal:{m}",
            method=cfg.unimodal_method,
            params=params,
            repeat=r,
            fold=k,
            modalities=(m,),
            train_modality=m,
        )
        for m in ctx.modalities
        for r, rep in enumerate(ctx.folds)
        for k in range(len(rep))
    ]
    stats = run_study(ctx, fused_specs + uni_specs, cfg)
    preds = collect.collect(ctx, stats.folders, fused_specs, partial=False)
    for s in uni_specs:
        # the unimodal model's own rows: test rows holding m (its "m alone" combination); renamed "unimodal"
        for p in collect.run_preds(ctx, s, stats.folders[s], partial=False):
            if p.group == s.train_modality:
                preds.append(FoldPred("unimodal", p.repeat, p.fold, p.group, p.subset, p.y, p.p))
    data = ctx.data()
    summary, recs = summarize(
        preds,
        data.task_kind,
        against=["unimodal"],
        n_boot=cfg.n_boot,
        seed=cfg.seed,
        ci_subsets=("complete",),
        test_train_ratio=test_train_ratio(ctx),
    )
    full = "+".join(ctx.modalities)
    rows = []
    for m in ctx.modalities:
        u = pick(summary, method="unimodal", group=m, subset="complete")
        cells = [m, str(u[0]["n_rows"]) if u else "-", fms(u[0]["auroc_mean"], u[0]["auroc_sd"]) if u else "-"]
        for f in fused:
            r = pick(summary, method=f, group=m, subset="complete")
            cells += [
                fms(r[0]["auroc_mean"], r[0]["auroc_sd"]) if r else "-",
                fp(r[0].get("pc_auroc_vs_unimodal")) if r else "-",
            ]
        rows.append(cells)
    fr = [
        [
            f,
            fms(
                *(lambda r: (r["auroc_mean"], r["auroc_sd"]))(pick(summary, method=f, group=full, subset="complete")[0])
            ),
        ]
        for f in fused
        if pick(summary, method=f, group=full, subset="complete")
    ]
    headers = ["modality", "test rows", f"unimodal ({cfg.unimodal_method}) AUROC"]
    for f in fused:
        headers += [f"{f} given only it", "p vs unimodal (corrected)"]
    sections = [
        Section(
            "AUROC per modality: unimodal model against fused models given only that modality "
            "(test rows holding it, mean ± sd over folds)",
            headers,
            rows,
            "A fused model below the unimodal model on a modality has not learnt to use it alone (laziness).",
        ),
        Section(f"Fused models with every modality ({full}, test rows holding all)", ["method", "AUROC"], fr),
    ]
    lazy: dict[str, dict[str, dict[str, float]]] = {}
    for f in fused:
        lazy[f] = {}
        for m in ctx.modalities:
            uni = {(x["repeat"], x["fold"]): x["auroc"] for x in recs if x["method"] == "unimodal" and x["group"] == m}
            fus = {(x["repeat"], x["fold"]): x["auroc"] for x in recs if x["method"] == f and x["group"] == m}
            common = sorted(set(uni) & set(fus))
            a, b = [fus[c] for c in common], [uni[c] for c in common]
            t, tc = paired_ttest(a, b), corrected_ttest(a, b, test_train_ratio(ctx))
            lazy[f][m] = {"diff_auroc_fused_minus_unimodal": t.mean_diff, "p": tc.p, "p_plain": t.p}
    bar_rows = [r for r in summary if r["subset"] == "complete" and r["group"] in ctx.modalities]
    hl = {
        f"{f}, all modalities": pick(summary, method=f, group=full, subset="complete")[0]["auroc_mean"]
        for f in fused
        if pick(summary, method=f, group=full, subset="complete")
    }
    figs = [
        figures.group_bars(
            out / "unimodal.png",
            bar_rows,
            ["unimodal", *fused],
            ctx.modalities,
            "auroc",
            title="Unimodal models vs fused models given one modality (figure 2)",
            hlines=hl,
        )
    ]
    return finish_study("unimodal", cfg, record, stats, t0, (summary, recs, sections, figs), extra={"laziness": lazy})
