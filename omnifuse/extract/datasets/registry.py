"""The dataset registry behind ``omnifuse extract --dataset NAME``.

Each adapter module declares its datasets once, on the function that builds the adapter::

    @dataclass
    class ToyOptions:
        \"\"\"Options of the toy dataset (each becomes a flag of ``omnifuse extract``).\"\"\"
        root: Path | None = option(None, help="Folder of the toy files.", required=True)
        hours: float = option(24.0, help="Window from admission, in hours.")

    @register_dataset("toy", description="a toy folder, --root", options=ToyOptions)  # the paper's encoders
    def build_toy(opts: ToyOptions) -> ToyAdapter:
        return ToyAdapter(opts.root, hours=opts.hours)

and ``omnifuse/extract/datasets/__init__.py`` imports that module by name (one line), so the registry is
complete whichever module is imported first. From the declaration come the ``extract`` command's flags and
help (``omnifuse.extract.config``), the check that every option given is one the dataset uses, its defaults,
and the encoders used when the command names none.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from omnifuse.extract.datasets.base import Adapter
from omnifuse.options import Declared, declared, resolve


@dataclass(frozen=True)
class DatasetEntry:
    """One registered dataset: its options class (a dataclass of ``omnifuse.options.option`` fields), the
    builder taking a resolved instance of it, and the encoders used when the command names none."""

    name: str
    description: str
    options: type
    build: Callable[[Any], Adapter]
    image_encoder: str
    text_encoder: str
    text_pooling: str

    def declared_options(self) -> list[Declared]:
        return declared(self.options)

    def resolve_options(self, values: Mapping[str, Any] | None = None) -> Any:
        """The options instance from ``values`` (``None`` values are "not given"); ``ValueError`` names an
        option this dataset does not use, a required option left out, or a bad value."""
        given = {k: v for k, v in (values or {}).items() if v is not None}
        decl = {d.name: d for d in self.declared_options()}
        unknown = [k for k in given if k not in decl]
        if unknown:
            flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
            known = ", ".join(d.flag for d in decl.values()) or "none"
            raise ValueError(f"--dataset {self.name} does not use {flags} ({self.description}; its options: {known})")
        missing = [d for d in decl.values() if d.info.required and given.get(d.name) is None]
        if missing:
            needs = " and ".join(f"{d.flag} ({d.info.help.rstrip('.')})" for d in missing)
            raise ValueError(f"--dataset {self.name} needs {needs}")
        try:
            return resolve(self.options, None, **given)
        except ValueError as e:
            raise ValueError(f"--dataset {self.name}: {e}") from e

    def build_adapter(self, values: Mapping[str, Any] | None = None) -> Adapter:
        """The adapter, built with ``values`` checked by ``resolve_options``."""
        return self.build(self.resolve_options(values))


DATASETS: dict[str, DatasetEntry] = {}
PAPER_IMAGE_ENCODER = "microsoft/resnet-34"
PAPER_TEXT_ENCODER = "bert-base-uncased"
PAPER_TEXT_POOLING = "tokens"


def register_dataset(
    name: str,
    *,
    description: str,
    options: type,
    image_encoder: str = PAPER_IMAGE_ENCODER,
    text_encoder: str = PAPER_TEXT_ENCODER,
    text_pooling: str = PAPER_TEXT_POOLING,
) -> Callable[[Callable[[Any], Adapter]], Callable[[Any], Adapter]]:
    """Decorator: ``build(options) -> Adapter`` becomes the dataset ``name`` (see the module docstring). The
    encoders used when the command names none are the paper's (ResNet34 images, BERT per-token reports)
    unless the dataset declares others."""
    if not dataclasses.is_dataclass(options):
        raise TypeError(f"dataset {name!r}: options must be a dataclass of omnifuse.options.option fields")

    def deco(build: Callable[[Any], Adapter]) -> Callable[[Any], Adapter]:
        if name in DATASETS and DATASETS[name].build is not build:
            raise ValueError(f"dataset {name!r} is already registered by {DATASETS[name].build!r}")
        DATASETS[name] = DatasetEntry(name, description, options, build, image_encoder, text_encoder, text_pooling)
        return build

    return deco


def list_datasets() -> list[str]:
    """The registered dataset names, sorted."""
    return sorted(DATASETS)


def get_dataset(name: str) -> DatasetEntry:
    """The entry of dataset ``name``; ``ValueError`` listing the registered ones otherwise."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(list_datasets()) or 'none'}")
    return DATASETS[name]


def build_adapter(name: str, **options: Any) -> Adapter:
    """The adapter of dataset ``name`` built with ``options`` (e.g. ``manifest=..., spec=...``)."""
    return get_dataset(name).build_adapter(options)
