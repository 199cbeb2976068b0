"""MedFuse as its authors wrote it (omnifuse.fuse.methods.medfuse; github nyuad-cai/MedFuse,
models/fusion.py, ``Fusion.forward_lstm_fused``): with two modalities a missing one is skipped by packing
the sequence, so the LSTM never reads its step; with more, the learned token stays."""

from __future__ import annotations

import torch

from omnifuse.fuse.base import ModalityInfo, ModelInfo
from omnifuse.fuse.methods import build_method
from tests.helpers import TWO, vector_batch


def test_two_modalities_pack_the_sequence_by_default() -> None:
    torch.manual_seed(0)
    model = build_method("medfuse", ModelInfo(TWO, "binary", 1), d=4, lstm_hidden=5).eval()
    assert model.missing == "skip" and model.fill.token is None
    E = torch.randn(3, 2, 4)
    mask = torch.tensor([[True, False], [True, True], [False, True]])
    h = model.fuse(E, mask)
    # a row lacking b reads one step (a's embedding), as the authors' LSTM with sequence length 1
    _, (h0, _) = model.lstm(E[0:1, :1])
    torch.testing.assert_close(h[0], h0[-1, 0])
    _, (h2, _) = model.lstm(E[2:3, 1:])
    torch.testing.assert_close(h[2], h2[-1, 0])
    _, (h1, _) = model.lstm(E[1:2])
    torch.testing.assert_close(h[1], h1[-1, 0])
    # the whole method: a missing modality's values never matter
    batch = vector_batch(mask, torch.zeros(3, 1))
    moved = vector_batch(mask, torch.zeros(3, 1))
    moved.x["b"][0] = 7.0
    with torch.no_grad():
        torch.testing.assert_close(model(batch).logits[0], model(moved).logits[0])


def test_more_modalities_keep_the_learned_token() -> None:
    torch.manual_seed(0)
    three = ModelInfo([*TWO, ModalityInfo("c", "vector", (6,))], "binary", 1)
    model = build_method("medfuse", three, d=4, lstm_hidden=5)
    assert model.missing == "token" and model.fill.token is not None and model.empty is None
    assert build_method("medfuse", ModelInfo(TWO, "binary", 1), d=4, missing="token").missing == "token"
