"""`omnifuse demo` end to end on the bundled real eICU-CRD demo (short training: 2 folds, 2 epochs)."""

from __future__ import annotations

import csv
import json

from typer.testing import CliRunner

from omnifuse.cache import cache_info
from omnifuse.cli import app


def test_demo_end_to_end(tmp_path):
    cache, out = tmp_path / "eicu-demo.zarr", tmp_path / "demo"
    r = CliRunner().invoke(app, ["demo", "--cache", str(cache), "--out", str(out), "--folds", "2",
                                 "--repeats", "1", "--epochs", "2", "--jobs", "1"])
    assert r.exit_code == 0, r.output
    info = cache_info(cache)
    assert info["rows"] == 2520 and info["subjects"] == 1841 and info["finalized"]
    assert {m["name"]: m["present"] for m in info["modalities"]} == {
        "vitals": 2433, "apache": 2205, "history": 2236, "diagnosis": 1159, "exam": 2078, "admission": 2520,
        "exam_values": 2044, "treatments": 1981}
    text = next(m for m in info["modalities"] if m["name"] == "history")
    assert text["encoder"] == "sentence-transformers/all-MiniLM-L6-v2" and text["shape"] == [384]
    assert info["references"] == {"apache_iva": 1683}
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"omnifuse", "concat"} <= {r.get("method") for r in rows}
    res = json.loads((out / "results.json").read_text())
    assert res and (out / "results.md").read_text().count("apache_iva") >= 1
    assert (out / "reliability.png").stat().st_size > 0
    # rerunning reuses the cache and the finished runs: no extraction, no training
    r2 = CliRunner().invoke(app, ["demo", "--cache", str(cache), "--out", str(out), "--folds", "2",
                                  "--repeats", "1", "--epochs", "2", "--jobs", "1"])
    assert r2.exit_code == 0, r2.output
