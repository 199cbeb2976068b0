"""The one fold runner: its seed policy, its two per-combination views, its calibration (temperature fitted on
the validation rows, calibrated and raw predictions, T = 1 for reference learners and splits without a
positive), and the proof that ``omnifuse train`` and ``omnifuse experiment compare`` give the same per-fold
numbers for the same options."""

import logging

import numpy as np
import pytest

from omnifuse.experiments.compare import compare
from omnifuse.fuse import metrics
from omnifuse.fuse.calibration import apply_temperature, fit_temperature
from omnifuse.fuse.config import resolve_config
from omnifuse.fuse.data import inner_split, load_fuse_data
from omnifuse.fuse.fold import (
    FoldPlan,
    combination_views,
    fold_data,
    fold_seed,
    make_repeated_folds,
    mask_seed,
    run_fold,
    run_seed,
)
from omnifuse.fuse.train import train
from omnifuse.fuse.trainer import predict_probs
from tests.helpers import TINY_OPTIONS, TINY_OVERRIDES


def test_seed_policy():
    assert fold_seed(3, 0) == 3 and fold_seed(3, 2) == 5
    assert run_seed(2, 0, 1) == 201 and run_seed(2, 1, 1) == 1201
    s = mask_seed(0, 0, 1, 0.3, "random")
    assert s == mask_seed(0, 0, 1, 0.3, "random")
    others = {
        mask_seed(0, 0, 2, 0.3, "random"),
        mask_seed(0, 0, 1, 0.4, "random"),
        mask_seed(0, 1, 1, 0.3, "random"),
        mask_seed(1, 0, 1, 0.3, "random"),
        mask_seed(0, 0, 1, 0.3, "img"),
    }
    assert s not in others and len(others) == 5


def test_combination_views():
    present = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 1], [1, 1, 1]], dtype=bool)
    probs = np.zeros((4, 1))
    v = combination_views(present, np.array([True, True, False]), probs)
    assert v["all_masked"].tolist() == [True, True, True, True]
    assert v["complete"].tolist() == [True, False, False, True]
    assert v["partial"].tolist() == [False, True, False, False]
    assert "partial" not in combination_views(present, np.array([False, False, True]), probs)


def test_fold_data_masks_per_fold_and_keeps_the_natural_mask(ref_cache):
    data = load_fuse_data(ref_cache, "mortality", device="cpu")
    assert fold_data(data, 0.0, "random", 0, 0, 0) is data
    a, b = fold_data(data, 0.5, "random", 0, 0, 0), fold_data(data, 0.5, "random", 0, 0, 1)
    assert not a.mask.equal(b.mask) and a.natural_mask.equal(data.natural_mask)
    assert (a.mask <= data.natural_mask).all() and a.mask.equal(fold_data(data, 0.5, "random", 0, 0, 0).mask)


def test_run_fold_predicts_every_combination_on_every_test_row(ref_cache):
    data = load_fuse_data(ref_cache, "mortality", device="cpu")
    ((tr, te),) = make_repeated_folds(data, 3, 1, 0)[0][:1]
    cfg = resolve_config(None, task="mortality", epochs=1, progress=False, **TINY_OPTIONS)
    combos = [data.modalities, data.modalities[:1], ["nonesuch"]]
    run = run_fold(data, FoldPlan("concat", tr, te, seed=5, params=TINY_OVERRIDES["concat"], combos=combos), cfg)
    assert run.overall.shape == (len(te), 1) and sorted(run.combos) == [0, 1]  # a combination it cannot see: none
    np.testing.assert_allclose(run.combos[0], run.overall, atol=1e-6)  # all modalities = the rows as they are
    assert run.n_train + run.n_val == len(tr) and run.present.shape == (len(te), len(data.modalities))


def test_run_fold_calibrates_on_the_validation_rows_and_keeps_the_raw_predictions(ref_cache):
    data = load_fuse_data(ref_cache, "mortality", device="cpu")
    ((tr, te),) = make_repeated_folds(data, 3, 1, 0)[0][:1]
    cfg = resolve_config(None, task="mortality", epochs=3, progress=False, **TINY_OPTIONS)
    plan = FoldPlan("concat", tr, te, seed=5, params=TINY_OVERRIDES["concat"], combos=[data.modalities[:2]])
    run = run_fold(data, plan, cfg)
    # the temperature: fitted on the model's predictions of the inner validation rows, never the test rows
    _, val = inner_split(data, tr, cfg.val_fraction, seed=plan.seed)
    assert run.n_val == len(val) and not set(val) & set(te)
    want = fit_temperature(data.labels_numpy(val), predict_probs(run.model, data, val, run.normalizer, 1024), "binary")
    assert len(run.temperature) == 1 and run.temperature[0] == pytest.approx(want[0], rel=1e-9)
    assert run.temperature[0] != 1.0
    # every reported probability is the raw one rescaled by it; AUROC is unchanged
    np.testing.assert_allclose(run.overall, apply_temperature(run.overall_raw, run.temperature, "binary"), atol=1e-7)
    np.testing.assert_allclose(run.combos[0], apply_temperature(run.combos_raw[0], run.temperature, "binary"))
    assert not np.allclose(run.overall, run.overall_raw)
    assert metrics.auroc(run.y, run.overall) == pytest.approx(metrics.auroc(run.y, run.overall_raw), abs=1e-9)
    # --no-calibrate: the same training, T = 1, the raw predictions reported
    off = run_fold(data, plan, resolve_config(cfg, calibrate=False))
    assert off.temperature == [1.0] and off.overall is off.overall_raw
    np.testing.assert_array_equal(off.overall_raw, run.overall_raw)
    np.testing.assert_array_equal(off.combos[0], run.combos_raw[0])


def test_run_fold_keeps_t_one_for_reference_learners_and_splits_without_a_positive(ref_cache, caplog):
    data = load_fuse_data(ref_cache, "mortality", device="cpu")
    ((tr, te),) = make_repeated_folds(data, 3, 1, 0)[0][:1]
    cfg = resolve_config(None, task="mortality", epochs=1, progress=False, **TINY_OPTIONS)
    ref = run_fold(data, FoldPlan("logreg", tr, te, seed=5), cfg)
    assert ref.temperature == [1.0] and ref.overall is ref.overall_raw and ref.n_val == 0
    negatives = tr[data.labels_numpy(tr)[:, 0] == 0][:20]
    plan = FoldPlan("concat", tr, te, seed=5, params=TINY_OVERRIDES["concat"], val_rows=negatives)
    with caplog.at_level(logging.WARNING, logger="omnifuse.fuse.calibration"):
        run = run_fold(data, plan, cfg)
    assert run.temperature == [1.0] and run.overall is run.overall_raw
    assert "fold 0: calibration split holds no positive: temperature kept at 1" in caplog.text


@pytest.mark.parametrize("method", ["concat", "omnifuse"])
def test_train_and_compare_give_identical_fold_metrics(ref_cache, tmp_path, method):
    """The same options through ``train`` and ``experiment compare``: the same per-fold AUROC and AUPRC, overall
    and per combination in both views (simulated missingness included)."""
    opts = {**TINY_OPTIONS, "epochs": 2}
    r = train(
        ref_cache,
        "mortality",
        method,
        folds=3,
        seed=4,
        missing_rate=0.3,
        progress=False,
        n_boot=0,
        method_params=TINY_OVERRIDES[method],
        **opts,
    )
    c = compare(
        ref_cache,
        "mortality",
        [method],
        folds=3,
        repeats=1,
        seed=4,
        missing_rate=0.3,
        out=tmp_path / method,
        combinations="all",
        progress=False,
        print_table=False,
        n_boot=0,
        method_overrides={method: TINY_OVERRIDES[method]},
        options=opts,
    )
    recs = {(x["fold"], x["group"], x["subset"]): x for x in c.folds if x["method"] == method}
    checked = 0
    for k, fm in enumerate(r.metrics["folds"]):
        assert recs[(k, "overall", "as_is")]["auroc"] == pytest.approx(fm["auroc"], abs=1e-12)
        assert recs[(k, "overall", "as_is")]["auprc"] == pytest.approx(fm["auprc"], abs=1e-12)
        for name, views in fm["by_combination"].items():
            for view, v in views.items():
                x = recs[(k, name, view)]
                assert x["n"] == v["n"]
                for key in ("auroc", "auprc"):
                    if v[key] is None:
                        assert np.isnan(x[key])
                    else:
                        assert x[key] == pytest.approx(v[key], abs=1e-12)
                checked += 1
    assert checked >= 3 * 7  # 3 folds x (7 combinations of 3 modalities, at least one view each)
