"""End to end on a small synthetic cache: the five studies' folders and the numbers in them."""

import csv
import json

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from omnifuse.experiments.ablation import ablation
from omnifuse.experiments.compare import compare
from omnifuse.experiments.imputation import imputation
from omnifuse.experiments.sweep import sweep
from omnifuse.experiments.unimodal import unimodal
from omnifuse.experiments.runner import load_run


def _png(path):
    import matplotlib.image as mpimg

    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert img[..., :3].std() > 0.01  # not a blank canvas


def _csv(path):
    return list(csv.DictReader(open(path)))


def test_compare_end_to_end(ref_cache, tmp_path, tiny):
    out = tmp_path / "cmp"
    methods = ["omnifuse", "concat", "dwfuse_only"]
    r = compare(ref_cache, "mortality", methods, folds=3, out=out, n_boot=30, **tiny)
    for f in ("config.json", "results.csv", "folds.csv", "results.json", "results.md", "folds.json",
              "reliability.png", "auroc_by_combination.png"):
        assert (out / f).exists(), f
    _png(out / "reliability.png")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["methods"] == methods and cfg["config"]["folds"] == 3 and cfg["train"]["epochs"] == 2
    assert cfg["config"]["methods"] == methods  # the configuration as given, reusable with --config
    assert cfg["combinations"] == ["img+rep+ehr", "img", "rep", "ehr"]
    folds = json.loads((out / "folds.json").read_text())["repeats"][0]

    # overall AUROC per fold = scikit-learn on the stored predictions; the summary is their mean and sd
    summ = _csv(out / "results.csv")
    fold_rows = _csv(out / "folds.csv")
    per = {}
    for m in methods:
        vals = []
        for k in range(3):
            a, run = load_run(out / "runs" / m / "rate0_random" / f"r0f{k}")
            assert run["n_test"] == len(folds[k])
            vals.append(roc_auc_score(a["y"][:, 0], a["overall"][:, 0]))
        per[m] = vals
        got = [float(x["auroc"]) for x in fold_rows if x["method"] == m and x["group"] == "overall"]
        np.testing.assert_allclose(got, vals, rtol=1e-9)
        row = next(x for x in summ if x["method"] == m and x["group"] == "overall")
        assert float(row["auroc_mean"]) == pytest.approx(np.mean(vals))
        assert float(row["auroc_sd"]) == pytest.approx(np.std(vals, ddof=1))
        lo, hi = json.loads(row["auroc_ci"])
        assert 0 <= lo <= hi <= 1
    # paired t-tests against omnifuse and against the DWFuse-only variant, over the same folds
    row = next(x for x in summ if x["method"] == "concat" and x["group"] == "overall")
    t = sps.ttest_rel(per["concat"], per["omnifuse"])
    assert float(row["t_auroc_vs_omnifuse"]) == pytest.approx(t.statistic)
    assert float(row["p_auroc_vs_omnifuse"]) == pytest.approx(t.pvalue)
    t = sps.ttest_rel(per["concat"], per["dwfuse_only"])
    assert float(row["p_auroc_vs_dwfuse_only"]) == pytest.approx(t.pvalue)

    # combination cells: complete rows hold every modality of it; partial rows are the rest holding some
    a, _ = load_run(out / "runs" / "concat" / "rate0_random" / "r0f0")
    full = next(x for x in fold_rows if x["method"] == "concat" and x["fold"] == "0" and x["group"] == "img+rep+ehr"
                and x["subset"] == "complete")
    assert int(full["n"]) == int(a["present"].all(1).sum())
    part = next(x for x in fold_rows if x["method"] == "concat" and x["fold"] == "0" and x["group"] == "img+rep+ehr"
                and x["subset"] == "partial")
    assert int(part["n"]) == len(a["y"]) - int(full["n"])
    sel = a["present"].all(1)
    assert float(full["auroc"]) == pytest.approx(roc_auc_score(a["y"][sel, 0], a["combo0"][sel, 0]))

    # the reference score: on the test rows where it is valid; every method on the same rows
    from omnifuse.cache.reader import open_cache

    c = open_cache(ref_cache).load(modalities=[])
    vals, valid = c.references["score"]
    y = c.labels["mortality"].y[:, 0]
    stay = c.stay_id
    ref_rows = [x for x in fold_rows if x["group"] == "reference_subset:score"]
    for k in range(3):
        pos = np.flatnonzero(np.isin(stay, folds[k]))
        ok = pos[valid[pos]]
        cells = [x for x in ref_rows if x["fold"] == str(k)]
        assert {x["method"] for x in cells} == {"reference:score", *methods}
        assert {int(x["n"]) for x in cells} == {len(ok)}
        refc = next(x for x in cells if x["method"] == "reference:score")
        assert float(refc["auroc"]) == pytest.approx(roc_auc_score(y[ok], vals[ok]))
    row = next(x for x in summ if x["method"] == "omnifuse" and x["group"] == "reference_subset:score")
    assert row["p_auroc_vs_reference:score"] != ""

    md = (out / "results.md").read_text()
    assert "| method | folds | AUROC |" in md and "Reference score score" in md and "reliability.png" in md
    res = json.loads((out / "results.json").read_text())
    assert res["runs_trained"] == 9 and len(res["folds"]) == len(fold_rows)
    # a second call reuses every run and gives the same numbers
    r2 = compare(ref_cache, "mortality", methods, folds=3, out=out, n_boot=30, **tiny)
    assert (r2.runs_trained, r2.runs_reused) == (0, 9)
    assert _csv(out / "results.csv") == summ


def test_unimodal(ref_cache, tmp_path, tiny):
    out = tmp_path / "uni"
    r = unimodal(ref_cache, "mortality", fused=["concat"], folds=2, out=out, n_boot=0, **tiny)
    assert r.runs_trained == 2 + 3 * 2
    _png(out / "unimodal.png")
    rows = _csv(out / "results.csv")
    for m in ("img", "rep", "ehr"):
        u = next(x for x in rows if x["method"] == "unimodal" and x["group"] == m)
        f = next(x for x in rows if x["method"] == "concat" and x["group"] == m)
        assert u["n_rows"] == f["n_rows"]  # the same test rows: those holding m
        assert f["p_auroc_vs_unimodal"] != "" or float(f["n_folds"]) < 2
    lazy = json.loads((out / "results.json").read_text())["laziness"]["concat"]
    assert set(lazy) == {"img", "rep", "ehr"}


def test_ablation_rows(ref_cache, tmp_path, tiny):
    out = tmp_path / "abl"
    r = ablation(ref_cache, "mortality", rows=["a", "e", "f"], folds=2, out=out, n_boot=0, **tiny)
    assert r.runs_trained == 6
    _, run = load_run(out / "runs" / "ablation_e" / "rate0_random" / "r0f0")
    p = run["method_params"]  # resolved: the registry entry's switches, then the study's overrides
    assert run["spec"]["method"] == "ablation_e"
    assert (p["dwfuse"], p["tla"], p["imp_fw"], p["imp_bw"]) == (True, False, True, True)
    assert p["d"] == 8  # the omnifuse overrides reach every row
    _, run = load_run(out / "runs" / "ablation_a" / "rate0_random" / "r0f0")
    assert not any(run["method_params"][k] for k in ("dwfuse", "tla", "imp_fw", "imp_bw"))
    cfg = json.loads((out / "config.json").read_text())
    assert "IMP-bw needs IMP-fw" in cfg["row_e_reading"]
    md = (out / "results.md").read_text()
    assert "| (e) | ✓ |  | ✓ | ✓ |" in md
    _png(out / "ablation.png")


def test_sweep_rates_and_masks(ref_cache, tmp_path, tiny):
    out = tmp_path / "sw"
    r = sweep(ref_cache, "mortality", rates=[0.0, 0.6], folds=2, out=out, **tiny)
    assert r.runs_trained == 2 * 2 * 2
    a0, _ = load_run(out / "runs" / "omnifuse" / "rate0_random" / "r0f1")
    a6, r6 = load_run(out / "runs" / "omnifuse" / "rate0.6_random" / "r0f1")
    b6, q6 = load_run(out / "runs" / "omnifuse_no_imp" / "rate0.6_random" / "r0f1")
    assert a6["present"].sum() < 0.7 * a0["present"].sum() and a6["present"].any(1).all()
    assert np.array_equal(a6["present"], b6["present"]) and r6["mask_digest"] == q6["mask_digest"]
    rows = _csv(out / "results.csv")
    assert {(x["method"], float(x["rate"])) for x in rows} == {(m, q) for m in ("omnifuse", "omnifuse_no_imp")
                                                               for q in (0.0, 0.6)}
    _png(out / "sweep.png")
    with pytest.raises(ValueError, match="modality must be"):
        sweep(ref_cache, "mortality", rates=[0.5], modality="nonesuch", folds=2, out=tmp_path / "x", **tiny)


def test_imputation_study(ref_cache, tmp_path, tiny):
    out = tmp_path / "imp"
    tiny["epochs"] = 3
    r = imputation(ref_cache, "mortality", folds=2, out=out, tsne_rows=40, **tiny)
    recs = r.extra["imputation"]
    assert [x["epoch"] for x in recs] == [-1, 0, 1, 2]  # before training, then every epoch (early stopping off)
    for x in recs:
        for m, v in x["cos"].items():
            assert -1.0 <= v <= 1.0 and x["n"][m] > 0
    with np.load(out / "runs" / "omnifuse" / "rate0_random" / "r0f0" / "embeddings.npz") as z:
        assert z["real_img"].shape == z["imputed_img"].shape and z["real_img"].shape[1] == 8
    _png(out / "imputation.png")
    _png(out / "tsne.png")
    assert len(_csv(out / "results.csv")) == 4 * 3
