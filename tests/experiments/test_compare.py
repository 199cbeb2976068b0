"""``omnifuse experiment compare`` (omnifuse.experiments.compare) end to end on a small synthetic cache: its
folder, per-fold AUROC equal to scikit-learn's on the stored predictions, paired t-tests, the combination
views, the reference score on its own rows, and a resumed second call; and the default list of methods."""

import json

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from omnifuse.cache.reader import open_cache
from omnifuse.experiments.compare import compare, default_methods
from omnifuse.experiments.report import fp
from omnifuse.experiments.runner import load_run
from omnifuse.fuse.calibration import apply_temperature
from omnifuse.fuse.methods import METHODS
from tests.helpers import assert_png, read_csv_rows


def test_compare_end_to_end(ref_cache, tmp_path, tiny):
    out = tmp_path / "cmp"
    methods = ["omnifuse", "concat", "dwfuse_only"]
    compare(ref_cache, "mortality", methods, folds=3, out=out, n_boot=30, **tiny)
    for f in (
        "config.json",
        "results.csv",
        "folds.csv",
        "results.json",
        "results.md",
        "folds.json",
        "reliability.png",
        "auroc_by_combination.png",
    ):
        assert (out / f).exists(), f
    assert_png(out / "reliability.png")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["methods"] == methods and cfg["config"]["folds"] == 3 and cfg["train"]["epochs"] == 2
    assert cfg["config"]["methods"] == methods  # the configuration as given, reusable with --config
    assert cfg["combinations"] == ["img+rep+ehr", "img", "rep", "ehr"]
    folds = json.loads((out / "folds.json").read_text())["repeats"][0]

    # overall AUROC per fold = scikit-learn on the stored predictions; the summary is their mean and sd
    summ = read_csv_rows(out / "results.csv")
    fold_rows = read_csv_rows(out / "folds.csv")
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
    # the corrected resampled t-test (Nadeau and Bengio 2003) by hand: J = 3 folds, n_test / n_train
    d = np.subtract(per["concat"], per["omnifuse"])
    n_test = np.mean([len(f) for f in folds])
    n_train = sum(len(f) for f in folds) - n_test
    tc = d.mean() / np.sqrt((1 / 3 + n_test / n_train) * d.var(ddof=1))
    assert float(row["pc_auroc_vs_omnifuse"]) == pytest.approx(2 * sps.t.sf(abs(tc), 2), rel=1e-6)
    assert float(row["pc_auroc_vs_omnifuse"]) >= float(row["p_auroc_vs_omnifuse"])  # never more optimistic
    # pooled out-of-fold AUROC: every test row of the repeat scored together
    ys, ps = zip(
        *[
            (
                load_run(out / "runs" / "concat" / "rate0_random" / f"r0f{k}")[0]["y"][:, 0],
                load_run(out / "runs" / "concat" / "rate0_random" / f"r0f{k}")[0]["overall"][:, 0],
            )
            for k in range(3)
        ],
        strict=True,
    )
    assert float(row["auroc_pooled"]) == pytest.approx(roc_auc_score(np.concatenate(ys), np.concatenate(ps)))

    # combination cells: complete rows hold every modality of it; partial rows are the rest holding some
    a, _ = load_run(out / "runs" / "concat" / "rate0_random" / "r0f0")
    full = next(
        x
        for x in fold_rows
        if x["method"] == "concat" and x["fold"] == "0" and x["group"] == "img+rep+ehr" and x["subset"] == "complete"
    )
    assert int(full["n"]) == int(a["present"].all(1).sum())
    part = next(
        x
        for x in fold_rows
        if x["method"] == "concat" and x["fold"] == "0" and x["group"] == "img+rep+ehr" and x["subset"] == "partial"
    )
    assert int(part["n"]) == len(a["y"]) - int(full["n"])
    sel = a["present"].all(1)
    assert float(full["auroc"]) == pytest.approx(roc_auc_score(a["y"][sel, 0], a["combo0"][sel, 0]))

    # the reference score: on the test rows where it is valid; every method on the same rows
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
    assert "| method | parameters | folds | AUROC |" in md and "Reference score score" in md and "reliability.png" in md
    # the reference section prints the corrected p-value, labelled as such (the plain one stays in results.csv)
    sec = md[md.index("Reference score score") :]
    assert "| p AUROC vs score (corrected) |" in sec and "Nadeau and Bengio" in sec
    cells = next(ln for ln in sec.splitlines() if ln.startswith("| omnifuse |")).strip("| ").split(" | ")
    assert cells[-1] == fp(float(row["pc_auroc_vs_reference:score"]))
    assert float(row["pc_auroc_vs_reference:score"]) >= float(row["p_auroc_vs_reference:score"])
    res = json.loads((out / "results.json").read_text())
    assert res["runs_trained"] == 9 and len(res["folds"]) == len(fold_rows)

    # calibration: every run's temperature, ECE beside Brier, before and after in the tables
    assert "| Brier | ECE |" in md and "### Calibration: before → after temperature scaling" in md
    for m in methods:
        temps = res["per_method"][m]["temperature"]
        assert len(temps) == 3 and all(len(t) == 1 and t[0] > 0 for t in temps)
        row = next(x for x in summ if x["method"] == m and x["group"] == "overall")
        assert {"ece_mean", "brier_uncalibrated_mean", "ece_uncalibrated_mean", "auroc_pooled_uncalibrated"} <= set(row)
        for k in range(3):
            a, run = load_run(out / "runs" / m / "rate0_random" / f"r0f{k}")
            assert run["temperature"] == a["temperature"].tolist() == temps[k]
            np.testing.assert_allclose(a["overall"], apply_temperature(a["overall_raw"], temps[k], "binary"), atol=1e-7)
        fold_brier = [float(x["brier_uncalibrated"]) for x in fold_rows if x["method"] == m and x["group"] == "overall"]
        assert float(row["brier_uncalibrated_mean"]) == pytest.approx(np.mean(fold_brier))
    # a second call reuses every run and gives the same numbers
    r2 = compare(ref_cache, "mortality", methods, folds=3, out=out, n_boot=30, **tiny)
    assert (r2.runs_trained, r2.runs_reused) == (0, 9)
    assert read_csv_rows(out / "results.csv") == summ


def test_default_methods_are_every_method_then_dwfuse_only_then_the_references():
    names = default_methods()
    methods = sorted(n for n, e in METHODS.items() if e.kind == "method")
    references = sorted(n for n, e in METHODS.items() if e.kind == "reference")
    assert references and names == [
        "omnifuse",
        *(n for n in methods if n != "omnifuse"),
        "dwfuse_only",
        *references,
    ]
