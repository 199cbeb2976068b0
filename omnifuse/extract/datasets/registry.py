"""The dataset registry behind ``omnifuse extract --dataset NAME``.

Every dataset is declared twice, in two places that tests keep in step. Here, in ``DECLARED``: its name, its
one-line description and the module that builds it, so that listing the datasets (``list_datasets``, the
``--dataset`` help, ``describe_datasets``) imports no adapter and none of their dependencies (polars: the GPU
machines do not have it). In that module, on the function that builds the adapter::

    @dataclass
    class ToyOptions:
        \"\"\"Options of the toy dataset (each becomes a flag of ``omnifuse extract``).\"\"\"
        root: Path | None = option(None, help="Folder of the toy files.", required=True)
        hours: float = option(24.0, help="Window from admission, in hours.")

    @register_dataset("toy", options=ToyOptions)  # the paper's encoders; the description is DECLARED's
    def build_toy(opts: ToyOptions) -> ToyAdapter:
        return ToyAdapter(opts.root, hours=opts.hours)

The module is imported when the dataset's entry is first asked for (``get_dataset``, ``DATASETS[name]``,
iterating ``DATASETS.values()``). From the entry come the ``extract`` command's flags and help
(``omnifuse.extract.config``), the check that every option given is one the dataset uses, its defaults, and
the encoders used when the command names none. A dataset registered by a module that ``DECLARED`` does not
name (a test's, a user's) needs its ``description`` in ``register_dataset`` and is listed once registered.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterator, Mapping
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


@dataclass(frozen=True)
class DatasetDeclaration:
    """What is known of a dataset without importing its adapter: its name, one-line description (no final
    full stop) and the module whose ``@register_dataset`` builds it."""

    name: str
    description: str
    module: str


# In the order of the --dataset help. Adding a dataset: one line here, its module, its test.
DECLARED: dict[str, DatasetDeclaration] = {
    d.name: d
    for d in (
        DatasetDeclaration(
            "eicu-demo",
            "the bundled eICU-CRD demo 2.0.1, real data, ODbL; a folder of eICU-CRD is --dataset eicu",
            "omnifuse.extract.datasets.eicu.adapter",
        ),
        DatasetDeclaration("eicu", "an eICU-CRD 2.0 folder, --root", "omnifuse.extract.datasets.eicu.adapter"),
        DatasetDeclaration(
            "manifest",
            "any dataset described by a manifest file and a column spec",
            "omnifuse.extract.datasets.manifest",
        ),
        DatasetDeclaration(
            "mimic",
            "MIMIC-III or MIMIC-IV ICU stays, with MIMIC-CXR images and reports",
            "omnifuse.extract.datasets.mimic.adapter",
        ),
    )
}


class DatasetRegistry(Mapping[str, DatasetEntry]):
    """The datasets by name: those of ``declared`` (each entry built on first access, by importing its
    module), then those registered by other modules. Membership, ``len`` and iteration over the names import
    nothing; ``registry[name]`` and ``values()`` import the modules of the entries they return."""

    def __init__(self, declared: Mapping[str, DatasetDeclaration]) -> None:
        self.declared = dict(declared)
        self.entries: dict[str, DatasetEntry] = {}

    def __iter__(self) -> Iterator[str]:
        yield from self.declared
        yield from (name for name in self.entries if name not in self.declared)

    def __len__(self) -> int:
        return len(self.declared) + sum(name not in self.declared for name in self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.declared or name in self.entries

    def __getitem__(self, name: str) -> DatasetEntry:
        if name not in self.entries and name in self.declared:
            module = self.declared[name].module
            importlib.import_module(module)  # its @register_dataset fills self.entries
            if name not in self.entries:
                raise LookupError(f"dataset {name!r}: module {module} does not register it (@register_dataset)")
        return self.entries[name]

    def __setitem__(self, name: str, entry: DatasetEntry) -> None:
        self.entries[name] = entry

    def registered(self, name: str) -> DatasetEntry | None:
        """The entry of ``name`` if its module was imported already, else ``None`` (imports nothing)."""
        return self.entries.get(name)

    def description(self, name: str) -> str:
        """The one-line description of ``name`` (imports nothing); ``KeyError`` for an unknown name."""
        return self.declared[name].description if name in self.declared else self.entries[name].description


DATASETS: DatasetRegistry | dict[str, DatasetEntry] = DatasetRegistry(DECLARED)
PAPER_IMAGE_ENCODER = "microsoft/resnet-34"
PAPER_TEXT_ENCODER = "bert-base-uncased"
PAPER_TEXT_POOLING = "tokens"


def register_dataset(
    name: str,
    *,
    options: type,
    description: str | None = None,
    image_encoder: str = PAPER_IMAGE_ENCODER,
    text_encoder: str = PAPER_TEXT_ENCODER,
    text_pooling: str = PAPER_TEXT_POOLING,
) -> Callable[[Callable[[Any], Adapter]], Callable[[Any], Adapter]]:
    """Decorator: ``build(options) -> Adapter`` becomes the dataset ``name`` (see the module docstring). The
    description is ``DECLARED``'s for a declared dataset (``ValueError`` if ``description`` differs), else
    ``description`` (``TypeError`` when missing). The encoders used when the command names none are the
    paper's (ResNet34 images, BERT per-token reports) unless the dataset declares others."""
    if not dataclasses.is_dataclass(options):
        raise TypeError(f"dataset {name!r}: options must be a dataclass of omnifuse.options.option fields")
    declared = DECLARED.get(name)
    if declared is not None and description is not None and description != declared.description:
        raise ValueError(
            f"dataset {name!r}: description {description!r} differs from DECLARED's {declared.description!r}"
        )
    if declared is None and description is None:
        raise TypeError(f"dataset {name!r} is not in registry.DECLARED: register_dataset needs its description")
    text = declared.description if declared is not None else description
    assert text is not None

    def deco(build: Callable[[Any], Adapter]) -> Callable[[Any], Adapter]:
        current = DATASETS.registered(name) if isinstance(DATASETS, DatasetRegistry) else DATASETS.get(name)
        if current is not None and current.build is not build:
            raise ValueError(f"dataset {name!r} is already registered by {current.build!r}")
        DATASETS[name] = DatasetEntry(name, text, options, build, image_encoder, text_encoder, text_pooling)
        return build

    return deco


def list_datasets() -> list[str]:
    """The registered dataset names, sorted (imports no adapter)."""
    return sorted(DATASETS)


def describe_datasets() -> dict[str, str]:
    """Each dataset's one-line description by name, in the order of the ``--dataset`` help (imports no
    adapter)."""
    if isinstance(DATASETS, DatasetRegistry):
        return {name: DATASETS.description(name) for name in DATASETS}
    return {name: entry.description for name, entry in DATASETS.items()}


def get_dataset(name: str) -> DatasetEntry:
    """The entry of dataset ``name`` (its module imported if it was not); ``ValueError`` listing the
    registered ones otherwise."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(list_datasets()) or 'none'}")
    return DATASETS[name]


def build_adapter(name: str, **options: Any) -> Adapter:
    """The adapter of dataset ``name`` built with ``options`` (e.g. ``manifest=..., spec=...``)."""
    return get_dataset(name).build_adapter(options)
