"""MedFuse's LSTM fusion (omnifuse.fuse.methods.medfuse): ``missing="skip"`` reads only the present
embeddings in order (an empty row its learned token), the missing options, and learning end to end."""

from __future__ import annotations

import pytest
import torch

from omnifuse.fuse.base import ModalityInfo, ModelInfo
from omnifuse.fuse.methods import build_method
from tests.helpers import TWO, assert_learns


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


def test_medfuse_token_and_zero_read_every_slot() -> None:
    """``missing="token"`` and ``"zero"``: the LSTM reads the M filled slots in order (no empty token)."""
    torch.manual_seed(0)
    info = ModelInfo(TWO, "binary", 1)
    for missing in ("token", "zero"):
        model = build_method("medfuse", info, d=4, lstm_hidden=5, missing=missing).eval()
        assert model.empty is None and model.fill.mode == missing
        E = torch.randn(2, 2, 4)
        _, (h, _) = model.lstm(E)
        torch.testing.assert_close(model.fuse(E, torch.tensor([[True, False], [True, True]])), h[-1])
    with pytest.raises(ValueError, match="medfuse missing must be 'auto', 'token', 'skip' or 'zero', got 'drop'"):
        build_method("medfuse", info, d=4, missing="drop")


def test_learns_with_the_trainer() -> None:
    assert_learns("medfuse", {"lstm_hidden": 16})
