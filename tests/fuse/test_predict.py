import copy
import csv
import json
import logging
import shutil

import numpy as np
import pytest
import torch

from omnifuse.fuse.calibration import apply_temperature
from omnifuse.fuse.data import load_fuse_data
from omnifuse.fuse.dwfuse import down_weights
from omnifuse.fuse.predict import CheckpointError, predict
from omnifuse.fuse.train import train
from tests.helpers import FAST, read_csv_rows, synthetic_cache_data, write_cache_data, write_synthetic_cache


def test_predict_scores_any_stays_with_traceable_columns(tiny_cache, tmp_path, fast):
    run = tmp_path / "run"
    r = train(tiny_cache, "mortality", "omnifuse", folds=2, out=run, **fast)
    res = predict(run, tiny_cache, tmp_path / "scores.csv", fold=0, shap=False)
    n = 160
    assert res["score"].shape == (n, 1) and res["stay_id"].shape == (n,)
    for m in ("img", "rep", "ehr"):
        assert res[f"p_{m}"].shape == (n, 1)
        w = res[f"weight_predicted_class_{m}"]
        assert w.shape == (n, 1) and ((w >= 0) & (w <= 1)).all()
    # the label-free weight is eq. 10 with the predicted class
    yhat = res["score"][:, 0] > 0.5
    pt = np.stack([np.where(yhat, res[f"p_{m}"][:, 0], 1 - res[f"p_{m}"][:, 0]) for m in ("img", "rep", "ehr")])
    np.testing.assert_allclose(
        down_weights(torch.tensor(pt), 0.5).numpy()[0], res["weight_predicted_class_img"][:, 0], rtol=1e-4, atol=1e-6
    )
    # fold-0 test rows get the same scores as in training
    d = load_fuse_data(tiny_cache, "mortality", device="cpu")
    te = r.folds[0].test_rows
    np.testing.assert_allclose(res["score"][te], r.folds[0].probs, rtol=1e-5, atol=1e-6)
    with open(tmp_path / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n and "weight_predicted_class_rep" in rows[0] and int(rows[0]["stay_id"]) == d.stay_id[0]
    honest = predict(run, tiny_cache, shap=False)  # each training stay by the fold model that did not train on it
    assert honest["score"].shape == (n, 1) and not np.allclose(honest["score"], res["score"])
    np.testing.assert_allclose(honest["score"][te], res["score"][te], rtol=1e-6)
    # fold 0 trained on the other stays: scored with fold=0 anyway, they are flagged
    assert set(res["scored_by"][te]) == {"out_of_fold:0"}
    assert set(res["scored_by"][r.folds[1].test_rows]) == {"in_training"}


def test_predict_without_label_free_weights(tiny_cache, tmp_path, fast):
    """A method without per-modality heads (concat; ``label_free_weights`` None) gives the fused score, who
    scored it, the presence columns and the attribution only."""
    run = tmp_path / "run"
    train(tiny_cache, "mortality", "concat", folds=2, out=run, **{**fast, "epochs": 1, "method_params": {"d": 8}})
    res = predict(run, tiny_cache, fold=1)
    assert set(res) == {
        "stay_id",
        "score",
        "scored_by",
        "present_img",
        "present_rep",
        "present_ehr",
        "shap_baseline",
        "shap_img",
        "shap_rep",
        "shap_ehr",
    }
    assert res["score"].shape == (160, 1) and np.isfinite(res["score"]).all()


# ------------------------------------------------------------------------------------------ honest scoring
@pytest.fixture(scope="module")
def run2(tmp_path_factory):
    """A two-fold OmniFuse run on a synthetic cache (160 stays, 5 % unlabelled), its result and the cache."""
    d = tmp_path_factory.mktemp("honest")
    cache = write_synthetic_cache(d / "c.zarr")
    r = train(cache, "mortality", "omnifuse", folds=2, out=d / "run", **{**copy.deepcopy(FAST), "epochs": 2})
    return d / "run", cache, r


def _copy(run_dir, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(run_dir, dst)
    return dst


def _set_temperature(run_dir, fold, value):
    p = run_dir / f"fold{fold}" / "model.json"
    meta = json.loads(p.read_text())
    if value is None:
        meta.pop("temperature", None)
    else:
        meta["temperature"] = value
    p.write_text(json.dumps(meta))


def test_each_training_stay_is_scored_by_its_out_of_fold_model(run2, tmp_path, caplog):
    run, cache, r = run2
    d = load_fuse_data(cache, "mortality", device="cpu")
    for f in r.folds:  # each fold saved the stays it trained on: every labelled stay outside its test rows
        saved = np.load(run / f"fold{f.fold}" / "train_stays.npy")
        labelled = np.flatnonzero(d.y_mask.numpy())
        np.testing.assert_array_equal(saved, np.sort(d.stay_id[np.setdiff1d(labelled, f.test_rows)]))
    with caplog.at_level(logging.INFO, logger="omnifuse.fuse.predict"):
        res = predict(run, cache, tmp_path / "s.csv")
    n_lab = int(d.y_mask.sum())
    assert (
        f"{n_lab:,} of 160 stays were in the run's training data: each scored by the fold model that did not "
        f"train on it; the other {160 - n_lab}, which no fold model trained on, by the mean of the fold models"
    ) in caplog.text
    per_fold = [predict(run, cache, fold=k, shap=False)["score"] for k in (0, 1)]
    for f in r.folds:  # the score of training (predictions.csv), with the fold's calibration
        np.testing.assert_allclose(res["score"][f.test_rows], f.probs, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(res["score"][f.test_rows], per_fold[f.fold][f.test_rows], rtol=1e-6)
        assert set(res["scored_by"][f.test_rows]) == {f"out_of_fold:{f.fold}"}
    new = ~d.y_mask.numpy()  # unlabelled: no fold trained on them
    assert new.any() and set(res["scored_by"][new]) == {"all_folds"}
    np.testing.assert_allclose(res["score"][new], (per_fold[0][new] + per_fold[1][new]) / 2, rtol=1e-6)
    # the attribution adds up to the scored (calibrated) risk of the same model
    total = res["shap_baseline"] + np.nansum([res[f"shap_{m}"] for m in ("img", "rep", "ehr")], axis=0)
    np.testing.assert_allclose(total, res["score"][:, 0], atol=1e-5)
    for m in ("img", "rep", "ehr"):
        assert (np.isnan(res[f"shap_{m}"]) == ~res[f"present_{m}"]).all()
    rows = read_csv_rows(tmp_path / "s.csv")
    assert list(rows[0])[:3] == ["stay_id", "score", "scored_by"] and "shap_rep" in rows[0]
    i = int(np.flatnonzero(~res["present_rep"])[0])
    assert rows[i]["shap_rep"] == "nan" and rows[i]["scored_by"] == res["scored_by"][i]
    assert float(rows[0]["shap_baseline"]) == pytest.approx(res["shap_baseline"][0], rel=1e-5)


def test_new_stays_and_other_datasets_get_all_folds(run2, tmp_path, caplog):
    run, cache, _ = run2
    base = predict(run, cache, shap=False)
    cd = synthetic_cache_data()  # the same rows under new ids: new stays of the same dataset
    cd.stay_id = cd.stay_id + 50_000
    res = predict(run, write_cache_data(tmp_path / "new.zarr", cd), shap=False)
    assert set(res["scored_by"]) == {"all_folds"}
    mean = (predict(run, cache, fold=0, shap=False)["score"] + predict(run, cache, fold=1, shap=False)["score"]) / 2
    np.testing.assert_allclose(res["score"], mean, rtol=1e-6)
    # the same ids in a cache of another dataset: not the run's stays, scored as new, and said
    other = synthetic_cache_data()
    other.spec.dataset = "another-hospital"
    with caplog.at_level(logging.INFO, logger="omnifuse.fuse.predict"):
        res = predict(run, write_cache_data(tmp_path / "other.zarr", other), shap=False)
    assert set(res["scored_by"]) == {"all_folds"}
    n_lab = int(load_fuse_data(cache, "mortality", device="cpu").y_mask.sum())  # the stays the folds trained on
    assert (
        f"{n_lab} stay id(s) also name training stays of the run, but this is a cache of dataset "
        "another-hospital 0, the run was trained on synthetic 0: its stays are scored as new"
    ) in caplog.text
    # the run's dataset rebuilt (other labels: another digest): the same stays, matched by id
    relabelled = synthetic_cache_data()
    relabelled.labels["mortality"].y[:] = 1 - relabelled.labels["mortality"].y
    res = predict(run, write_cache_data(tmp_path / "relabelled.zarr", relabelled), shap=False)
    assert (res["scored_by"] == base["scored_by"]).all()
    np.testing.assert_allclose(res["score"], base["score"], rtol=1e-6)


def test_runs_saved_before_train_stays_are_read_from_predictions_csv(run2, tmp_path, caplog):
    run, cache, _ = run2
    base = predict(run, cache, shap=False)
    old = _copy(run, tmp_path)
    for k in (0, 1):
        (old / f"fold{k}" / "train_stays.npy").unlink()
    res = predict(old, cache, shap=False)
    assert (res["scored_by"] == base["scored_by"]).all()
    (old / "predictions.csv").unlink()  # nothing tells: every stay by all folds, with a warning
    with caplog.at_level(logging.WARNING, logger="omnifuse.fuse.predict"):
        res = predict(old, cache, shap=False)
    assert set(res["scored_by"]) == {"all_folds"} and "does not record which stays each fold trained on" in caplog.text
    np.save(old / "fold0" / "train_stays.npy", np.array([0.5, 1.5]))
    np.save(old / "fold1" / "train_stays.npy", np.array([1, 2]))
    with pytest.raises(CheckpointError, match=r"fold0/train_stays.npy must hold a 1-D array of integer stay ids"):
        predict(old, cache, shap=False)


def test_temperature_rescales_each_fold_model_before_averaging_and_attribution(run2, tmp_path):
    run, cache, r = run2
    dst = _copy(run, tmp_path)
    for k in (0, 1):
        _set_temperature(dst, k, None)  # a checkpoint saved before calibration: T = 1
    plain = predict(dst, cache)
    _set_temperature(dst, 0, [1.0])
    np.testing.assert_allclose(predict(dst, cache, shap=False)["score"], plain["score"], rtol=1e-6)
    _set_temperature(dst, 0, [2.5])
    res = predict(dst, cache)
    t0, t1 = r.folds[0].test_rows, r.folds[1].test_rows
    np.testing.assert_allclose(res["score"][t0], apply_temperature(plain["score"][t0], 2.5, "binary"), rtol=1e-5)
    np.testing.assert_allclose(res["score"][t1], plain["score"][t1], rtol=1e-6)
    new = res["scored_by"] == "all_folds"  # the mean of a calibrated and an uncalibrated fold model
    f0, f1 = (predict(dst, cache, fold=k, shap=False)["score"][new] for k in (0, 1))
    np.testing.assert_allclose(res["score"][new], (f0 + f1) / 2, rtol=1e-6)
    total = res["shap_baseline"] + np.nansum([res[f"shap_{m}"] for m in ("img", "rep", "ehr")], axis=0)
    np.testing.assert_allclose(total, res["score"][:, 0], atol=1e-5)
    assert not np.allclose(res["shap_img"][t0], plain["shap_img"][t0], equal_nan=True)
    _set_temperature(dst, 0, [-1.0])
    with pytest.raises(CheckpointError, match="temperatures must be finite and positive"):
        predict(dst, cache, shap=False)


def test_multiclass_attributes_the_predicted_class(tmp_path, fast):
    cache = write_synthetic_cache(tmp_path / "c.zarr", n=80)
    train(cache, "subtype", "concat", folds=2, out=tmp_path / "run", **{**fast, "epochs": 1, "method_params": {"d": 8}})
    res = predict(tmp_path / "run", cache, tmp_path / "s.csv")
    assert res["score"].shape == (80, 3)
    np.testing.assert_array_equal(res["shap_class"], res["score"].argmax(1))
    total = res["shap_baseline"] + np.nansum([res[f"shap_{m}"] for m in ("img", "rep", "ehr")], axis=0)
    np.testing.assert_allclose(total, res["score"][np.arange(80), res["shap_class"]], atol=1e-5)
    assert "shap_class" in read_csv_rows(tmp_path / "s.csv")[0]
