"""``omnifuse experiment ablation`` (omnifuse.experiments.ablation) end to end: the rows' resolved switches in
the run records, the table and figure; and the switches of each row of table 4."""

import json

import pytest

from omnifuse.experiments.ablation import ablation, row_params
from omnifuse.experiments.report import fp
from omnifuse.experiments.runner import StudyError, load_run
from omnifuse.experiments.stats import pick
from tests.helpers import assert_png


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
    # the table's p is the corrected resampled t-test (the plain one stays in results.csv)
    (e,) = pick(r.summary, method="ablation_e", group="overall", subset="as_is")
    assert "p overall vs (f), corrected" in md
    assert md.split("| (e) |")[1].split("\n")[0].rstrip(" |").endswith(fp(e["pc_auroc_vs_ablation_f"]))
    assert "p_auroc_vs_ablation_f" in e
    assert_png(out / "ablation.png")


def test_row_params_are_the_registry_rows():
    assert row_params("a") == {"dwfuse": False, "tla": False, "imp_fw": False, "imp_bw": False}
    assert row_params("e") == {"dwfuse": True, "tla": False, "imp_fw": True, "imp_bw": True}
    assert row_params("f") == {"dwfuse": True, "tla": True, "imp_fw": True, "imp_bw": True}
    with pytest.raises(StudyError, match="unknown ablation row 'z'; rows are a to f"):
        row_params("z")
