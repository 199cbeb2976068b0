"""Fault suite, provenance: a result is never reused for, nor a model applied to, data other than its own.

A cache rebuilt with another preprocessing keeps its shapes but not its fingerprint: a study retrains its
finished runs and says so; `omnifuse predict` refuses it, naming what differs (an expert flag overrides)."""

import json
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from omnifuse.cli import app
from omnifuse.experiments.compare import compare
from omnifuse.fuse.train import train
from tests.helpers import FAST, TINY_OPTIONS, TINY_OVERRIDES, synthetic_cache_data, write_cache_data

runner = CliRunner()


def _rebuilt(cd, pooling: str, shift: float):
    """``cd`` as if extracted again with another text pooling: same rows, shapes and labels, other numbers."""
    rep = cd.modalities["rep"]
    spec = replace(cd.spec, modalities=[replace(m, preprocessing={**m.preprocessing, "pooling": pooling})
                                        if m.name == "rep" else m for m in cd.spec.modalities])
    return replace(cd, spec=spec, modalities={**cd.modalities, "rep": replace(rep, x=rep.x + shift)})


@pytest.fixture
def two_caches(tmp_path):
    cd = synthetic_cache_data(n=90, seed=5)
    a = write_cache_data(tmp_path / "a.zarr", _rebuilt(cd, "mean", 0.0))
    b = write_cache_data(tmp_path / "b.zarr", _rebuilt(cd, "cls", 0.5))
    return a, b


def test_a_study_retrains_runs_made_from_another_cache_and_says_so(two_caches, tmp_path):
    a, b = two_caches
    out = tmp_path / "cmp"
    kw = dict(folds=2, repeats=1, out=out, epochs=1, progress=False, print_table=False, n_boot=0,
              method_overrides={"concat": TINY_OVERRIDES["concat"]}, options=TINY_OPTIONS)
    first = compare(a, "mortality", ["concat"], **kw)
    assert (first.runs_trained, first.runs_reused, first.runs_stale) == (2, 0, 0)
    again = compare(a, "mortality", ["concat"], **kw)
    assert (again.runs_trained, again.runs_reused) == (0, 2)
    b.rename(tmp_path / "b2.zarr")
    a.rename(tmp_path / "old.zarr")
    (tmp_path / "b2.zarr").rename(a)  # the same path, rebuilt with another pooling (issue: "4 reused")
    third = compare(a, "mortality", ["concat"], **kw)
    assert (third.runs_trained, third.runs_reused, third.runs_stale) == (2, 0, 2)
    assert "2 run(s) trained (2 retrained: the cache changed)" in (out / "results.md").read_text()
    spec = json.loads((out / "runs" / "concat" / "rate0_random" / "r0f0" / "spec.json").read_text())
    assert spec["cache"] == third.config["cache_fingerprint"] != first.config["cache_fingerprint"]


def test_predict_refuses_a_cache_encoded_differently(two_caches, tmp_path):
    a, b = two_caches
    train(a, "mortality", "concat", folds=2, out=tmp_path / "run", **{**FAST, "epochs": 1,
                                                                       "method_params": TINY_OVERRIDES["concat"]})
    meta = json.loads((tmp_path / "run" / "fold0" / "model.json").read_text())
    assert len(meta["cache_fingerprint"]["encoders_digest"]) == 64
    r = runner.invoke(app, ["predict", "-r", str(tmp_path / "run"), "-c", str(b), "-o", str(tmp_path / "s.csv")])
    assert r.exit_code == 2 and "modality 'rep': preprocessing.pooling is \"cls\", expected \"mean\"" in r.output
    assert "--allow-other-encoders" in r.output and not (tmp_path / "s.csv").exists()
    r = runner.invoke(app, ["predict", "-r", str(tmp_path / "run"), "-c", str(b), "-o", str(tmp_path / "s.csv"),
                            "--allow-other-encoders"])
    assert r.exit_code == 0 and (tmp_path / "s.csv").exists()
    r = runner.invoke(app, ["predict", "-r", str(tmp_path / "run"), "-c", str(a), "-o", str(tmp_path / "t.csv")])
    assert r.exit_code == 0, r.output
