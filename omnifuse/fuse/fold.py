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

Calibration (``cfg.calibrate``, on by default): after training, a network's (an ensemble's averaged)
probabilities on the inner validation rows, as they are, fix a temperature per label (one for multiclass) by
:func:`omnifuse.fuse.calibration.fit_temperature`; every reported probability (``overall``, ``combos``) is
rescaled by it and the uncalibrated ones are kept (``overall_raw``, ``combos_raw``). The test rows never reach
the fit. Reference learners have no inner validation split and keep ``T`` = 1, as does a validation split
without a positive (or without a row) for a label (logged).

Seed policy (written once, here; ``seed`` is the run's or study's ``--seed``):

- folds of repeat ``r``: :func:`fold_seed` = ``seed + r`` (patient-grouped, stratified ``make_folds``);
- simulated missingness of repeat ``r``, fold ``k``, rate and mode: :func:`mask_seed` (a CRC32 of the five),
  the same mask for every method, so fold-level metrics pair across methods;
- the run seed of repeat ``r``, fold ``k``: :func:`run_seed` = ``100 seed + k + 1000 r``; it seeds the inner
  validation split, Python/NumPy/torch (model initialisation, dropout), the trainer's batch order and
  training drops, and (``+ 17``) the TLA mining subset.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from omnifuse.cache import CacheData, cache_fingerprint
from omnifuse.fuse.base import FusionMethod
from omnifuse.fuse.calibration import apply_temperature, fit_temperature
from omnifuse.fuse.config import TrainConfig
from omnifuse.fuse.data import FuseData, Normalizer, inner_split, make_folds, simulate_missing
from omnifuse.fuse.methods import build_method, get_method
from omnifuse.fuse.trainer import Trainer, TrainerCallback, check_finite, predict_probs, seed_everything

log = logging.getLogger(__name__)

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


def data_fingerprint(cache: Any) -> dict[str, Any] | None:
    """The cache fingerprint (:func:`omnifuse.cache.cache_fingerprint`) of what a run trains on, recorded with
    every run; None for data that never was a stored cache (built in memory, e.g. in tests)."""
    if isinstance(cache, FuseData):
        return None
    if isinstance(cache, CacheData) and cache.path is None:
        return None
    return cache_fingerprint(cache)


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
    modalities outside ``plan.combos[i]`` masked (absent when the model does not see one of them). Both are
    calibrated with ``temperature`` (floats: one per label for binary and multilabel tasks, one for multiclass;
    all 1 when not calibrated); ``overall_raw`` and ``combos_raw`` hold the same predictions before it (the
    same arrays when every temperature is 1)."""

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
    members: list[Any] = field(default_factory=list)
    best_is_last: list[bool] = field(default_factory=list)
    temperature: list[float] = field(default_factory=list)
    overall_raw: np.ndarray | None = None
    combos_raw: dict[int, np.ndarray] = field(default_factory=dict)


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


def _combination_masks(data: FuseData, plan: FoldPlan, n: int) -> dict[int, torch.Tensor]:
    """Per evaluated combination the model can see, the [n, M] mask keeping only its modalities."""
    out = {}
    for i, combo in enumerate(plan.combos):
        if set(combo) <= set(data.modalities):
            keep = torch.tensor([name in combo for name in data.modalities], dtype=torch.bool)
            out[i] = keep.unsqueeze(0).expand(n, -1).clone()
    return out


def _fit_network(
    data: FuseData,
    plan: FoldPlan,
    cfg: TrainConfig,
    rows: tuple[np.ndarray, np.ndarray],
    norm: Normalizer,
    seed: int,
    progress: Any,
    callbacks: Sequence[TrainerCallback],
) -> tuple[FusionMethod, Trainer]:
    inner_tr, val = rows
    seed_everything(seed)
    model = build_method(plan.method, data.model_info(norm), **plan.params).to(data.device)
    trainer = Trainer(
        model, data, inner_tr, val, norm, cfg, seed=seed, progress=progress, fold=plan.fold, callbacks=callbacks
    )
    trainer.fit()
    return model, trainer


def run_fold(
    data: FuseData, plan: FoldPlan, cfg: TrainConfig, *, progress: Any = None, callbacks: Sequence[TrainerCallback] = ()
) -> FoldRun:
    """Train ``plan.method`` on one fold of ``data`` and predict its test rows (see the module docstring).

    The normaliser is fitted on all of the fold's training rows (the inner validation rows included, as
    ``plan.train_rows`` says); the test rows never reach the fit, the normaliser or model selection. With
    ``cfg.ensemble`` = n, n networks with seeds ``plan.seed + 7919 i`` (the same inner split) are trained and
    their probabilities averaged. A reference learner (registry kind ``"reference"``) is fitted on all the
    fold's training rows, without an inner split."""
    train_rows = _training_rows(data, plan)
    seed_everything(plan.seed)
    norm = Normalizer.fit(data, train_rows, embeddings=cfg.normalize_embeddings)
    test = np.asarray(plan.test_rows, dtype=np.int64)
    masks = _combination_masks(data, plan, len(test))
    if get_method(plan.method).kind == "reference":
        learner: Any = build_method(plan.method, data.model_info(norm), **{"seed": plan.seed, **plan.params})
        learner.fit(data, train_rows, norm)

        def predict(mask: torch.Tensor | None) -> np.ndarray:
            return check_finite(learner.predict_proba(data, test, norm, mask), data.stay_id[test])

        members: list[Any] = [learner]
        trainers: list[Trainer] = []
        inner_tr, val = train_rows, train_rows[:0]
    else:
        if plan.val_rows is not None:
            inner_tr, val = np.setdiff1d(train_rows, plan.val_rows), plan.val_rows
        else:
            inner_tr, val = inner_split(data, train_rows, cfg.val_fraction, seed=plan.seed)
        fitted = [
            _fit_network(
                data, plan, cfg, (inner_tr, val), norm, plan.seed + 7919 * i, progress, callbacks if i == 0 else ()
            )
            for i in range(cfg.ensemble)
        ]
        members = [m for m, _ in fitted]
        trainers = [t for _, t in fitted]

        def predict(mask: torch.Tensor | None) -> np.ndarray:
            probs = [predict_probs(m, data, test, norm, cfg.eval_batch_size, mask) for m in members]
            return np.mean(probs, axis=0).astype(np.float32) if len(probs) > 1 else probs[0]

    overall_raw = predict(None)
    combos_raw = {i: predict(m) for i, m in masks.items()}
    n_t = 1 if data.task_kind == "multiclass" else int(overall_raw.shape[1])
    temperature = np.ones(n_t)
    if trainers and cfg.calibrate:
        temperature = _fit_temperature(data, members, val, norm, cfg, plan.fold)

    def calibrated(p: np.ndarray) -> np.ndarray:
        return p if np.all(temperature == 1.0) else apply_temperature(p, temperature, data.task_kind)

    first = trainers[0] if trainers else None
    return FoldRun(
        model=members[0],
        normalizer=norm,
        best_epoch=first.best_epoch if first else -1,
        best_val_auroc=first.best_val_auroc if first else math.nan,
        n_train=int(len(inner_tr)),
        n_val=int(len(val)),
        history=first.history if first else [],
        records=first.records if first else {},
        test_rows=test,
        present=data.mask[torch.as_tensor(test, device=data.device)].cpu().numpy(),
        y=data.labels_numpy(test),
        overall=calibrated(overall_raw),
        combos={i: calibrated(p) for i, p in combos_raw.items()},
        members=members,
        best_is_last=[t.best_is_last for t in trainers],
        temperature=[float(t) for t in temperature],
        overall_raw=overall_raw,
        combos_raw=combos_raw,
    )


def _fit_temperature(
    data: FuseData, members: Sequence[Any], val: np.ndarray, norm: Normalizer, cfg: TrainConfig, fold: int
) -> np.ndarray:
    """The temperatures of a fold's networks (:func:`omnifuse.fuse.calibration.fit_temperature`) on their
    averaged probabilities of the validation rows ``val`` as they are; ones when ``val`` is empty."""
    where = f"fold {fold}"
    if len(val) == 0:
        log.warning("%s: no validation row: temperature kept at 1", where)
        return np.ones(1 if data.task_kind == "multiclass" else data.num_outputs)
    probs = np.mean([predict_probs(m, data, val, norm, cfg.eval_batch_size) for m in members], axis=0)
    t = fit_temperature(data.labels_numpy(val), probs, data.task_kind, where=where)
    log.info("%s: temperature %s (fitted on %d validation rows)", where, ", ".join(f"{v:.3f}" for v in t), len(val))
    return t


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
