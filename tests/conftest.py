"""Fixtures shared by test folders: a small trained OmniFuse run (``omnifuse_run``), read by the run-report tests
(tests/experiments/test_run_report.py) and the scoring fault suite (tests/reliability/test_predict_faults.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from omnifuse.fuse.train import train
from tests.helpers import FAST, write_synthetic_cache


@pytest.fixture(scope="session")
def omnifuse_run(tmp_path_factory) -> tuple[Path, Path]:
    """(run folder, cache): ``omnifuse train`` of OmniFuse, two folds, two epochs, on a 100-row synthetic cache
    (:func:`tests.helpers.write_synthetic_cache`). Shared: a test may add files to the run folder (a report);
    one that damages it works on a copy."""
    d = tmp_path_factory.mktemp("omnifuse-run")
    cache = write_synthetic_cache(d / "c.zarr", n=100)
    train(cache, "mortality", "omnifuse", folds=2, out=d / "run", **{**FAST, "epochs": 2})
    return d / "run", cache
