"""Stage-one configuration: every option of ``omnifuse extract`` declared once (``ExtractConfig``).

The same names serve as command-line flags (``--max-words``), keys of a TOML file (``--config``) and keyword
overrides of ``extract_dataset`` and ``pipeline.extract``; flags override the file, the file the defaults. The
dataset's own options (``--root``, ``--cxr-root``, ...) are declared by the dataset (``datasets.registry``)
and go under ``dataset_options``; in a file they may also stand at the top level, like the flags::

    dataset = "mimic"
    out = "cache/mimic.zarr"
    root = "/data/mimic-iv-2.2"          # the dataset's options, top level or under [dataset_options]
    cxr_root = "/data/mimic-cxr-jpg"
    text_pooling = "tokens"
    batch_size = 64

``extract_config`` resolves a configuration completely: the dataset's options checked and filled with their
defaults, and the encoders the command leaves unset taken from the dataset's declaration. That resolved
configuration is saved in the cache's attributes (``summary.extract_config``).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnifuse.extract.datasets.registry import DATASETS, DatasetEntry, describe_datasets, get_dataset
from omnifuse.options import cli_help, cli_parameter, cli_parameters, load_toml, option, resolve, to_json


def _datasets_help() -> str:
    """Every dataset with its description, from the registry's declarations (no adapter imported)."""
    return "Dataset to extract: " + ", ".join(f"{n} ({d})" for n, d in describe_datasets().items()) + "."


@dataclass
class ExtractConfig:
    """Every option of a stage-one extraction. ``None`` encoder fields mean "the dataset's default"."""

    dataset: str = option("eicu-demo", help=_datasets_help(), short="-d")
    out: Path | None = option(None, help="Cache to write (default cache/<dataset>.zarr).", short="-o")
    dataset_options: dict[str, Any] = option({}, help="The dataset's own options (see its flags).", cli=False)
    image_encoder: str | None = option(
        None,
        help="Registered name (`omnifuse encoders --family image` lists them: microsoft/resnet-34, "
        "random:resnet34, xrv-densenet121, biomedclip, rad-dino, medsiglip...), or a hub id or folder "
        "transformers loads (default: the dataset's).",
    )
    image_pooling: str | None = option(
        None,
        help="Pooling of a registered image encoder, one of its entry's (`omnifuse encoders` lists them, the "
        "default first; e.g. rad-dino: cls or patch_mean, biomedclip: proj or cls). Default: the entry's first.",
    )
    text_encoder: str | None = option(
        None,
        help="Registered name, hub id or folder (default: the dataset's: minilm, the bundled offline "
        "MiniLM, for eICU; bert-base-uncased otherwise).",
    )
    text_pooling: str | None = option(
        None,
        help="tokens (the paper; [L, H] per report), mean or cls (one vector). Default: the dataset's "
        "(mean for eICU, tokens otherwise).",
    )
    max_words: int = option(150, help="Words of each text kept (the paper: 150).")
    max_tokens: int = option(256, help="Token cap of the text encoder.")
    volume_pooling: str = option("slices", help="Volumes: slices ([S, D] per volume) or mean (one vector).")
    max_slices: int = option(64, help="Volumes: slices kept along z.")
    volume_window: tuple[float, float] | None = option(
        None, help="Volumes: intensity window LOW HIGH (default: each volume's 0.5th-99.5th percentiles)."
    )
    device: str = option("auto", help="auto (cuda when present), cpu, cuda, cuda:1 ...")
    precision: str = option(
        "auto",
        help="auto (bf16 autocast on GPUs and on CPUs with native bf16, else fp32), bf16 or fp32.",
        choices=("auto", "bf16", "fp32"),
    )
    batch_size: int = option(32, help="Inputs encoded per forward pass.")
    limit: int | None = option(None, help="Only the first N stays (a quick look).")
    num_workers: int | None = option(
        None,
        flag="--workers",
        help="Image decoding worker processes (default: all cores of this rank but one "
        "on a GPU; none on a small CPU, where low-priority threads decode beside the encoder).",
    )
    decode_threads: int | None = option(
        None, help="Background decoding threads when there are no worker processes (default 2; 0 decodes inline)."
    )
    modalities: list[str] | None = option(None, flag="--modality", help="Encode only this modality (repeat).")
    add_modalities: list[str] | None = option(
        None,
        flag="--add-modality",
        help="Add this modality of the dataset to the existing cache --out (repeat), encoding only it: the "
        "cache's other modalities are not rewritten. The dataset must give the cache's stays and modalities (a "
        "manifest: its spec plus the new modality). Rerun the same command to resume it.",
    )
    modality_name: str | None = option(
        None,
        help="With one --add-modality: its name in the cache (default: the dataset's), to keep the same input "
        "under another encoder beside the first, e.g. --add-modality report --modality-name report_bert "
        "--text-encoder bert-base-uncased.",
    )
    overwrite: bool = option(
        False, help="Replace an existing cache of another specification (with --add-modality: only that modality)."
    )
    rows_per_block: int | dict[str, int] | None = option(
        None, help="Rows per stored block (one number, or per modality); default: the cache's choice.", cli=False
    )
    progress: bool = option(True, help="Show progress bars.")

    def __post_init__(self) -> None:
        for name in ("max_words", "max_tokens", "max_slices", "batch_size", "limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        for name in ("num_workers", "decode_threads"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be at least 0, got {value}")
        adds = self.add_modalities
        if adds is not None and not adds:
            raise ValueError("--add-modality needs the name of a modality of the dataset")
        if adds is not None and self.modalities is not None:
            raise ValueError("--modality and --add-modality cannot be combined: --add-modality encodes what it adds")
        if self.modality_name is not None and (adds is None or len(adds) != 1):
            raise ValueError("--modality-name names the one modality added; give exactly one --add-modality")

    def to_json(self) -> dict[str, Any]:
        return to_json(self)


FIELDS = frozenset(f.name for f in dataclasses.fields(ExtractConfig))


def _split(values: Mapping[str, Any]) -> dict[str, Any]:
    """Keys that are not ``ExtractConfig`` fields are the dataset's options: moved under ``dataset_options``
    (``None`` values, flags not given, are dropped)."""
    own = {k: v for k, v in values.items() if k in FIELDS}
    flat = {k: v for k, v in values.items() if k not in FIELDS and v is not None}
    if flat:
        nested = own.get("dataset_options")
        if nested is not None and not isinstance(nested, Mapping):
            raise ValueError(f"dataset_options must be a table of options, got {nested!r}")
        own["dataset_options"] = {**(nested or {}), **flat}
    return own


def extract_config(
    config: ExtractConfig | str | Path | Mapping[str, Any] | None = None, **overrides: Any
) -> ExtractConfig:
    """The complete configuration: defaults < ``config`` (a TOML path, a dict or an ``ExtractConfig``) <
    ``overrides``; keys of either that are not ``ExtractConfig`` fields are the dataset's options. The
    dataset's options are checked (``ValueError`` naming one it does not use, or a required one left out) and
    completed with their defaults; unset encoders come from the dataset's declaration."""
    if isinstance(config, (str, Path)):
        config = load_toml(config)
    if isinstance(config, Mapping):
        config = _split(config)
    cfg = resolve(ExtractConfig, config, **_split(overrides))
    entry = get_dataset(cfg.dataset)
    opts = entry.resolve_options(cfg.dataset_options)
    image_encoder = cfg.image_encoder or entry.image_encoder
    if cfg.image_pooling is not None:
        check_image_pooling(image_encoder, cfg.image_pooling)
    return dataclasses.replace(
        cfg,
        dataset_options={f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)},
        image_encoder=image_encoder,
        text_encoder=cfg.text_encoder or entry.text_encoder,
        text_pooling=cfg.text_pooling or entry.text_pooling,
    )


def check_image_pooling(image_encoder: str | None, pooling: str) -> None:
    """``ValueError`` in one line unless ``pooling`` is one of the poolings of the registered image encoder
    ``image_encoder`` (by name or alias), naming the valid ones; an unregistered encoder (a hub id or folder)
    has its model's own pooling and takes none."""
    import omnifuse.extract.encoders  # noqa: F401 - registers every entry
    from omnifuse.extract.encoders.registry import find_encoder_entry

    entry = None if image_encoder is None else find_encoder_entry(image_encoder)
    if entry is None or entry.family != "image":
        raise ValueError(
            f"--image-pooling {pooling!r}: image encoder {image_encoder!r} is not a registered one (its pooling is "
            "its model's own); `omnifuse encoders --family image` lists the registered ones and their poolings"
        )
    if pooling not in entry.poolings:
        raise ValueError(
            f"--image-pooling {pooling!r} is not a pooling of image encoder {entry.name!r}; "
            f"valid: {', '.join(entry.poolings)}"
        )


def default_cache_path(dataset: str) -> Path:
    """``cache/<dataset>.zarr``."""
    return Path("cache") / f"{dataset}.zarr"


def dataset_cli_parameters(entries: Mapping[str, DatasetEntry] = DATASETS) -> list[inspect.Parameter]:
    """One flag per dataset option name across ``entries``; its help says which datasets use it and how
    (datasets that share an option with the same help and default are named together). ``TypeError`` when
    two datasets give one name different types, or a dataset option reuses an ``ExtractConfig`` field."""
    by_name: dict[str, list[tuple[str, Any]]] = {}
    for entry in entries.values():
        for d in entry.declared_options():
            if d.name in FIELDS:
                raise TypeError(f"dataset {entry.name!r}: option {d.name!r} is also an ExtractConfig field")
            by_name.setdefault(d.name, []).append((entry.name, d))
    params = []
    for name, uses in by_name.items():
        types = {repr(d.type) for _, d in uses}
        if len(types) > 1:
            raise TypeError(f"datasets {[u for u, _ in uses]} declare option {name!r} with different types {types}")
        groups: dict[str, list[str]] = {}
        for dataset, d in uses:
            groups.setdefault(cli_help(d.info.help, d.default, d.info.choices), []).append(dataset)
        text = " ".join(f"{', '.join(names)}: {h}" for h, names in groups.items())
        first = uses[0][1]
        params.append(cli_parameter(name, first.type, text, first.info.flag, first.info.short))
    return params


def extract_cli_parameters() -> list[inspect.Parameter]:
    """The ``extract`` command's flags: ``ExtractConfig``'s, then every registered dataset's options."""
    return [*cli_parameters(ExtractConfig), *dataset_cli_parameters()]
