"""The shared heads, losses and modality dropout (omnifuse.fuse.layers) against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from omnifuse.fuse.layers import (
    drop_modalities,
    masked_mean,
    mlp_head,
    probabilities,
    row_loss,
    task_loss,
    true_class_probability,
)
from tests.helpers import sigmoid


def _bce(z: float, y: float) -> float:
    return -math.log(sigmoid(z)) if y else -math.log(1 - sigmoid(z))


def test_mlp_head_forms() -> None:
    torch.manual_seed(0)
    lin = mlp_head(5, 3, hidden=None)
    assert isinstance(lin, nn.Linear) and (lin.in_features, lin.out_features) == (5, 3)
    assert isinstance(mlp_head(5, 3, hidden=0), nn.Linear)
    head = mlp_head(5, 3, hidden=7, dropout=0.25)
    assert [type(m) for m in head] == [nn.Linear, nn.GELU, nn.Dropout, nn.Linear]
    assert head[0].out_features == 7 and head[2].p == 0.25 and head[3].out_features == 3
    head.eval()
    x = torch.randn(4, 5)
    torch.testing.assert_close(head(x), head[3](torch.nn.functional.gelu(head[0](x))))


def test_probabilities_per_kind() -> None:
    z = torch.tensor([[0.0, math.log(3.0)]])
    torch.testing.assert_close(probabilities(z, "multiclass"), torch.tensor([[0.25, 0.75]]))
    torch.testing.assert_close(probabilities(z, "multilabel"), torch.tensor([[0.5, 0.75]]))


def test_true_class_probability_per_kind() -> None:
    z = torch.tensor([[2.0, -1.0], [0.5, 0.0]])
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    want = torch.tensor([[sigmoid(2.0), 1 - sigmoid(-1.0)], [1 - sigmoid(0.5), 0.5]])
    torch.testing.assert_close(true_class_probability(z, y, "multilabel"), want)
    torch.testing.assert_close(true_class_probability(z, y, "multilabel", mean_labels=True), want.mean(1))
    zc = torch.tensor([[0.0, math.log(3.0)], [math.log(4.0), 0.0]])
    torch.testing.assert_close(
        true_class_probability(zc, torch.tensor([1, 1]), "multiclass"), torch.tensor([0.75, 0.2])
    )
    with pytest.raises(ValueError, match="multiclass labels must be"):
        true_class_probability(zc, torch.tensor([[1], [1]]), "multiclass")
    with pytest.raises(ValueError, match="binary labels must match logits"):
        true_class_probability(z, y[:, :1], "binary")
    with pytest.raises(ValueError, match="unknown task kind 'regression'"):
        true_class_probability(z, y, "regression")


def test_true_class_probability_binary_mean_and_multiclass_softmax() -> None:
    z = torch.tensor([[2.0, -1.0]])
    p = true_class_probability(z, torch.tensor([[1.0, 0.0]]), "multilabel", mean_labels=True)
    torch.testing.assert_close(p, torch.tensor([(sigmoid(2.0) + 1 - sigmoid(-1.0)) / 2]))
    p = true_class_probability(z, torch.tensor([1]), "multiclass")
    torch.testing.assert_close(p, torch.tensor([math.exp(-1) / (math.exp(2) + math.exp(-1))]))


def test_row_loss_and_label_weights() -> None:
    z = torch.tensor([[2.0, -1.0], [0.5, 0.0]])
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    want = [(_bce(2.0, 1) + _bce(-1.0, 0)) / 2, (_bce(0.5, 0) + _bce(0.0, 1)) / 2]
    torch.testing.assert_close(row_loss(z, y, "multilabel"), torch.tensor(want))
    # a weight per label scales each label's loss before the mean over labels
    w = torch.tensor([[0.5, 2.0], [1.0, 0.0]])
    want_w = [(0.5 * _bce(2.0, 1) + 2.0 * _bce(-1.0, 0)) / 2, _bce(0.5, 0) / 2]
    torch.testing.assert_close(row_loss(z, y, "multilabel", w), torch.tensor(want_w))
    zc = torch.tensor([[0.0, math.log(3.0)]])
    torch.testing.assert_close(row_loss(zc, torch.tensor([0]), "multiclass"), torch.tensor([math.log(4.0)]))


def test_task_loss_selection_and_weights() -> None:
    z = torch.tensor([[1.0], [-2.0], [0.5], [3.0]], requires_grad=True)
    y = torch.tensor([[1.0], [1.0], [0.0], [0.0]])
    per = [_bce(1.0, 1), _bce(-2.0, 1), _bce(0.5, 0), _bce(3.0, 0)]
    with torch.no_grad():
        assert float(task_loss(z, y, "binary")) == pytest.approx(sum(per) / 4, rel=1e-6)
        y_mask = torch.tensor([True, True, True, False])
        assert float(task_loss(z, y, "binary", y_mask)) == pytest.approx(sum(per[:3]) / 3, rel=1e-6)
        rows = torch.tensor([True, False, True, True])
        # rows restrict the mean (labelled and selected: rows 0 and 2)
        assert float(task_loss(z, y, "binary", y_mask, rows=rows)) == pytest.approx((per[0] + per[2]) / 2, rel=1e-6)
        assert float(task_loss(z, y, "binary", rows=rows)) == pytest.approx((per[0] + per[2] + per[3]) / 3, rel=1e-6)
        # weights scale the losses, the count stays the number of labelled rows (DWFuse's eq. 12)
        w = torch.tensor([0.5, 0.0, 2.0, 7.0])
        assert float(task_loss(z, y, "binary", y_mask, weight=w)) == pytest.approx(
            (0.5 * per[0] + 2.0 * per[2]) / 3, rel=1e-6
        )
    # nothing selected: a zero that keeps the graph
    none = task_loss(z, y, "binary", torch.zeros(4, dtype=torch.bool))
    assert float(none.detach()) == 0.0
    none.backward()
    assert z.grad is not None and float(z.grad.abs().sum()) == 0.0


def test_masked_mean_with_float_weights() -> None:
    v = torch.tensor([1.0, 2.0, 4.0])
    assert float(masked_mean(v, torch.tensor([0.5, 0.5, 0.0]))) == pytest.approx(1.5)
    assert float(masked_mean(v, torch.tensor([1.0, 0.0, 3.0]))) == pytest.approx(13.0 / 4)
    assert float(masked_mean(v, torch.zeros(3))) == 0.0


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


def test_row_dropout_draws_the_six_patterns() -> None:
    """``unit="row"`` (OmniFuse's training drops): a row of M = 3 present modalities keeps one of the six
    non-empty proper subsets, each about equally often; single-modality rows and M = 1 stay as they are."""
    mask = torch.ones(3000, 3, dtype=torch.bool)
    k = drop_modalities(mask, 1.0, torch.Generator().manual_seed(0), unit="row")
    pats = [tuple(r) for r in k.int().tolist()]
    counts = {p: pats.count(p) for p in set(pats)}
    assert len(counts) == 6 and (1, 1, 1) not in counts and (0, 0, 0) not in counts
    assert min(counts.values()) > 3000 / 6 * 0.8
    single = torch.tensor([[False, True, False]])
    assert torch.equal(drop_modalities(single, 1.0, unit="row"), single)
    assert torch.equal(
        drop_modalities(torch.ones(5, 1, dtype=torch.bool), 1.0, unit="row"), torch.ones(5, 1, dtype=torch.bool)
    )


@pytest.mark.parametrize("unit", ["modality", "row"])
def test_dropout_rate_subset_and_determinism(unit: str) -> None:
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(4000, 4, generator=g) < 0.7
    mask[:50] = False  # rows with nothing stay empty
    out = drop_modalities(mask, 0.5, torch.Generator().manual_seed(1), unit=unit)
    assert not (out & ~mask).any() and torch.equal(out.any(1), mask.any(1))
    assert torch.equal(out, drop_modalities(mask, 0.5, torch.Generator().manual_seed(1), unit=unit))
    assert torch.equal(drop_modalities(mask, 0.0, unit=unit), mask)
    multi = mask.sum(1) >= 2
    changed = (out != mask).any(1)
    if unit == "row":
        # about half of the rows with two or more modalities are dropped, and only those
        assert abs(float(changed[multi].float().mean()) - 0.5) < 0.03 and not changed[~multi].any()
    else:
        kept = out[mask.sum(1) == 4].float().mean()
        assert 0.45 < float(kept) < 0.6  # each of four kept with 1/2, an emptied row keeps one
    with pytest.raises(ValueError, match="drop probability"):
        drop_modalities(mask, 1.5, unit=unit)
    with pytest.raises(ValueError, match="drop unit"):
        drop_modalities(mask, 0.5, unit="patient")  # type: ignore[arg-type]
