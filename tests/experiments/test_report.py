"""Writing a study's results (omnifuse.experiments.report): the CSV cells (NaN and None empty, lists and dicts
as JSON, the union of the rows' keys), Markdown tables, the number formats, and the files of a study."""

import json
import math

from omnifuse.experiments.report import (
    Section,
    StudyResult,
    fci,
    fms,
    fnum,
    fp,
    to_markdown,
    write_config,
    write_csv,
    write_study,
)
from tests.helpers import read_csv_rows


def test_write_csv_cells(tmp_path):
    path = tmp_path / "t.csv"
    rows = [
        {"method": "concat", "auroc": 0.75, "ci": [0.7, 0.8], "sd": math.nan},
        {"method": "sum", "auroc": None, "extra": {"k": 1}, "ci": [math.nan, 0.5]},
    ]
    write_csv(path, rows)
    lines = path.read_text().splitlines()
    assert lines[0] == "method,auroc,ci,sd,extra"  # the union of the keys, first-seen order
    got = read_csv_rows(path)
    assert got[0] == {"method": "concat", "auroc": "0.75", "ci": "[0.7, 0.8]", "sd": "", "extra": ""}
    assert got[1] == {"method": "sum", "auroc": "", "ci": "[null, 0.5]", "sd": "", "extra": '{"k": 1}'}
    assert json.loads(got[0]["ci"]) == [0.7, 0.8]


def test_write_csv_without_rows(tmp_path):
    write_csv(tmp_path / "e.csv", [])
    assert (tmp_path / "e.csv").read_text().strip() == ""


def test_to_markdown_escapes_the_column_separator():
    md = to_markdown([Section("AUROC", ["method", "img+rep"], [["a|b", "0.7 ± 0.1"], ["c", "-"]], note="n: 3")])
    lines = md.splitlines()
    assert lines[0] == "### AUROC"
    assert lines[1:6] == ["", "| method | img+rep |", "| --- | --- |", "| a\\|b | 0.7 ± 0.1 |", "| c | - |"]
    table = [ln for ln in lines if ln.startswith("|")]
    assert all(ln.replace("\\|", "").count("|") == 3 for ln in table)  # an escaped "|" opens no column
    assert "n: 3" in md
    two = to_markdown([Section("A", ["x"], [["1"]]), Section("B", ["y"], [["2"]])])
    assert two.index("### A") < two.index("### B") and "| 2 |" in two


def test_number_formats():
    assert fnum(None) == fnum(math.nan) == "-"
    assert fnum(3) == "3" and fnum(0.12345) == "0.123" and fnum(0.12345, 2) == "0.12" and fnum(True) == "1.000"
    assert fms(0.81234, 0.0456) == "0.812 ± 0.046" and fms(math.nan, 0.1) == "-"
    assert fci([0.7, 0.91]) == "[0.700, 0.910]" and fci(None) == "-" and fci([math.nan, 0.9]) == "-"
    assert fp(0.0123) == "0.012" and fp(0.0004) == "<0.001" and fp(None) == fp(math.nan) == "-"


def test_write_study_writes_the_five_files(tmp_path, capsys):
    out = tmp_path / "study"
    fig = out / "auroc.png"
    result = StudyResult(
        out=out,
        config={"study": "compare", "folds": 3},
        summary=[{"method": "concat", "auroc_mean": 0.8, "auroc_ci": [0.7, 0.9]}],
        folds=[{"method": "concat", "fold": 0, "auroc": math.nan}, {"method": "concat", "fold": 1, "auroc": 0.8}],
        sections=[Section("Overall", ["method", "AUROC"], [["concat", "0.800 ± 0.000"]])],
        figures=[fig],
        runs_trained=2,
        runs_reused=1,
        seconds=12.4,
        extra={"mean_run_seconds": {"concat": 4.0}},
    )
    write_config(out, result.config)
    assert write_study(result, print_table=False, title="compare: mortality") is result
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "folds.csv",
        "results.csv",
        "results.json",
        "results.md",
    ]
    assert capsys.readouterr().out == ""  # print_table=False: nothing printed
    assert json.loads((out / "config.json").read_text()) == {"study": "compare", "folds": 3}
    assert read_csv_rows(out / "results.csv") == [{"method": "concat", "auroc_mean": "0.8", "auroc_ci": "[0.7, 0.9]"}]
    assert [r["auroc"] for r in read_csv_rows(out / "folds.csv")] == ["", "0.8"]
    payload = json.loads((out / "results.json").read_text())
    assert payload["config"] == result.config and payload["summary"] == [
        {"method": "concat", "auroc_mean": 0.8, "auroc_ci": [0.7, 0.9]}
    ]
    assert payload["folds"][0]["auroc"] is None and payload["figures"] == ["auroc.png"]
    assert (payload["runs_trained"], payload["runs_reused"], payload["mean_run_seconds"]) == (2, 1, {"concat": 4.0})
    md = (out / "results.md").read_text()
    assert md.startswith("# compare: mortality\n\n### Overall\n") and "![auroc](auroc.png)" in md
    assert md.rstrip().endswith("2 run(s) trained, 1 reused; 12 s wall time.")
    write_study(result, print_table=True)
    assert "Overall" in capsys.readouterr().out
