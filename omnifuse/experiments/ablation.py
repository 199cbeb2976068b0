"""``omnifuse experiment ablation``: the rows of the paper's table 4, per modality combination.

The OmniFuse network with its switches (DWFuse, TLA, IMP-fw, IMP-bw) set per row: the registry entries
``ablation_a`` to ``ablation_f`` (``omnifuse.fuse.methods.omnifuse.ABLATION_ROWS`` holds each row's switches
and reading, row (e)'s included: DWFuse + IMP-fw + IMP-bw with TLA off, because IMP-bw needs IMP-fw).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omnifuse.experiments import collect, figures
from omnifuse.experiments.config import AblationConfig, study_config
from omnifuse.experiments.report import Section, StudyResult, fms, fp, write_config
from omnifuse.experiments.runner import (
    StudyError,
    finish_study,
    fold_specs,
    run_study,
    study_context,
    study_record,
    test_train_ratio,
)
from omnifuse.experiments.stats import pick, summarize
from omnifuse.fuse.methods import get_method
from omnifuse.fuse.methods.omnifuse import ABLATION_SWITCHES
from omnifuse.fuse.tla import combination_name


def row_params(row: str) -> dict[str, bool]:
    """The OmniFuse switches of one row of table 4: the registry entry ``ablation_<row>``."""
    try:
        params = get_method(f"ablation_{row}").params
    except KeyError as e:
        raise StudyError(f"unknown ablation row {row!r}; rows are a to f") from e
    return {k: bool(params[k]) for k in ABLATION_SWITCHES}


def ablation(
    cache: Any, task: str | None = None, rows: Sequence[str] | None = None, *, config: Any = None, **overrides: Any
) -> StudyResult:
    """The ablation rows (a to f, see the module docstring; the registry entries ``ablation_<row>``) per
    modality combination, mean ± sd over the same folds, paired t-tests of every row against row (f).
    Options: :class:`AblationConfig`; ``method_overrides["omnifuse"]`` (or ``["ablation_<row>"]``) sets
    OmniFuse's other parameters. Writes config.json, results.csv/json/md, folds.csv and ablation.png; prints
    the table.

    Measured on the eICU demo cache on 2 CPU cores shared with other jobs, ``n_jobs=2, threads=1``: 6 rows x
    5 folds 20 min wall (rows c, d, f with TLA 12-46 CPU s per fold, the others 6-19).
    """
    t0 = time.perf_counter()
    cfg = study_config(AblationConfig, config, task=task, rows=list(rows) if rows else None, **overrides)
    out = Path(cfg.out)
    switches = {r: row_params(r) for r in cfg.rows}
    ctx = study_context(cache, cfg)
    record = study_record(
        "ablation",
        cache,
        ctx,
        cfg,
        rows=switches,
        row_e_reading="DWFuse + IMP-fw + IMP-bw, TLA off (IMP-bw needs IMP-fw)",
    )
    write_config(out, record)
    labels = [f"ablation_{r}" for r in cfg.rows]
    specs = fold_specs(ctx, labels, cfg.method_overrides, rate=cfg.missing_rate, mode=cfg.missing_mode)
    stats = run_study(ctx, specs, cfg)
    preds = collect.collect(ctx, stats.folders, specs, partial=False)
    data = ctx.data()
    against = ["ablation_f"] if "f" in cfg.rows else []
    summary, recs = summarize(
        preds,
        data.task_kind,
        against=against,
        n_boot=cfg.n_boot,
        seed=cfg.seed,
        ci_subsets=("as_is",),
        test_train_ratio=test_train_ratio(ctx),
    )
    names = [combination_name(c, ctx.modalities) for c in ctx.combos]
    tick = lambda b: "✓" if b else ""  # noqa: E731
    table = []
    for r, lab in zip(cfg.rows, labels, strict=True):
        cells = [f"({r})", *(tick(v) for v in switches[r].values())]
        for g in ["overall", *names]:
            x = pick(summary, method=lab, group=g, subset="as_is" if g == "overall" else "complete")
            cells.append(fms(x[0]["auroc_mean"], x[0]["auroc_sd"]) if x else "-")
        x = pick(summary, method=lab, group="overall", subset="as_is")
        cells.append(fp(x[0].get("pc_auroc_vs_ablation_f")) if x else "-")
        table.append(cells)
    ns = []
    for g in names:
        x = pick(summary, method=labels[0], group=g, subset="complete")
        ns.append(f"{g} (n={x[0]['n_rows']})" if x else g)
    sections = [
        Section(
            "Ablation (table 4): AUROC mean ± sd over folds; combinations on the test rows holding them, "
            "other modalities masked",
            ["row", "DWFuse", "TLA", "IMP-fw", "IMP-bw", "overall", *ns, "p overall vs (f), corrected"],
            table,
            "Row (e) reading: DWFuse + IMP-fw + IMP-bw with TLA off (IMP-bw needs IMP-fw).",
        )
    ]
    bars = [
        dict(r, method=r["method"].replace("ablation_", "row "))
        for r in summary
        if (r["subset"] == "complete") or (r["group"] == "overall")
    ]
    figs = [
        figures.group_bars(
            out / "ablation.png",
            bars,
            [f"row {r}" for r in cfg.rows],
            ["overall", *names],
            "auroc",
            title="Ablation of OmniFuse's components (table 4)",
        )
    ]
    return finish_study("ablation", cfg, record, stats, t0, (summary, recs, sections, figs))
