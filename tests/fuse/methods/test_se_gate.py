"""SE-Gate (omnifuse.fuse.methods.se_gate): per-modality gates in (0, 1) that see the presence mask, the slots
scaled by their gates, its option checks, and learning end to end."""

from __future__ import annotations

import pytest
import torch

from omnifuse.fuse.base import ModelInfo
from omnifuse.fuse.methods import build_method
from tests.helpers import TWO, assert_learns


def test_se_gate_multiplies_slots_by_gates() -> None:
    torch.manual_seed(0)
    model = build_method("se_gate", ModelInfo(TWO, "binary", 1), d=4).eval()
    E = torch.randn(3, 2, 4)
    mask = torch.tensor([[True, True], [True, False], [False, True]])
    g = model.gates(E, mask)
    assert g.shape == (3, 2) and bool(((g > 0) & (g < 1)).all())
    torch.testing.assert_close(model.fuse(E, mask), (E * g.unsqueeze(-1)).reshape(3, 8))
    assert not torch.allclose(model.gates(E, mask), model.gates(E, ~mask | mask.all(1, keepdim=True)))


def test_se_gate_refuses_bad_squeeze_and_reduction() -> None:
    with pytest.raises(ValueError, match="squeeze and reduction must be >= 1, got 0, 2"):
        build_method("se_gate", ModelInfo(TWO, "binary", 1), d=4, squeeze=0)
    with pytest.raises(ValueError, match="squeeze and reduction must be >= 1, got 4, 0"):
        build_method("se_gate", ModelInfo(TWO, "binary", 1), d=4, reduction=0)


def test_learns_with_the_trainer() -> None:
    assert_learns("se_gate", {})
