"""Summation fusion (omnifuse.fuse.methods.sum): the head reads the sum of the present embeddings (a missing
slot adds nothing, or its learned token), and the method learns end to end."""

from __future__ import annotations

import torch

from omnifuse.fuse.base import ModelInfo
from omnifuse.fuse.methods import build_method
from tests.helpers import TWO, assert_learns, vector_batch


def test_sum_adds_the_present_embeddings() -> None:
    torch.manual_seed(0)
    model = build_method("sum", ModelInfo(TWO, "binary", 1), d=4, hidden=None).eval()
    assert model.fused_dim() == 4
    batch = vector_batch(torch.tensor([[True, True], [True, False], [False, True]]), torch.zeros(3, 1))
    enc = model.enc(batch)  # [B, M, d] raw encoder outputs
    out = model(batch)
    want = torch.stack([enc[0, 0] + enc[0, 1], enc[1, 0], enc[2, 1]])
    torch.testing.assert_close(model.fuse(out.extra["embeddings"], batch.mask), want)
    torch.testing.assert_close(out.logits, model.head(want))


def test_sum_adds_the_token_of_a_missing_slot() -> None:
    torch.manual_seed(0)
    model = build_method("sum", ModelInfo(TWO, "binary", 1), d=4, missing="token", hidden=None).eval()
    batch = vector_batch(torch.tensor([[True, False]]), torch.zeros(1, 1))
    enc = model.enc(batch)
    want = enc[0, 0] + model.fill.token[1]
    torch.testing.assert_close(model(batch).logits[0], model.head(want))


def test_learns_with_the_trainer() -> None:
    assert_learns("sum", {})
