"""Contrastive modality dropout (omnifuse.fuse.methods.mdrop): the training drops per stage, the contrastive
losses on hand-computed batches, the SigLIP initialisation and the view pairs, the memory bank, the two
stages swapping heads, and learning end to end."""

from __future__ import annotations

import math

import pytest
import torch

from omnifuse.fuse.base import ModelInfo
from omnifuse.fuse.methods import build_method
from omnifuse.fuse.methods.mdrop import info_nce, sigmoid_contrastive
from tests.helpers import TWO, FakeTrainer, assert_learns, sigmoid, vector_batch

Q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
K = torch.tensor([[1.0, 0.0], [0.6, 0.8]])


def test_mdrop_train_drop_by_stage() -> None:
    torch.manual_seed(0)
    model = build_method("mdrop", ModelInfo(TWO, "binary", 1), d=8, heads=2, drop_prob=1.0, contrastive_epochs=2)
    batch = vector_batch(torch.ones(10, 2, dtype=torch.bool), torch.zeros(10, 1))
    model.on_epoch_start(FakeTrainer(), 0)
    assert model.train_drop(batch) is batch  # contrastive stage: all views kept
    model.on_epoch_start(FakeTrainer(), 2)
    b = model.train_drop(batch, torch.Generator().manual_seed(0))
    assert torch.equal(b.mask.sum(1), torch.ones(10, dtype=torch.long))
    for j, n in enumerate(("a", "b")):
        assert (b.x[n][~b.mask[:, j]] == 0).all()


def test_info_nce_hand_computed() -> None:
    # logits = 2 * Q K^T = [[2, 1.2], [0, 1.6]]
    row0 = -math.log(math.exp(2) / (math.exp(2) + math.exp(1.2)))
    row1 = -math.log(math.exp(1.6) / (math.exp(0) + math.exp(1.6)))
    assert float(info_nce(Q, K, 2.0)) == pytest.approx((row0 + row1) / 2, rel=1e-6)
    # label-aware, supervised-contrastive form: both keys positive for anchor 0 -> mean of its two
    # log-probabilities (the authors' form: tests/fuse/methods/test_mdrop_fidelity.py)
    pos = torch.tensor([[True, True], [False, True]])
    lp01 = math.log(math.exp(1.2) / (math.exp(2) + math.exp(1.2)))
    assert float(info_nce(Q, K, 2.0, pos, form="supcon")) == pytest.approx(
        (-(math.log(math.exp(2) / (math.exp(2) + math.exp(1.2))) + lp01) / 2 + row1) / 2, rel=1e-6
    )
    # an invalid key leaves the softmax
    valid = torch.tensor([[True, False], [True, True]])
    assert float(info_nce(Q, K, 2.0, valid=valid)) == pytest.approx((0.0 + row1) / 2, abs=1e-6)


def test_sigmoid_contrastive_hand_computed() -> None:
    # logits = 2 * Q K^T - 1 = [[1, 0.2], [-1, 0.6]]; +1 on the diagonal, -1 elsewhere
    def ls(x: float) -> float:
        return math.log(sigmoid(x))

    want = -(ls(1.0) + ls(-0.2) + ls(1.0) + ls(0.6)) / 4  # averaged over all pairs
    assert float(sigmoid_contrastive(Q, K, 2.0, -1.0)) == pytest.approx(want, rel=1e-6)
    valid = torch.tensor([[True, False], [True, True]])
    assert float(sigmoid_contrastive(Q, K, 2.0, -1.0, valid=valid)) == pytest.approx(
        -(ls(1.0) + ls(1.0) + ls(0.6)) / 3, rel=1e-6
    )


def test_mdrop_sigmoid_init_and_pairs_on_a_batch() -> None:
    torch.manual_seed(0)
    info = ModelInfo(TWO, "binary", 1)
    sig = build_method("mdrop", info, d=8, heads=2, loss="sigmoid")
    assert float(sig.logit_scale.detach().exp()) == pytest.approx(10.0)
    assert float(sig.logit_bias.detach()) == pytest.approx(-10.0)
    model = build_method("mdrop", info, d=8, heads=2, dropout=0.0, temperature=0.5)
    mask = torch.tensor([[True, True], [True, True], [True, True], [True, False], [False, True]])
    batch = vector_batch(mask, torch.zeros(5, 1))
    model.train()
    out = model(batch)
    loss, terms = model.loss(batch, out)
    assert model.stage == "contrastive" and set(terms) == {"contrastive"}
    Z = model.project(out)  # views a, b, fused
    rows = torch.tensor([0, 1, 2])  # the rows holding both modalities; rows 3 and 4 make no pair
    scale = 2.0  # 1 / temperature

    def sym(a: int, b: int) -> torch.Tensor:
        return 0.5 * (info_nce(Z[a][rows], Z[b][rows], scale) + info_nce(Z[b][rows], Z[a][rows], scale))

    want = (sym(0, 1) + sym(0, 2) + sym(1, 2)) / 3
    torch.testing.assert_close(loss, want)


def test_mdrop_memory_bank_fifo_and_same_row_exclusion() -> None:
    torch.manual_seed(0)
    model = build_method("mdrop", ModelInfo(TWO, "binary", 1), d=8, heads=2, memory_bank=4)
    model.train()
    b1 = vector_batch(torch.ones(3, 2, dtype=torch.bool), torch.zeros(3, 1), index=torch.tensor([10, 11, 12]))
    model.loss(b1, model(b1))
    assert model.bank_idx[0].tolist() == [10, 11, 12, -1]
    b2 = vector_batch(torch.tensor([[True, True], [True, False]]), torch.zeros(2, 1), index=torch.tensor([11, 20]))
    keys = model._bank_keys(0, b2.index, b2.y, b2.y_mask)
    assert keys is not None
    # the bank starts with random keys (no patient: index -1); row 11's stale key is left out
    assert keys[1].tolist() == [[True, False, True, True], [True, True, True, True]]
    model.loss(b2, model(b2))
    assert model.bank_idx[0].tolist() == [20, 11, 12, 11]  # wrapped: rows 11, 20 of view a
    assert model.bank_idx[1].tolist() == [10, 11, 12, 11]  # view b: row 11 only, at the next free slot


def test_mdrop_two_stages_swap_heads() -> None:
    torch.manual_seed(0)
    info = ModelInfo(TWO, "multiclass", 3)
    model = build_method("mdrop", info, d=8, heads=2, contrastive_epochs=2)
    assert model.selection_start_epoch == 2
    batch = vector_batch(torch.ones(6, 2, dtype=torch.bool), torch.arange(6) % 3)
    model.train()
    for epoch, stage in ((0, "contrastive"), (1, "contrastive"), (2, "supervised"), (7, "supervised")):
        model.on_epoch_start(FakeTrainer(), epoch)
        assert model.stage == stage
        model.zero_grad(set_to_none=True)
        loss, terms = model.loss(batch, model(batch))
        loss.backward()
        proj = any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.proj_head.parameters())
        cls = any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.cls_head.parameters())
        assert (proj, cls) == ((True, False) if stage == "contrastive" else (False, True))
        if stage == "supervised":
            assert {"fused", "unimodal"} <= set(terms)
    joint = build_method("mdrop", info, d=8, heads=2, mode="joint")
    assert joint.stage == "joint" and joint.selection_start_epoch == 0
    assert {"contrastive", "fused"} <= set(joint.loss(batch, joint(batch))[1])
    single = build_method("mdrop", ModelInfo(TWO[:1], "binary", 1), d=8, heads=2)
    assert single.stage == "supervised" and single.selection_start_epoch == 0


def test_learns_with_the_trainer() -> None:
    assert_learns("mdrop", {"heads": 2, "ff": 32, "proj_dim": 16, "contrastive_epochs": 2})
