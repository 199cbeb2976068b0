import csv

import numpy as np
import torch

from omnifuse.fuse.data import load_fuse_data
from omnifuse.fuse.dwfuse import down_weights
from omnifuse.fuse.predict import predict
from omnifuse.fuse.train import train


def test_predict_scores_any_stays_with_traceable_columns(tiny_cache, tmp_path, fast):
    run = tmp_path / "run"
    r = train(tiny_cache, "mortality", "omnifuse", folds=2, out=run, **fast)
    res = predict(run, tiny_cache, tmp_path / "scores.csv", fold=0)
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
    avg = predict(run, tiny_cache)  # mean over both fold models
    assert avg["score"].shape == (n, 1) and not np.allclose(avg["score"], res["score"])


def test_predict_without_label_free_weights(tiny_cache, tmp_path, fast):
    """A method without per-modality heads (concat; ``label_free_weights`` None) gives the fused score and
    the presence columns only."""
    run = tmp_path / "run"
    train(tiny_cache, "mortality", "concat", folds=2, out=run, **{**fast, "epochs": 1, "method_params": {"d": 8}})
    res = predict(run, tiny_cache, fold=1)
    assert set(res) == {"stay_id", "score", "present_img", "present_rep", "present_ehr"}
    assert res["score"].shape == (160, 1) and np.isfinite(res["score"]).all()
