"""``omnifuse experiment unimodal`` (omnifuse.experiments.unimodal) end to end: unimodal models against fused
models on the same rows, the figure and the laziness record."""

import json

from omnifuse.experiments.unimodal import unimodal
from tests.helpers import assert_png, read_csv_rows


def test_unimodal(ref_cache, tmp_path, tiny):
    out = tmp_path / "uni"
    r = unimodal(ref_cache, "mortality", fused=["concat"], folds=2, out=out, n_boot=0, **tiny)
    assert r.runs_trained == 2 + 3 * 2
    assert_png(out / "unimodal.png")
    rows = read_csv_rows(out / "results.csv")
    for m in ("img", "rep", "ehr"):
        u = next(x for x in rows if x["method"] == "unimodal" and x["group"] == m)
        f = next(x for x in rows if x["method"] == "concat" and x["group"] == m)
        assert u["n_rows"] == f["n_rows"]  # the same test rows: those holding m
        assert f["p_auroc_vs_unimodal"] != "" or float(f["n_folds"]) < 2
    lazy = json.loads((out / "results.json").read_text())["laziness"]["concat"]
    assert set(lazy) == {"img", "rep", "ehr"}
