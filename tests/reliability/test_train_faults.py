"""Fault suite, stage two: what `omnifuse train` and `omnifuse experiment` do with bad input, bad options and
unwritable folders. Each case asserts the exit code, the one-line message, and that no number is wrong."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

from omnifuse.cli import app
from omnifuse.fuse.data import load_fuse_data
from omnifuse.fuse.train import train
from omnifuse.fuse.trainer import PredictionError
from tests.helpers import FAST, TINY_OPTIONS, synthetic_cache_data, write_synthetic_cache

runner = CliRunner()


def _one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    err = result.output.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), result.output
    for f in fragments:
        assert f in err[0], err[0]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_synthetic_cache(tmp_path_factory.mktemp("faults") / "c.zarr", n=120)


def test_unknown_method_parameter_is_named_before_any_work(cache, tmp_path):
    r = runner.invoke(
        app,
        [
            "train",
            "-c",
            str(cache),
            "-t",
            "mortality",
            "-m",
            "concat",
            "-p",
            "nosuchparam=3",
            "--out",
            str(tmp_path / "run"),
        ],
    )
    _one_line_error(r, "'concat' has no parameter 'nosuchparam'", "its parameters: d,")
    assert not (tmp_path / "run").exists()
    r = runner.invoke(
        app,
        [
            "experiment",
            "compare",
            "-c",
            str(cache),
            "--methods",
            "concat",
            "-p",
            "concat.nosuchparam=3",
            "--out",
            str(tmp_path / "cmp"),
        ],
    )
    _one_line_error(r, "'concat' has no parameter 'nosuchparam'")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder(cache, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        r = runner.invoke(app, ["train", "-c", str(cache), "-t", "mortality", "--out", str(ro / "run")])
        _one_line_error(r, f"cannot write to {ro / 'run'}")
        r = runner.invoke(app, ["experiment", "compare", "-c", str(cache), "--out", str(ro / "cmp")])
        _one_line_error(r, f"cannot write to {ro / 'cmp'}")
    finally:
        ro.chmod(0o700)


def test_read_only_output_folder_as_root_too(cache, tmp_path, monkeypatch):
    """The same check where permissions cannot be used (root): a folder whose creation fails."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = runner.invoke(app, ["train", "-c", str(cache), "-t", "mortality", "--out", str(blocker / "run")])
    _one_line_error(r, f"cannot write to {blocker / 'run'}")


def test_an_absurd_value_in_a_test_row_keeps_every_fold(tmp_path):
    """One value of 1e30 in a time-series cell of one row (and 1e39, which overflows float32 to inf, in
    another): every fold keeps a finite AUROC, every prediction is finite, and the run's numbers stay close to
    those without the values (issue: fold 0's AUROC blank, "mean 0.687 ± 0.000" over one fold)."""
    cd = synthetic_cache_data(n=160, seed=3)
    clean = train(cd, "mortality", "concat", folds=2, **{**FAST, "method_params": {"d": 8, "hidden": 8}})
    ehr = cd.modalities["ehr"]
    x = ehr.x.astype(np.float32).copy()
    rows = np.flatnonzero(ehr.mask)
    x[rows[0], 0, 0] = 1e30
    with np.errstate(over="ignore"):
        x[rows[1], 1, 1] = np.float32(1e39)
    bad = replace(cd, modalities={**cd.modalities, "ehr": replace(ehr, x=x)})
    r = train(bad, "mortality", "concat", folds=2, **{**FAST, "method_params": {"d": 8, "hidden": 8}})
    aurocs = [f["auroc"] for f in r.metrics["folds"]]
    assert len(aurocs) == 2 and all(a is not None and 0 <= a <= 1 for a in aurocs)
    assert all(np.isfinite(f.probs).all() for f in r.folds)
    assert r.metrics["mean"]["auroc"] == pytest.approx(clean.metrics["mean"]["auroc"], abs=0.1)


def test_a_nan_prediction_is_an_error_naming_the_stays(monkeypatch):
    from omnifuse.fuse.methods.common import SupervisedFusion

    cd = synthetic_cache_data(n=100, seed=1)
    forward = SupervisedFusion.forward

    def poisoned(self, batch):
        out = forward(self, batch)
        if not self.training:
            out.logits = out.logits.clone()
            out.logits[0] = float("nan")
        return out

    monkeypatch.setattr(SupervisedFusion, "forward", poisoned)
    with pytest.raises(PredictionError, match=r"non-finite prediction for \d+ stay\(s\): stay_id \d+"):
        train(cd, "mortality", "concat", folds=2, **{**FAST, "method_params": {"d": 8, "hidden": 8}})


def test_a_diverging_training_is_a_one_line_error(cache, tmp_path):
    r = runner.invoke(
        app,
        [
            "train",
            "-c",
            str(cache),
            "-t",
            "mortality",
            "-m",
            "concat",
            "--lr",
            "1e30",
            "--epochs",
            "2",
            "--no-progress",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "r"),
        ],
    )
    if r.exit_code == 0:  # a run may survive one huge step; then every number it wrote must be finite
        import json

        assert json.loads((tmp_path / "r" / "metrics.json").read_text())["folds"]
    else:
        _one_line_error(r)


def test_unlabelled_rows_train_nothing_and_a_missing_task_is_named(cache):
    d = load_fuse_data(cache, "mortality", device="cpu")
    assert d.y_mask.any()
    with pytest.raises(ValueError, match="no task 'nonesuch' in cache"):
        load_fuse_data(cache, "nonesuch", device="cpu")


def test_killing_a_study_stops_its_workers(cache, tmp_path):
    """``experiment compare --jobs 2`` killed with SIGKILL: its worker processes end within seconds instead of
    running on and writing into --out (issue: two workers of about 650 MB each kept running)."""
    script = tmp_path / "study.py"
    script.write_text(
        textwrap.dedent(f"""
        import os, sys
        from omnifuse.experiments.compare import compare
        print(os.getpid(), flush=True)
        compare({str(cache)!r}, "mortality", ["concat", "sum"], folds=4, repeats=1, out={str(tmp_path / "cmp")!r},
                n_jobs=2, threads=1, epochs=200, progress=False, print_table=False,
                options={{**{TINY_OPTIONS!r}, "patience": 200}})
    """)
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.getcwd(),
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        parent = int(proc.stdout.readline())
        workers: set[int] = set()
        deadline = time.time() + 120
        while time.time() < deadline and len(workers) < 2:
            time.sleep(0.5)
            workers = _children_of(parent) - {parent}
            workers = {w for w in workers if _is_python(w)}
        assert workers, "the study started no worker process"
        time.sleep(2.0)
        os.kill(parent, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.time() + 30
        while time.time() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.5)
        assert not any(_alive(w) for w in workers), "worker processes outlived the killed study"
    finally:
        if proc.poll() is None:
            proc.kill()


def _children_of(pid: int) -> set[int]:
    """Every descendant of ``pid`` (from /proc)."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            kids.setdefault(ppid, []).append(int(d))
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _is_python(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"python" in f.read()
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
