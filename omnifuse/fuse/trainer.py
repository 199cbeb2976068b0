"""One fold's training loop, generic over fusion methods, and the evaluation-mode forward pass.

:class:`Trainer` is what a method's hooks see (it implements :class:`omnifuse.fuse.base.TrainerView`): per epoch
the method's training drops, forward, loss, backward, its ``after_backward`` hook, gradient clipping and the
optimiser the method configures (:meth:`FusionMethod.configure_optimizer`); after each epoch the method's
``on_epoch_end`` hook, then the callbacks (e.g. the imputation study's probe), then model selection on the
inner validation split. The best state is restored at the end.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

from omnifuse.fuse import metrics
from omnifuse.fuse.base import Batch, DroppedBatch, FusionMethod
from omnifuse.fuse.config import TrainConfig
from omnifuse.fuse.data import FuseData, Normalizer
from omnifuse.fuse.layers import drop_modalities, probabilities

log = logging.getLogger(__name__)


class TrainerCallback(Protocol):
    """Observes a training run without being part of the model (e.g. the imputation probe)."""

    def on_train_start(self, trainer: Trainer) -> None: ...

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> None: ...


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (model initialisation, dropout)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class PredictionError(ValueError):
    """A model gave a non-finite (NaN or infinite) prediction: never a silent wrong number."""


def check_finite(probs: np.ndarray, stay_ids: np.ndarray, what: str = "prediction") -> np.ndarray:
    """``probs`` [n, C] unchanged when every value is finite; else :class:`PredictionError` naming the stays
    (their ``stay_ids``, at most ten)."""
    ok = np.isfinite(probs).reshape(len(probs), -1).all(1)
    if not ok.all():
        bad = stay_ids[~ok]
        shown = ", ".join(str(int(v)) for v in bad[:10]) + (", ..." if len(bad) > 10 else "")
        raise PredictionError(f"non-finite {what} for {len(bad)} stay(s): stay_id {shown}")
    return probs


def predict_probs(
    model: FusionMethod,
    data: FuseData,
    rows: np.ndarray,
    norm: Normalizer,
    batch_size: int,
    mask: torch.Tensor | None = None,
) -> np.ndarray:
    """Probabilities [len(rows), C] of the fused output (eval mode, no gradient). ``mask`` [len(rows), M]
    may remove modalities (they are then imputed by methods that impute). A NaN or infinite probability
    raises :class:`PredictionError` naming the stays."""
    model.eval()
    out = []
    with torch.no_grad():
        for b in data.iter_batches(rows, batch_size, norm, mask=mask):  # streamed modalities: read ahead
            out.append(probabilities(model(b).logits, data.task_kind).float().cpu())
    if not out:
        return np.zeros((0, data.num_outputs), dtype=np.float32)
    return check_finite(torch.cat(out).numpy(), data.stay_id[rows])


class Trainer:
    """One fold's training loop (see the module docstring).

    What methods reach in their hooks (:class:`omnifuse.fuse.base.TrainerView`): ``epoch``, ``fold``, ``seed``,
    ``device``, ``train_rows``, ``generator``, ``mining_batches()`` (a fixed random subset of at most
    ``cfg.mining_rows`` training rows as evaluation batches, seeded by ``seed + 17``) and ``record(key, value)``
    (kept per fold, e.g. TLA's lazy combination)."""

    def __init__(
        self,
        model: FusionMethod,
        data: FuseData,
        train_rows: np.ndarray,
        val_rows: np.ndarray,
        normalizer: Normalizer,
        cfg: TrainConfig,
        seed: int,
        progress: Any = None,
        fold: int = 0,
        callbacks: Sequence[TrainerCallback] = (),
    ) -> None:
        self.model, self.data, self.cfg = model, data, cfg
        self.train_rows, self.val_rows = train_rows, val_rows
        self.normalizer = normalizer
        self.device = data.device
        self.seed = seed
        self.fold = fold
        self.epoch = 0
        self.generator = torch.Generator().manual_seed(seed)  # the method's own draws
        self.shuffle_generator = torch.Generator().manual_seed(seed + 1)  # batch order: the same for every method
        self.drop_generator = torch.Generator().manual_seed(seed + 2)  # the shared drop: the same masks too
        self.best_is_last = False
        self.best_epoch, self.best_val_auroc = -1, math.nan
        self.records: dict[str, list[Any]] = {}
        self.history: list[dict[str, Any]] = []
        self.callbacks = list(callbacks)
        self._mining: list[Batch] | None = None
        self.progress = progress
        rng = np.random.default_rng(seed + 17)
        n = min(cfg.mining_rows, len(train_rows))
        self.mining_rows = np.sort(rng.choice(train_rows, size=n, replace=False)) if n else train_rows[:0]

    def record(self, key: str, value: object) -> None:
        self.records.setdefault(key, []).append(value)

    def batches(self, rows: np.ndarray) -> list[Batch]:
        """``rows`` as evaluation batches, in order (no drops, no shuffling)."""
        bs = self.cfg.eval_batch_size
        return [self.data.batch(rows[s : s + bs], self.normalizer) for s in range(0, len(rows), bs)]

    def mining_batches(self) -> list[Batch]:
        if self._mining is None:
            self._mining = self.batches(self.mining_rows)
        return self._mining

    def _train_epoch(self, opt: torch.optim.Optimizer) -> dict[str, float]:
        """One pass over the shuffled training rows; the mean loss and mean loss terms."""
        model, cfg = self.model, self.cfg
        tot, nb = 0.0, 0
        term_sums: dict[str, float] = {}
        for batch in self.data.iter_batches(
            self.train_rows, cfg.batch_size, self.normalizer, shuffle=True, generator=self.shuffle_generator
        ):
            if cfg.modality_drop > 0:
                keep = drop_modalities(batch.mask, cfg.modality_drop, self.drop_generator, unit=cfg.modality_drop_unit)
                batch = DroppedBatch.drop(batch, keep)
            batch = model.train_drop(batch, self.generator)
            out = model(batch)
            loss, terms = model.loss(batch, out)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"fold {self.fold} epoch {self.epoch}: non-finite loss {terms}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            model.after_backward(batch, out)
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            tot += float(loss.detach())
            nb += 1
            for k, v in terms.items():
                term_sums[k] = term_sums.get(k, 0.0) + float(v)
        return {"loss": tot / max(nb, 1), **{f"loss_{k}": v / max(nb, 1) for k, v in term_sums.items()}}

    def _validate(self) -> dict[str, float]:
        """Validation AUROC, Brier score and loss (the task's cross-entropy) of the current model."""
        vp = predict_probs(self.model, self.data, self.val_rows, self.normalizer, self.cfg.eval_batch_size)
        yv = self.data.labels_numpy(self.val_rows)
        kind = self.data.task_kind
        some = len(self.val_rows) > 0
        return {
            "val_auroc": metrics.auroc(yv, vp, kind),
            "val_brier": metrics.brier(yv, vp, kind) if some else math.nan,
            "val_loss": metrics.log_loss(yv, vp, kind) if some else math.nan,
        }

    def _score(self, val: dict[str, float]) -> float:
        """The model-selection score of a validation (higher is better): ``-val_loss`` (``selection="loss"``),
        or the validation AUROC (``"auroc"``; the Brier score where AUROC is undefined)."""
        if self.cfg.selection == "loss":
            return -val["val_loss"]
        return val["val_auroc"] if not math.isnan(val["val_auroc"]) else -val["val_brier"]

    def fit(self) -> tuple[int, float]:
        """Train with early stopping on the validation score (:meth:`_score`: the validation loss by default);
        restores the best weights. Model selection and patience start at the method's
        ``selection_start_epoch``. A best epoch that is the last one allowed is logged as a warning and kept in
        ``best_is_last``. Returns (best epoch, its validation AUROC)."""
        cfg, model = self.cfg, self.model
        opt = model.configure_optimizer(cfg.lr, cfg.weight_decay)
        model.on_train_start(self)
        for cb in self.callbacks:
            cb.on_train_start(self)
        best_score, best_auroc, best_epoch, bad = -math.inf, math.nan, -1, 0
        best_state: dict[str, torch.Tensor] | None = None
        start = min(model.selection_start_epoch, max(cfg.epochs - 1, 0))
        task = self.progress.add_task(f"fold {self.fold}", total=cfg.epochs, info="") if self.progress else None
        for epoch in range(cfg.epochs):
            self.epoch = epoch
            model.train()
            model.on_epoch_start(self, epoch)
            t0 = time.perf_counter()
            rec: dict[str, Any] = {"epoch": epoch, **self._train_epoch(opt)}
            model.on_epoch_end(self, epoch)
            for cb in self.callbacks:
                cb.on_epoch_end(self, epoch)
            val = self._validate()
            val_auroc = val["val_auroc"]
            rec.update(**val, seconds=time.perf_counter() - t0)
            self.history.append(rec)
            if task is not None:
                self.progress.update(task, advance=1, info=f"loss {rec['loss']:.4f}  val AUROC {val_auroc:.4f}")
            if epoch < start:
                continue  # e.g. mdrop's contrastive stage: the classifier is not trained yet, nothing to select
            score = self._score(val)
            if score > best_score + 1e-6:
                best_score, best_auroc, best_epoch, bad = score, val_auroc, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad += 1
                if bad >= cfg.patience:
                    break
        if best_state is not None:
            model.load_state_dict(best_state)
        else:
            log.warning(
                "fold %d: no epoch could be selected (no validation row with a defined score): the last "
                "epoch's weights are kept",
                self.fold,
            )
        self.best_epoch, self.best_val_auroc = best_epoch, best_auroc
        self.best_is_last = best_epoch == cfg.epochs - 1 and cfg.epochs > 1
        if self.best_is_last:
            log.warning(
                "fold %d: the best epoch is the last one allowed (%d): the model may be undertrained; "
                "consider more --epochs",
                self.fold,
                best_epoch,
            )
        if task is not None:
            self.progress.update(task, completed=cfg.epochs)
        return best_epoch, best_auroc
