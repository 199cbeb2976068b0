"""Writing a study's results: ``config.json`` (resolved), ``results.csv`` (one summary row per method and
cell), ``folds.csv`` (one row per fold and cell), ``results.json`` (all of it), ``results.md`` (Markdown
tables) and the same tables printed with rich; the number formats of every table, and the calibration table
(:func:`calibration_section`) that compare's results and every report share."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from omnifuse.experiments.stats import pick_one
from omnifuse.utils import json_safe


@dataclass
class Section:
    """One table: a title, column headers, rows of cell strings and an optional note under it."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""


@dataclass
class StudyResult:
    """What every study function returns: its folder, the resolved config, the summary rows (those of
    ``results.csv``), the per-fold records, the tables and the figures written; ``runs_trained`` and
    ``runs_reused`` tell what a resumed study recomputed (``runs_stale``: finished runs retrained because the
    cache they were made from changed); ``seconds`` is the study's wall time."""

    out: Path
    config: dict[str, Any]
    summary: list[dict[str, Any]]
    folds: list[dict[str, Any]]
    sections: list[Section]
    figures: list[Path] = field(default_factory=list)
    runs_trained: int = 0
    runs_reused: int = 0
    runs_stale: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def markdown(self) -> str:
        return to_markdown(self.sections)

    def print(self, console: Any = None) -> None:
        print_sections(self.sections, console)


ResultT = TypeVar("ResultT", bound=StudyResult)


def fnum(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, (int,)) and not isinstance(v, bool):
        return str(v)
    return f"{float(v):.{digits}f}"


def fms(mean: Any, sd: Any, digits: int = 3) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    return f"{fnum(mean, digits)} ± {fnum(sd, digits)}"


def fci(ci: Sequence[float] | None, digits: int = 3) -> str:
    if not ci or any(v is None or (isinstance(v, float) and math.isnan(v)) for v in ci):
        return "-"
    return f"[{fnum(ci[0], digits)}, {fnum(ci[1], digits)}]"


def fp(p: Any) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "-"
    return f"{p:.2g}" if p >= 0.001 else "<0.001"


def _cell(value: Any) -> str:
    """A Markdown table cell: ``|`` escaped, line breaks as spaces."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(sections: Sequence[Section]) -> str:
    parts = []
    for s in sections:
        parts.append(f"### {s.title}\n")
        parts.append("| " + " | ".join(_cell(h) for h in s.headers) + " |")
        parts.append("| " + " | ".join("---" for _ in s.headers) + " |")
        for r in s.rows:
            parts.append("| " + " | ".join(_cell(c) for c in r) + " |")
        if s.note:
            parts.append(f"\n{s.note}")
        parts.append("")
    return "\n".join(parts)


def print_sections(sections: Sequence[Section], console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    for s in sections:
        t = Table(title=s.title, caption=s.note or None)
        for h in s.headers:
            t.add_column(h)
        for r in s.rows:
            t.add_row(*(str(c) for c in r))
        console.print(t)


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Rows with the union of their keys as columns (first-seen order); lists as JSON, NaN as empty."""
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in rows:
            out = []
            for c in cols:
                v = json_safe(r.get(c))
                out.append("" if v is None else json.dumps(v) if isinstance(v, (list, dict)) else v)
            w.writerow(out)


def write_config(out: Path, config: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(json_safe(config), indent=1))


def write_study(result: ResultT, print_table: bool = True, title: str = "") -> ResultT:
    """Write results.csv, folds.csv, results.json and results.md into ``result.out``; print the tables."""
    out = result.out
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "results.csv", result.summary)
    write_csv(out / "folds.csv", result.folds)
    payload = {
        "config": result.config,
        "summary": result.summary,
        "folds": result.folds,
        "figures": [p.name for p in result.figures],
        "runs_trained": result.runs_trained,
        "runs_reused": result.runs_reused,
        "runs_stale": result.runs_stale,
        "seconds": result.seconds,
        **result.extra,
    }
    (out / "results.json").write_text(json.dumps(json_safe(payload), indent=1))
    head = f"# {title}\n\n" if title else ""
    figs = "".join(f"![{p.stem}]({p.name})\n\n" for p in result.figures)
    stale = f" ({result.runs_stale} retrained: the cache changed)" if result.runs_stale else ""
    tail = (
        f"\n{result.runs_trained} run(s) trained{stale}, {result.runs_reused} reused; "
        f"{result.seconds:.0f} s wall time.\n"
    )
    (out / "results.md").write_text(head + result.markdown() + "\n" + figs + tail)
    if print_table:
        result.print()
    return result


# ------------------------------------------------------------------------------------- calibration
def temperatures_cell(runs: list[list[float] | None] | None) -> str:
    """Median temperature over a method's runs (and labels) with its range; "-" when no run recorded one."""
    vals = [t for r in runs or [] if r for t in r]
    if not vals:
        return "-"
    if min(vals) == max(vals):
        return fnum(vals[0], 2)
    return f"{fnum(float(np.median(vals)), 2)} [{fnum(min(vals), 2)}, {fnum(max(vals), 2)}]"


def before_after(row: dict[str, Any], before: str, after: str) -> str:
    """``"before → after"`` of two summary fields; the after value alone when the run has no before."""
    b = row.get(before)
    if b is None or (isinstance(b, float) and b != b):
        return fnum(row.get(after))
    return f"{fnum(b)} → {fnum(row.get(after))}"


def calibration_section(
    summary: list[dict[str, Any]], methods: Sequence[str], extra: dict[str, dict[str, Any]] | None = None
) -> Section:
    """Per method: its temperatures (median over folds and labels, [range]), then before → after temperature
    scaling: Brier score and ECE (mean over folds), pooled Brier, ECE and AUROC (every test row of a repeat
    scored together), beside the fold-mean AUROC. A method never scaled (every temperature 1: reference learners,
    ``calibrate=false``) or without probabilities before calibration (runs stored before calibration existed)
    shows one number."""
    extra = extra or {}
    rows = []
    for m in methods:
        r = pick_one(summary, method=m, group="overall", subset="as_is")
        if r is None:
            continue
        temps = extra.get(m, {}).get("temperature")
        scaled = any(t != 1.0 for run in temps or [] if run for t in run)

        def cell(before: str, after: str, r: dict[str, Any] = r, scaled: bool = scaled) -> str:
            return before_after(r, before, after) if scaled else fnum(r.get(after))

        rows.append(
            [
                m,
                temperatures_cell(temps),
                cell("brier_uncalibrated_mean", "brier_mean"),
                cell("ece_uncalibrated_mean", "ece_mean"),
                cell("brier_pooled_uncalibrated", "brier_pooled"),
                cell("ece_pooled_uncalibrated", "ece_pooled"),
                fnum(r["auroc_mean"]),
                cell("auroc_pooled_uncalibrated", "auroc_pooled"),
            ]
        )
    return Section(
        "Calibration: before → after temperature scaling (each fold's network on its inner validation split)",
        [
            "method",
            "temperature",
            "Brier",
            "ECE",
            "Brier pooled",
            "ECE pooled",
            "AUROC (fold mean)",
            "AUROC pooled",
        ],
        rows,
        "temperature: median over folds (and labels) [range]; T > 1 softens over-confident probabilities. Brier, ECE: "
        "mean over folds; pooled: every out-of-fold prediction of a repeat scored together (fold models on "
        "different probability scales lower the pooled AUROC below the fold mean; calibration brings them onto "
        "one scale). Fold AUROC does not change with a temperature (binary, multilabel). Reference learners "
        "keep T = 1 (no inner validation split).",
    )
