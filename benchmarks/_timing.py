"""The timing loop shared by the stage-two benchmarks (``compare_profile.py``, ``methods_time.py``,
``omnifuse_fold.py``): one run of ``omnifuse experiment compare`` per method, built and trained exactly as a
compare run (:func:`omnifuse.experiments.runner.execute_run`), timed in wall and CPU seconds.

The ``omnifuse`` imports happen inside the functions, so a benchmark that puts another copy of the package
first on ``PYTHONPATH`` (its "before" run) times that copy.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class TimedRun:
    """One compare run: its method, ``run.json`` record (:func:`execute_run`'s return), its folder (holding
    ``predictions.npz`` until the study's temporary folder is removed) and its wall and CPU seconds."""

    method: str
    rec: dict[str, Any]
    folder: Path
    seconds: float
    cpu_seconds: float

    @property
    def epochs(self) -> int:
        return len(self.rec.get("history") or [])

    def summary(self) -> dict[str, Any]:
        """The fields every benchmark table reads: method, parameters, epochs run, best epoch, validation AUROC."""
        return {
            "method": self.method,
            "parameters": self.rec.get("parameters"),
            "epochs": self.epochs,
            "best_epoch": self.rec.get("best_epoch"),
            "best_val_auroc": self.rec.get("best_val_auroc"),
        }


def compare_spec(name: str, repeat: int, fold: int, rate: float = 0.0, mode: str = "random") -> Any:
    """The :class:`~omnifuse.experiments.runner.RunSpec` ``experiment compare`` gives registry entry ``name`` on
    fold ``fold`` of repeat ``repeat`` (its parameters: :func:`method_params` without overrides)."""
    from omnifuse.experiments.runner import RunSpec, freeze_params, method_params

    return RunSpec(
        label=name,
        method=name,
        params=freeze_params(method_params(name, None)),
        repeat=repeat,
        fold=fold,
        rate=float(rate),
        mode=mode,
    )


def timed_run(ctx: Any, spec: Any, folder: Path, start: Callable[[], None] | None = None) -> TimedRun:
    """:func:`execute_run` of ``spec`` into ``folder``, timed; ``start()`` is called just before the clocks start."""
    from omnifuse.experiments.runner import execute_run

    if start is not None:
        start()
    t0, c0 = time.perf_counter(), time.process_time()
    rec = execute_run(ctx, spec, folder)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    return TimedRun(spec.label, rec, folder, wall, cpu)


def compare_runs(
    cache: str,
    methods: list[str],
    *,
    task: str | None,
    fold: int,
    repeat: int,
    folds: int,
    repeats: int,
    prefix: str,
    start: Callable[[], None] | None = None,
) -> Iterator[TimedRun]:
    """One timed compare run per method on fold ``fold`` of repeat ``repeat``, one after the other in this
    process, in a temporary study folder (the cache loaded once, outside the timings); ``start`` as in
    :func:`timed_run`."""
    from omnifuse.experiments.config import CompareConfig, study_config
    from omnifuse.experiments.runner import study_context

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        cfg = study_config(CompareConfig, None, task=task, folds=folds, repeats=repeats, out=Path(tmp) / "study")
        ctx = study_context(cache, cfg)
        ctx.data()  # load once, outside the timings
        for name in methods:
            spec = compare_spec(name, repeat, fold, cfg.missing_rate, cfg.missing_mode)
            yield timed_run(ctx, spec, Path(tmp) / name, start)


def add_study_arguments(ap: argparse.ArgumentParser, methods: Sequence[str]) -> None:
    """The options of a per-method timing: ``--cache``, ``--task``, ``--methods`` (default ``methods``),
    ``--fold``, ``--repeat``, ``--folds``, ``--repeats``, ``--threads``, ``--jobs`` and ``--json``."""
    ap.add_argument("--cache", required=True, help="the feature cache (read only)")
    ap.add_argument("--task", default=None)
    ap.add_argument("--methods", default=",".join(methods), help="comma-separated registry entries")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=0)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3, help="repeats of the full comparison being estimated")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=2, help="runs at once in the comparison being estimated")
    ap.add_argument("--json", default=None, help="also write the records to this file")
