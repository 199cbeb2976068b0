"""The ``omnifuse`` command line. Each command parses its options and calls one importable function."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from omnifuse import __version__

app = typer.Typer(
    name="omnifuse",
    help="Multimodal clinical fusion with missing modalities.\n\n"
    "Stage one (`extract`) runs frozen encoders once and writes a Zarr feature cache; stage two (`train`, "
    "`experiment`) trains OmniFuse and the baselines on the cached tensors in minutes. "
    "Start with `omnifuse demo` (real eICU demo data, bundled).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"omnifuse {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """omnifuse: OmniFuse (CRA + DWFuse + TLA) and baselines on a frozen-encoder feature cache."""


@app.command()
def info(
    cache: Path = typer.Argument(..., help="Path of a cache written by `omnifuse extract` (a .zarr folder)."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Describe a cache: rows, patients, modalities, missing-modality patterns, labels, size on disk."""
    from omnifuse.cache import CacheError, cache_info, format_info

    try:
        d = cache_info(cache)
    except CacheError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2) from e
    typer.echo(json.dumps(d, indent=2, default=str) if as_json else format_info(d))


if __name__ == "__main__":  # pragma: no cover
    app()
