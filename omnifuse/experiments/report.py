"""Writing a study's results: ``config.json`` (resolved), ``results.csv`` (one summary row per method and
cell), ``folds.csv`` (one row per fold and cell), ``results.json`` (all of it), ``results.md`` (Markdown
tables) and the same tables printed with rich."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

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
