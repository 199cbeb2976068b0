"""omnifuse.options: defaults < TOML file < overrides, checks, JSON, and flags generated from the fields."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from omnifuse.options import cli_options, declared, option, resolve, save, to_json


@dataclass
class ExampleConfig:
    """A configuration with one field of each supported kind."""

    task: str = option("mortality", help="Task in the cache.", short="-t")
    folds: int = option(5, help="Patient-grouped folds.")
    lr: float = option(1e-3, help="Learning rate.")
    progress: bool = option(True, help="Show progress bars.")
    device: str = option("auto", help="Where to compute.", choices=("auto", "cpu", "cuda"))
    modalities: list[str] | None = option(None, help="Modalities to use (repeat).", flag="--modality")
    root: Path | None = option(None, help="Dataset folder.")
    params: dict[str, Any] = option({}, help="Free-form table.", cli=False)

    def __post_init__(self) -> None:
        if self.folds < 1:
            raise ValueError(f"folds must be >= 1, got {self.folds}")


@dataclass
class NeedsRoot:
    root: Path | None = option(None, help="Dataset folder.", required=True)


def _toml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_defaults_file_then_overrides(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'task = "phenotyping"\nfolds = 3\nprogress = false\n[params]\na = 1\nb = 2\n')
    cfg = resolve(ExampleConfig, path, folds=7, lr=None, params={"b": 5})
    assert cfg.task == "phenotyping"  # file over default
    assert cfg.folds == 7  # override over file
    assert cfg.lr == 1e-3  # None override ignored, default kept
    assert cfg.progress is False
    assert cfg.params == {"a": 1, "b": 5}  # dict merged key by key
    assert resolve(ExampleConfig) == ExampleConfig()
    assert resolve(ExampleConfig, cfg, task="x").folds == 7  # an instance as the base


def test_mutable_defaults_are_per_instance() -> None:
    a, b = resolve(ExampleConfig), resolve(ExampleConfig)
    a.params["x"] = 1
    assert b.params == {}


def test_unknown_keys_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown ExampleConfig option\(s\): colour, foldz; known: .*folds"):
        resolve(ExampleConfig, _toml(tmp_path, "foldz = 3\n"), colour="red")


def test_coercion_and_checks() -> None:
    cfg = resolve(ExampleConfig, {"folds": 3.0, "lr": "0.5", "root": "data", "modalities": ("a", "b")})
    assert (cfg.folds, cfg.lr, cfg.root, cfg.modalities) == (3, 0.5, Path("data"), ["a", "b"])
    with pytest.raises(ValueError, match="'folds' expects int, got 2.5"):
        resolve(ExampleConfig, folds=2.5)
    with pytest.raises(ValueError, match="'progress' expects bool"):
        resolve(ExampleConfig, {"progress": 1})
    with pytest.raises(ValueError, match="'modalities' expects list"):
        resolve(ExampleConfig, modalities="vitals")
    with pytest.raises(ValueError, match="'device' must be one of auto, cpu, cuda, got 'tpu'"):
        resolve(ExampleConfig, device="tpu")
    with pytest.raises(ValueError, match="'task' may not be empty"):
        resolve(ExampleConfig, {"task": None})
    with pytest.raises(ValueError, match="folds must be >= 1"):  # the class's own __post_init__
        resolve(ExampleConfig, folds=0)
    with pytest.raises(ValueError, match=r"'root' \(--root\) is required"):
        resolve(NeedsRoot)
    assert resolve(NeedsRoot, root="x").root == Path("x")


def test_missing_or_broken_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.toml does not exist"):
        resolve(ExampleConfig, tmp_path / "nope.toml")
    with pytest.raises(ValueError, match="c.toml"):
        resolve(ExampleConfig, _toml(tmp_path, "folds = = 3\n"))


def test_to_json_and_save_round_trip(tmp_path: Path) -> None:
    cfg = resolve(ExampleConfig, root=Path("data"), modalities=["a"], params={"k": [1, 2]})
    data = to_json(cfg)
    assert data["root"] == "data" and data["params"] == {"k": [1, 2]}
    p = save(cfg, tmp_path / "sub" / "config.json")
    loaded = json.loads(p.read_text())
    assert loaded == data
    assert resolve(ExampleConfig, loaded) == resolve(ExampleConfig, cfg)


def test_declared_lists_types_defaults_and_help() -> None:
    d = {x.name: x for x in declared(ExampleConfig)}
    assert d["folds"].type is int and d["folds"].default == 5 and d["folds"].info.help == "Patient-grouped folds."
    assert d["modalities"].flag == "--modality" and d["root"].flag == "--root"


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.command()
    @cli_options(ExampleConfig)
    def run(out: Path = typer.Option(Path("o"), "--out"), **options: Any) -> None:
        cfg = resolve(ExampleConfig, options.pop("config"), **options)
        typer.echo(json.dumps({"out": str(out), **to_json(cfg)}))

    @app.command()
    def other() -> None:  # a second command keeps `run` a subcommand
        pass

    return app


def test_cli_flags_are_generated_and_override_the_file(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'task = "phenotyping"\nfolds = 3\nprogress = true\n')
    r = CliRunner().invoke(
        _app(),
        [
            "run",
            "--config",
            str(path),
            "--folds",
            "4",
            "--no-progress",
            "--modality",
            "a",
            "--modality",
            "b",
            "--root",
            "data",
            "--out",
            "w",
        ],
    )
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)
    assert got["task"] == "phenotyping" and got["folds"] == 4 and got["progress"] is False
    assert got["modalities"] == ["a", "b"] and got["root"] == "data" and got["out"] == "w"
    r = CliRunner().invoke(_app(), ["run", "-t", "x"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["task"] == "x" and json.loads(r.output)["folds"] == 5


def test_cli_help_comes_from_the_declarations() -> None:
    r = CliRunner().invoke(_app(), ["run", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    for text in (
        "--folds",
        "Patient-grouped folds. (default: 5)",
        "--modality",
        "One of: auto, cpu, cuda.",
        "--no-progress",
        "--config",
    ):
        assert text in r.output
    assert "--params" not in r.output  # cli=False and dict fields stay off the command line


def test_cli_rejects_bad_values() -> None:
    r = CliRunner().invoke(_app(), ["run", "--folds", "many"])
    assert r.exit_code != 0
    r = CliRunner().invoke(_app(), ["run", "--device", "tpu"])
    assert isinstance(r.exception, ValueError) and "must be one of" in str(r.exception)


def test_decorator_needs_kwargs_and_no_clash() -> None:
    with pytest.raises(TypeError, match="needs \\*\\*kwargs"):
        cli_options(ExampleConfig)(lambda out=None: None)

    def clash(folds: int = 1, **options: Any) -> None:
        pass

    with pytest.raises(TypeError, match="folds"):
        cli_options(ExampleConfig)(clash)


@dataclass
class UnionConfig:
    spec: Path | dict[str, Any] | None = option(None, help="A spec file or a table.")
    window: tuple[float, float] | None = option(None, help="Low and high.")


def test_unions_and_fixed_tuples() -> None:
    assert resolve(UnionConfig, spec="s.toml").spec == Path("s.toml")  # first member that takes it
    assert resolve(UnionConfig, spec={"a": 1}).spec == {"a": 1}
    with pytest.raises(ValueError, match="'spec' expects"):
        resolve(UnionConfig, spec=3)
    assert resolve(UnionConfig, window=[-1000, 400]).window == (-1000.0, 400.0)
    with pytest.raises(ValueError, match="'window' expects 2 values"):
        resolve(UnionConfig, window=[1.0])
    app = typer.Typer()

    @app.command()
    @cli_options(UnionConfig, config_file=False)
    def run(**options: Any) -> None:
        typer.echo(json.dumps(to_json(resolve(UnionConfig, **options))))

    @app.command()
    def other() -> None:
        pass

    r = CliRunner().invoke(app, ["run", "--spec", "s.toml", "--window", "-1000", "400"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == {"spec": "s.toml", "window": [-1000.0, 400.0]}
    r = CliRunner().invoke(app, ["run"])  # not given: None, not (None, None)
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == {"spec": None, "window": None}
