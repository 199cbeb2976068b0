"""The shared utilities: JSON-safe values and the progress display that stays visible in a log."""

import io
import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from omnifuse.utils import json_safe, make_progress


def test_json_safe_numbers_arrays_paths_and_non_finite():
    o = {1: (np.float32(1.5), np.int64(3)), "a": np.array([1.0, np.nan]), "t": torch.tensor(2.0),
         "p": Path("x/y"), "inf": -math.inf, "nested": [{"n": np.bool_(True)}]}
    got = json_safe(o)
    assert got == {"1": [1.5, 3], "a": [1.0, None], "t": 2.0, "p": "x/y", "inf": None, "nested": [{"n": True}]}
    assert json.loads(json.dumps(got, allow_nan=False)) == got


def test_progress_is_logged_when_the_output_is_not_a_terminal(caplog):
    bar = make_progress(log_every=0.0, console=Console(file=io.StringIO(), force_terminal=False))
    with caplog.at_level(logging.INFO, logger="omnifuse.progress"):
        bar.start()
        task = bar.add_task("runs", total=2, info="")
        bar.update(task, advance=1, info="concat fold 0")
        bar.update(task, advance=1, info="concat fold 1")
        bar.stop()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["runs: 1/2 concat fold 0", "runs: 2/2 concat fold 1"]


def test_progress_is_not_logged_on_a_terminal(caplog):
    bar = make_progress(log_every=0.0, console=Console(file=io.StringIO(), force_terminal=True))
    with caplog.at_level(logging.INFO, logger="omnifuse.progress"):
        task = bar.add_task("runs", total=1, info="")
        bar.update(task, advance=1)
    assert not caplog.records


def test_progress_advanced_by_extraction_is_logged_too(caplog):
    """Extraction advances its tasks (``advance``) rather than updating them: that is logged off a terminal."""
    bar = make_progress(rate=True, log_every=0.0, console=Console(file=io.StringIO(), force_terminal=False))
    with caplog.at_level(logging.INFO, logger="omnifuse.progress"):
        task = bar.add_task("history (text)", total=4)
        bar.advance(task, 4)
    assert [r.getMessage() for r in caplog.records] == ["history (text): 4/4 "]
