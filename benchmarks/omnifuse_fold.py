"""Where one OmniFuse run of ``omnifuse experiment compare`` spends its time: a per-phase table.

One fold (``--repeat``, ``--fold``) of the cache is trained by a compare run itself (the study's folds, run
seed, options and evaluated combinations ``full+single``; :func:`omnifuse.experiments.runner.execute_run`:
early stopping, TLA mining after each epoch, validation, calibration, test predictions, the run's files written
to a temporary folder, counted in ``other``), with ``--threads``
torch threads. Every phase is timed exclusively (a phase nested in another is not counted twice):

- ``batches``: building normalised batches (:meth:`FuseData.batch`);
- ``train forward``, ``train loss``, ``backward``, ``grad clip``, ``optimizer``: the training steps;
- ``TLA mining``: OmniFuse's ``on_epoch_end`` (eq. 15) without the batches it builds;
- ``eval forward``: forward passes in evaluation mode outside mining (validation each epoch, calibration,
  the test predictions);
- ``best state copy``: the copy of the best epoch's weights; ``calibration fit``: the temperature search;
- ``normaliser fit`` and ``other`` (the rest: metrics, Python between the phases).

``--before DIR`` also runs the same fold with the ``omnifuse`` package found in ``DIR`` (e.g. the last commit:
``git archive HEAD omnifuse | tar -x -C /tmp/base``), in a subprocess, before and after this tree's run
alternately (``--rounds``), prints both tables side by side and the largest difference between the two runs'
test probabilities (overall and per combination) and their epochs run.

    python benchmarks/omnifuse_fold.py --cache cache/eicu-demo.zarr --threads 1
    python benchmarks/omnifuse_fold.py --cache cache/eicu-demo.zarr --before /tmp/base --rounds 1
    python benchmarks/omnifuse_fold.py --cache cache/eicu-demo.zarr --profile 25   # cProfile, top 25

Seconds depend on the machine's load: say whether other jobs shared it when quoting them.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _timing import compare_spec, timed_run  # benchmarks/_timing.py: a compare run, timed

PHASES = (
    "batches",
    "train forward",
    "train loss",
    "backward",
    "grad clip",
    "optimizer",
    "TLA mining",
    "eval forward",
    "best state copy",
    "calibration fit",
    "normaliser fit",
    "other",
)


class Timer:
    """Exclusive time per phase: a phase entered inside another is subtracted from the outer one."""

    def __init__(self) -> None:
        self.total: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self.stack: list[list[Any]] = []  # [phase, start, time of children]

    def wrap(self, phase: str | Callable[..., str], fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*a: Any, **k: Any) -> Any:
            name = phase(*a, **k) if callable(phase) else phase
            self.stack.append([name, time.perf_counter(), 0.0])
            try:
                return fn(*a, **k)
            finally:
                name, t0, inner = self.stack.pop()
                dt = time.perf_counter() - t0
                self.total[name] += dt - inner
                if self.stack:
                    self.stack[-1][2] += dt

        return timed


def instrument(timer: Timer) -> None:
    """Wrap the functions of each phase (in this process; the package is whichever ``omnifuse`` imports)."""
    import torch

    from omnifuse.fuse import calibration, data, fold, trainer
    from omnifuse.fuse.methods import omnifuse as om

    data.FuseData.batch = timer.wrap("batches", data.FuseData.batch)  # type: ignore[method-assign]
    om.OmniFuse.loss = timer.wrap("train loss", om.OmniFuse.loss)  # type: ignore[method-assign]
    om.OmniFuse.on_epoch_end = timer.wrap("TLA mining", om.OmniFuse.on_epoch_end)  # type: ignore[method-assign]
    fwd = om.OmniFuse.forward
    om.OmniFuse.forward = timer.wrap(  # type: ignore[method-assign]
        lambda self, *a, **k: "train forward" if self.training else "eval forward", fwd
    )
    torch.Tensor.backward = timer.wrap("backward", torch.Tensor.backward)  # type: ignore[method-assign]
    torch.nn.utils.clip_grad_norm_ = timer.wrap("grad clip", torch.nn.utils.clip_grad_norm_)
    torch.optim.AdamW.step = timer.wrap("optimizer", torch.optim.AdamW.step)  # type: ignore[method-assign]
    trainer.copy.deepcopy = timer.wrap("best state copy", copy.deepcopy)  # type: ignore[attr-defined]
    fold.fit_temperature = timer.wrap("calibration fit", calibration.fit_temperature)
    data.Normalizer.fit = classmethod(timer.wrap("normaliser fit", data.Normalizer.fit.__func__))  # type: ignore[method-assign]


def run_once(args: argparse.Namespace) -> dict[str, Any]:
    """Train the fold in this process as a compare run (:func:`omnifuse.experiments.runner.execute_run`, the
    spec ``experiment compare`` gives the method: ``_timing.compare_spec``); the phase table, epochs, seconds and
    the test probabilities (overall before calibration, per combination calibrated)."""
    import torch

    torch.set_num_threads(args.threads)
    from omnifuse.experiments.runner import build_context, load_run

    ctx = build_context(
        args.cache,
        args.task,
        folds=args.folds,
        repeats=args.repeat + 1,
        seed=args.seed,
        combinations="full+single",
        train_options={} if args.epochs is None else {"epochs": args.epochs},
    )
    ctx.data()  # load once, outside the timings
    spec = compare_spec(args.method, args.repeat, args.fold)
    timer = Timer()
    instrument(timer)
    with tempfile.TemporaryDirectory(prefix="omnifuse_fold_") as tmp:
        folder = Path(tmp) / "run"
        if args.profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            run = prof.runcall(timed_run, ctx, spec, folder)
            stats = pstats.Stats(prof, stream=sys.stderr)
            stats.sort_stats("tottime").print_stats(args.profile)
            stats.sort_stats("cumulative").print_stats(args.profile)
        else:
            run = timed_run(ctx, spec, folder)
        arrays, rec = load_run(folder)
    timer.total["other"] += run.seconds - sum(timer.total.values())
    return {
        "phases": timer.total,
        "total": run.seconds,
        "cpu": run.cpu_seconds,
        "epochs": run.epochs,
        "best_epoch": rec["best_epoch"],
        "overall": arrays["overall_raw"].tolist(),
        "combos": {k[len("combo") :]: v.tolist() for k, v in arrays.items() if k.startswith("combo")},
        "lazy": [r.get("lazy") for r in (rec.get("records") or {}).get("lazy_combination", [])],
    }


def run_subprocess(args: argparse.Namespace, package_dir: str | None) -> dict[str, Any]:
    """:func:`run_once` in a fresh interpreter, with ``package_dir`` first on the path (None: this tree)."""
    env = dict(os.environ)
    root = package_dir or str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        cmd = [
            sys.executable,
            __file__,
            "--child",
            str(out),
            "--cache",
            str(args.cache),
            "--task",
            args.task,
            "--method",
            args.method,
            "--repeat",
            str(args.repeat),
            "--fold",
            str(args.fold),
            "--folds",
            str(args.folds),
            "--seed",
            str(args.seed),
            "--threads",
            str(args.threads),
        ]
        if args.epochs is not None:
            cmd += ["--epochs", str(args.epochs)]
        subprocess.run(cmd, env=env, check=True)
        return dict(json.loads(out.read_text()))


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown table: per phase the median seconds over the rounds of each version."""
    names = list(results)
    lines = ["| phase | " + " | ".join(f"{n} (s)" for n in names) + " |", "|---" * (len(names) + 1) + "|"]

    def med(rs: list[dict[str, Any]], key: str) -> float:
        return float(np.median([r["phases"][key] if key in r["phases"] else r[key] for r in rs]))

    for p in PHASES:
        lines.append(f"| {p} | " + " | ".join(f"{med(results[n], p):.2f}" for n in names) + " |")
    lines.append("| **total (one run)** | " + " | ".join(f"**{med(results[n], 'total'):.2f}**" for n in names) + " |")
    lines.append("| CPU time of the run | " + " | ".join(f"{med(results[n], 'cpu'):.2f}" for n in names) + " |")
    lines.append("| epochs run | " + " | ".join(str(results[n][0]["epochs"]) for n in names) + " |")
    lines.append(
        "| s / epoch (training, mining, validation) | "
        + " | ".join(
            f"{np.median([(r['total'] - r['phases']['normaliser fit']) / r['epochs'] for r in results[n]]):.3f}"
            for n in names
        )
        + " |"
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=Path("cache/eicu-demo.zarr"))
    ap.add_argument("--task", default="mortality")
    ap.add_argument("--method", default="omnifuse")
    ap.add_argument("--repeat", type=int, default=0)
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=None, help="Maximum epochs (default: the study's, 30).")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--before", default=None, help="A folder holding another omnifuse package to compare with.")
    ap.add_argument("--rounds", type=int, default=1, help="Runs of each version (alternating).")
    ap.add_argument("--profile", type=int, default=0, help="cProfile the run; print this many functions.")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        Path(args.child).write_text(json.dumps(run_once(args)))
        return
    if args.before is None:
        res = {"this tree": [run_once(args)]}
        print(table(res))
        print("lazy combinations per epoch:", res["this tree"][0]["lazy"])
        return
    res = {"before": [], "after": []}
    for _ in range(args.rounds):
        res["before"].append(run_subprocess(args, args.before))
        res["after"].append(run_subprocess(args, None))
    print(table(res))
    b, a = res["before"][0], res["after"][0]
    diff = float(np.max(np.abs(np.asarray(b["overall"]) - np.asarray(a["overall"]))))
    for i in b["combos"]:
        diff = max(diff, float(np.max(np.abs(np.asarray(b["combos"][i]) - np.asarray(a["combos"][i])))))
    ratio = np.median([r["total"] for r in res["before"]]) / np.median([r["total"] for r in res["after"]])
    cpu = np.median([r["cpu"] for r in res["before"]]) / np.median([r["cpu"] for r in res["after"]])
    print(
        f"\nspeed-up of one run: {ratio:.2f}x wall, {cpu:.2f}x CPU time; "
        f"epochs run before/after: {b['epochs']}/{a['epochs']}; "
        f"best epoch {b['best_epoch']}/{a['best_epoch']}; largest difference of a test probability "
        f"(overall uncalibrated, {len(b['combos'])} combinations calibrated): {diff:.2e}; the same lazy combination "
        f"every epoch: {b['lazy'] == a['lazy']}"
    )


if __name__ == "__main__":
    main()
