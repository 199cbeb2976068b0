"""``omnifuse train`` (omnifuse.fuse.train): the run folder and its files, reproducible metrics, the three task
kinds with simulated missingness, variants of the registry, the grid search, and the real MIMIC-IV demo."""

import json

import numpy as np
import pytest

from omnifuse.fuse import metrics
from omnifuse.fuse.calibration import apply_temperature
from omnifuse.fuse.data import load_fuse_data
from omnifuse.fuse.train import grid, print_results, results_table, train
from tests.helpers import read_csv_rows, synthetic_cache_data


def test_run_folder_contents_and_loss_goes_down(tiny_cache, tmp_path, fast):
    out = tmp_path / "run"
    r = train(tiny_cache, "mortality", "omnifuse", folds=2, out=out, **{**fast, "epochs": 6, "patience": 10})
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method_params_resolved"]["beta"] == 0.5 and cfg["method_params_resolved"]["lambda_dwfuse"] == 10.0
    m = json.loads((out / "metrics.json").read_text())
    assert len(m["folds"]) == 2 and 0 <= m["mean"]["auroc"] <= 1 and "auroc_ci" in m["folds"][0]
    assert "img+rep+ehr" in m["folds"][0]["by_combination"] and m["folds"][0]["by_pattern"]
    for h in r.folds[0].history, r.folds[1].history:
        assert h[-1]["loss"] < h[0]["loss"]
    rows = read_csv_rows(out / "predictions.csv")
    assert len(rows) == sum(f["n_test"] for f in m["folds"])
    assert {"stay_id", "fold", "label", "score"} <= set(rows[0])
    lazy = json.loads((out / "lazy_combinations.json").read_text())
    assert len(lazy["fold0"]) == len(r.folds[0].history) and lazy["fold0"][0]["lazy"]
    assert (out / "fold0" / "model.safetensors").exists() and (out / "fold0" / "normalizer.json").exists()
    print_results(r)


@pytest.mark.parametrize("task", ["mortality", "pheno", "subtype"])
def test_calibration_is_saved_reported_and_pooled(tiny_cache, tmp_path, fast, task):
    """model.json holds the fold's temperature; predictions.csv the calibrated and the raw scores (the one the
    other rescaled); metrics.json the Brier score and ECE before and after, and the pooled metrics of both."""
    out = tmp_path / "run"
    fast["method_params"] = {"d": 8, "hidden": 8}
    r = train(tiny_cache, task, "concat", folds=2, out=out, **fast)
    m = json.loads((out / "metrics.json").read_text())
    kind = m["task_kind"]
    rows = read_csv_rows(out / "predictions.csv")
    cols = ["score"] if kind == "binary" else [c for c in rows[0] if c.startswith("score_") and "uncal" not in c]
    raw_cols = [c.replace("score", "score_uncalibrated", 1) for c in cols]
    for k, fr in enumerate(r.folds):
        meta = json.loads((out / f"fold{k}" / "model.json").read_text())
        assert meta["temperature"] == fr.temperature == m["folds"][k]["temperature"]
        assert len(meta["temperature"]) == (1 if kind == "multiclass" else fr.probs.shape[1])
        np.testing.assert_allclose(fr.probs, apply_temperature(fr.probs_raw, fr.temperature, kind), atol=1e-7)
        fold_rows = [x for x in rows if x["fold"] == str(k)]
        raw = np.array([[float(x[c]) for c in raw_cols] for x in fold_rows])
        cal = np.array([[float(x[c]) for c in cols] for x in fold_rows])
        np.testing.assert_allclose(raw, fr.probs_raw, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(cal, fr.probs, rtol=1e-5, atol=1e-7)
        assert len(fold_rows) == m["folds"][k]["n_test"]
        lab_cols = [c for c in rows[0] if c.startswith("label")]
        y = np.array([[int(x[c]) for c in lab_cols] for x in fold_rows])
        y = y[:, 0] if kind == "multiclass" else y
        f = m["folds"][k]
        assert f["ece"] == pytest.approx(metrics.expected_calibration_error(y, fr.probs, kind, 15), abs=1e-12)
        assert f["ece_uncalibrated"] == pytest.approx(metrics.expected_calibration_error(y, fr.probs_raw, kind, 15))
        assert f["brier_uncalibrated"] == pytest.approx(metrics.brier(y, fr.probs_raw, kind), abs=1e-12)
    assert {"ece", "brier_uncalibrated", "ece_uncalibrated"} <= set(m["mean"])
    assert set(m["pooled"]) == set(m["pooled_uncalibrated"]) == {"auroc", "auprc", "brier", "ece"}
    print_results(r)
    assert [c.header for c in results_table(r).columns][4:7] == ["Brier", "ECE", "T"]


def test_pooled_metrics_are_the_concatenated_folds(tiny_data, fast):
    fast["method_params"] = {"d": 8, "hidden": 8}
    r = train(tiny_data, "mortality", "concat", folds=3, **fast)
    data = load_fuse_data(tiny_data, "mortality", device="cpu")
    y = data.labels_numpy(np.concatenate([f.test_rows for f in r.folds]))
    p = np.concatenate([f.probs for f in r.folds])
    q = np.concatenate([f.probs_raw for f in r.folds])
    pooled, raw = r.metrics["pooled"], r.metrics["pooled_uncalibrated"]
    assert pooled["auroc"] == pytest.approx(metrics.auroc(y, p)) and raw["auroc"] == pytest.approx(metrics.auroc(y, q))
    assert pooled["ece"] == pytest.approx(metrics.expected_calibration_error(y, p, "binary", 15))
    assert raw["brier"] == pytest.approx(metrics.brier(y, q))
    off = train(tiny_data, "mortality", "concat", folds=3, calibrate=False, **fast)
    assert all(f.temperature == [1.0] for f in off.folds)
    assert off.metrics["pooled"] == off.metrics["pooled_uncalibrated"] == raw


def test_same_seed_same_metrics(tiny_data, fast):
    fast.update(epochs=2, n_boot=5)
    a = train(tiny_data, "mortality", "omnifuse", folds=2, seed=3, **fast)
    b = train(tiny_data, "mortality", "omnifuse", folds=2, seed=3, **fast)
    c = train(tiny_data, "mortality", "omnifuse", folds=2, seed=4, **fast)
    assert a.metrics["folds"] == b.metrics["folds"]
    assert a.metrics["mean"]["auroc"] != c.metrics["mean"]["auroc"]


@pytest.mark.parametrize("task", ["pheno", "subtype"])
def test_multilabel_and_multiclass_and_missing_rate(tiny_data, task, fast):
    r = train(tiny_data, task, "omnifuse", folds=2, missing_rate=0.5, **fast)
    assert 0 <= r.metrics["mean"]["auroc"] <= 1
    assert r.folds[0].probs.shape[1] == 3
    if task == "subtype":
        np.testing.assert_allclose(r.folds[0].probs.sum(1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("variant", ["dwfuse_only", "ablation_e"])
def test_train_accepts_a_variant(variant, tmp_path):
    """``omnifuse train -m dwfuse_only`` (and any variant): the run trains the variant's network and the
    run folder names it with its resolved switches."""
    res = train(
        synthetic_cache_data(n=120, seed=2),
        "mortality",
        variant,
        folds=2,
        epochs=2,
        batch_size=32,
        n_boot=5,
        progress=False,
        device="cpu",
        mining_rows=32,
        out=tmp_path / "run",
        method_params={"d": 8, "K": 2, "cra_hidden": 16, "latent": 4, "head_hidden": 8},
    )
    assert res.metrics["method"] == variant and len(res.metrics["folds"]) == 2
    resolved = json.loads((tmp_path / "run" / "config.json").read_text())["method_params_resolved"]
    switches = {"dwfuse_only": (True, False, False, False), "ablation_e": (True, False, True, True)}[variant]
    assert tuple(resolved[k] for k in ("dwfuse", "tla", "imp_fw", "imp_bw")) == switches
    # no TLA: no lazy combination was mined in any epoch
    lazy = json.loads((tmp_path / "run" / "lazy_combinations.json").read_text())
    assert all(v == [] for v in lazy.values())


def test_grid_selects_on_validation(tiny_data, tmp_path, fast):
    s = grid(
        tiny_data,
        "mortality",
        "omnifuse",
        grid={"beta": [0.25, 1.0]},
        folds=2,
        out=tmp_path / "g",
        **{**fast, "epochs": 2},
    )
    assert len(s["points"]) == 2 and s["best"]["beta"] in (0.25, 1.0)
    best = max(s["points"], key=lambda p: p["val_auroc"])
    assert s["best"] == best["params"]
    assert (tmp_path / "g" / "grid.csv").exists()


def test_real_mimic_iv_demo_cache_single_modality_multilabel(tmp_path, fast):
    """Real data (MIMIC-IV demo, EHR only: M = 1) and the 25-label phenotyping task, through extract, train
    and predict: one modality combination, finite per-fold metrics, w = 1 for the single modality (eq. 10)."""
    from pathlib import Path

    from omnifuse.cache.reader import open_cache
    from omnifuse.extract.run import extract_dataset
    from omnifuse.fuse.predict import predict

    root = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mimic-iv-demo-2.2"
    if not root.exists():
        pytest.skip("shared MIMIC-IV demo not present")
    path = tmp_path / "m4.zarr"
    extract_dataset("mimic", path, root=root, progress=False)
    c = open_cache(path)
    assert [m.name for m in c.spec.modalities] == ["ehr", "ehr_stay"] and c.n == 112  # 48 h; the whole stay
    r = train(path, "phenotyping", "omnifuse", folds=2, out=tmp_path / "run", **fast)
    assert all(len(f["by_combination"]) == 1 for f in r.metrics["folds"])
    assert all(0.0 <= f["auroc"] <= 1.0 for f in r.metrics["folds"])
    res = predict(tmp_path / "run", path, fold=0)
    assert res["score"].shape == (112, 25) and np.isfinite(res["score"]).all()
    np.testing.assert_allclose(res["weight_predicted_class_ehr_stay"], 1.0)  # phenotyping reads the whole stay
