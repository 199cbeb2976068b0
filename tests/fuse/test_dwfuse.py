import math

import pytest
import torch

from omnifuse.fuse import dwfuse
from omnifuse.fuse.layers import true_class_probability


def test_down_weight_matches_eq10_by_hand():
    # three heads, binary, true label 1: p_true = sigmoid(logit)
    p = torch.tensor([0.9, 0.6, 0.2])
    logits = [torch.logit(torch.tensor([[v]])) for v in p.tolist()]
    y = torch.tensor([[1.0]])
    pt = torch.stack([true_class_probability(z, y, "binary") for z in logits])
    w = dwfuse.down_weights(pt, beta=0.5).flatten()
    e = 0.5 / 2
    expect = [((1 - 0.6) * (1 - 0.2)) ** e, ((1 - 0.9) * (1 - 0.2)) ** e, ((1 - 0.9) * (1 - 0.6)) ** e]
    assert w.tolist() == pytest.approx(expect, rel=1e-5)
    # label 0: the true-class probability is 1 - p
    pt0 = torch.stack([true_class_probability(z, torch.tensor([[0.0]]), "binary") for z in logits])
    w0 = dwfuse.down_weights(pt0, 0.5).flatten()
    assert w0[0].item() == pytest.approx((0.6 * 0.2) ** e, rel=1e-5)  # 1 - (1 - p_n)


def test_multiclass_and_single_modality():
    logits = [torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]])]
    y = torch.tensor([0])
    pt = torch.stack([true_class_probability(z, y, "multiclass") for z in logits])
    w = dwfuse.down_weights(pt, 1.0)
    p1 = torch.softmax(logits[1], -1)[0, 0]
    assert w[0].item() == pytest.approx(float(1 - p1))  # exponent beta/(M-1) = 1
    assert torch.equal(dwfuse.down_weights(pt[:1], 0.5), torch.ones_like(pt[:1]))


def test_multilabel_weights_per_label_and_no_gradient():
    l1 = torch.tensor([[3.0, -3.0]], requires_grad=True)
    l2 = torch.tensor([[0.0, 0.0]], requires_grad=True)
    y = torch.tensor([[1.0, 1.0]])
    loss, t = dwfuse.dwfuse_loss([l1, l2], torch.zeros(1, 2, requires_grad=True), y, "multilabel", beta=1.0, alpha=0.1)
    assert t["w"].shape == (2,)
    # w for head 2 per label: 1 - p1_true = [1 - sig(3), 1 - sig(-3)]
    s = torch.sigmoid(torch.tensor(3.0)).item()
    bce2 = math.log(2)
    ens = ((1 - 0.5) * (-math.log(s)) + (1 - 0.5) * (-math.log(1 - s))) / 2 + ((1 - s) * bce2 + s * bce2) / 2
    assert float(t["ens"].detach()) == pytest.approx(ens, rel=1e-5)
    loss.backward()
    assert l1.grad is not None and torch.isfinite(l1.grad).all()


def test_unweighted_reading_differs_from_weighted():
    # a confident other head shrinks this head's loss (our reading of eq. 12)
    l_weak = torch.tensor([[0.0]])
    y = torch.tensor([[1.0]])
    _, t_conf = dwfuse.dwfuse_loss([l_weak, torch.tensor([[6.0]])], torch.zeros(1, 1), y, "binary", 0.5, 0.1)
    _, t_unsure = dwfuse.dwfuse_loss([l_weak, torch.tensor([[-6.0]])], torch.zeros(1, 1), y, "binary", 0.5, 0.1)
    assert float(t_conf["ens"]) < float(t_unsure["ens"])


def test_weighted_loss_divides_by_labelled_rows_not_by_weights():
    """Eq. 12 with a mask: sum_m mean over labelled rows of w_m * CE; a down-weighted row still counts as a
    row (the weights do not renormalise), an unlabelled row counts for nothing."""
    z1 = torch.tensor([[2.0], [-1.0], [0.5]])
    z2 = torch.tensor([[1.0], [0.0], [3.0]])
    o = torch.tensor([[0.2], [-0.3], [9.0]])
    y = torch.tensor([[1.0], [0.0], [1.0]])
    y_mask = torch.tensor([True, True, False])
    loss, t = dwfuse.dwfuse_loss([z1, z2], o, y, "binary", beta=1.0, alpha=0.5, y_mask=y_mask)

    def sig(v: float) -> float:
        return 1 / (1 + math.exp(-v))

    def ce(v: float, label: float) -> float:
        return -math.log(sig(v)) if label else -math.log(1 - sig(v))

    p1 = [sig(2.0), 1 - sig(-1.0)]  # true-class probabilities of rows 0, 1
    p2 = [sig(1.0), 1 - sig(0.0)]
    ens = (
        sum((1 - p2[i]) * ce(z1[i, 0].item(), y[i, 0].item()) for i in range(2)) / 2
        + sum((1 - p1[i]) * ce(z2[i, 0].item(), y[i, 0].item()) for i in range(2)) / 2
    )
    rp = (ce(0.2, 1.0) + ce(-0.3, 0.0)) / 2
    assert float(t["ens"]) == pytest.approx(ens, rel=1e-5)
    assert float(t["rp"]) == pytest.approx(rp, rel=1e-5)
    assert float(loss) == pytest.approx(ens + 0.5 * rp, rel=1e-5)
