"""mdrop as its authors wrote it (omnifuse.fuse.methods.mdrop; their networks/tnf.py and
losses/contrastive_loss.py): the label-aware InfoNCE normalised by the number of positives and the SigLIP
loss averaged over all pairs, by hand on tiny tensors (memory keys included); the MLP fusion over
per-modality LayerNorm; the zero-initialised empty token in the input feature space; the linear projection
head; the memory bank of random vectors; the trainer's drop defining the views."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from omnifuse.fuse.base import DroppedBatch, ModelInfo
from omnifuse.fuse.methods import build_method
from omnifuse.fuse.methods.mdrop import MLPFusor, info_nce, sigmoid_contrastive
from tests.helpers import TWO, FakeTrainer, vector_batch

Q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
K = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
MEM = torch.tensor([[0.0, 1.0]])  # one memory key


def _ce(logits: list[float], target: int) -> float:
    return -math.log(math.exp(logits[target]) / sum(math.exp(x) for x in logits))


def _ls(x: float) -> float:
    return math.log(1.0 / (1.0 + math.exp(-x)))


def test_label_aware_infonce_is_the_cross_entropy_divided_by_the_number_of_positives() -> None:
    # logits = 2 Q K^T = [[2, 1.2], [0, 1.6]]; anchor 0 has two positives (its own view, a same-label row)
    pos = torch.tensor([[True, True], [False, True]])
    want = (_ce([2.0, 1.2], 0) / 2 + _ce([0.0, 1.6], 1) / 1) / 2
    assert float(info_nce(Q, K, 2.0, pos)) == pytest.approx(want, rel=1e-6)
    # without labels: the plain cross-entropy towards the own view
    assert float(info_nce(Q, K, 2.0)) == pytest.approx((_ce([2.0, 1.2], 0) + _ce([0.0, 1.6], 1)) / 2, rel=1e-6)
    # a memory key: in every softmax; a positive of anchor 0 (same label) adds to its count only
    keys = torch.cat([K, MEM])  # logits [[2, 1.2, 0], [0, 1.6, 2]]
    pos = torch.tensor([[True, True, True], [False, True, False]])
    want = (_ce([2.0, 1.2, 0.0], 0) / 3 + _ce([0.0, 1.6, 2.0], 1) / 1) / 2
    assert float(info_nce(Q, keys, 2.0, pos)) == pytest.approx(want, rel=1e-6)


def test_siglip_is_averaged_over_all_pairs_with_label_positives_and_memory_keys() -> None:
    keys = torch.cat([K, MEM])  # logits 2 Q K^T - 1 = [[1, 0.2, -1], [-1, 0.6, 1]]
    pos = torch.tensor([[True, True, True], [False, True, False]])
    want = -(_ls(1.0) + _ls(0.2) + _ls(-1.0) + _ls(1.0) + _ls(0.6) + _ls(-1.0)) / 6
    got = sigmoid_contrastive(Q, keys, 2.0, -1.0, pos)
    assert float(got) == pytest.approx(want, rel=1e-6)
    # the same as binary cross-entropy against the positive mask, averaged (their criterion "bce")
    bce = F.binary_cross_entropy_with_logits(2.0 * Q @ keys.T - 1.0, pos.float())
    torch.testing.assert_close(got, bce)


def test_both_losses_start_at_scale_10_and_the_siglip_bias_at_minus_10() -> None:
    info = ModelInfo(TWO, "binary", 1)
    for loss in ("infonce", "sigmoid"):
        model = build_method("mdrop", info, d=8, loss=loss)
        assert float(model.logit_scale.detach().exp()) == pytest.approx(10.0)
    assert float(build_method("mdrop", info, d=8, loss="sigmoid").logit_bias.detach()) == pytest.approx(-10.0)


def test_the_default_fusion_is_an_mlp_over_per_modality_layernorm() -> None:
    torch.manual_seed(0)
    model = build_method("mdrop", ModelInfo(TWO, "binary", 1), d=8).eval()
    assert isinstance(model.fusor, MLPFusor) and len(model.fusor.norms) == 2
    assert model.cls_head.in_features == 8  # round(M d / 2), their width
    x = torch.randn(5, 2, 8)
    r = model.fusor(x)
    # one LayerNorm per modality: each slot's own scale and offset do not matter
    moved = torch.stack([5.0 * x[:, 0] + 3.0, 0.5 * x[:, 1] - 1.0], 1)
    torch.testing.assert_close(model.fusor(moved), r, rtol=1e-3, atol=1e-3)  # up to LayerNorm's eps
    # and the output is LayerNorm, ReLU, (dropout), Linear of the concatenation
    cat = torch.cat([model.fusor.norms[0](x[:, 0]), model.fusor.norms[1](x[:, 1])], -1)
    torch.testing.assert_close(r, model.fusor.net[3](torch.relu(model.fusor.net[0](cat))))
    trans = build_method("mdrop", ModelInfo(TWO, "binary", 1), d=8, heads=2, fusion="transformer")
    assert not isinstance(trans.fusor, MLPFusor)


def test_the_empty_token_starts_at_zero_in_the_input_space_and_learns() -> None:
    torch.manual_seed(0)
    model = build_method("mdrop", ModelInfo(TWO, "binary", 1), d=8, mode="supervised").eval()
    tokens = list(model.empty.tokens)
    assert [tuple(t.shape) for t in tokens] == [(6,), (6,)]  # the cached features' shape
    assert all(float(t.detach().abs().sum()) == 0.0 and t.requires_grad for t in tokens)
    batch = vector_batch(torch.tensor([[True, False], [True, True]]), torch.zeros(2, 1))
    _, fill = model.slots(batch)
    # at zero, a missing slot reads the encoder's output for a zero input
    for j in range(2):
        torch.testing.assert_close(fill[j], model.enc.encoders[j](torch.zeros(1, 6))[0])
    model.train()
    loss, _ = model.loss(batch, model(batch))
    loss.backward()
    assert float(tokens[1].grad.abs().sum()) > 0  # b is missing in row 0: its token learns
    fixed = build_method("mdrop", ModelInfo(TWO, "binary", 1), d=8, empty="zero")
    assert not any(t.requires_grad for t in fixed.empty.tokens)
    assert [
        tuple(t.shape)
        for t in build_method("mdrop", ModelInfo(TWO, "binary", 1), d=8, token_space="embedding").empty.tokens
    ] == [(8,), (8,)]


def test_the_projection_head_is_linear() -> None:
    torch.manual_seed(0)
    model = build_method("mdrop", ModelInfo(TWO, "binary", 1), d=8)
    a, b = torch.randn(3, 8), torch.randn(3, 8)
    p = model.proj_head
    torch.testing.assert_close(p(a + b) + p(torch.zeros(3, 8)), p(a) + p(b), rtol=1e-5, atol=1e-5)
    assert sum(isinstance(m, torch.nn.Linear) for m in p.modules()) == 2
    one = build_method("mdrop", ModelInfo(TWO, "binary", 1), d=8, proj_layers=1).proj_head
    assert isinstance(one, torch.nn.Linear)


def test_the_memory_bank_starts_with_random_keys_that_take_part_at_once() -> None:
    torch.manual_seed(0)
    model = build_method("mdrop", ModelInfo(TWO, "binary", 1), d=8, memory_bank=64, dropout=0.0)
    z = model.bank_z
    assert z.shape == (3, 64, 64) and 0.8 < float(z.std()) < 1.2 and (model.bank_idx == -1).all()
    assert not model.bank_ymask.any()  # no label: never a positive
    torch.manual_seed(1)
    plain = build_method("mdrop", ModelInfo(TWO, "binary", 1), d=8, dropout=0.0)
    plain.load_state_dict(model.state_dict())
    batch = vector_batch(torch.ones(6, 2, dtype=torch.bool), torch.zeros(6, 1))
    model.eval(), plain.eval()
    with torch.no_grad():
        assert float(model.loss(batch, model(batch))[0]) > float(plain.loss(batch, plain(batch))[0])


def test_the_trainers_drop_is_used_as_it_is_and_defines_the_views() -> None:
    torch.manual_seed(0)
    model = build_method("mdrop", ModelInfo(TWO, "binary", 1), d=8, drop_prob=1.0, contrastive_epochs=0)
    model.on_epoch_start(FakeTrainer(), 0)
    assert model.stage == "supervised"
    batch = vector_batch(torch.ones(4, 2, dtype=torch.bool), torch.zeros(4, 1))
    db = DroppedBatch.drop(batch, torch.tensor([[True, False], [True, True], [False, True], [True, True]]))
    assert model.train_drop(db, torch.Generator().manual_seed(0)) is db
    out = model(db)
    torch.testing.assert_close(out.extra["avail"], model.view_masks(db.mask).any(-1))
    assert out.extra["distinct"].tolist() == [False, True, False, True]
    own = model.train_drop(batch, torch.Generator().manual_seed(0))  # the shared drop off: its own
    assert isinstance(own, DroppedBatch) and (own.mask.sum(1) == 1).all()
