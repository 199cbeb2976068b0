"""PMR's prototypes as its authors compute them (omnifuse.fuse.methods.pmr; github
fanyunfeng-bit/Modal-Imbalance-PMR, main_Prototype_grad.py, ``calculate_prototype``): per epoch, in eval
mode without gradient, class means mixed with the previous epoch's (momentum 0.2 on the old)."""

from __future__ import annotations

import torch

from omnifuse.fuse.base import ModelInfo
from omnifuse.fuse.methods import build_method
from tests.helpers import TWO, FakeTrainer, vector_batch


def _means(model, batch, y):
    model.eval()
    with torch.no_grad():
        U = model(batch).extra["embeddings"]
    return torch.stack([torch.stack([U[y == k, m].mean(0) for k in range(3)]) for m in range(2)])  # [M, K, d]


def test_prototypes_are_recomputed_each_epoch_in_eval_mode_with_momentum() -> None:
    torch.manual_seed(0)
    model = build_method("pmr", ModelInfo(TWO, "multiclass", 3), d=4, dropout=0.5, encoder={"dropout": 0.5})
    assert model.proto_mode == "epoch" and model.momentum == 0.2
    y = torch.arange(12) % 3
    batch = vector_batch(torch.ones(12, 2, dtype=torch.bool), y)
    trainer = FakeTrainer([batch])
    model.train()
    model.on_epoch_start(trainer, 0)
    assert model.training  # the mode is restored
    first = _means(model, batch, y)  # eval mode: dropout off, so these are exact
    torch.testing.assert_close(model.protos[:, 0], first)
    with torch.no_grad():  # training moves the encoders
        for p in model.enc.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.train()
    model.on_epoch_start(trainer, 1)
    second = _means(model, batch, y)
    torch.testing.assert_close(model.protos[:, 0], 0.2 * first + 0.8 * second)
    # no update from the training batches within an epoch
    before = model.protos.clone()
    model.train()
    model.loss(batch, model(batch))
    torch.testing.assert_close(model.protos, before)
