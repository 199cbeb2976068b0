"""The one-line error contract of the command line, shared by the fault tests (``omnifuse report`` in
tests/experiments/test_run_report.py, ``omnifuse predict`` in tests/reliability/test_predict_faults.py)."""

from __future__ import annotations

from typer.testing import CliRunner

from omnifuse.cli import app

runner = CliRunner()


def cli_error(args: list[str], *fragments: str) -> str:
    """Run ``omnifuse ARGS``: it must exit with code 2 and print one line, ``error: ...``, holding every one of
    ``fragments`` (e.g. the file it names); that line is returned."""
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    line = r.output.strip()
    assert len(line.splitlines()) == 1 and line.startswith("error: "), r.output
    for f in fragments:
        assert f in line, line
    return line
