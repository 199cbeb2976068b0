"""What modality attribution adds to a study: training against Shapley-value time per run.

Trains one fold of each method through the study runner (``execute_run``, as ``experiment compare`` does) with
attribution on, one torch thread, one run after the other, and prints per run the training and prediction time
(``run.json: seconds, cpu_seconds``) beside the attribution time (``run.json: attribution``), the test rows and
the subsets predicted per row; then the share over all the runs (the reference learners are trained, not
attributed). Optionally times ``write_report`` on a finished study folder (written to a temporary folder).

Usage: python benchmarks/study_attribution.py --cache /work/runs/eicu8.zarr [--methods omnifuse,concat]
       [--folds 5 --fold 0] [--study /work/runs/cmp12]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from omnifuse.experiments.compare import default_methods
from omnifuse.experiments.run_report import write_report
from omnifuse.experiments.runner import build_context, execute_run, fold_specs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", required=True)
    ap.add_argument("--task", default="mortality")
    ap.add_argument("--methods", default=",".join(default_methods()))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--study", default=None, help="a finished study folder: time its report")
    args = ap.parse_args()
    torch.set_num_threads(1)
    methods = [m for m in args.methods.split(",") if m]
    ctx = build_context(args.cache, args.task, folds=args.folds, repeats=1, seed=0, train_options={"progress": False})
    ctx.attribution = True
    specs = [s for s in fold_specs(ctx, methods) if s.fold == args.fold]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for s in specs:
            folder = Path(tmp) / s.key
            folder.mkdir(parents=True)
            execute_run(ctx, s, folder)
            rec = json.loads((folder / "run.json").read_text())
            att = rec.get("attribution") or {}
            rows.append((s.label, rec["n_test"], rec["seconds"], rec["cpu_seconds"], att))
            print(f"{s.label}: {rec['cpu_seconds']:.1f} CPU s training, {att.get('cpu_seconds', 0):.1f} attribution")
    M = len(ctx.modalities)
    print(f"\n{args.cache}: {M} modalities, fold {args.fold} of {args.folds}, 1 thread\n")
    cols = ["method", "test rows", "train s (wall / CPU)", "attribution s (wall / CPU)", "attribution / train (CPU)"]
    print("| " + " | ".join([*cols, "subsets / row"]) + " |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, n, sec, cpu, att in rows:
        if att:
            ratio = f"{100 * att['cpu_seconds'] / cpu:.0f} %"
            a = f"{att['seconds']:.1f} / {att['cpu_seconds']:.1f}"
            sub = f"{att['subsets_per_row']:.0f}"
        else:
            ratio, a, sub = "not attributed", "-", "-"
        print(f"| {label} | {n} | {sec:.1f} / {cpu:.1f} | {a} | {ratio} | {sub} |")
    train = sum(r[3] for r in rows)
    attr = sum(r[4].get("cpu_seconds", 0.0) for r in rows)
    print(f"\nall runs: {train:.1f} CPU s training, {attr:.1f} CPU s attribution ({100 * attr / train:.0f} %)")
    if args.study:
        with tempfile.TemporaryDirectory() as tmp:
            t0, c0 = time.perf_counter(), time.process_time()
            write_report(args.study, Path(tmp) / "report.md")
            print(
                f"report of {args.study}: {time.perf_counter() - t0:.1f} s wall, {time.process_time() - c0:.1f} CPU s"
            )


if __name__ == "__main__":
    main()
