"""Where the CPU time of ``omnifuse experiment compare`` goes, per method: one fold per method, phase by phase.

Each method trains one fold (``--fold`` of ``--repeat``) of the cache exactly as a compare run does
(:func:`omnifuse.experiments.runner.execute_run`: inner split, normaliser, training with early stopping,
calibration, the overall and per-combination test predictions), one after the other in this process with
``--threads`` torch threads (compare's ``--threads 1`` by default). The functions of the fold's code path are
wrapped (in this process only, nothing is changed on disk) to charge the process CPU time
(``time.process_time``) to the innermost phase running:

- ``data``: building batches (:meth:`FuseData._batch`: gathering rows, ``Normalizer.apply``, masks), whichever
  phase asked for them;
- ``fwd`` / ``loss`` / ``bwd+opt``: the training step: the method's forward, its loss, and the rest of the
  step (training drops, backward, the method's ``after_backward``, gradient clipping, the optimiser);
- ``hooks``: the method's ``on_train_start`` / ``on_epoch_start`` / ``on_epoch_end`` (G-Blend's checkpoint
  losses, PMR's prototypes, TLA mining), their batches excluded;
- ``val``: the validation pass after each epoch (forward and metrics);
- ``fit``: the rest of ``Trainer.fit`` (optimiser set-up, best-state copies);
- ``test``: the test predictions (overall and every modality combination);
- ``calib``: the temperature fit (its validation predictions included);
- ``norm``: :meth:`Normalizer.fit`; ``split``: the inner validation split (``inner_split``);
- ``other``: the rest of the run (building the model, writing predictions, ...).

Prints a Markdown table (method, parameters, epochs run, CPU s per run, CPU s per epoch = the training,
hook and validation seconds divided by the epochs, then each phase's share of the run in %) and the estimate of
the full comparison: ``folds x repeats`` runs per method, ``--jobs`` at once, i.e. the sum of the per-run CPU
seconds times ``folds x repeats`` divided by ``--jobs`` (it ignores the idle tail and the contention between
simultaneous runs).

    python benchmarks/compare_profile.py --cache /work/runs/eicu8.zarr
    python benchmarks/compare_profile.py --cache c.zarr --methods mdrop,concat --json prof.json
    python benchmarks/compare_profile.py --cache c.zarr --baseline /tmp/old   # before / after, interleaved

``--baseline DIR`` (a folder holding an older copy of the ``omnifuse`` package): each method is profiled in a
fresh process with ``DIR`` first on ``PYTHONPATH`` ("before"), then in a fresh process with the current import
path ("after"), method by method, so both see the same machine load; the table gets both rows of every
method and the estimates of both.

The wrappers add a few microseconds per batch. CPU seconds depend on the machine's load (caches, memory
bandwidth) even though they do not count waiting: say whether other jobs shared the machine when quoting them.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from _timing import add_study_arguments, compare_runs  # the loop shared with methods_time.py

DEFAULT_METHODS = (
    "omnifuse",
    "concat",
    "sum",
    "se_gate",
    "gblend",
    "ogm_ge",
    "pmr",
    "medfuse",
    "mdrop",
    "dwfuse_only",
    "logreg",
    "gbm",
)
"""The entries of the comparison of issue #14 (``experiment compare --methods ...``)."""

PHASES = ("data", "fwd", "loss", "bwd+opt", "hooks", "val", "fit", "test", "calib", "norm", "split", "other")


class PhaseClock:
    """Exclusive CPU seconds per phase: the time since the last mark goes to the innermost open phase."""

    def __init__(self) -> None:
        self.stack: list[str] = ["other"]
        self.seconds: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self.last = time.process_time()

    def _mark(self) -> None:
        now = time.process_time()
        self.seconds[self.stack[-1]] += now - self.last
        self.last = now

    @property
    def top(self) -> str:
        return self.stack[-1]

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._mark()
        self.stack.append(name)
        try:
            yield
        finally:
            self._mark()
            self.stack.pop()

    def reset(self) -> None:
        self.stack = ["other"]
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.last = time.process_time()


CLOCK = PhaseClock()


def _timed(fn: Callable[..., Any], name: str | Callable[[], str | None]) -> Callable[..., Any]:
    """``fn`` charging its time to phase ``name`` (or to ``name()``'s answer; None: to the caller's phase)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        phase = name() if callable(name) else name
        if phase is None:
            return fn(*args, **kwargs)
        with CLOCK.phase(phase):
            return fn(*args, **kwargs)

    return wrapper


def _in_training(sub: str) -> Callable[[], str | None]:
    return lambda: sub if CLOCK.top == "bwd+opt" else None


def _wrap_model(model: Any) -> Any:
    """Charge a built method's forward and loss (in a training step) and its epoch hooks to their phases."""
    if not isinstance(model, torch.nn.Module):
        return model
    model.forward = _timed(model.forward, _in_training("fwd"))
    model.loss = _timed(model.loss, _in_training("loss"))
    for hook in ("on_train_start", "on_epoch_start", "on_epoch_end"):
        setattr(model, hook, _timed(getattr(model, hook), "hooks"))
    return model


def install() -> None:
    """Wrap the fold's code path (this process only)."""
    from omnifuse.fuse import data as fdata
    from omnifuse.fuse import fold, trainer

    fdata.FuseData._batch = _timed(fdata.FuseData._batch, "data")  # type: ignore[method-assign]
    fdata.Normalizer.fit = classmethod(_timed(fdata.Normalizer.fit.__func__, "norm"))  # type: ignore[method-assign]
    trainer.Trainer._train_epoch = _timed(trainer.Trainer._train_epoch, "bwd+opt")  # type: ignore[method-assign]
    trainer.Trainer._validate = _timed(trainer.Trainer._validate, "val")  # type: ignore[method-assign]
    trainer.Trainer.fit = _timed(trainer.Trainer.fit, "fit")  # type: ignore[method-assign]
    fold.inner_split = _timed(fold.inner_split, "split")
    fold._fit_temperature = _timed(fold._fit_temperature, "calib")
    fold.predict_probs = _timed(fold.predict_probs, lambda: None if CLOCK.top == "calib" else "test")
    build = fold.build_method
    fold.build_method = lambda *a, **k: _wrap_model(build(*a, **k))


def profile_methods(
    cache: str, methods: list[str], task: str | None, fold: int, repeat: int, folds: int, threads: int
) -> list[dict[str, Any]]:
    """One compare run per method on fold ``fold`` of repeat ``repeat``; a record per method."""
    torch.set_num_threads(threads)
    install()
    # a compare worker process runs many runs: the first optimiser's one-off import of torch._dynamo (about
    # 2 CPU s) is paid once per worker, not per run, so pay it here, outside the timings
    warm = torch.nn.Parameter(torch.zeros(1))
    warm.grad = torch.zeros(1)
    torch.optim.AdamW([warm]).step()
    rows = []
    runs = compare_runs(
        cache,
        methods,
        task=task,
        fold=fold,
        repeat=repeat,
        folds=folds,
        repeats=repeat + 1,
        prefix="compare_profile_",
        start=CLOCK.reset,
    )
    for run in runs:
        CLOCK._mark()
        per_epoch = sum(CLOCK.seconds[p] for p in ("data", "fwd", "loss", "bwd+opt", "hooks", "val"))
        rows.append(
            {
                **run.summary(),
                "cpu_seconds": run.cpu_seconds,
                "seconds_per_epoch": per_epoch / run.epochs if run.epochs else None,
                "phases": dict(CLOCK.seconds),
            }
        )
        print(f"{run.method:12s} {run.cpu_seconds:7.1f} CPU s  {run.epochs:3d} epochs", flush=True)
    return rows


def table(rows: list[dict[str, Any]], runs_per_method: int, jobs: int, estimate: bool = True) -> str:
    """The rows as a Markdown table, then (``estimate``) the estimate of the full comparison's wall time."""

    def f(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    head = "| method | params | epochs (best) | CPU s / run | s / epoch | " + " | ".join(PHASES) + " |"
    lines = [head, "|" + " --- |" * (5 + len(PHASES))]
    for r in rows:
        cpu = r["cpu_seconds"]
        shares = " | ".join(f"{100 * r['phases'][p] / cpu:.0f}" if cpu > 0 else "-" for p in PHASES)
        ep = f"{r['epochs']} ({r['best_epoch']})" if r["epochs"] else "-"
        lines.append(
            f"| {r['method']} | {f(r['parameters'], ',')} | {ep} | {cpu:.1f} | "
            f"{f(r['seconds_per_epoch'], '.2f')} | {shares} |"
        )
    lines.append("")
    lines.append("phase columns: % of the run's CPU seconds (exclusive; see the module docstring)")
    if estimate:
        total = sum(r["cpu_seconds"] for r in rows)
        est = total * runs_per_method / jobs
        lines.append(
            f"sum of one run per method: {total:.1f} CPU s; {runs_per_method} runs per method, {jobs} at once: "
            f"about {est / 60:.1f} min wall for the full comparison ({len(rows)} entries)"
        )
    return "\n".join(lines)


def before_after(args: argparse.Namespace, methods: list[str]) -> list[dict[str, Any]]:
    """Every method profiled in a fresh process with the baseline tree, then with the current one; records
    labelled ``method (before)`` and ``method (after)``."""
    rows = []
    for name in methods:
        for label, tree in (("before", args.baseline), ("after", None)):
            env = dict(os.environ)
            if tree is not None:
                env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(tree).resolve()), env.get("PYTHONPATH")) if p)
            with tempfile.TemporaryDirectory(prefix="compare_profile_") as tmp:
                out = Path(tmp) / "rows.json"
                cmd = [sys.executable, __file__, "--cache", args.cache, "--methods", name, "--json", str(out)]
                cmd += ["--fold", str(args.fold), "--repeat", str(args.repeat), "--folds", str(args.folds)]
                cmd += ["--threads", str(args.threads)] + (["--task", args.task] if args.task else [])
                subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
                rec = json.loads(out.read_text())[0]
            rec["method"] = f"{name} ({label})"
            rows.append(rec)
            print(f"{rec['method']:24s} {rec['cpu_seconds']:7.1f} CPU s  {rec['epochs']:3d} epochs", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add_study_arguments(ap, DEFAULT_METHODS)
    ap.add_argument("--baseline", default=None, help="a folder holding an older omnifuse package: before / after")
    args = ap.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.baseline:
        rows = before_after(args, methods)
        print()
        print(table(rows, args.folds * args.repeats, args.jobs, estimate=False))
        for label in ("before", "after"):
            part = [r for r in rows if r["method"].endswith(f"({label})")]
            total = sum(r["cpu_seconds"] for r in part)
            est = total * args.folds * args.repeats / args.jobs / 60
            print(f"{label}: sum of one run per method {total:.1f} CPU s, full comparison about {est:.1f} min wall")
    else:
        rows = profile_methods(args.cache, methods, args.task, args.fold, args.repeat, args.folds, args.threads)
        print()
        print(table(rows, args.folds * args.repeats, args.jobs))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
