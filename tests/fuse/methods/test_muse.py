"""MUSE (omnifuse.fuse.methods.muse): the mutual-consistent contrastive losses against hand computations, the
edge dropout, the bipartite graph (a missing modality is no edge; the first layer by hand), the running
modality aggregates that make a prediction independent of the other rows of its batch, the loss with
unlabelled rows, learning end to end, and one fold through ``run_fold`` for every task kind and every pattern of
missing modalities (none present included)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from omnifuse.fuse.base import ModelInfo
from omnifuse.fuse.methods.muse import MUSE, edge_dropout, same_label_matrix, sup_contrastive, unsup_contrastive
from omnifuse.fuse.registry import build_method
from omnifuse.fuse.train import train
from tests.helpers import (
    TASK_OUTPUTS,
    TWO,
    FakeTrainer,
    assert_run_fold_every_combination,
    synthetic_cache_data,
    vector_batch,
    write_synthetic_cache,
)

U = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
UA = torch.tensor([[0.0, 1.0], [0.6, 0.8]])


def _ls(x: float) -> float:
    """log sigmoid"""
    return -math.log1p(math.exp(-x))


def test_unsupervised_contrastive_hand_computed() -> None:
    # S = 2 U UA^T = [[0, 1.2], [1.6, 2]]
    def ce(row: list[float], i: int) -> float:
        return -math.log(math.exp(row[i]) / sum(math.exp(v) for v in row))

    rows = ce([0.0, 1.2], 0) + ce([1.6, 2.0], 1)
    cols = ce([0.0, 1.6], 0) + ce([1.2, 2.0], 1)
    want = 0.5 * (rows / 2 + cols / 2)
    assert float(unsup_contrastive(U, UA, 2.0)) == pytest.approx(want, rel=1e-6)


def test_supervised_contrastive_hand_computed() -> None:
    y = torch.tensor([1, 1])  # one class: every pair is positive
    # tau U U^T = [[2, 1.2], [1.2, 2]], tau U UA^T = [[0, 1.2], [1.6, 2]]
    zz = -(_ls(2.0) * 2 + _ls(1.2) * 2) / 4
    za = -(_ls(0.0) + _ls(1.2) + _ls(1.6) + _ls(2.0)) / 4
    assert float(sup_contrastive(U, UA, y, 2.0)) == pytest.approx((2 * zz + 2 * za) / 4, rel=1e-6)
    y2 = torch.tensor([0, 1])  # two classes: the off-diagonal pairs are negatives
    zz2 = -(_ls(2.0) * 2 + _ls(-1.2) * 2) / 4
    za2 = -(_ls(0.0) + _ls(-1.2) + _ls(-1.6) + _ls(2.0)) / 4
    za2t = -(_ls(0.0) + _ls(-1.6) + _ls(-1.2) + _ls(2.0)) / 4
    assert float(sup_contrastive(U, UA, y2, 2.0)) == pytest.approx((2 * zz2 + za2 + za2t) / 4, rel=1e-6)
    ml = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])  # multilabel: equal label vectors
    assert same_label_matrix(ml).tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 1]]


def test_edge_dropout_keeps_one_to_n_minus_one_edges() -> None:
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[True, True, True]] * 4000 + [[True, False, False], [False, True, True]])
    kept = edge_dropout(mask, 0.5, g)
    assert not (kept & ~mask).any() and (kept.sum(1) >= 1).all()
    assert kept[4000].tolist() == [True, False, False]  # one edge: never dropped
    n = kept[:4000].sum(1)
    # half the rows untouched; the others keep 1 or 2 of their 3 edges, uniformly
    assert abs(float((n == 3).float().mean()) - 0.5) < 0.03
    assert abs(float((n == 1).float().mean()) - 0.25) < 0.03 and abs(float((n == 2).float().mean()) - 0.25) < 0.03
    # which edges are kept is uniform too
    ones = kept[:4000][n == 1].float().mean(0)
    assert (ones - 1 / 3).abs().max() < 0.05
    assert torch.equal(edge_dropout(mask, 0.0, g), mask)


def _model(**kw) -> MUSE:
    torch.manual_seed(0)
    model = build_method("muse", ModelInfo(TWO, "binary", 1), d=8, **kw)
    assert isinstance(model, MUSE)
    return model


def test_first_layer_by_hand_and_a_missing_modality_is_no_edge() -> None:
    model = _model(layers=1).eval()
    mask = torch.tensor([[True, False], [True, True]])
    batch = vector_batch(mask, torch.zeros(2, 1))
    with torch.no_grad():
        E = model.enc(batch)
        z, _ = model.encode_graph(torch.where(mask.unsqueeze(-1), E, torch.zeros_like(E)), mask, track=False)
        conv = model.convs[0]
        ones = torch.ones(8)

        def msg(m: int, b: int) -> torch.Tensor:
            return F.relu(conv.message(torch.cat([model.modality_nodes[m], E[b, m]])))

        row0 = F.relu(conv.update(torch.cat([msg(0, 0), ones])))  # row 0: only modality a's edge
        row1 = F.relu(conv.update(torch.cat([(msg(0, 1) + msg(1, 1)) / 2, ones])))
    torch.testing.assert_close(z, torch.stack([row0, row1]))
    # the missing modality's values do not reach the output
    batch.x["b"][0] = 5 * torch.randn(6)
    with torch.no_grad():
        E2 = model.enc(batch)
        z2, _ = model.encode_graph(torch.where(mask.unsqueeze(-1), E2, torch.zeros_like(E2)), mask, track=False)
    torch.testing.assert_close(z2, z)


def test_kept_modality_aggregates_make_rows_independent() -> None:
    model = _model(layers=2, momentum=0.5)
    mask = torch.tensor([[True, False], [True, True], [True, True]])
    batch = vector_batch(mask, torch.tensor([[1.0], [0.0], [1.0]]))
    model.train()
    with torch.no_grad():
        E = model.enc(batch)
    torch.manual_seed(3)
    model.encode_graph(E, mask, track=True)
    agg0 = model.running_agg[0].clone()
    conv = model.convs[0]
    with torch.no_grad():
        want = conv.modality_aggregate(torch.ones(3, 8), E, mask)  # layer 0: patients start at ones
    torch.testing.assert_close(agg0, want)  # first sight: the batch's aggregate
    assert model.running_seen.all()
    model.encode_graph(E[1:], mask[1:], track=True)  # a second batch is mixed in with momentum 0.5
    with torch.no_grad():
        second = conv.modality_aggregate(torch.ones(2, 8), E[1:], mask[1:])
    torch.testing.assert_close(model.running_agg[0], 0.5 * agg0 + 0.5 * second)
    model.eval()
    with torch.no_grad():
        full = model(batch).logits
        solo = model(batch.select(torch.tensor([0]))).logits
    torch.testing.assert_close(solo, full[:1])
    # after an epoch: each layer's aggregate over the mining rows, with the current weights, in eval mode
    mining = [batch.select(torch.tensor([0, 1])), batch.select(torch.tensor([2]))]
    model.train()
    model.on_epoch_end(FakeTrainer(mining), 0)
    assert model.training  # the hook restores the mode
    model.eval()
    with torch.no_grad():
        E = model.enc(batch)
        E = torch.where(mask.unsqueeze(-1), E, torch.zeros_like(E))
        _, aggs = model.encode_graph(E, mask, track=False, own=True)
    torch.testing.assert_close(model.running_agg, torch.stack(aggs))
    torch.testing.assert_close(aggs[0], conv.modality_aggregate(torch.ones(3, 8), E, mask))


def test_loss_terms_and_unlabelled_rows() -> None:
    model = _model(dropout=0.0)
    mask = torch.tensor([[True, True], [True, True], [True, False], [True, True]])
    batch = vector_batch(mask, torch.tensor([[1.0], [0.0], [1.0], [1.0]]))
    batch.y_mask[3] = False  # an unlabelled row: graph and unsupervised term only
    model.train()
    out = model(batch)
    assert set(out.extra) == {"z", "z_aug", "aug_mask"}
    loss, terms = model.loss(batch, out)
    u, ua = model.project(out.extra["z"]), model.project(out.extra["z_aug"])
    lab = batch.y_mask
    unsup = unsup_contrastive(u, ua, 1 / 0.07)
    sup = sup_contrastive(u[lab], ua[lab], batch.y[lab], 1 / 0.07)
    task = F.binary_cross_entropy_with_logits(out.logits[lab], batch.y[lab])
    torch.testing.assert_close(loss, task + 0.5 * unsup + 0.5 * sup)
    assert terms["sup"] == pytest.approx(float(sup.detach())) and terms["unsup"] == pytest.approx(float(unsup.detach()))
    model.eval()
    assert set(model(batch).extra) == {"z"}  # no augmented graph at prediction
    assert set(model.loss(batch, model(batch))[1]) == {"task"}


def test_learns_with_the_trainer() -> None:
    """As ``tests.helpers.assert_learns`` with 15 epochs instead of 6: the contrastive terms slow the
    classifier's start (the authors train 100 epochs; without those terms 6 epochs reach 0.9 here)."""
    data = synthetic_cache_data(n=240, seed=3)
    res = train(
        data,
        "mortality",
        "muse",
        folds=2,
        epochs=15,
        batch_size=32,
        n_boot=10,
        progress=False,
        device="cpu",
        mining_rows=96,
        patience=15,
        lr=3e-3,
        method_params={"d": 16},
    )
    assert res.metrics["mean"]["auroc"] > 0.75, res.metrics["mean"]


# ------------------------------------------------------------------------------------------------------
# one fold through run_fold: every task kind, every combination of modalities (the empty one included)
# ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_synthetic_cache(tmp_path_factory.mktemp("muse") / "c.zarr", n=120, seed=1)


@pytest.mark.parametrize("task,c", TASK_OUTPUTS)
def test_run_fold_every_task_and_missing_pattern(cache, task: str, c: int) -> None:
    assert_run_fold_every_combination(cache, "muse", {"d": 8}, task, c)
