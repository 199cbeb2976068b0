"""The command line: --version, info (text and JSON), clear errors."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from omnifuse import __version__
from omnifuse.cli import app
from tests.helpers import write_toy_cache

runner = CliRunner()


def test_version():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and __version__ in r.stdout


def test_info_json_numbers(tmp_path):
    path = tmp_path / "c.zarr"
    _, stay, subj, truth, (y, ym, *_rest) = write_toy_cache(path)
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


SHARED = __import__("pathlib").Path(__file__).resolve().parents[1].parent / "shared" / "data"


def test_extract_mimic_iii_demo_from_the_cli(tmp_path):
    import pytest

    root = SHARED / "mimic-iii-demo-1.4"
    if not root.exists():
        pytest.skip("shared MIMIC-III demo not present")
    out = tmp_path / "m3.zarr"
    r = runner.invoke(app, ["extract", "--dataset", "mimic", "--root", str(root), "--out", str(out)])
    assert r.exit_code == 0, r.output
    d = json.loads(runner.invoke(app, ["info", str(out), "--json"]).stdout)
    assert d["rows"] == 113 and [m["name"] for m in d["modalities"]] == ["ehr", "ehr_stay"]  # 48 h, whole stay
    # no CXR source: said, not stored (the 48 h pair for mortality, the whole-stay pair for phenotyping)
    assert set(d["extra"]["absent_modalities"]) == {"cxr", "report", "cxr_stay", "report_stay"}
    mort = next(t for t in d["tasks"] if t["name"] == "mortality")
    assert mort["labelled"] == 57 and round(mort["prevalence"]["in_hospital_death"] * 57) == 17
    assert "PhysioNet" in d["license"]


def test_extract_refuses_options_the_dataset_does_not_use(tmp_path):
    r = runner.invoke(app, ["extract", "--dataset", "eicu-demo", "--root", str(tmp_path)])
    assert r.exit_code == 2 and "does not use --root" in r.output
    r = runner.invoke(app, ["extract", "--dataset", "eicu", "--root", str(tmp_path), "--timestep", "1"])
    assert r.exit_code == 2 and "does not use --timestep" in r.output


def test_train_then_predict_from_the_cli(tmp_path):
    import csv

    from tests.helpers import write_synthetic_cache

    cache = write_synthetic_cache(tmp_path / "s.zarr", n=120)
    run = tmp_path / "run"
    args = ["train", "--cache", str(cache), "--task", "mortality", "--method", "omnifuse", "--folds", "2",
            "--epochs", "2", "--device", "cpu", "--out", str(run), "-p", "d=16", "-p", "K=2", "-p", "tla=false"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["method"] == "omnifuse" and cfg["method_params"]["K"] == 2 and cfg["method_params"]["tla"] is False
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["folds"]) == 2 and 0.0 <= metrics["mean"]["auroc"] <= 1.0
    with open(run / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == sum(fm["n_test"] for fm in metrics["folds"])
    out = tmp_path / "scores.csv"
    r = runner.invoke(app, ["predict", "--run", str(run), "--cache", str(cache), "--out", str(out)])
    assert r.exit_code == 0, r.output
    with open(out) as f:
        scored = list(csv.DictReader(f))
    assert len(scored) == 120
    assert set(scored[0]) == {"stay_id", "score", "p_img", "p_rep", "p_ehr", "weight_predicted_class_img",
                              "weight_predicted_class_rep", "weight_predicted_class_ehr", "present_img",
                              "present_rep", "present_ehr", "scored_by", "shap_baseline", "shap_img", "shap_rep",
                              "shap_ehr"}
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in scored)


def test_train_unknown_method_is_a_clear_error(tmp_path):
    from tests.helpers import write_synthetic_cache

    cache = write_synthetic_cache(tmp_path / "s.zarr", n=40)
    r = runner.invoke(app, ["train", "--cache", str(cache), "--task", "mortality", "--method", "nope",
                            "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "unknown fusion method 'nope'" in r.output


def test_methods_lists_the_registry():
    r = runner.invoke(app, ["methods"])
    assert r.exit_code == 0
    for name in ("omnifuse", "concat", "sum", "se_gate", "gblend", "ogm_ge", "pmr", "medfuse", "mdrop"):
        assert name in r.stdout
