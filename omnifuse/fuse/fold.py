"""One fold of stage two: the single code path behind ``omnifuse train``, every study, the demo and predict.

:func:`run_fold` splits the fold's training rows into inner-train and validation rows, fits the normaliser on
the training rows, builds the method, trains it (:class:`omnifuse.fuse.trainer.Trainer`) and predicts the test
rows as they are and once per evaluated modality combination. :func:`combination_views` turns those
predictions into the two per-combination views every command reports:

- ``all_masked``: every test row, the modalities outside the combination masked (a row lacking some of the
  combination keeps what it has of it): the paper's table 3;
- ``complete``: only the test rows that hold every modality of the combination, masked down to it;
- ``partial``: the rows of ``all_masked`` that lack some modality of the combination but hold at least one of
  it (studies report them separately).

"Hold" means present in the mask the run was evaluated with (after simulated missingness, when there is any).

Seed policy (written once, here; ``seed`` is the run's or study's ``--seed``):

- folds of repeat ``r``: :func:`fold_seed` = ``seed + r`` (patient-grouped, stratified ``make_folds``);
- simulated missingness of repeat ``r``, fold ``k``, rate and mode: :func:`mask_seed` (a CRC32 of the five),
  the same mask for every method, so fold-level metrics pair across methods;
- the run seed of repeat ``r``, fold ``k``: :func:`run_seed` = ``100 seed + k + 1000 r``; it seeds the inner
  validation split, Python/NumPy/torch (model initialisation, dropout), the trainer's batch order and
  training drops, and (``+ 17``) the TLA mining subset.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from omnifuse.fuse.config import TrainConfig
from omnifuse.fuse.data import FuseData, Normalizer, inner_split, make_folds, simulate_missing
from omnifuse.fuse.methods import build_method
from omnifuse.fuse.trainer import Trainer, TrainerCallback, predict_probs, seed_everything

VIEWS = ("all_masked", "complete")
"""The per-combination views of :func:`combination_views` that every command reports (``partial`` too in
studies)."""


# ------------------------------------------------------------------------------------------ seeds
def fold_seed(seed: int, repeat: int = 0) -> int:
    """The seed of the patient-grouped folds of one repeat."""
    return seed + repeat


def mask_seed(seed: int, repeat: int, fold: int, rate: float, mode: str) -> int:
    """The seed of the simulated missingness of one (repeat, fold, rate, mode): the same for every method."""
    return zlib.crc32(f"{seed}|{repeat}|{fold}|{rate:.6f}|{mode}".encode()) & 0x7FFFFFFF


def run_seed(seed: int, repeat: int = 0, fold: int = 0) -> int:
    """The seed of one training run (inner split, initialisation, batch order, drops)."""
    return seed * 100 + fold + 1000 * repeat


def make_repeated_folds(
    data: FuseData,
    folds: int,
    repeats: int = 1,
    seed: int = 0,
) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """``[repeat][fold] = (train rows, test rows)``: patient-grouped folds of each repeat (:func:`fold_seed`)."""
    return [make_folds(data, folds, seed=fold_seed(seed, r)) for r in range(repeats)]


def fold_data(data: FuseData, rate: float, mode: str, seed: int, repeat: int, fold: int) -> FuseData:
    """``data`` with the simulated missingness of one (repeat, fold) (itself when ``rate`` is 0)."""
    if rate <= 0:
        return data
    m = simulate_missing(data.natural_mask, rate, mode, data.modalities, seed=mask_seed(seed, repeat, fold, rate, mode))
    return data.with_mask(m)


# ------------------------------------------------------------------------------------------ a fold
@dataclass
class FoldPlan:
    """One training run. ``method``: a registry name (variants included); ``params`` on top of its defaults;
    ``seed``: the run seed (:func:`run_seed`); ``val_rows``: a fixed validation split (a split stored in the
    cache), else an inner split of ``train_rows``; ``train_modality``: train only on the rows holding it
    (unimodal models); ``combos``: modality combinations (names) to predict the test rows with."""

    method: str
    train_rows: np.ndarray
    test_rows: np.ndarray
    seed: int
    fold: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    val_rows: np.ndarray | None = None
    train_modality: str | None = None
    combos: Sequence[Sequence[str]] = ()


@dataclass
class FoldRun:
    """What :func:`run_fold` produced. ``present`` [n, M] is the presence of the test rows' modalities (after
    simulated missingness); ``overall`` [n, C] their probabilities as they are; ``combos[i]`` [n, C] with the
    modalities outside ``plan.combos[i]`` masked (absent when the model does not see one of them)."""

    model: Any
    normalizer: Normalizer
    best_epoch: int
    best_val_auroc: float
    n_train: int
    n_val: int
    history: list[dict[str, Any]]
    records: dict[str, list[Any]]
    test_rows: np.ndarray
    present: np.ndarray
    y: np.ndarray
    overall: np.ndarray
    combos: dict[int, np.ndarray]


class FoldError(ValueError):
    """A fold cannot be trained as asked (too few rows holding a modality...)."""


def _training_rows(data: FuseData, plan: FoldPlan) -> np.ndarray:
    rows = plan.train_rows
    if plan.train_modality is None:
        return rows
    j = data.modalities.index(plan.train_modality)
    rows = rows[data.mask[torch.as_tensor(rows, device=data.device), j].cpu().numpy()]
    if rows.size < 10:
        raise FoldError(f"only {rows.size} training rows of fold {plan.fold} hold {plan.train_modality!r}")
    return rows


def run_fold(
    data: FuseData, plan: FoldPlan, cfg: TrainConfig, *, progress: Any = None, callbacks: Sequence[TrainerCallback] = ()
) -> FoldRun:
    """Train ``plan.method`` on one fold of ``data`` and predict its test rows (see the module docstring).

    The normaliser is fitted on all of the fold's training rows (the inner validation rows included, as
    ``plan.train_rows`` says); the test rows never reach the fit, the normaliser or model selection."""
    train_rows = _training_rows(data, plan)
    seed_everything(plan.seed)
    if plan.val_rows is not None:
        inner_tr, val = np.setdiff1d(train_rows, plan.val_rows), plan.val_rows
    else:
        inner_tr, val = inner_split(data, train_rows, cfg.val_fraction, seed=plan.seed)
    norm = Normalizer.fit(data, train_rows, embeddings=cfg.normalize_embeddings)
    model = build_method(plan.method, data.model_info(norm), **plan.params).to(data.device)
    trainer = Trainer(
        model, data, inner_tr, val, norm, cfg, seed=plan.seed, progress=progress, fold=plan.fold, callbacks=callbacks
    )
    best_epoch, best_val = trainer.fit()
    test = np.asarray(plan.test_rows, dtype=np.int64)
    combos: dict[int, np.ndarray] = {}
    for i, combo in enumerate(plan.combos):
        if not set(combo) <= set(data.modalities):
            continue
        keep = torch.tensor([n in combo for n in data.modalities], dtype=torch.bool)
        mask = keep.unsqueeze(0).expand(len(test), -1).clone()
        combos[i] = predict_probs(model, data, test, norm, cfg.eval_batch_size, mask)
    return FoldRun(
        model=model,
        normalizer=norm,
        best_epoch=best_epoch,
        best_val_auroc=best_val,
        n_train=int(len(inner_tr)),
        n_val=int(len(val)),
        history=trainer.history,
        records=trainer.records,
        test_rows=test,
        present=data.mask[torch.as_tensor(test, device=data.device)].cpu().numpy(),
        y=data.labels_numpy(test),
        overall=predict_probs(model, data, test, norm, cfg.eval_batch_size),
        combos=combos,
    )


def combination_views(
    present: np.ndarray,
    combo: np.ndarray,
    probs: np.ndarray,
) -> dict[str, np.ndarray]:
    """Row selections of the per-combination views (see the module docstring): ``{view: bool [n]}``.

    ``present`` [n, M] bool, ``combo`` [M] bool (the combination), ``probs`` [n, C] (only its length is
    used). ``partial`` is given for combinations of two or more modalities."""
    has = np.asarray(present[:, combo], dtype=bool)
    complete = np.asarray(has.all(1), dtype=bool)
    views: dict[str, np.ndarray] = {"all_masked": np.ones(len(probs), dtype=bool), "complete": complete}
    if int(combo.sum()) > 1:
        views["partial"] = np.asarray(has.any(1), dtype=bool) & ~complete
    return views
