"""One fold's training loop (omnifuse.fuse.trainer): model selection and early stopping (on the validation loss
or AUROC, the best epoch's weights restored, the method's ``selection_start_epoch``, the Brier fallback, a best
last epoch flagged), the order of the method's hooks and the callbacks, non-finite losses, the method's own
optimiser, the shared batch order and modality drop, the mining batches, reproducibility, and the
evaluation-mode forward pass.

Most tests use :class:`Scripted`, a method whose validation scores the test decides: its logits read the label,
and at the end of epoch e (after the optimiser steps, before validation) its one parameter is set to
``script[e]``, so w > 0 scores a validation AUROC of 1 and w < 0 one of 0, and the larger w the lower the
validation loss (every row's true-class probability is sigmoid(w)).
"""

from __future__ import annotations

import copy
import math
import random
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from omnifuse.fuse.base import Batch, DroppedBatch, FusionMethod, MethodOutput, ModelInfo, TrainerView
from omnifuse.fuse.config import TrainConfig, resolve_config
from omnifuse.fuse.data import FuseData, Normalizer, load_fuse_data
from omnifuse.fuse.methods import build_method
from omnifuse.fuse.trainer import Trainer, predict_probs, seed_everything
from tests.helpers import synthetic_cache_data

N_TRAIN = 80
BATCH = 32


@pytest.fixture(scope="module")
def data() -> FuseData:
    return load_fuse_data(synthetic_cache_data(n=130, seed=1), "mortality", device="cpu")


@pytest.fixture(scope="module")
def rows(data: FuseData) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows): labelled rows, the validation ones holding both classes."""
    labelled = np.flatnonzero(data.y_mask.numpy())
    tr, va = labelled[:N_TRAIN], labelled[N_TRAIN:]
    assert len(set(data.labels_numpy(va)[:, 0].tolist())) == 2
    return tr, va


@pytest.fixture(scope="module")
def norm(data: FuseData, rows: tuple[np.ndarray, np.ndarray]) -> Normalizer:
    return Normalizer.fit(data, rows[0])


def _cfg(**kw: Any) -> TrainConfig:
    base = {
        "task": "mortality",
        "epochs": 3,
        "batch_size": BATCH,
        "patience": 10,
        "mining_rows": 16,
        "lr": 1e-2,
        "progress": False,
        "device": "cpu",
    }
    return resolve_config(None, **{**base, **kw})


class Scripted(FusionMethod):
    """Logits ``w * (2 y - 1)`` [B, 1] (binary task); ``w`` set to ``script[epoch]`` at each epoch's end (kept
    as trained where ``script`` is None). The loss ``mean((logits - 1)^2)`` becomes NaN from epoch ``nan_from``.
    Its hooks append to ``log``; ``batches`` keeps what each training batch held (row indices, presence mask,
    whether the trainer's shared drop made it)."""

    def __init__(
        self,
        info: ModelInfo,
        script: list[float] | None = None,
        selection_start_epoch: int = 0,
        nan_from: int | None = None,
        log: list[tuple[Any, ...]] | None = None,
    ) -> None:
        super().__init__(info)
        self.w = nn.Parameter(torch.tensor(0.5))
        self.script = script
        self.selection_start_epoch = selection_start_epoch
        self.nan_from = nan_from
        self.log = log if log is not None else []
        self.batches: list[tuple[list[int], torch.Tensor, bool]] = []
        self.epoch = 0

    def forward(self, batch: Batch) -> MethodOutput:
        return MethodOutput(logits=self.w * (2 * batch.y[:, :1] - 1))

    def loss(self, batch: Batch, out: MethodOutput) -> tuple[torch.Tensor, dict[str, float]]:
        self.batches.append((batch.index.tolist(), batch.mask.clone(), isinstance(batch, DroppedBatch)))
        loss = (out.logits - 1).pow(2).mean()
        if self.nan_from is not None and self.epoch >= self.nan_from:
            loss = loss * math.nan
        return loss, {"fit": float(loss.detach())}

    def on_train_start(self, trainer: TrainerView) -> None:
        self.log.append(("method.on_train_start",))

    def on_epoch_start(self, trainer: TrainerView, epoch: int) -> None:
        self.epoch = epoch
        self.log.append(("method.on_epoch_start", epoch))

    def on_epoch_end(self, trainer: TrainerView, epoch: int) -> None:
        self.log.append(("method.on_epoch_end", epoch))
        if self.script is not None:
            with torch.no_grad():
                self.w.fill_(self.script[epoch])


def _scripted(data: FuseData, norm: Normalizer, **kw: Any) -> Scripted:
    return Scripted(data.model_info(norm), **kw)


def _trainer(
    model: FusionMethod,
    data: FuseData,
    rows: tuple[np.ndarray, np.ndarray],
    norm: Normalizer,
    seed: int = 0,
    fold: int = 0,
    callbacks: tuple[Any, ...] = (),
    **cfg: Any,
) -> Trainer:
    return Trainer(model, data, rows[0], rows[1], norm, _cfg(**cfg), seed=seed, fold=fold, callbacks=callbacks)


# ------------------------------------------------------------------------------------------------------
# model selection and early stopping
# ------------------------------------------------------------------------------------------------------
def test_early_stopping_restores_the_best_epochs_weights(data, rows, norm) -> None:
    model = _scripted(data, norm, script=[-1.0, 2.0, -3.0, -4.0, -5.0, -6.0])
    trainer = _trainer(model, data, rows, norm, epochs=6, patience=2)
    best_epoch, best_auroc = trainer.fit()
    assert (best_epoch, best_auroc) == (1, pytest.approx(1.0))
    # two epochs without a better score after epoch 1: stopped after epoch 3
    assert [h["val_auroc"] for h in trainer.history] == pytest.approx([0.0, 1.0, 0.0, 0.0])
    assert float(model.w.detach()) == 2.0  # epoch 1's weight, not the last epoch's (-4)


class StateRecorder:
    """Keeps a copy of the model's state at each epoch's end (the state the epoch is validated with)."""

    def __init__(self) -> None:
        self.states: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_start(self, trainer: Trainer) -> None:
        pass

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> None:
        self.states[epoch] = copy.deepcopy(trainer.model.state_dict())


class HeadBreaker:
    """From epoch ``start`` on, zeroes the head's weights at the epoch's end: constant predictions, validation
    AUROC 0.5, never better than a trained epoch."""

    def __init__(self, start: int) -> None:
        self.start = start

    def on_train_start(self, trainer: Trainer) -> None:
        pass

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> None:
        if epoch >= self.start:
            with torch.no_grad():
                for p in trainer.model.head.parameters():
                    p.zero_()


def test_a_real_method_gets_the_saved_state_of_its_best_epoch_back(data, rows, norm) -> None:
    torch.manual_seed(0)
    model = build_method("concat", data.model_info(norm), d=8, hidden=8)
    recorder = StateRecorder()
    trainer = _trainer(model, data, rows, norm, epochs=5, selection="auroc", callbacks=(HeadBreaker(3), recorder))
    best_epoch, best_auroc = trainer.fit()
    assert len(trainer.history) == 5 and best_epoch < 3 and best_auroc > 0.5
    assert best_auroc == max(h["val_auroc"] for h in trainer.history)
    best = recorder.states[best_epoch]
    for name, value in model.state_dict().items():
        assert torch.equal(value, best[name]), name
    last = recorder.states[4]
    assert not torch.equal(model.head[0].weight, last["head.0.weight"])  # the broken last state was replaced


@pytest.mark.parametrize("selection", ["loss", "auroc"])
def test_selection_starts_at_the_methods_selection_start_epoch(data, rows, norm, selection) -> None:
    script = [3.0, 1.0, 1.0, -1.0, 2.0, -1.0]  # epoch 0 the best of all, epoch 4 the best from epoch 3 on
    model = _scripted(data, norm, script=script, selection_start_epoch=3)
    assert _trainer(model, data, rows, norm, epochs=6, selection=selection).fit()[0] == 4
    assert float(model.w.detach()) == 2.0
    assert _trainer(_scripted(data, norm, script=script), data, rows, norm, epochs=6, selection=selection).fit()[0] == 0
    # patience counts from there: the epochs before it never count as bad
    model = _scripted(data, norm, script=[-1.0] * 7, selection_start_epoch=3)
    trainer = _trainer(model, data, rows, norm, epochs=7, patience=1, selection=selection)
    assert trainer.fit()[0] == 3 and len(trainer.history) == 5
    # a start past the last epoch: the last epoch is selected
    model = _scripted(data, norm, script=[1.0, 3.0], selection_start_epoch=5)
    assert _trainer(model, data, rows, norm, epochs=2, selection=selection).fit()[0] == 1
    assert float(model.w.detach()) == 3.0


def test_a_two_stage_method_is_never_selected_before_its_classifier_trains(data, rows, norm) -> None:
    """mdrop with 3 contrastive epochs (``selection_start_epoch`` 3): the best epoch is 3 or later."""
    torch.manual_seed(0)
    model = build_method(
        "mdrop", data.model_info(norm), d=8, heads=2, ff=16, proj_dim=8, fusion_hidden=8, contrastive_epochs=3
    )
    assert model.selection_start_epoch == 3
    best_epoch, _ = _trainer(model, data, rows, norm, epochs=5).fit()
    assert best_epoch >= 3


def test_selection_falls_back_to_the_brier_score_without_auroc(data, rows, norm) -> None:
    """Validation rows of one class: AUROC undefined (NaN), the lowest Brier score wins."""
    negatives = rows[1][data.labels_numpy(rows[1])[:, 0] == 0]
    model = _scripted(data, norm, script=[1.0, 3.0, 2.0])  # y = 0: logit -w, the larger w the better
    trainer = Trainer(model, data, rows[0], negatives, norm, _cfg(epochs=3, selection="auroc"), seed=0)
    best_epoch, best_auroc = trainer.fit()
    assert best_epoch == 1 and math.isnan(best_auroc) and float(model.w.detach()) == 3.0
    assert all(math.isnan(h["val_auroc"]) for h in trainer.history)
    briers = [h["val_brier"] for h in trainer.history]
    assert briers[1] == min(briers) == pytest.approx(1 / (1 + math.exp(3.0)) ** 2)


def test_selection_on_the_validation_loss_by_default(data, rows, norm) -> None:
    """Every epoch scores a validation AUROC of 1; the loss tells them apart (AUROC selection keeps the first)."""
    assert TrainConfig().selection == "loss"
    model = _scripted(data, norm, script=[1.0, 3.0, 2.0])
    trainer = _trainer(model, data, rows, norm, epochs=3)
    assert trainer.fit() == (1, pytest.approx(1.0)) and float(model.w.detach()) == 3.0
    losses = [h["val_loss"] for h in trainer.history]
    assert losses == pytest.approx([-math.log(1 / (1 + math.exp(-w))) for w in (1.0, 3.0, 2.0)], rel=1e-4)
    assert [h["val_auroc"] for h in trainer.history] == pytest.approx([1.0, 1.0, 1.0])
    model = _scripted(data, norm, script=[1.0, 3.0, 2.0])
    assert _trainer(model, data, rows, norm, epochs=3, selection="auroc").fit()[0] == 0


def test_a_best_last_epoch_is_flagged(data, rows, norm, caplog) -> None:
    trainer = _trainer(_scripted(data, norm, script=[1.0, 2.0, 3.0]), data, rows, norm, epochs=3, fold=2)
    with caplog.at_level("WARNING", logger="omnifuse.fuse.trainer"):
        assert trainer.fit()[0] == 2
    assert trainer.best_is_last and (trainer.best_epoch, trainer.best_val_auroc) == (2, pytest.approx(1.0))
    assert "fold 2: the best epoch is the last one allowed (2)" in caplog.text
    caplog.clear()
    trainer = _trainer(_scripted(data, norm, script=[3.0, 2.0, 1.0]), data, rows, norm, epochs=3)
    with caplog.at_level("WARNING", logger="omnifuse.fuse.trainer"):
        assert trainer.fit()[0] == 0
    assert not trainer.best_is_last and "best epoch is the last" not in caplog.text


# ------------------------------------------------------------------------------------------------------
# hooks, callbacks, errors, the optimiser
# ------------------------------------------------------------------------------------------------------
class Recorder:
    """A callback appending ``(name.hook, epoch, epochs validated so far)`` to a shared log."""

    def __init__(self, name: str, log: list[tuple[Any, ...]]) -> None:
        self.name, self.log = name, log

    def on_train_start(self, trainer: Trainer) -> None:
        self.log.append((f"{self.name}.on_train_start",))

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> None:
        assert trainer.epoch == epoch
        self.log.append((f"{self.name}.on_epoch_end", epoch, len(trainer.history)))


def test_callbacks_are_called_once_at_the_start_and_once_per_epoch_in_order(data, rows, norm) -> None:
    log: list[tuple[Any, ...]] = []
    model = _scripted(data, norm, script=[1.0] * 3, log=log)
    _trainer(model, data, rows, norm, epochs=3, callbacks=(Recorder("cb1", log), Recorder("cb2", log))).fit()
    want: list[tuple[Any, ...]] = [("method.on_train_start",), ("cb1.on_train_start",), ("cb2.on_train_start",)]
    for e in range(3):
        # the method's epoch-end hook, then the callbacks in order, then validation (history grows after them)
        want += [
            ("method.on_epoch_start", e),
            ("method.on_epoch_end", e),
            ("cb1.on_epoch_end", e, e),
            ("cb2.on_epoch_end", e, e),
        ]
    assert log == want


def test_a_non_finite_loss_names_the_fold_and_epoch(data, rows, norm) -> None:
    model = _scripted(data, norm, script=[1.0] * 4, nan_from=2)
    trainer = _trainer(model, data, rows, norm, epochs=4, fold=3)
    with pytest.raises(FloatingPointError, match=r"^fold 3 epoch 2: non-finite loss \{'fit': nan\}"):
        trainer.fit()
    assert len(trainer.history) == 2


class SpySGD(torch.optim.SGD):
    """SGD counting its steps."""

    def __init__(self, params: Any, lr: float) -> None:
        super().__init__(params, lr=lr)
        self.steps = 0

    def step(self, closure: Any = None) -> Any:
        self.steps += 1
        return super().step(closure)


class WithSGD(Scripted):
    """:class:`Scripted` configuring its own optimiser (plain SGD at the run's learning rate), and drawing from
    the trainer's generator in its own training drop (which keeps the batch as it is)."""

    def train_drop(self, batch: Batch, generator: torch.Generator | None = None) -> Batch:
        torch.rand(3, generator=generator)
        return batch

    def configure_optimizer(self, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        self.asked = (lr, weight_decay)
        self.optimizer = SpySGD(self.parameters(), lr=lr)
        return self.optimizer


def test_the_methods_configured_optimizer_is_the_one_stepped(data, rows, norm) -> None:
    model = WithSGD(data.model_info(norm))  # no script: w moves only by the optimiser
    _trainer(model, data, rows, norm, epochs=2, lr=0.05, weight_decay=0.3).fit()
    assert model.asked == (0.05, 0.3)
    assert type(model.optimizer) is SpySGD
    assert model.optimizer.steps == 2 * math.ceil(N_TRAIN / BATCH)  # one step per training batch
    # SGD on mean((w s - 1)^2), s = +-1: w moved from its start 0.5 towards the labels' mean sign
    assert float(model.w.detach()) != 0.5


# ------------------------------------------------------------------------------------------------------
# what methods see of the trainer
# ------------------------------------------------------------------------------------------------------
def test_every_method_gets_the_same_batches_and_the_same_shared_drop(data, rows, norm) -> None:
    """The batch order and the shared modality drop come from the fold's seed alone (not from the method's own
    draws): two different methods see the same rows and masks; the drop only removes modalities."""
    a, b = _scripted(data, norm, script=[1.0, 2.0]), WithSGD(data.model_info(norm))
    _trainer(a, data, rows, norm, epochs=2, seed=4, modality_drop=0.5).fit()
    _trainer(b, data, rows, norm, epochs=2, seed=4, modality_drop=0.5).fit()
    assert len(a.batches) == 2 * math.ceil(N_TRAIN / BATCH)
    for (ia, ma, da), (ib, mb, db) in zip(a.batches, b.batches, strict=True):
        assert ia == ib and torch.equal(ma, mb) and da and db
        natural = data.mask[torch.tensor(ia)]
        assert not (ma & ~natural).any() and torch.equal(ma.any(1), natural.any(1))
    assert any(not torch.equal(m, data.mask[torch.tensor(i)]) for i, m, _ in a.batches)  # something was dropped
    assert sorted(sum((i for i, _, _ in a.batches[:3]), [])) == sorted(rows[0].tolist())  # epoch 0: every row once
    c = _scripted(data, norm, script=[1.0, 2.0])
    _trainer(c, data, rows, norm, epochs=2, seed=5, modality_drop=0.5).fit()
    assert [i for i, _, _ in c.batches] != [i for i, _, _ in a.batches]  # another seed, another order


def test_no_shared_drop_leaves_the_batches_as_they_are(data, rows, norm) -> None:
    model = _scripted(data, norm, script=[1.0])
    _trainer(model, data, rows, norm, epochs=1, modality_drop=0.0).fit()
    for index, mask, dropped in model.batches:
        assert not dropped and torch.equal(mask, data.mask[torch.tensor(index)])


@pytest.mark.parametrize("mining_rows", [0, 20, 1000])
def test_mining_batches_are_a_fixed_subset_of_the_training_rows(data, rows, norm, mining_rows) -> None:
    tr = rows[0]
    trainer = _trainer(_scripted(data, norm), data, rows, norm, seed=5, mining_rows=mining_rows, eval_batch_size=8)
    batches = trainer.mining_batches()
    assert trainer.mining_batches() is batches  # the same batches at every call
    idx = np.concatenate([b.index.numpy() for b in batches]) if batches else np.zeros(0, dtype=np.int64)
    n = min(mining_rows, len(tr))
    assert len(idx) == n and len(set(idx.tolist())) == n and set(idx.tolist()) <= set(tr.tolist())
    assert np.array_equal(idx, np.sort(idx)) and all(len(b.index) <= 8 for b in batches)
    for b in batches:  # evaluation batches: the data's presence, no drops
        assert torch.equal(b.mask, data.mask[b.index])
    # seeded by the run seed + 17 (the seed policy of omnifuse.fuse.fold)
    want = np.sort(np.random.default_rng(5 + 17).choice(tr, size=n, replace=False)) if n else tr[:0]
    assert np.array_equal(idx, want)
    if 0 < mining_rows < len(tr):
        other = _trainer(_scripted(data, norm), data, rows, norm, seed=6, mining_rows=mining_rows)
        assert not np.array_equal(other.mining_rows, trainer.mining_rows)


def test_record_keeps_values_per_key_in_order(data, rows, norm) -> None:
    trainer = _trainer(_scripted(data, norm), data, rows, norm)
    trainer.record("lazy", {"epoch": 0})
    trainer.record("lazy", {"epoch": 1})
    trainer.record("other", 3)
    assert trainer.records == {"lazy": [{"epoch": 0}, {"epoch": 1}], "other": [3]}


def _fit_omnifuse(data: FuseData, rows: tuple[np.ndarray, np.ndarray], norm: Normalizer, seed: int):
    seed_everything(seed)
    model = build_method("omnifuse", data.model_info(norm), d=8, K=2, cra_hidden=16, latent=4, head_hidden=8)
    trainer = _trainer(model, data, rows, norm, seed=seed, epochs=2)
    best = trainer.fit()
    history = [{k: v for k, v in h.items() if k != "seconds"} for h in trainer.history]
    return best, history, trainer.records, model.state_dict()


def test_the_same_seed_gives_the_same_history(data, rows, norm) -> None:
    a = _fit_omnifuse(data, rows, norm, 3)
    b = _fit_omnifuse(data, rows, norm, 3)
    c = _fit_omnifuse(data, rows, norm, 4)
    assert a[0] == b[0] and a[1] == b[1] and a[2] == b[2]
    assert all(torch.equal(v, b[3][k]) for k, v in a[3].items())
    assert a[1] != c[1]
    assert len(a[2]["lazy_combination"]) == 2  # OmniFuse's TLA recorded a combination per epoch


# ------------------------------------------------------------------------------------------------------
# the evaluation pass and the seeds
# ------------------------------------------------------------------------------------------------------
def test_predict_probs_in_batches_with_an_optional_mask(data, rows, norm) -> None:
    torch.manual_seed(0)
    model = build_method("concat", data.model_info(norm), d=8)
    model.train()
    va = rows[1]
    p = predict_probs(model, data, va, norm, batch_size=7)
    assert not model.training and p.shape == (len(va), 1) and p.dtype == np.float32
    with torch.no_grad():
        want = torch.sigmoid(model(data.batch(va, norm)).logits).numpy()
    np.testing.assert_allclose(p, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(predict_probs(model, data, va, norm, batch_size=1000), p, rtol=1e-5, atol=1e-6)
    # a mask removes modalities (here the first one everywhere)
    mask = torch.ones(len(va), len(data.modalities), dtype=torch.bool)
    mask[:, 0] = False
    pm = predict_probs(model, data, va, norm, batch_size=7, mask=mask)
    with torch.no_grad():
        want = torch.sigmoid(model(data.batch(va, norm, mask)).logits).numpy()
    np.testing.assert_allclose(pm, want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(pm, p)
    empty = predict_probs(model, data, va[:0], norm, batch_size=7)
    assert empty.shape == (0, 1) and empty.dtype == np.float32


def test_seed_everything_seeds_python_numpy_and_torch() -> None:
    def draw() -> tuple[float, float, float]:
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    seed_everything(11)
    a = draw()
    seed_everything(11)
    assert draw() == a
    seed_everything(12)
    assert draw() != a
