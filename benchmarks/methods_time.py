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
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

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
    from omnifuse.experiments.config import CompareConfig, study_config
    from omnifuse.experiments.runner import RunSpec, execute_run, freeze_params, method_params, study_context

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="methods_time_") as tmp:
        cfg = study_config(CompareConfig, None, task=task, folds=folds, repeats=repeats, out=Path(tmp) / "study")
        ctx = study_context(cache, cfg)
        ctx.data()  # load once, outside the timings
        rows = []
        for name in methods:
            spec = RunSpec(
                label=name,
                method=name,
                params=freeze_params(method_params(name, None)),
                repeat=repeat,
                fold=fold,
                rate=float(cfg.missing_rate),
                mode=cfg.missing_mode,
            )
            t0 = time.perf_counter()
            rec = execute_run(ctx, spec, Path(tmp) / name)
            wall = time.perf_counter() - t0
            hist = rec.get("history") or []
            epochs = len(hist)
            train_s = sum(float(h.get("seconds", 0.0)) for h in hist)
            rows.append(
                {
                    "method": name,
                    "parameters": rec.get("parameters"),
                    "epochs": epochs,
                    "best_epoch": rec.get("best_epoch"),
                    "seconds": wall,
                    "cpu_seconds": rec.get("cpu_seconds"),
                    "seconds_per_epoch": train_s / epochs if epochs else None,
                    "best_val_auroc": rec.get("best_val_auroc"),
                }
            )
            print(f"{name:12s} {wall:7.1f} s  {epochs:3d} epochs", flush=True)
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
    ap.add_argument("--cache", required=True, help="the feature cache (read only)")
    ap.add_argument("--task", default=None)
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated registry entries")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=0)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3, help="repeats of the full comparison being estimated")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=2, help="runs at once in the comparison being estimated")
    ap.add_argument("--json", default=None, help="also write the records to this file")
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
