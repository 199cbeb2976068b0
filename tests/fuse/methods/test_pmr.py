"""PMR (omnifuse.fuse.methods.pmr): prototype logits, prototypes as epoch means and as an EMA (and the EMA
fallback without mining rows), the rebalancing loss by hand, and learning end to end."""

from __future__ import annotations

import math

import pytest
import torch

from omnifuse.fuse.base import MethodOutput, ModelInfo
from omnifuse.fuse.methods import build_method
from omnifuse.fuse.methods.pmr import prototype_logits
from tests.helpers import TWO, FakeTrainer, assert_learns, vector_batch


def test_prototype_logits_are_negative_distances() -> None:
    u = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    protos = torch.tensor([[[0.0, 0.0], [3.0, 0.0]]])  # G = 1, K = 2
    z = prototype_logits(u, protos, temperature=2.0)
    torch.testing.assert_close(z, torch.tensor([[[0.0, -1.5]], [[-2.5, -2.0]]]), atol=1e-5, rtol=0)


def test_pmr_prototypes_epoch_means_and_ema() -> None:
    torch.manual_seed(0)
    info = ModelInfo(TWO, "multiclass", 3)
    model = build_method("pmr", info, d=4, prototypes="epoch", momentum=0.5)
    mask = torch.tensor([[True, True]] * 5 + [[True, False]] * 3)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    batch = vector_batch(mask, y)
    model.on_epoch_start(FakeTrainer([batch]), 0)
    model.eval()
    with torch.no_grad():
        U = model(batch).extra["embeddings"]
    for m in range(2):
        for k in range(3):
            rows = (y == k) & mask[:, m]
            torch.testing.assert_close(model.protos[m, 0, k], U[rows, m].mean(0))
    assert model.seen.all()

    # EMA: the first sighting sets the prototype, the next mixes with momentum; absent classes keep theirs
    ema = build_method("pmr", ModelInfo(TWO, "multilabel", 2), d=2, momentum=0.5)
    U1 = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[3.0, 0.0], [0.0, 3.0]]])  # [B=2, M=2, d=2]
    yb = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b1 = vector_batch(torch.ones(2, 2, dtype=torch.bool), yb)
    ema.update_prototypes_ema(U1, b1)
    # label 0: both rows positive -> positive prototype = mean; no negative seen yet
    torch.testing.assert_close(ema.protos[0, 0, 1], torch.tensor([2.0, 0.0]))
    assert not bool(ema.seen[0, 0, 0])
    # label 1: row 0 negative, row 1 positive
    torch.testing.assert_close(ema.protos[1, 1, 0], torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(ema.protos[1, 1, 1], torch.tensor([0.0, 3.0]))
    U2 = torch.tensor([[[5.0, 0.0], [0.0, 5.0]]])
    b2 = vector_batch(torch.ones(1, 2, dtype=torch.bool), torch.tensor([[1.0, 0.0]]))
    ema.update_prototypes_ema(U2, b2)
    torch.testing.assert_close(ema.protos[0, 0, 1], torch.tensor([3.5, 0.0]))  # 0.5 * 2 + 0.5 * 5
    torch.testing.assert_close(ema.protos[1, 1, 0], torch.tensor([0.0, 3.0]))  # 0.5 * 1 + 0.5 * 5
    torch.testing.assert_close(ema.protos[1, 1, 1], torch.tensor([0.0, 3.0]))  # not in batch 2: kept
    torch.testing.assert_close(ema.protos[0, 0, 0], torch.tensor([0.0, 0.0]))
    assert bool(ema.seen[0, 0, 0]) is False


def test_pmr_epoch_prototypes_fall_back_to_ema_without_mining_rows() -> None:
    torch.manual_seed(0)
    model = build_method("pmr", ModelInfo(TWO, "multiclass", 3), d=4, prototypes="epoch")
    batch = vector_batch(torch.ones(6, 2, dtype=torch.bool), torch.arange(6) % 3)
    model.on_epoch_start(FakeTrainer([]), 0)  # mining_rows=0: nothing to average over
    assert not model.seen.any()
    model.train()
    model.loss(batch, model(batch))  # the training batch sets the prototypes (EMA, first sighting)
    assert model.seen.all()
    model.on_epoch_start(FakeTrainer([batch]), 1)  # with mining batches: exact means, no EMA in the epoch
    before = model.protos.clone()
    model.loss(batch, model(batch))
    torch.testing.assert_close(model.protos, before)


def test_pmr_rebalancing_loss_by_hand() -> None:
    """Modality a sits on its class prototypes (dominant), b halfway between them (slow): the loss is
    CE + alpha * PCE_b - mu * H_a in the first epochs and CE + alpha * PCE_b afterwards."""
    info = ModelInfo(TWO, "multiclass", 2)
    model = build_method("pmr", info, d=2, alpha=0.7, mu=0.3, entropy_epochs=2, dropout=0.0)
    with torch.no_grad():
        model.protos[:, 0, 0] = torch.tensor([0.0, 0.0])
        model.protos[:, 0, 1] = torch.tensor([2.0, 0.0])
        model.seen.fill_(True)
    y = torch.tensor([0, 1])
    U = torch.tensor([[[0.0, 0.0], [1.0, 0.1]], [[2.0, 0.0], [1.0, -0.1]]])  # [B, M, d]
    logits = torch.tensor([[0.3, -0.2], [0.1, 0.4]])
    batch = vector_batch(torch.ones(2, 2, dtype=torch.bool), y)
    out = MethodOutput(logits=logits, extra={"embeddings": U})

    def soft(dists: list[float]) -> list[float]:
        e = [math.exp(-d) for d in dists]
        return [v / sum(e) for v in e]

    pa = [soft([0.0, 2.0]), soft([2.0, 0.0])]
    db = math.sqrt(1 + 0.01)
    pb = [soft([db, db]), soft([db, db])]
    s_a = (pa[0][0] + pa[1][1]) / 2
    s_b = 0.5
    pce_b = -(math.log(pb[0][0]) + math.log(pb[1][1])) / 2
    h_a = -sum(p * math.log(p) for p in pa[0]) / 2 - sum(p * math.log(p) for p in pa[1]) / 2
    ce = float(torch.nn.functional.cross_entropy(logits, y))
    model.eval()  # no prototype update from this batch
    model.on_epoch_start(FakeTrainer(), 0)
    loss, terms = model.loss(batch, out)
    assert terms["rho_a"] == pytest.approx(s_a / s_b, rel=1e-5)
    assert float(loss) == pytest.approx(ce + 0.7 * pce_b - 0.3 * h_a, rel=1e-5)
    model.on_epoch_start(FakeTrainer(), 2)
    loss, _ = model.loss(batch, out)
    assert float(loss) == pytest.approx(ce + 0.7 * pce_b, rel=1e-5)


def test_learns_with_the_trainer() -> None:
    assert_learns("pmr", {})
