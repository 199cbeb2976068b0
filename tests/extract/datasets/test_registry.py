"""The dataset registry: every registered dataset's declaration is complete and usable, unknown or missing
options are named, and a new dataset is one declaration (its flags and help follow)."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from omnifuse.extract.config import FIELDS, dataset_cli_parameters
from omnifuse.extract.datasets import registry
from omnifuse.extract.datasets.base import Adapter
from omnifuse.extract.datasets.registry import DATASETS, build_adapter, get_dataset, list_datasets, register_dataset
from omnifuse.extract.encoders import TEXT_POOLINGS, get_encoder_entry
from omnifuse.options import option

SCALARS = (bool, int, float, str, Path)


def _placeholder(tp: Any) -> Any:
    """A value of the option type ``tp`` for required options (paths need not exist to resolve)."""
    inner = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    first = inner[0]
    return {bool: True, int: 1, float: 1.0, str: "x", Path: Path("somewhere")}[first]


def test_the_four_datasets_are_registered():
    assert list_datasets() == ["eicu", "eicu-demo", "manifest", "mimic"]
    with pytest.raises(ValueError, match="unknown dataset 'nope'; known: eicu, eicu-demo, manifest, mimic"):
        get_dataset("nope")


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_declaration_is_complete(name):
    entry = DATASETS[name]
    assert entry.name == name and entry.description and not entry.description.endswith(".")
    assert dataclasses.is_dataclass(entry.options)
    for d in entry.declared_options():
        assert d.info.help.strip().endswith("."), (name, d.name)
        assert d.name not in FIELDS, f"{name}: option {d.name!r} shadows an ExtractConfig field"
        inner = [a for a in typing.get_args(d.type) if a is not type(None)] or [d.type]
        assert inner[0] in SCALARS, (name, d.name, d.type)  # the command-line type
        if d.info.choices is not None:
            assert d.default in d.info.choices
    # the encoders it falls back to are registered ones, with a pooling the text encoders know
    assert get_encoder_entry(entry.image_encoder).family == "image"
    assert get_encoder_entry(entry.text_encoder).family == "text"
    assert entry.text_pooling in TEXT_POOLINGS


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_defaults_resolve_and_unknown_or_missing_options_are_named(name):
    entry = DATASETS[name]
    decl = entry.declared_options()
    required = {d.name: _placeholder(d.type) for d in decl if d.info.required}
    opts = entry.resolve_options(required)
    for d in decl:  # every default survives resolving unchanged
        if d.name not in required:
            assert getattr(opts, d.name) == d.default, (name, d.name)
    with pytest.raises(ValueError, match=f"--dataset {name} does not use --no-such-option"):
        entry.resolve_options({**required, "no_such_option": 1})
    with pytest.raises(ValueError, match=f"--dataset {name} does not use --no-such-option"):
        build_adapter(name, no_such_option=1)  # refused before any file is read
    for missing in required:
        flag = "--" + missing.replace("_", "-")
        with pytest.raises(ValueError, match=f"--dataset {name} needs {flag}"):
            entry.resolve_options({k: v for k, v in required.items() if k != missing})


def test_values_are_checked_against_the_declared_types():
    with pytest.raises(ValueError, match="--dataset mimic: option 'task' must be one of both, mortality"):
        get_dataset("mimic").resolve_options({"root": "r", "task": "survival"})
    with pytest.raises(ValueError, match="--dataset mimic: option 'timestep' expects float"):
        get_dataset("mimic").resolve_options({"root": "r", "timestep": "two"})
    opts = get_dataset("mimic").resolve_options({"root": "r", "timestep": "1", "include_pa": None})
    assert opts.root == Path("r") and opts.timestep == 1.0 and opts.include_pa is False


@dataclass
class ToyOptions:
    root: Path | None = option(None, help="Folder of the toy files.", required=True)
    hours: float = option(24.0, help="Window from admission, in hours.")


class ToyAdapter:
    def __init__(self, root: Path, hours: float) -> None:
        self.root, self.hours = root, hours


def test_a_new_dataset_is_one_declaration(monkeypatch):
    monkeypatch.setattr(registry, "DATASETS", dict(DATASETS))

    @register_dataset(
        "toy",
        description="a toy folder",
        options=ToyOptions,
        image_encoder="microsoft/resnet-34",
        text_encoder="bert-base-uncased",
        text_pooling="tokens",
    )
    def build_toy(opts: ToyOptions) -> Adapter:
        return ToyAdapter(opts.root, opts.hours)  # type: ignore[return-value]

    a = registry.build_adapter("toy", root="data", hours="12")
    assert isinstance(a, ToyAdapter) and a.root == Path("data") and a.hours == 12.0
    params = {p.name: p for p in dataset_cli_parameters(registry.DATASETS)}
    assert "toy: Window from admission, in hours. (default: 24.0)" in params["hours"].default.help
    assert "toy: Folder of the toy files." in params["root"].default.help  # shares --root with the others
    assert "mimic: MIMIC-III or MIMIC-IV folder." in params["root"].default.help
    with pytest.raises(ValueError, match="already registered"):
        register_dataset(
            "toy", description="again", options=ToyOptions, image_encoder="i", text_encoder="t", text_pooling="tokens"
        )(lambda opts: opts)


def test_options_must_be_a_dataclass(monkeypatch):
    monkeypatch.setattr(registry, "DATASETS", dict(DATASETS))
    with pytest.raises(TypeError, match="must be a dataclass"):
        register_dataset("d", description="d", options=dict, image_encoder="i", text_encoder="t", text_pooling="x")
