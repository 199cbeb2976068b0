"""Stage-two run configuration, declared once (:mod:`omnifuse.options`): defaults (the paper's hyperparameters
for OmniFuse live in the method's registry defaults), a TOML file (``--config``) and flags; flags override the
file, and the resolved configuration is saved with every run (``config.json``). ``omnifuse train``'s flags are
generated from :class:`TrainConfig`.

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

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from omnifuse.options import load_toml, option, resolve, to_json

__all__ = ["TrainConfig", "load_toml", "resolve_config"]


@dataclass
class TrainConfig:
    """Every option of a stage-two run. ``method_params`` go to the fusion method's builder."""

    task: str = option("", help="Task in the cache (e.g. mortality).", short="-t")
    method: str = option("omnifuse", help="Fusion method or variant (see `omnifuse methods`).", short="-m")
    modalities: list[str] | None = option(None, help="Use only this modality (repeat; default all).", flag="--modality")
    folds: int = option(5, help="Patient-grouped cross-validation folds.")
    split: str | None = option(
        None, help="Use a split stored in the cache (train/val/test values, e.g. benchmark) instead of folds."
    )
    missing_rate: float = option(
        0.0, help="Simulated missing rate r of every row (the same mask for every method; seeded per fold)."
    )
    missing_mode: str = option("random", help="random, or the modality to drop.")
    seed: int = option(0, help="Seed of folds, masks and runs (see omnifuse.fuse.fold).")
    epochs: int = option(30, help="Maximum epochs (early stopping on the inner validation split).")
    batch_size: int = option(256, help="Training batch size.")
    lr: float = option(1e-3, help="Learning rate.")
    weight_decay: float = option(1e-2, help="Weight decay of the default AdamW optimiser.")
    grad_clip: float = option(5.0, help="Gradient norm clipping (0: none).")
    patience: int = option(10, help="Epochs without a better validation score before stopping.")
    val_fraction: float = option(
        0.2, help="Share of the training rows (patient-grouped, stratified) used for validation and model selection."
    )
    selection: str = option(
        "loss",
        help="Model selection on the validation loss (cross-entropy) or the validation AUROC.",
        choices=("loss", "auroc"),
    )
    modality_drop: float = option(
        0.5,
        help="Training-time modality drop applied identically to every method (the same masks in a fold); 0 "
        "turns it off (methods then use their own drop, if any).",
    )
    modality_drop_unit: Literal["row", "modality"] = option(
        "row",
        help="row: with probability --modality-drop a row keeps a uniformly drawn non-empty proper subset of "
        "its modalities (1.0: the paper's table 1); modality: each present modality dropped with that probability, "
        "at least one kept.",
        choices=("row", "modality"),
    )
    ensemble: int = option(1, help="Models per fold, with different seeds; their probabilities are averaged.")
    calibrate: bool = option(
        True,
        help="Temperature-scale each fold's network on its inner validation split (one temperature per label, "
        "one for multiclass; minimising the validation log loss) and report calibrated probabilities, keeping the "
        "uncalibrated ones beside them; reference learners keep T = 1.",
    )
    mining_rows: int = option(
        512,
        help="Training rows TLA mines its lazy combination on after each epoch "
        "(2^M - 1 passes over them: bounded cost).",
    )
    eval_batch_size: int = option(1024, help="Batch size of evaluation passes.")
    normalize_embeddings: bool = option(True, help="Standardise cached embeddings with training statistics.")
    n_boot: int = option(1000, help="Bootstrap replicates of the per-fold confidence intervals.")
    device: str = option("auto", help="auto (cuda when present), cpu, cuda.")
    data_in_memory: str = option(
        "auto",
        help="auto: keep the selected cache arrays in memory when they fit (half the available memory), else "
        "stream the largest modalities' features from the cache; yes / no: force one path. Both give the same "
        "batches and results (streaming takes less memory, more time).",
        choices=("auto", "yes", "no"),
    )
    progress: bool = option(True, help="Show a progress bar (logged when the output is not a terminal).")
    allow_incomplete: bool = option(
        False, help="Accept a cache whose extraction did not finish (its missing blocks read as missing modalities)."
    )
    save_checkpoints: bool = option(True, help="Write each fold's model, normaliser and model.json.", cli=False)
    method_params: dict[str, Any] = option(
        {}, help="Parameters of the method (over its registry defaults); on the command line -p key=value.", cli=False
    )

    def __post_init__(self) -> None:
        if self.folds < 1:
            raise ValueError(f"folds must be >= 1, got {self.folds}")
        if not 0.0 <= self.missing_rate <= 1.0:
            raise ValueError(f"missing_rate must be in [0, 1], got {self.missing_rate}")
        if not 0.0 <= self.modality_drop <= 1.0:
            raise ValueError(f"modality_drop must be in [0, 1], got {self.modality_drop}")
        if self.ensemble < 1:
            raise ValueError(f"ensemble must be >= 1, got {self.ensemble}")

    def to_json(self) -> dict[str, Any]:
        return to_json(self)


def resolve_config(config: str | Path | dict[str, Any] | TrainConfig | None = None, **overrides: Any) -> TrainConfig:
    """Defaults < file (path or dict) < ``overrides`` (flags; None values are ignored). Unknown keys raise
    ``ValueError`` naming them; ``method_params`` are merged key by key; a file's ``[grid]`` table is for
    :func:`omnifuse.fuse.train.grid` and ignored here."""
    if isinstance(config, (str, Path)):
        config = load_toml(config)
    if isinstance(config, dict):
        config = {k: v for k, v in config.items() if k != "grid"}
    return resolve(TrainConfig, config, **overrides)
