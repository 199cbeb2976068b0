"""Gradient-Blending (omnifuse.fuse.methods.gblend): the blending weights from two checkpoints' losses, the
held-out training rows, re-estimation on schedule (exact on mining batches, running means without them),
and learning end to end."""

from __future__ import annotations

import torch

from omnifuse.fuse.base import Batch, ModelInfo
from omnifuse.fuse.methods import build_method
from omnifuse.fuse.methods.gblend import gblend_weights, heldout_rows
from tests.helpers import TWO, FakeTrainer, assert_learns, vector_batch


def test_gblend_weights_from_given_losses() -> None:
    prev = torch.tensor([[0.7, 0.7, 0.7], [0.7, 0.7, 0.7]], dtype=torch.float64)
    now = torch.tensor([[0.5, 0.6, 0.4], [0.6, 0.65, 0.68]], dtype=torch.float64)
    w, G, O_ = gblend_weights(prev, now, eps=0.0)
    torch.testing.assert_close(G, torch.tensor([0.1, 0.05, 0.02], dtype=torch.float64))
    torch.testing.assert_close(O_, torch.tensor([0.1, 0.05, 0.28], dtype=torch.float64))
    raw = [0.1 / 0.1**2, 0.05 / 0.05**2, 0.02 / 0.28**2]
    torch.testing.assert_close(w, torch.tensor([r / sum(raw) for r in raw], dtype=torch.float64))
    # a head whose held-out loss rose gets 0; a head without rows (NaN) gets 0
    now2 = torch.tensor([[0.5, 0.6, float("nan")], [0.8, 0.65, float("nan")]], dtype=torch.float64)
    w2, _, _ = gblend_weights(prev, now2, eps=0.0)
    torch.testing.assert_close(w2, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    # nobody generalised: no new weights
    assert gblend_weights(prev, torch.tensor([[0.5] * 3, [0.9] * 3]))[0] is None


def test_gblend_heldout_rows_are_stable_and_excluded_from_training_loss() -> None:
    idx = torch.arange(20000)
    h = heldout_rows(idx, 0.2)
    assert abs(float(h.float().mean()) - 0.2) < 0.01
    assert torch.equal(h, heldout_rows(idx, 0.2))
    assert not torch.equal(h, heldout_rows(idx, 0.2, seed=1))
    torch.manual_seed(0)
    model = build_method("gblend", ModelInfo(TWO, "binary", 1), d=8, hidden=8, dropout=0.0, encoder={"dropout": 0.0})
    batch = vector_batch(torch.ones(40, 2, dtype=torch.bool), (torch.arange(40) % 2).float().view(-1, 1))
    held = heldout_rows(batch.index, 0.2)
    assert 0 < int(held.sum()) < 40
    flipped = Batch(
        x=batch.x,
        mask=batch.mask,
        y=torch.where(held.view(-1, 1), 1 - batch.y, batch.y),
        y_mask=batch.y_mask,
        index=batch.index,
    )
    model.train()
    l1 = model.loss(batch, model(batch))[0]
    l2 = model.loss(flipped, model(flipped))[0]
    torch.testing.assert_close(l1, l2)  # held-out labels never reach the training loss
    model.eval()
    assert not torch.allclose(model.loss(batch, model(batch))[0], model.loss(flipped, model(flipped))[0])


def test_gblend_reestimates_weights_on_schedule() -> None:
    torch.manual_seed(0)
    info = ModelInfo(TWO, "binary", 1)
    model = build_method("gblend", info, d=8, hidden=8, every=2, eps=1e-4)
    g = torch.Generator().manual_seed(0)
    batches = []
    for i in range(3):
        xa = torch.randn(40, 6, generator=g)
        y = (xa[:, 0] > 0).float().view(-1, 1)
        batches.append(
            Batch(
                x={"a": xa, "b": torch.randn(40, 6, generator=g)},
                mask=torch.ones(40, 2, dtype=torch.bool),
                y=y,
                y_mask=torch.ones(40, dtype=torch.bool),
                index=torch.arange(40 * i, 40 * i + 40),
            )
        )
    trainer = FakeTrainer(batches)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    model.on_train_start(trainer)
    start = model.checkpoint_losses(trainer)
    torch.testing.assert_close(model._prev, start)
    weights = [model.weights.clone()]
    for epoch in range(4):
        model.on_epoch_start(trainer, epoch)
        model.train()
        for b in batches:
            out = model(b)
            loss, _ = model.loss(b, out)
            opt.zero_grad()
            loss.backward()
            opt.step()
        before = model._prev.clone()
        model.on_epoch_end(trainer, epoch)
        if epoch % 2 == 0:  # every=2: epochs 0 and 2 change nothing
            torch.testing.assert_close(model.weights, weights[-1])
        else:
            now = model.checkpoint_losses(trainer)
            w, _, _ = gblend_weights(before, now, 1e-4)
            if w is not None:
                torch.testing.assert_close(model.weights, w.to(model.weights))
            assert model.history[-1]["source"] == "exact"
        weights.append(model.weights.clone())
    assert abs(float(model.weights.sum()) - 1.0) < 1e-6
    assert len(model.history) == 2


def test_gblend_running_fallback_without_mining_rows() -> None:
    """A run with no mining rows (``mining_rows=0``): checkpoints use the running means of the epoch's
    training losses."""
    torch.manual_seed(0)
    model = build_method("gblend", ModelInfo(TWO, "multiclass", 3), d=8, hidden=8)
    batch = vector_batch(torch.ones(30, 2, dtype=torch.bool), torch.arange(30) % 3)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    trainer = FakeTrainer([])
    model.on_train_start(trainer)
    assert model._prev is None
    for epoch in range(2):
        model.on_epoch_start(trainer, epoch)
        model.train()
        for _ in range(3):
            loss, _ = model.loss(batch, model(batch))
            opt.zero_grad()
            loss.backward()
            opt.step()
        run = model.running_losses()
        assert torch.isfinite(run).all()  # both parts had rows
        model.on_epoch_end(trainer, epoch)
        torch.testing.assert_close(model._prev, run)
    assert model.history and model.history[0]["source"] == "running"
    assert abs(float(model.weights.sum()) - 1.0) < 1e-6


def test_learns_with_the_trainer() -> None:
    assert_learns("gblend", {})
