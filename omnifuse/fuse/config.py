"""Stage-two run configuration: defaults (the paper's hyperparameters for OmniFuse live in the method's
registry defaults), a TOML file (``--config``) and flags; flags override the file, and the resolved
configuration is saved with every run.

TOML layout::

    task = "in_hospital_mortality"
    method = "omnifuse"
    folds = 5
    epochs = 30
    [method_params]          # passed to the method builder (overrides its registry defaults)
    beta = 0.5
    [grid]                   # only for grid(): lists of values per method parameter
    beta = [0.25, 0.5, 1.0]
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass
class TrainConfig:
    """Every option of a stage-two run. ``method_params`` go to the fusion method's builder."""

    task: str = ""
    method: str = "omnifuse"
    modalities: list[str] | None = None
    folds: int = 5
    split: str | None = None  # a split stored in the cache (train/val/test) instead of k folds
    missing_rate: float = 0.0
    missing_mode: str = "random"  # "random" or a modality name
    seed: int = 0
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-2
    grad_clip: float = 5.0
    patience: int = 5
    val_fraction: float = 0.1
    mining_rows: int = 512  # TLA mining subset of training rows (bounded cost: 2^M - 1 passes per epoch)
    eval_batch_size: int = 1024
    normalize_embeddings: bool = True
    n_boot: int = 1000
    device: str = "auto"
    progress: bool = True
    save_checkpoints: bool = True
    method_params: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_FIELDS = {f.name for f in fields(TrainConfig)}


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file into a flat dict (``[method_params]`` and ``[grid]`` kept as tables)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"config file {p} does not exist")
    with p.open("rb") as f:
        return tomllib.load(f)


def resolve_config(config: str | Path | dict[str, Any] | TrainConfig | None = None, **overrides: Any) -> TrainConfig:
    """Defaults < file (path or dict) < ``overrides`` (flags; None values are ignored). Unknown keys raise
    ``ValueError`` naming them; ``method_params`` are merged key by key."""
    base: dict[str, Any] = {}
    if isinstance(config, TrainConfig):
        base = config.to_json()
    elif isinstance(config, (str, Path)):
        base = load_toml(config)
    elif isinstance(config, dict):
        base = dict(config)
    base.pop("grid", None)
    over = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted((set(base) | set(over)) - _FIELDS)
    if unknown:
        raise ValueError(f"unknown configuration key(s): {unknown}; known: {sorted(_FIELDS)}")
    mp = {**dict(base.get("method_params", {}) or {}), **dict(over.pop("method_params", {}) or {})}
    merged = {**base, **over, "method_params": mp}
    if merged.get("modalities") is not None:
        merged["modalities"] = list(merged["modalities"])
    cfg = TrainConfig(**merged)
    if cfg.folds < 1:
        raise ValueError(f"folds must be >= 1, got {cfg.folds}")
    if not 0.0 <= cfg.missing_rate <= 1.0:
        raise ValueError(f"missing_rate must be in [0, 1], got {cfg.missing_rate}")
    return cfg
