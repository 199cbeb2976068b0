"""Mechanism tests of the baselines and of contrastive modality dropout: OGM-GE coefficients and gradient
modulation, G-Blend weights and held-out rows, PMR prototypes and rebalancing, modality dropout, the
contrastive losses on hand-computed batches, the two-stage schedule, and end-to-end training with the real
trainer on a synthetic cache."""

from __future__ import annotations

import math

import pytest
import torch

from omnifuse.fuse.base import Batch, MethodOutput, ModalityInfo, ModelInfo
from omnifuse.fuse.layers import drop_modalities, true_class_probability
from omnifuse.fuse.methods import build_method
from omnifuse.fuse.methods.gblend import gblend_weights, heldout_rows
from omnifuse.fuse.methods.mdrop import info_nce, sigmoid_contrastive
from omnifuse.fuse.methods.ogm_ge import modality_scores, ogm_coefficients
from omnifuse.fuse.methods.pmr import prototype_logits
from omnifuse.fuse.train import train
from tests.helpers import FakeTrainer, synthetic_cache_data

TWO = [ModalityInfo("a", "vector", (6,)), ModalityInfo("b", "vector", (6,))]


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _batch(mask: torch.Tensor, y: torch.Tensor, seed: int = 0, dim: int = 6, index: torch.Tensor | None = None,
           names: tuple[str, ...] = ("a", "b")) -> Batch:
    g = torch.Generator().manual_seed(seed)
    b = mask.shape[0]
    x = {n: torch.randn(b, dim, generator=g) * mask[:, j : j + 1] for j, n in enumerate(names)}
    return Batch(x=x, mask=mask, y=y, y_mask=torch.ones(b, dtype=torch.bool),
                 index=torch.arange(b) if index is None else index)


# ------------------------------------------------------------------------------------------------------
# OGM-GE
# ------------------------------------------------------------------------------------------------------
def test_ogm_coefficients_two_and_three_modalities() -> None:
    k, rho = ogm_coefficients(torch.tensor([0.9, 0.3]), alpha=0.5)
    torch.testing.assert_close(rho, torch.tensor([3.0, 1.0 / 3.0]))
    torch.testing.assert_close(k, torch.tensor([1 - math.tanh(0.5 * 2.0), 1.0]))
    k, _ = ogm_coefficients(torch.tensor([0.9, 0.3]), alpha=0.5, form="paper")
    torch.testing.assert_close(k, torch.tensor([1 - math.tanh(0.5 * 3.0), 1.0]))
    # M = 3: rho_m = s_m / mean of the others
    k, rho = ogm_coefficients(torch.tensor([0.8, 0.4, 0.4]), alpha=1.0)
    torch.testing.assert_close(rho, torch.tensor([2.0, 0.4 / 0.6, 0.4 / 0.6]))
    torch.testing.assert_close(k, torch.tensor([1 - math.tanh(1.0), 1.0, 1.0]))
    # a modality without rows is left alone and left out of the others' means
    k, rho = ogm_coefficients(torch.tensor([0.8, 0.0, 0.4]), torch.tensor([True, False, True]), alpha=1.0)
    torch.testing.assert_close(rho, torch.tensor([2.0, 1.0, 0.5]))
    torch.testing.assert_close(k, torch.tensor([1 - math.tanh(1.0), 1.0, 1.0]))
    with pytest.raises(ValueError, match="form"):
        ogm_coefficients(torch.ones(2), form="nope")


def test_true_class_probability_per_kind() -> None:
    z = torch.tensor([[2.0, -1.0]])
    p = true_class_probability(z, torch.tensor([[1.0, 0.0]]), "multilabel", mean_labels=True)
    torch.testing.assert_close(p, torch.tensor([(_sig(2.0) + 1 - _sig(-1.0)) / 2]))
    p = true_class_probability(z, torch.tensor([1]), "multiclass")
    torch.testing.assert_close(p, torch.tensor([math.exp(-1) / (math.exp(2) + math.exp(-1))]))


def test_ogm_ge_rigged_two_modality_gradients() -> None:
    """Modality a alone predicts the labels, b contributes nothing (its head block is zero): s_a > s_b = 0.5,
    so a's encoder gradients are scaled by k_a = 1 - tanh(alpha (s_a / s_b - 1)) and b's are untouched."""
    torch.manual_seed(0)
    info = ModelInfo(TWO, "binary", 1)
    model = build_method("ogm_ge", info, d=8, alpha=0.7, noise=False, dropout=0.0, encoder={"dropout": 0.0})
    with torch.no_grad():
        model.head.weight[:, 8:] = 0.0
        model.head.bias.zero_()
    mask = torch.ones(16, 2, dtype=torch.bool)
    batch = _batch(mask, torch.zeros(16, 1))
    model.train()
    with torch.no_grad():
        za = model(batch).per_modality_logits["a"]
    y = (za > 0).float()  # labels that modality a gets right
    batch = Batch(x=batch.x, mask=mask, y=y, y_mask=batch.y_mask, index=batch.index)
    out = model(batch)
    loss, _ = model.loss(batch, out)
    loss.backward()
    before = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.after_backward(batch, out)
    torch.testing.assert_close(out.per_modality_logits["a"], za)
    torch.testing.assert_close(out.per_modality_logits["b"], torch.zeros_like(za))
    pa = torch.sigmoid(za.detach())
    s_a = float(torch.where(y > 0.5, pa, 1 - pa).mean())
    assert s_a > 0.5
    k_a = 1 - math.tanh(0.7 * (s_a / 0.5 - 1))
    torch.testing.assert_close(model.last_coefficients, torch.tensor([k_a, 1.0]), rtol=1e-5, atol=1e-6)
    for n, p in model.named_parameters():
        if p.grad is None:
            continue
        if n.startswith("enc.encoders.0.") and p.dim() >= 2:
            torch.testing.assert_close(p.grad, before[n] * k_a)
        else:  # b's encoder, biases and norms, the head: unchanged
            torch.testing.assert_close(p.grad, before[n])


def test_ogm_ge_noise_has_gradient_std_and_respects_epochs() -> None:
    torch.manual_seed(0)
    info = ModelInfo([ModalityInfo("a", "vector", (32,)), ModalityInfo("b", "vector", (32,))], "multiclass", 3)
    model = build_method("ogm_ge", info, d=16, noise=True, start_epoch=1, end_epoch=2)
    batch = _batch(torch.ones(32, 2, dtype=torch.bool), torch.arange(32) % 3, dim=32)
    model.train()

    def grads(epoch: int) -> tuple[dict, dict, torch.Tensor | None]:
        model.on_epoch_start(FakeTrainer(), epoch)
        model.zero_grad()
        out = model(batch)
        model.loss(batch, out)[0].backward()
        before = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.after_backward(batch, out, generator=torch.Generator().manual_seed(3))
        after = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return before, after, model.last_coefficients

    torch.manual_seed(1)
    before, after, _ = grads(0)  # outside [start, end]: nothing changes
    for n in before:
        torch.testing.assert_close(after[n], before[n])
    torch.manual_seed(1)
    before, after, k = grads(1)
    w = "enc.encoders.0.net.0.weight"  # [32, 32] weight matrix of modality a's encoder
    resid = after[w] - float(k[0]) * before[w]
    ratio = float(resid.std() / before[w].std())
    assert 0.85 < ratio < 1.15
    torch.testing.assert_close(after["enc.encoders.0.net.0.bias"], before["enc.encoders.0.net.0.bias"])


def test_modality_scores_use_present_rows_only() -> None:
    z = [torch.tensor([[5.0], [-5.0]]), torch.tensor([[0.0], [0.0]])]
    y = torch.tensor([[1.0], [1.0]])
    mask = torch.tensor([[True, True], [False, True]])
    s, valid = modality_scores(z, y, torch.ones(2, dtype=torch.bool), mask, "binary")
    torch.testing.assert_close(s, torch.tensor([_sig(5.0), 0.5]))
    assert valid.tolist() == [True, True]


# ------------------------------------------------------------------------------------------------------
# G-Blend
# ------------------------------------------------------------------------------------------------------
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
    model = build_method("gblend", ModelInfo(TWO, "binary", 1), d=8, hidden=8, dropout=0.0,
                         encoder={"dropout": 0.0})
    batch = _batch(torch.ones(40, 2, dtype=torch.bool), (torch.arange(40) % 2).float().view(-1, 1))
    held = heldout_rows(batch.index, 0.2)
    assert 0 < int(held.sum()) < 40
    flipped = Batch(x=batch.x, mask=batch.mask, y=torch.where(held.view(-1, 1), 1 - batch.y, batch.y),
                    y_mask=batch.y_mask, index=batch.index)
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
        batches.append(Batch(x={"a": xa, "b": torch.randn(40, 6, generator=g)},
                             mask=torch.ones(40, 2, dtype=torch.bool), y=y, y_mask=torch.ones(40, dtype=torch.bool),
                             index=torch.arange(40 * i, 40 * i + 40)))
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
    batch = _batch(torch.ones(30, 2, dtype=torch.bool), torch.arange(30) % 3)
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


# ------------------------------------------------------------------------------------------------------
# PMR
# ------------------------------------------------------------------------------------------------------
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
    batch = _batch(mask, y)
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
    b1 = _batch(torch.ones(2, 2, dtype=torch.bool), yb)
    ema.update_prototypes_ema(U1, b1)
    # label 0: both rows positive -> positive prototype = mean; no negative seen yet
    torch.testing.assert_close(ema.protos[0, 0, 1], torch.tensor([2.0, 0.0]))
    assert not bool(ema.seen[0, 0, 0])
    # label 1: row 0 negative, row 1 positive
    torch.testing.assert_close(ema.protos[1, 1, 0], torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(ema.protos[1, 1, 1], torch.tensor([0.0, 3.0]))
    U2 = torch.tensor([[[5.0, 0.0], [0.0, 5.0]]])
    b2 = _batch(torch.ones(1, 2, dtype=torch.bool), torch.tensor([[1.0, 0.0]]))
    ema.update_prototypes_ema(U2, b2)
    torch.testing.assert_close(ema.protos[0, 0, 1], torch.tensor([3.5, 0.0]))  # 0.5 * 2 + 0.5 * 5
    torch.testing.assert_close(ema.protos[1, 1, 0], torch.tensor([0.0, 3.0]))  # 0.5 * 1 + 0.5 * 5
    torch.testing.assert_close(ema.protos[1, 1, 1], torch.tensor([0.0, 3.0]))  # not in batch 2: kept
    torch.testing.assert_close(ema.protos[0, 0, 0], torch.tensor([0.0, 0.0]))
    assert bool(ema.seen[0, 0, 0]) is False


def test_pmr_epoch_prototypes_fall_back_to_ema_without_mining_rows() -> None:
    torch.manual_seed(0)
    model = build_method("pmr", ModelInfo(TWO, "multiclass", 3), d=4, prototypes="epoch")
    batch = _batch(torch.ones(6, 2, dtype=torch.bool), torch.arange(6) % 3)
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
    batch = _batch(torch.ones(2, 2, dtype=torch.bool), y)
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


# ------------------------------------------------------------------------------------------------------
# modality dropout
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.0, 0.3, 0.9, 1.0])
def test_modality_dropout_never_drops_all(p: float) -> None:
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(4000, 4, generator=g) < 0.7
    mask[:50] = False  # rows with nothing stay empty
    out = drop_modalities(mask, p, torch.Generator().manual_seed(1))
    assert not (out & ~mask).any()
    assert torch.equal(out.any(1), mask.any(1))
    if p == 0.0:
        assert torch.equal(out, mask)
    if p == 1.0:
        assert torch.equal(out.sum(1), mask.any(1).long())
        # the kept one is uniform over the present ones: each slot is kept in rows holding all four
        full = mask.all(1)
        share = out[full].float().mean(0)
        assert float(share.min()) > 0.15
    if p == 0.3:
        multi = mask.sum(1) >= 3  # rows where "all dropped" is rare, the rate is close to p
        rate = 1 - out[multi].sum() / mask[multi].sum()
        assert abs(float(rate) - 0.3) < 0.03
    with pytest.raises(ValueError):
        drop_modalities(mask, 1.5)


def test_mdrop_train_drop_by_stage() -> None:
    torch.manual_seed(0)
    model = build_method("mdrop", ModelInfo(TWO, "binary", 1), d=8, heads=2, drop_prob=1.0, contrastive_epochs=2)
    batch = _batch(torch.ones(10, 2, dtype=torch.bool), torch.zeros(10, 1))
    model.on_epoch_start(FakeTrainer(), 0)
    assert model.train_drop(batch) is batch  # contrastive stage: all views kept
    model.on_epoch_start(FakeTrainer(), 2)
    b = model.train_drop(batch, torch.Generator().manual_seed(0))
    assert torch.equal(b.mask.sum(1), torch.ones(10, dtype=torch.long))
    for j, n in enumerate(("a", "b")):
        assert (b.x[n][~b.mask[:, j]] == 0).all()


# ------------------------------------------------------------------------------------------------------
# contrastive losses
# ------------------------------------------------------------------------------------------------------
Q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
K = torch.tensor([[1.0, 0.0], [0.6, 0.8]])


def test_info_nce_hand_computed() -> None:
    # logits = 2 * Q K^T = [[2, 1.2], [0, 1.6]]
    row0 = -math.log(math.exp(2) / (math.exp(2) + math.exp(1.2)))
    row1 = -math.log(math.exp(1.6) / (math.exp(0) + math.exp(1.6)))
    assert float(info_nce(Q, K, 2.0)) == pytest.approx((row0 + row1) / 2, rel=1e-6)
    # label-aware: both keys positive for anchor 0 -> mean of its two log-probabilities
    pos = torch.tensor([[True, True], [False, True]])
    lp01 = math.log(math.exp(1.2) / (math.exp(2) + math.exp(1.2)))
    assert float(info_nce(Q, K, 2.0, pos)) == pytest.approx((-(math.log(math.exp(2) / (math.exp(2) + math.exp(1.2)))
                                                               + lp01) / 2 + row1) / 2, rel=1e-6)
    # an invalid key leaves the softmax
    valid = torch.tensor([[True, False], [True, True]])
    assert float(info_nce(Q, K, 2.0, valid=valid)) == pytest.approx((0.0 + row1) / 2, abs=1e-6)


def test_sigmoid_contrastive_hand_computed() -> None:
    # logits = 2 * Q K^T - 1 = [[1, 0.2], [-1, 0.6]]; +1 on the diagonal, -1 elsewhere
    def ls(x: float) -> float:
        return math.log(_sig(x))

    want = -(ls(1.0) + ls(-0.2) + ls(1.0) + ls(0.6)) / 2
    assert float(sigmoid_contrastive(Q, K, 2.0, -1.0)) == pytest.approx(want, rel=1e-6)
    valid = torch.tensor([[True, False], [True, True]])
    assert float(sigmoid_contrastive(Q, K, 2.0, -1.0, valid=valid)) == pytest.approx(
        -(ls(1.0) + ls(1.0) + ls(0.6)) / 2, rel=1e-6)


def test_mdrop_sigmoid_init_and_pairs_on_a_batch() -> None:
    torch.manual_seed(0)
    info = ModelInfo(TWO, "binary", 1)
    sig = build_method("mdrop", info, d=8, heads=2, loss="sigmoid")
    assert float(sig.logit_scale.detach().exp()) == pytest.approx(10.0)
    assert float(sig.logit_bias.detach()) == pytest.approx(-10.0)
    model = build_method("mdrop", info, d=8, heads=2, dropout=0.0, temperature=0.5)
    mask = torch.tensor([[True, True], [True, True], [True, True], [True, False], [False, True]])
    batch = _batch(mask, torch.zeros(5, 1))
    model.train()
    out = model(batch)
    loss, terms = model.loss(batch, out)
    assert model.stage == "contrastive" and set(terms) == {"contrastive"}
    Z = torch.nn.functional.normalize(model.proj_head(out.extra["reps"]), dim=-1)  # views a, b, fused
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
    b1 = _batch(torch.ones(3, 2, dtype=torch.bool), torch.zeros(3, 1), index=torch.tensor([10, 11, 12]))
    model.loss(b1, model(b1))
    assert model.bank_idx[0].tolist() == [10, 11, 12, -1]
    b2 = _batch(torch.tensor([[True, True], [True, False]]), torch.zeros(2, 1), index=torch.tensor([11, 20]))
    keys = model._bank_keys(0, b2.index, b2.y, b2.y_mask)
    assert keys is not None
    assert keys[1].tolist() == [[True, False, True], [True, True, True]]  # row 11's stale key left out
    model.loss(b2, model(b2))
    assert model.bank_idx[0].tolist() == [20, 11, 12, 11]  # wrapped: rows 11, 20 of view a
    assert model.bank_idx[1].tolist() == [10, 11, 12, 11]  # view b: row 11 only, at the next free slot


def test_mdrop_two_stages_swap_heads() -> None:
    torch.manual_seed(0)
    info = ModelInfo(TWO, "multiclass", 3)
    model = build_method("mdrop", info, d=8, heads=2, contrastive_epochs=2)
    assert model.selection_start_epoch == 2
    batch = _batch(torch.ones(6, 2, dtype=torch.bool), torch.arange(6) % 3)
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


# ------------------------------------------------------------------------------------------------------
# fusion details of concat / se_gate / medfuse
# ------------------------------------------------------------------------------------------------------
def test_concat_token_fills_missing_slot() -> None:
    torch.manual_seed(0)
    model = build_method("concat", ModelInfo(TWO, "binary", 1), d=4, missing="token").eval()
    batch = _batch(torch.tensor([[True, False]]), torch.zeros(1, 1))
    E = model(batch).extra["embeddings"]
    torch.testing.assert_close(E[0, 1], model.fill.token[1])
    zero = build_method("concat", ModelInfo(TWO, "binary", 1), d=4).eval()
    assert torch.equal(zero(batch).extra["embeddings"][0, 1], torch.zeros(4))


def test_se_gate_multiplies_slots_by_gates() -> None:
    torch.manual_seed(0)
    model = build_method("se_gate", ModelInfo(TWO, "binary", 1), d=4).eval()
    E = torch.randn(3, 2, 4)
    mask = torch.tensor([[True, True], [True, False], [False, True]])
    g = model.gates(E, mask)
    assert g.shape == (3, 2) and bool(((g > 0) & (g < 1)).all())
    torch.testing.assert_close(model.fuse(E, mask), (E * g.unsqueeze(-1)).reshape(3, 8))
    assert not torch.allclose(model.gates(E, mask), model.gates(E, ~mask | mask.all(1, keepdim=True)))


def test_medfuse_skip_reads_only_present_embeddings_in_order() -> None:
    torch.manual_seed(0)
    mods = TWO + [ModalityInfo("c", "vector", (6,))]
    model = build_method("medfuse", ModelInfo(mods, "binary", 1), d=4, lstm_hidden=5, missing="skip").eval()
    E = torch.randn(2, 3, 4)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    h = model.fuse(E, mask)
    _, (h0, _) = model.lstm(E[0:1, [0, 2]])
    torch.testing.assert_close(h[0], h0[-1, 0])
    _, (h1, _) = model.lstm(model.empty.view(1, 1, 4))
    torch.testing.assert_close(h[1], h1[-1, 0])


# ------------------------------------------------------------------------------------------------------
# end to end with the real trainer
# ------------------------------------------------------------------------------------------------------
SMALL_TRAIN = {
    "concat": {}, "sum": {}, "se_gate": {}, "gblend": {}, "ogm_ge": {}, "pmr": {}, "medfuse": {"lstm_hidden": 16},
    "mdrop": {"heads": 2, "ff": 32, "proj_dim": 16, "contrastive_epochs": 2},
}


@pytest.mark.parametrize("name", sorted(SMALL_TRAIN))
def test_methods_learn_with_the_trainer(name: str) -> None:
    data = synthetic_cache_data(n=240, seed=3)
    res = train(data, "mortality", name, folds=2, epochs=6, batch_size=32, n_boot=10, progress=False,
                device="cpu", mining_rows=96, patience=6, lr=3e-3,
                method_params={"d": 16, **SMALL_TRAIN[name]})
    assert res.metrics["mean"]["auroc"] > 0.75, res.metrics["mean"]
