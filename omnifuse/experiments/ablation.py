"""``omnifuse experiment ablation``: the rows of the paper's table 4, per modality combination.

The OmniFuse network with its switches (``omnifuse.fuse.methods.omnifuse``):

====  ======  ===  ======  ======  ================================================================
row   DWFuse  TLA  IMP-fw  IMP-bw  reading
====  ======  ===  ======  ======  ================================================================
a                                  every component off: encoders, concatenation, the joint head
b     x                            + DWFuse (the "DWFuse-only" model of table 3)
c     x       x                    + TLA
d     x       x    x               + forward imputation (CRA)
e     x            x       x       DWFuse + IMP-fw + IMP-bw, TLA off (our reading, see below)
f     x       x    x       x       everything (OmniFuse)
====  ======  ===  ======  ======  ================================================================

Row (e): the paper's table 4 ticks three of the four components in row (e) but the PDF text loses which.
IMP-bw needs IMP-fw (the backward CRA reconstructs the forward CRA's output), so "TLA, IMP-bw without
IMP-fw" is impossible and leaving DWFuse out would break the table's cumulative reading; the remaining
possibility is DWFuse + IMP-fw + IMP-bw without TLA, i.e. (f) with TLA removed. The paper's numbers agree:
(e) is mostly below (d) and (f), as removing TLA lowered (c) to (b).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from omnifuse.experiments import collect as C
from omnifuse.experiments import figures as F
from omnifuse.experiments.compare import study_config, train_options
from omnifuse.experiments.report import Section, StudyResult, fms, fp, write_config, write_study
from omnifuse.experiments.runner import build_context, fold_specs, run_all
from omnifuse.experiments.stats import pick, summarize
from omnifuse.fuse.tla import combination_name

_SW = ("dwfuse", "tla", "imp_fw", "imp_bw")
ROWS: dict[str, tuple[bool, bool, bool, bool]] = {
    "a": (False, False, False, False),
    "b": (True, False, False, False),
    "c": (True, True, False, False),
    "d": (True, True, True, False),
    "e": (True, False, True, True),
    "f": (True, True, True, True),
}
"""Table 4's rows as (DWFuse, TLA, IMP-fw, IMP-bw)."""


def row_params(row: str) -> dict[str, bool]:
    """The OmniFuse switches of one row of table 4."""
    if row not in ROWS:
        raise ValueError(f"unknown ablation row {row!r}; rows are {sorted(ROWS)}")
    return dict(zip(_SW, ROWS[row]))


def ablation(
    cache: Any,
    task: str,
    rows: Sequence[str] = ("a", "b", "c", "d", "e", "f"),
    folds: int = 5,
    repeats: int = 1,
    seed: int = 0,
    out: str | Path = "experiments/ablation",
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
) -> StudyResult:
    """The ablation rows (a to f, see the module docstring) per modality combination, mean ± sd over the same
    folds, paired t-tests of every row against row (f). ``method_overrides["omnifuse"]`` (or
    ``["ablation_<row>"]``) sets OmniFuse's other parameters. Writes config.json, results.csv/json/md,
    folds.csv and ablation.png; prints the table.

    ``n_jobs``/``threads``: as in :func:`omnifuse.experiments.compare.compare`.

    Measured on the eICU demo cache on 2 CPU cores shared with other jobs, ``n_jobs=2, threads=1``: 6 rows x
    5 folds 20 min wall (rows c, d, f with TLA 12-46 CPU s per fold, the others 6-19).
    """
    t0 = time.perf_counter()
    out = Path(out)
    rows = list(rows)
    for r in rows:
        row_params(r)
    ctx = build_context(cache, task, modalities=modalities, folds=folds, repeats=repeats, seed=seed,
                        combinations=combinations, out=out, train_options=train_options(epochs, options))
    config = study_config("ablation", cache, task, ctx, rows={r: row_params(r) for r in rows},
                          row_e_reading="DWFuse + IMP-fw + IMP-bw, TLA off (IMP-bw needs IMP-fw)",
                          method_overrides=method_overrides or {}, missing_rate=missing_rate,
                          missing_mode=missing_mode, n_boot=n_boot)
    write_config(out, config)
    labels = [f"ablation_{r}" for r in rows]
    extra = {f"ablation_{r}": ("omnifuse", row_params(r)) for r in rows}
    specs = fold_specs(ctx, labels, method_overrides, rate=missing_rate, mode=missing_mode, extra=extra)
    stats = run_all(ctx, specs, out, n_jobs=n_jobs, threads=threads, progress=progress)
    preds = C.collect(ctx, stats.folders, specs, partial=False)
    data = ctx.data()
    against = ["ablation_f"] if "f" in rows else []
    summary, recs = summarize(preds, data.task_kind, against=against, n_boot=n_boot, seed=seed,
                              ci_subsets=("as_is",))
    names = [combination_name(c, ctx.modalities) for c in ctx.combos]
    tick = lambda b: "✓" if b else ""  # noqa: E731
    table = []
    for r, lab in zip(rows, labels):
        cells = [f"({r})", *(tick(v) for v in ROWS[r])]
        for g in ["overall", *names]:
            x = pick(summary, method=lab, group=g, subset="as_is" if g == "overall" else "complete")
            cells.append(fms(x[0]["auroc_mean"], x[0]["auroc_sd"]) if x else "-")
        x = pick(summary, method=lab, group="overall", subset="as_is")
        cells.append(fp(x[0].get("p_auroc_vs_ablation_f")) if x else "-")
        table.append(cells)
    ns = []
    for g in names:
        x = pick(summary, method=labels[0], group=g, subset="complete")
        ns.append(f"{g} (n={x[0]['n_rows']})" if x else g)
    sections = [Section("Ablation (table 4): AUROC mean ± sd over folds; combinations on the test rows holding them, "
                        "other modalities masked",
                        ["row", "DWFuse", "TLA", "IMP-fw", "IMP-bw", "overall", *ns, "p overall vs (f)"], table,
                        "Row (e) reading: DWFuse + IMP-fw + IMP-bw with TLA off (IMP-bw needs IMP-fw).")]
    bars = [dict(r, method=r["method"].replace("ablation_", "row ")) for r in summary
            if (r["subset"] == "complete") or (r["group"] == "overall")]
    figs = [F.group_bars(out / "ablation.png", bars, [f"row {r}" for r in rows], ["overall", *names], "auroc",
                         title="Ablation of OmniFuse's components (table 4)")]
    res = StudyResult(out=out, config=config, summary=summary, folds=recs, sections=sections, figures=figs,
                      runs_trained=stats.trained, runs_reused=stats.reused, seconds=time.perf_counter() - t0)
    return write_study(res, print_table, title=f"ablation: {task}")
