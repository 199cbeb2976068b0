"""OGM-GE as its authors train it (omnifuse.fuse.methods.ogm_ge; github GeWu-Lab/OGM-GE_CVPR2022, main.py):
SGD with momentum 0.9 through ``configure_optimizer``, and why: under SGD a modulated gradient moves the
weights by k times as much, under AdamW by about as much as without modulation."""

from __future__ import annotations

import pytest
import torch

from omnifuse.fuse.base import Batch, ModelInfo
from omnifuse.fuse.methods import build_method
from tests.helpers import TWO, vector_batch


def test_configure_optimizer_is_sgd_with_momentum() -> None:
    model = build_method("ogm_ge", ModelInfo(TWO, "binary", 1), d=8)
    opt = model.configure_optimizer(1e-3, 1e-2)
    g = opt.param_groups[0]
    assert type(opt) is torch.optim.SGD and g["momentum"] == 0.9 and g["weight_decay"] == 1e-4
    assert g["lr"] == pytest.approx(1e-2)  # lr_scale 10: SGD's step
    scaled = build_method("ogm_ge", ModelInfo(TWO, "binary", 1), d=8, lr_scale=1.0, momentum=0.5)
    g = scaled.configure_optimizer(1e-3, 1e-2).param_groups[0]
    assert g["lr"] == pytest.approx(1e-3) and g["momentum"] == 0.5
    adamw = build_method("ogm_ge", ModelInfo(TWO, "binary", 1), d=8, optimizer="adamw").configure_optimizer(1e-3, 1e-2)
    assert type(adamw) is torch.optim.AdamW and adamw.param_groups[0]["weight_decay"] == 1e-2
    with pytest.raises(ValueError, match="optimizer must be one of"):
        build_method("ogm_ge", ModelInfo(TWO, "binary", 1), d=8, optimizer="adam")


def _update_ratio(optimizer: str) -> tuple[float, float]:
    """One optimiser step of a rigged model (modality a predicts the labels, b contributes nothing) with and
    without the modulation: (norm of a's encoder weight update with / without, k_a)."""
    steps = []
    k_a = 1.0
    for modulate in (True, False):
        torch.manual_seed(0)
        model = build_method(
            "ogm_ge",
            ModelInfo(TWO, "binary", 1),
            d=8,
            alpha=0.5,
            noise=False,
            dropout=0.0,
            encoder={"dropout": 0.0},
            optimizer=optimizer,
        )
        with torch.no_grad():
            model.head.weight[:, 8:] = 0.0
        mask = torch.ones(32, 2, dtype=torch.bool)
        batch = vector_batch(mask, torch.zeros(32, 1))
        model.train()
        with torch.no_grad():
            za = model(batch).per_modality_logits["a"]
        batch = Batch(x=batch.x, mask=mask, y=(za > 0).float(), y_mask=batch.y_mask, index=batch.index)
        opt = model.configure_optimizer(1e-2, 1e-2)
        w = model.enc.encoders[0].net[0].weight
        before = w.detach().clone()
        out = model(batch)
        loss, _ = model.loss(batch, out)
        opt.zero_grad()
        loss.backward()
        if modulate:
            model.after_backward(batch, out)
            assert model.last_coefficients is not None
            k_a = float(model.last_coefficients[0])
        opt.step()
        steps.append(float((w.detach() - before).norm()))
    return steps[0] / steps[1], k_a


def test_the_modulation_survives_sgd_but_not_adamw() -> None:
    ratio_sgd, k_a = _update_ratio("sgd")
    assert k_a < 0.6  # the paper's coefficient: strong modulation of the dominant modality
    assert ratio_sgd == pytest.approx(k_a, rel=0.05)  # weight decay 1e-4 aside, the step scales by k
    ratio_adamw, _ = _update_ratio("adamw")
    assert ratio_adamw > 0.9  # AdamW divides the scaled gradient by its own scale: the step hardly changes
