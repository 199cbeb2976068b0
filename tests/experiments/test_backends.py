"""Where a study's runs train: the Dask distributed backend gives the same runs as this process, logs its
progress, names the run a failure came from, and refuses a cluster that cannot see the study's folders.

The cluster is a ``distributed.LocalCluster`` of two worker processes with one thread each, on the tiny
synthetic cache of ``conftest.ref_cache``."""

from __future__ import annotations

import json
import logging
import os
import re

import dask
import numpy as np
import pytest
import torch
from distributed import LocalCluster
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

import omnifuse
from omnifuse.cli import app
from omnifuse.experiments.config import SweepConfig, study_config
from omnifuse.experiments.runner import (
    DONE,
    RunSpec,
    StudyError,
    _report_failure,
    _spec_stamp,
    build_context,
    check_dask_workers,
    connect_dask,
    fold_specs,
    freeze_params,
    load_run,
    run_all,
)
from tests.helpers import TINY_OPTIONS, TINY_OVERRIDES

RUNNER_LOG = "omnifuse.experiments.runner"


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes, one thread each. A task whose worker dies is not retried (``allowed-failures``
    0), so the worker-death test fails at once instead of killing three more workers."""
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c,
    ):
        yield c


def _context(ref_cache, epochs=2):
    return build_context(
        ref_cache,
        "mortality",
        folds=2,
        seed=0,
        combinations="full+single",
        train_options={**TINY_OPTIONS, "epochs": epochs},
    )


def _broken(fold: int = 1) -> RunSpec:
    """A run that raises in its worker: concat has no parameter ``bogus``."""
    return RunSpec(label="broken", method="concat", params=freeze_params({"bogus": 1}), fold=fold)


def _die(spec: RunSpec, test_rows: np.ndarray):
    """A probe factory that ends the worker process that runs it, as a crash or the OOM killer would."""
    os._exit(3)


def test_dask_runs_equal_local_runs_and_log_progress(ref_cache, tmp_path, cluster, caplog):
    """Every stored array of every run is the same, bit for bit, whether the run trained in this process or
    on a Dask worker (seeds are per run); so are the run's AUROC (scikit-learn) and its training history."""
    ctx = _context(ref_cache)
    specs = fold_specs(ctx, ["concat", "omnifuse"], TINY_OVERRIDES, rate=0.3)
    here = run_all(ctx, specs, tmp_path / "here", threads=1, progress=False)
    with caplog.at_level(logging.INFO, logger=RUNNER_LOG):
        there = run_all(
            ctx,
            specs,
            tmp_path / "dask",
            backend="dask",
            scheduler=cluster.scheduler_address,
            threads=1,
            progress=False,
        )
    assert (there.trained, there.reused) == (4, 0)
    for s in specs:
        a, ra = load_run(here.folders[s])
        b, rb = load_run(there.folders[s])
        assert sorted(a) == sorted(b) and len(a) >= 6  # test_rows, y, present, overall, a combination or more
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{s.key}: {k}")
        auroc = roc_auc_score(a["y"][:, 0], a["overall"][:, 0])
        assert 0.0 < auroc < 1.0 and auroc == roc_auc_score(b["y"][:, 0], b["overall"][:, 0])
        for key in ("best_epoch", "n_train", "n_val", "mask_digest", "threads"):
            assert ra[key] == rb[key], key
        assert ra["history"]
        drop = {"seconds", "cpu_seconds", "time"}
        assert [{k: v for k, v in h.items() if k not in drop} for h in ra["history"]] == [
            {k: v for k, v in h.items() if k not in drop} for h in rb["history"]
        ]
    # progress: one line per finished run, k/n, naming a worker of the cluster
    done = [re.fullmatch(r"run (\d)/4 finished on (\S+): (\S+) \(\d+ s\)", r.getMessage()) for r in caplog.records]
    done = [m.groups() for m in done if m]
    assert sorted(int(k) for k, _, _ in done) == [1, 2, 3, 4]
    assert {w for _, w, _ in done} <= set(cluster.scheduler_info["workers"])
    assert sorted(key for _, _, key in done) == sorted(s.key for s in specs)
    # a rerun reuses every run and never contacts a scheduler (this one does not exist)
    again = run_all(ctx, specs, tmp_path / "dask", backend="dask", scheduler="tcp://127.0.0.1:9", progress=False)
    assert (again.trained, again.reused) == (0, 4)


def test_dask_failure_names_the_run(ref_cache, tmp_path, cluster, caplog):
    """A run raising on a worker stops the study with its exception, logged with the run's key and the worker;
    the scheduler is given as a scheduler file here."""
    sched = tmp_path / "scheduler.json"
    sched.write_text(json.dumps({"address": cluster.scheduler_address}))
    ctx = _context(ref_cache, epochs=1)
    bad = _broken()
    with (
        caplog.at_level(logging.INFO, logger=RUNNER_LOG),
        pytest.raises(ValueError, match="no parameter 'bogus'") as ei,
    ):
        run_all(ctx, [bad], tmp_path / "s", backend="dask", scheduler=str(sched), threads=1, progress=False)
    assert any(n.startswith(f"omnifuse: in run {bad.key} (tcp://") for n in ei.value.__notes__)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(m.startswith(f"run {bad.key} failed on tcp://") and "ValueError" in m for m in errors)
    assert not (tmp_path / "s" / "runs" / bad.key / DONE).exists()


def test_dask_worker_death_names_the_run(ref_cache, tmp_path, cluster, caplog):
    """A worker process that dies during a run (here: the run ends it) is that run's failure (Dask's
    ``KilledWorker``); the cluster's nanny starts a new worker."""
    ctx = _context(ref_cache, epochs=1)
    spec = fold_specs(ctx, ["concat"], TINY_OVERRIDES)[0]
    with caplog.at_level(logging.INFO, logger=RUNNER_LOG), pytest.raises(Exception, match="workers died") as ei:
        run_all(
            ctx,
            [spec],
            tmp_path / "s",
            backend="dask",
            scheduler=cluster.scheduler_address,
            threads=1,
            progress=False,
            probe=_die,
        )
    assert type(ei.value).__name__ == "KilledWorker"
    assert f"omnifuse: in run {spec.key} (the Dask cluster)" in ei.value.__notes__
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(m.startswith(f"run {spec.key} failed on the Dask cluster: KilledWorker: ") for m in errors)


def test_a_dead_local_worker_is_reported_with_the_runs_it_left_unfinished(tmp_path, caplog):
    """loky's ``TerminatedWorkerError`` names no run: the runs reported are those whose ``spec.json`` was
    written after dispatch and that have no ``DONE`` (not those never started, finished, or unfinished from
    before)."""
    specs = [RunSpec(label="concat", method="concat", fold=k) for k in range(4)]
    folders = {s: tmp_path / s.key for s in specs}
    for s in specs[1:]:  # 1: unfinished from an earlier study, untouched; 2 and 3: written again
        folders[s].mkdir(parents=True)
        (folders[s] / "spec.json").write_text("{}")
    before = {s: _spec_stamp(folders[s]) for s in specs}
    for s in specs[2:]:
        os.utime(folders[s] / "spec.json", ns=(before[s] + 10**9, before[s] + 10**9))
    (folders[specs[3]] / DONE).write_text("")
    e = RuntimeError("A worker process managed by the executor was unexpectedly terminated.")
    with caplog.at_level(logging.INFO, logger=RUNNER_LOG):
        _report_failure(e, specs, folders, before)
    assert e.__notes__ == [f"omnifuse: runs started and not finished: {specs[2].key}"]
    assert any(r.getMessage().endswith(f"runs started and not finished: {specs[2].key}") for r in caplog.records)


def test_failure_in_this_process_names_the_run(ref_cache, tmp_path, caplog):
    ctx = _context(ref_cache, epochs=1)
    bad = _broken(fold=0)
    with caplog.at_level(logging.INFO, logger=RUNNER_LOG), pytest.raises(ValueError, match="no parameter") as ei:
        run_all(ctx, [bad], tmp_path / "s", progress=False)
    assert ei.value.__notes__ == [f"omnifuse: in run {bad.key} (process {os.getpid()})"]
    assert any(r.getMessage().startswith(f"run {bad.key} failed on process ") for r in caplog.records)


def test_scheduler_refused_in_one_line(tmp_path):
    with pytest.raises(StudyError, match="--backend dask needs --scheduler"):
        connect_dask(None)
    with pytest.raises(StudyError, match="neither an address .* nor a scheduler file"):
        connect_dask(str(tmp_path / "absent.json"))
    with (
        dask.config.set({"distributed.comm.timeouts.connect": "1s"}),
        pytest.raises(StudyError, match=r"cannot reach the Dask scheduler tcp://127.0.0.1:9: "),
    ):
        connect_dask("tcp://127.0.0.1:9")


class _FakeClient:
    """``client.run`` answering for workers that miss what ``missing`` picks, or run another omnifuse."""

    def __init__(self, missing=(), version=None):
        self.missing, self.version = missing, version

    def run(self, fn, paths):
        return {
            "tcp://w1:1": {
                "omnifuse": self.version or omnifuse.__version__,
                "torch": torch.__version__,
                "missing": [paths[i] for i in self.missing],
            }
        }


def test_workers_must_share_the_out_folder_and_the_cache(tmp_path):
    cache = tmp_path / "c.zarr"
    assert check_dask_workers(_FakeClient(), "s", tmp_path / "out", cache) == 1
    assert not list((tmp_path / "out").iterdir())  # the token file is removed
    with pytest.raises(StudyError, match=r"Dask worker tcp://w1:1 cannot see the out folder .*/out: the out folder"):
        check_dask_workers(_FakeClient(missing=[0]), "s", tmp_path / "out", cache)
    with pytest.raises(StudyError, match=r"cannot see the cache .*c\.zarr"):
        check_dask_workers(_FakeClient(missing=[1]), "s", tmp_path / "out", cache)
    with pytest.raises(StudyError, match=r"runs omnifuse 9\.9, this study "):
        check_dask_workers(_FakeClient(version="9.9"), "s", tmp_path / "out", cache)


def test_backend_options_and_flags():
    cfg = study_config(SweepConfig, backend="dask", scheduler="tcp://h:8786")
    assert (cfg.backend, cfg.scheduler) == ("dask", "tcp://h:8786") and cfg.to_json()["backend"] == "dask"
    assert study_config(SweepConfig).backend == "loky"
    with pytest.raises(ValueError, match="--backend dask needs --scheduler"):
        study_config(SweepConfig, backend="dask")
    with pytest.raises(ValueError, match="--scheduler is for --backend dask"):
        study_config(SweepConfig, scheduler="tcp://h:8786")
    with pytest.raises(ValueError, match="ray"):
        study_config(SweepConfig, backend="ray")
    help_text = CliRunner().invoke(app, ["experiment", "sweep", "--help"], env={"COLUMNS": "200"}).output
    assert "--backend" in help_text and "--scheduler" in help_text
