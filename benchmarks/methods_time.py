"""Stage-two cost of every fusion method: one run of ``omnifuse experiment compare`` per method, timed.

Each method trains the same fold (``--fold``, ``--repeat``) of the cache exactly as a compare run does
(:func:`omnifuse.experiments.runner.execute_run`: training with early stopping, calibration, the overall and
per-combination test predictions), one after the other in this process with ``--threads`` torch threads.
Prints a table (method, parameters, epochs run, wall and CPU seconds per run and per epoch) and an estimate
of the full comparison's wall time: ``folds x repeats`` runs per method, ``--jobs`` of them at once (the sum of
the per-run seconds times ``folds x repeats``, divided by ``--jobs``; this ignores the idle tail at the end and
the contention between the simultaneous runs). On a machine shared with other jobs the wall seconds measure
the load; the CPU seconds (``time.process_time``) estimate what a quiet core would take.

    python benchmarks/methods_time.py --cache /work/runs/eicu8.zarr --threads 1
    python benchmarks/methods_time.py --cache cache.zarr --methods drfuse,m3care --json times.json

Seconds depend on the machine's load: say whether other jobs shared it when quoting them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from _timing import add_study_arguments, compare_runs  # the loop shared with compare_profile.py

DEFAULT_METHODS = (
    "omnifuse",
    "mdrop",
    "concat",
    "sum",
    "se_gate",
    "gblend",
    "ogm_ge",
    "pmr",
    "medfuse",
    "drfuse",
    "shaspec",
    "m3care",
    "smil",
    "flexmoe",
    "healnet",
    "muse",
    "umse",
    "dwfuse_only",
    "logreg",
    "gbm",
)
"""The 17 methods (nine baselines of OmniFuse's table 3 with OmniFuse and mdrop, eight missing-modality
methods), then the DWFuse-only variant and the two reference learners that ``experiment compare`` adds."""


def time_methods(
    cache: str,
    methods: list[str],
    task: str | None,
    fold: int,
    repeat: int,
    folds: int,
    repeats: int,
    threads: int,
) -> list[dict[str, Any]]:
    """One compare run per method on fold ``fold`` of repeat ``repeat``; a record per method."""
    torch.set_num_threads(threads)
    rows = []
    runs = compare_runs(
        cache, methods, task=task, fold=fold, repeat=repeat, folds=folds, repeats=repeats, prefix="methods_time_"
    )
    for run in runs:
        train_s = sum(float(h.get("seconds", 0.0)) for h in run.rec.get("history") or [])
        rows.append(
            {
                **run.summary(),
                "seconds": run.seconds,
                "cpu_seconds": run.rec.get("cpu_seconds"),
                "seconds_per_epoch": train_s / run.epochs if run.epochs else None,
            }
        )
        print(f"{run.method:12s} {run.seconds:7.1f} s  {run.epochs:3d} epochs", flush=True)
    return rows


def table(rows: list[dict[str, Any]], runs_per_method: int, jobs: int) -> str:
    """The rows as a Markdown table, then the estimate of the full comparison's wall time."""

    def f(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    lines = [
        "| method | parameters | epochs run (best) | s / run (wall) | CPU s / run | s / epoch (wall) | "
        "CPU s / epoch | CPU s in the comparison / jobs |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in sorted(rows, key=lambda r: -(r["cpu_seconds"] or r["seconds"])):
        best = r["best_epoch"]
        ep = f"{r['epochs']} ({best})" if r["epochs"] else "-"
        cpu = r["cpu_seconds"] or r["seconds"]
        cpu_ep = cpu / r["epochs"] if r["epochs"] else None
        lines.append(
            f"| {r['method']} | {f(r['parameters'], ',')} | {ep} | {r['seconds']:.1f} | {cpu:.1f} | "
            f"{f(r['seconds_per_epoch'], '.2f')} | {f(cpu_ep, '.2f')} | {cpu * runs_per_method / jobs:.0f} |"
        )
    total = sum(r["seconds"] for r in rows)
    total_cpu = sum(r["cpu_seconds"] or r["seconds"] for r in rows)
    lines.append("")
    lines.append(
        f"one run per entry: {total:.1f} s wall, {total_cpu:.1f} CPU s; {runs_per_method} runs per entry, {jobs} at "
        f"once: about {total * runs_per_method / jobs / 60:.1f} min wall at this run's load, "
        f"{total_cpu * runs_per_method / jobs / 60:.1f} min on {jobs} quiet cores (CPU seconds: a one-thread run's "
        f"wall time when it has a core to itself) for the full comparison ({len(rows)} entries)"
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_study_arguments(ap, DEFAULT_METHODS)
    args = ap.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    rows = time_methods(
        args.cache, methods, args.task, args.fold, args.repeat, args.folds, max(args.repeat + 1, 1), args.threads
    )
    print()
    print(table(rows, args.folds * args.repeats, args.jobs))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
