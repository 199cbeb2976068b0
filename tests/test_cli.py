"""The command line: --version, info (text and JSON), clear errors."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from omnifuse import __version__
from omnifuse.cli import app
from tests.cache.test_store import _fill

runner = CliRunner()


def test_version():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and __version__ in r.stdout


def test_info_json_numbers(tmp_path):
    path = tmp_path / "c.zarr"
    _, stay, subj, truth, (y, ym, *_rest) = _fill(path)
    r = runner.invoke(app, ["info", str(path), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["rows"] == 37 and d["subjects"] == len(np.unique(subj))
    assert {m["name"]: m["present"] for m in d["modalities"]} == {k: int(v[1].sum()) for k, v in truth.items()}
    assert next(t for t in d["tasks"] if t["name"] == "mort")["labelled"] == int(ym.sum())
    text = runner.invoke(app, ["info", str(path)]).stdout
    assert "missing-modality patterns" in text and "img+rep+ehr" in text


def test_info_refuses_a_missing_cache(tmp_path):
    r = runner.invoke(app, ["info", str(tmp_path / "absent.zarr")])
    assert r.exit_code == 2 and "no cache at" in r.output
