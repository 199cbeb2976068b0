"""``omnifuse report`` (omnifuse.experiments.run_report): the report of a small real study (compare with
attribution, 2 folds x 2 repeats) holds every section with the numbers of results.csv, attribution.csv and the
runs' own files (parsed back from the Markdown); the report of a run of ``omnifuse train``; the pooled bootstrap
CI against a replicate-by-replicate loop with scikit-learn; one-line errors for a folder that is neither or is
unfinished; and a study retraining the runs that lack the attribution it asks for."""

from __future__ import annotations

import copy
import json
import math
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from omnifuse.cli import app
from omnifuse.experiments.compare import compare
from omnifuse.experiments.report import fci, fms, fnum, fp
from omnifuse.experiments.run_report import ReportError, detect, pooled_ci, write_report
from omnifuse.experiments.runner import build_context, fold_specs, load_run, run_all
from omnifuse.experiments.shapley import SHAPLEY_FILE, read_summary
from omnifuse.fuse.attribution import shapley_summary
from omnifuse.fuse.predict import predict
from tests.cli_errors import cli_error, runner
from tests.helpers import TINY_OPTIONS, TINY_OVERRIDES, assert_png, read_csv_rows

METHODS = ["omnifuse", "concat", "gbm"]


def _tiny() -> dict:
    return {
        "epochs": 2,
        "progress": False,
        "print_table": False,
        "method_overrides": copy.deepcopy(TINY_OVERRIDES),
        "options": dict(TINY_OPTIONS),
    }


def table(md: str, title: str) -> list[dict[str, str]]:
    """The rows of the Markdown table under the first ``### <title>...`` heading of ``md``."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"### {title}"))
    rows = []
    header = None
    for line in lines[start + 1 :]:
        if not line.startswith("|"):
            if header is not None:
                break
            continue
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        if header is None:
            header = cells
        elif not all(set(c) <= {"-"} for c in cells):
            rows.append(dict(zip(header, cells, strict=True)))
    return rows


def _num(v: str) -> float:
    return math.nan if v == "" else float(v)


@pytest.fixture(scope="module")
def study(ref_cache, tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("report") / "cmp"
    try:
        compare(ref_cache, "mortality", METHODS, folds=2, repeats=2, out=out, n_boot=20, attribution=True, **_tiny())
    finally:
        torch.set_num_threads(n)
    return out


def test_the_study_report_holds_every_section_with_the_studys_numbers(study):
    out = study
    assert detect(out) == "study"
    md = (out / "report.md").read_text()  # written by compare itself
    for h in (
        "## 1. Configuration",
        "## 2. Data",
        "## 3. Metrics",
        "## 4. Calibration",
        "## 5. Modality attribution",
        "## 6. TLA trace",
        "## 7. Every table of the study",
    ):
        assert h in md, h
    cfg = json.loads((out / "config.json").read_text())
    summ = [r for r in read_csv_rows(out / "results.csv") if r["group"] == "overall" and r["subset"] == "as_is"]

    # configuration: the cache's digest and provenance, the training options
    cache_rows = {r["option"]: r["value"] for r in table(md, "Cache")}
    assert cache_rows["fingerprint digest"] == cfg["cache_fingerprint"] and cache_rows["dataset"] == "synthetic 0"
    opts = {r["option"]: r["value"] for r in table(md, "Training options")}
    assert opts["epochs"] == "2" and opts["calibrate"] == "True"

    # data: rows, positives and coverage of repeat 0's test rows (every labelled row once)
    loaded = [load_run(out / "runs" / "omnifuse" / "rate0_random" / f"r0f{k}")[0] for k in range(2)]
    y = np.concatenate([a["y"] for a in loaded])[:, 0]
    present = np.concatenate([a["present"] for a in loaded])
    rows = table(md, "Rows")[0]
    assert rows["labelled rows tested (out of fold)"] == f"{len(y):,}"
    assert rows["positives"].startswith(f"{int(y.sum()):,} (")
    cover = {r["modality"]: r["rows holding it"] for r in table(md, "Modality coverage")}
    assert cover == {m: f"{int(present[:, j].sum()):,}" for j, m in enumerate(cfg["modalities"])}

    # metrics: every number of results.csv's overall rows, and the corrected tests against the references
    got = {r["method"]: r for r in table(md, "Overall: every test row")}
    assert list(got) == METHODS
    for r in summ:
        g = got[r["method"]]
        assert g["AUROC"] == fms(float(r["auroc_mean"]), float(r["auroc_sd"]))
        assert g["AUROC 95% CI"] == fci(json.loads(r["auroc_ci"]))
        assert g["AUROC pooled"] == fnum(float(r["auroc_pooled"]))
        assert g["AUPRC (AP)"] == fms(float(r["auprc_mean"]), float(r["auprc_sd"]))
        assert g["AUPRC pooled"] == fnum(float(r["auprc_pooled"]))
        assert g["Brier"] == fms(float(r["brier_mean"]), float(r["brier_sd"]))
        assert g["ECE"] == fms(float(r["ece_mean"]), float(r["ece_sd"]))
        assert g["folds"] == r["n_folds"] == "4"
        assert g["p AUROC vs omnifuse (corrected)"] == fp(_num(r["pc_auroc_vs_omnifuse"]))
        lo, hi = (float(v) for v in g["pooled 95% CI"].strip("[]").split(", "))
        assert 0 <= lo <= hi <= 1
    assert got["concat"]["p AUROC vs omnifuse (corrected)"] not in ("", "-")

    # calibration: before -> after, as results.csv holds them
    cal = {r["method"]: r for r in table(md, "Calibration: before → after")}
    for r in summ:
        if r["method"] == "gbm":  # never scaled: one number
            assert cal["gbm"]["Brier"] == fnum(float(r["brier_mean"]))
            continue
        before, after = fnum(float(r["brier_uncalibrated_mean"])), fnum(float(r["brier_mean"]))
        assert cal[r["method"]]["Brier"] == f"{before} → {after}"
        assert cal[r["method"]]["ECE pooled"] == (
            f"{fnum(float(r['ece_pooled_uncalibrated']))} → {fnum(float(r['ece_pooled']))}"
        )

    # attribution: the table is attribution.csv's all-stays rows; gbm named as not attributed
    att = read_summary(out / "attribution.csv")
    overall = {r["method"]: r for r in att if r["pattern"] == "all stays"}
    assert set(overall) == {"omnifuse", "concat"}
    shown = {r["method"]: r for r in table(md, "Modality attribution: mean |Shapley value| per modality")}
    for m, r in overall.items():
        for mod in cfg["modalities"]:
            assert shown[m][mod] == fnum(r[mod], 4)
        assert shown[m]["stays"] == f"{2 * len(y):,}"  # every stay once per repeat
    assert "Not attributed: gbm" in md

    # TLA: every epoch of every omnifuse run, its lazy combinations counted
    counts: Counter[str] = Counter()
    for rep in range(2):
        for k in range(2):
            rec = json.loads((out / "runs" / "omnifuse" / "rate0_random" / f"r{rep}f{k}" / "run.json").read_text())
            counts.update(r["lazy"] for r in rec["records"]["lazy_combination"])
    tla = {r["lazy combination"]: r for r in table(md, "TLA trace of omnifuse")}
    assert {k: int(v["epochs lazy"].split(" ")[0]) for k, v in tla.items()} == dict(counts)
    assert f"4 run(s), {sum(counts.values())} epochs in all" in md
    assert "TLA trace of concat" not in md

    # the figures: the study's own (beside the report) and the TLA trace drawn for it
    for name in ("reliability.png", "attribution.png", "attribution_patterns.png", "report-tla.png"):
        assert f"({name})" in md
        assert_png(out / name)
    assert "(auroc_by_combination.png)" in md  # results.md's figures, beside it


def test_study_runs_store_shapley_values_that_add_up_to_their_predictions(study):
    for m in ("omnifuse", "concat"):
        for k in range(2):
            f = study / "runs" / m / "rate0_random" / f"r1f{k}"
            a, run = load_run(f)
            with np.load(f / SHAPLEY_FILE) as z:
                s = {key: z[key] for key in z.files}
            np.testing.assert_allclose(s["full"], a["overall"][:, 0], atol=2e-6)
            np.testing.assert_allclose(np.nansum(s["values"], 1) + s["baseline"], s["full"], atol=2e-6)
            assert (np.isnan(s["values"]) == ~a["present"]).all()
            assert run["attribution"]["rows"] == len(a["y"]) and run["attribution"]["seconds"] > 0
    assert not (study / "runs" / "gbm" / "rate0_random" / "r0f0" / SHAPLEY_FILE).exists()
    res = json.loads((study / "results.json").read_text())
    assert res["attribution"]["runs"] == 8 and res["attribution"]["seconds"] > 0
    assert "### Modality attribution" in (study / "results.md").read_text()


def test_a_report_written_elsewhere_carries_its_figures(study, tmp_path):
    out = write_report(study, tmp_path / "elsewhere" / "review.md", n_boot=10)
    md = out.read_text()
    names = ("review-reliability.png", "review-attribution.png", "review-tla.png", "review-auroc_by_combination.png")
    for name in names:
        assert f"({name})" in md and (out.parent / name).exists()


@pytest.fixture(scope="module")
def run_dir(omnifuse_run):
    """The shared trained OmniFuse run (tests/conftest.py)."""
    return omnifuse_run


def test_the_report_of_a_run(run_dir):
    run, cache = run_dir
    assert detect(run) == "run"
    out = write_report(run)
    assert out == run / "report.md"
    md = out.read_text()
    met = json.loads((run / "metrics.json").read_text())
    folds = met["folds"]
    summary = {r["metric"]: r for r in table(md, "Summary")}
    for key, name in (("auroc", "AUROC"), ("auprc", "AUPRC (AP)"), ("brier", "Brier"), ("ece", "ECE")):
        vals = [f[key] for f in folds]
        assert summary[name]["fold mean ± sd"] == fms(np.mean(vals), np.std(vals, ddof=1))
        assert summary[name]["pooled out of fold"] == fnum(met["pooled"][key])
    per = table(md, "Per fold")
    assert [r["AUROC"] for r in per] == [fnum(f["auroc"]) for f in folds]
    assert [r["AUROC 95% CI"] for r in per] == [fci(f["auroc_ci"]) for f in folds]
    cal = table(md, "Temperature scaling")
    assert cal[0]["temperature"] == fnum(folds[0]["temperature"][0])
    assert cal[-1]["ECE"] == f"{fnum(met['pooled_uncalibrated']['ece'])} → {fnum(met['pooled']['ece'])}"
    # attribution: each stay by the fold model that did not train on it, summarised as shapley_summary does
    res = predict(run, cache)
    mods = ["img", "rep", "ehr"]
    want = shapley_summary(
        np.stack([res[f"shap_{m}"] for m in mods], 1), np.stack([res[f"present_{m}"] for m in mods], 1), mods
    )
    got = read_summary(run / "report-attribution.csv")
    assert [r["pattern"] for r in got] == [r["pattern"] for r in want]
    for g, w in zip(got, want, strict=True):
        for m in mods:
            assert (math.isnan(g[m]) and math.isnan(w[m])) or g[m] == pytest.approx(w[m], rel=1e-9)
    # the TLA trace: every epoch of every fold
    lazy = json.loads((run / "lazy_combinations.json").read_text())
    n_epochs = sum(len(v) for v in lazy.values())
    assert f"2 run(s), {n_epochs} epochs in all" in md
    for name in ("reliability", "attribution", "tla"):
        assert_png(run / f"report-{name}.png")
    assert "fingerprint digest" in md and "synthetic 0" in md


def test_pooled_ci_against_a_loop_with_scikit_learn():
    rng = np.random.default_rng(4)
    n = 60
    ids = rng.permutation(n)
    y = (rng.random(n) < 0.4).astype(float)[:, None]
    reps = []
    for _ in range(3):  # three repeats over the same stays, in different orders
        order = rng.permutation(n)
        p = np.clip(y[:, 0] * 0.3 + rng.random(n) * 0.7, 0, 1)[:, None]
        reps.append((ids[order], y[order], p[order]))
    lo, hi = pooled_ci("auroc", "binary", reps, n_boot=50, seed=7)
    draws = np.random.default_rng(7).integers(0, n, size=(50, n))
    aligned = [(yy[np.argsort(i)], pp[np.argsort(i)]) for i, yy, pp in reps]
    stats = [np.mean([roc_auc_score(yy[d, 0], pp[d, 0]) for yy, pp in aligned]) for d in draws]
    assert (lo, hi) == pytest.approx((np.quantile(stats, 0.025), np.quantile(stats, 0.975)), rel=1e-12)


def test_a_folder_that_is_neither_or_unfinished_is_one_line_naming_it(run_dir, tmp_path):
    run, _ = run_dir
    cli_error(["report", str(tmp_path / "nowhere")], f"{tmp_path / 'nowhere'} is not a folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    cli_error(["report", str(empty)], f"{empty} is neither a run folder", "(no config.json)")
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"foo": 1}')
    cli_error(["report", str(other)], f"{other} is neither a run folder", "names no study and no method")
    (other / "config.json").write_text("{oops")
    cli_error(["report", str(other)], f"{other / 'config.json'} is not readable JSON")
    half = tmp_path / "half-study"
    half.mkdir()
    (half / "config.json").write_text('{"study": "compare"}')
    cli_error(["report", str(half)], f"{half} is an unfinished compare study (no results.json)")
    half_run = tmp_path / "half-run"
    shutil.copytree(run, half_run)
    (half_run / "metrics.json").unlink()
    cli_error(["report", str(half_run)], f"{half_run} is an unfinished run of `omnifuse train` (no metrics.json)")
    with pytest.raises(ReportError, match="is a Markdown file"):
        write_report(run, tmp_path / "r.txt")
    r = runner.invoke(app, ["report", str(run), "--out", str(tmp_path / "cli" / "r.md"), "--no-attribution"])
    assert r.exit_code == 0, r.output
    assert "Not computed (`--no-attribution`)" in (tmp_path / "cli" / "r.md").read_text()


def test_runs_without_the_attribution_asked_for_are_retrained(ref_cache, tmp_path):
    ctx = build_context(
        ref_cache, "mortality", folds=2, seed=0, combinations="full", train_options={**TINY_OPTIONS, "epochs": 1}
    )
    specs = fold_specs(ctx, ["concat", "gbm"], TINY_OVERRIDES)
    out = tmp_path / "s"
    st = run_all(ctx, specs, out, progress=False)
    assert (st.trained, st.reused, st.unattributed) == (4, 0, 0)
    first = out / "runs" / specs[0].key
    a0, _ = load_run(first)
    ctx.attribution = True
    st = run_all(ctx, specs, out, progress=False)
    assert (st.trained, st.reused, st.unattributed) == (2, 2, 2)  # concat's two runs again, gbm's reused
    a1, rec = load_run(first)
    np.testing.assert_array_equal(a0["overall"], a1["overall"])  # the same run, now with its values
    assert (first / SHAPLEY_FILE).exists() and rec["attribution"]["rows"] == len(a1["y"])
    assert not (out / "runs" / specs[2].key / SHAPLEY_FILE).exists()
    st = run_all(ctx, specs, out, progress=False)
    assert (st.trained, st.reused) == (0, 4)
    ctx.attribution = False  # runs with values serve a study without attribution
    st = run_all(ctx, specs, out, progress=False)
    assert (st.trained, st.reused) == (0, 4)
