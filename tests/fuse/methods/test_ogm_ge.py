"""OGM-GE (omnifuse.fuse.methods.ogm_ge): the modulation coefficients, the per-modality scores, gradient
modulation on a rigged two-modality model, the generalisation-enhancement noise, and learning end to end."""

from __future__ import annotations

import math

import pytest
import torch

from omnifuse.fuse.base import Batch, ModalityInfo, ModelInfo
from omnifuse.fuse.methods import build_method
from omnifuse.fuse.methods.ogm_ge import modality_scores, ogm_coefficients
from tests.helpers import TWO, FakeTrainer, assert_learns, sigmoid, vector_batch


def test_ogm_coefficients_two_and_three_modalities() -> None:
    k, rho = ogm_coefficients(torch.tensor([0.9, 0.3]), alpha=0.5, form="shifted")
    torch.testing.assert_close(rho, torch.tensor([3.0, 1.0 / 3.0]))
    torch.testing.assert_close(k, torch.tensor([1 - math.tanh(0.5 * 2.0), 1.0]))
    k, _ = ogm_coefficients(torch.tensor([0.9, 0.3]), alpha=0.5)  # the paper's form is the default
    torch.testing.assert_close(k, torch.tensor([1 - math.tanh(0.5 * 3.0), 1.0]))
    # the numbers: rho = 1.2, alpha = 0.5 gives 0.46 (paper) and 0.90 (shifted)
    k, _ = ogm_coefficients(torch.tensor([0.6, 0.5]), alpha=0.5)
    assert float(k[0]) == pytest.approx(0.4630, abs=1e-4)
    k, _ = ogm_coefficients(torch.tensor([0.6, 0.5]), alpha=0.5, form="shifted")
    assert float(k[0]) == pytest.approx(0.9003, abs=1e-4)
    # M = 3: rho_m = s_m / mean of the others
    k, rho = ogm_coefficients(torch.tensor([0.8, 0.4, 0.4]), alpha=1.0, form="shifted")
    torch.testing.assert_close(rho, torch.tensor([2.0, 0.4 / 0.6, 0.4 / 0.6]))
    torch.testing.assert_close(k, torch.tensor([1 - math.tanh(1.0), 1.0, 1.0]))
    # a modality without rows is left alone and left out of the others' means
    k, rho = ogm_coefficients(torch.tensor([0.8, 0.0, 0.4]), torch.tensor([True, False, True]), alpha=1.0)
    torch.testing.assert_close(rho, torch.tensor([2.0, 1.0, 0.5]))
    torch.testing.assert_close(k, torch.tensor([1 - math.tanh(2.0), 1.0, 1.0]))
    with pytest.raises(ValueError, match="form"):
        ogm_coefficients(torch.ones(2), form="nope")


def test_ogm_ge_rigged_two_modality_gradients() -> None:
    """Modality a alone predicts the labels, b contributes nothing (its head block is zero): s_a > s_b = 0.5,
    so a's encoder gradients are scaled by k_a = 1 - tanh(alpha s_a / s_b) (the paper's form) and b's are
    untouched."""
    torch.manual_seed(0)
    info = ModelInfo(TWO, "binary", 1)
    model = build_method("ogm_ge", info, d=8, alpha=0.7, noise=False, dropout=0.0, encoder={"dropout": 0.0})
    with torch.no_grad():
        model.head.weight[:, 8:] = 0.0
        model.head.bias.zero_()
    mask = torch.ones(16, 2, dtype=torch.bool)
    batch = vector_batch(mask, torch.zeros(16, 1))
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
    k_a = 1 - math.tanh(0.7 * s_a / 0.5)
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
    batch = vector_batch(torch.ones(32, 2, dtype=torch.bool), torch.arange(32) % 3, dim=32)
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
    torch.testing.assert_close(s, torch.tensor([sigmoid(5.0), 0.5]))
    assert valid.tolist() == [True, True]


def test_learns_with_the_trainer() -> None:
    assert_learns("ogm_ge", {})
