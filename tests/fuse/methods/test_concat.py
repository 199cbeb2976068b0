"""Concatenation fusion (omnifuse.fuse.methods.concat): the head reads the concatenated slots, a missing
slot holds zeros or the learned token, and the method learns end to end."""

from __future__ import annotations

import torch

from omnifuse.fuse.base import ModelInfo
from omnifuse.fuse.methods import build_method
from tests.helpers import TWO, assert_learns, vector_batch


def test_concat_token_fills_missing_slot() -> None:
    torch.manual_seed(0)
    model = build_method("concat", ModelInfo(TWO, "binary", 1), d=4, missing="token").eval()
    batch = vector_batch(torch.tensor([[True, False]]), torch.zeros(1, 1))
    E = model(batch).extra["embeddings"]
    torch.testing.assert_close(E[0, 1], model.fill.token[1])
    zero = build_method("concat", ModelInfo(TWO, "binary", 1), d=4).eval()
    assert torch.equal(zero(batch).extra["embeddings"][0, 1], torch.zeros(4))


def test_concat_head_reads_the_slots_side_by_side() -> None:
    torch.manual_seed(0)
    model = build_method("concat", ModelInfo(TWO, "multiclass", 3), d=4, hidden=None).eval()
    assert model.fused_dim() == 8
    batch = vector_batch(torch.tensor([[True, True], [False, True]]), torch.tensor([0, 2]))
    out = model(batch)
    E = out.extra["embeddings"]  # [B, M, d], the missing slot zero
    torch.testing.assert_close(model.fuse(E, batch.mask), torch.cat([E[:, 0], E[:, 1]], dim=1))
    torch.testing.assert_close(out.logits, model.head(torch.cat([E[:, 0], E[:, 1]], dim=1)))
    torch.testing.assert_close(E[0], model.enc(batch)[0])  # present slots are the encoder outputs


def test_learns_with_the_trainer() -> None:
    assert_learns("concat", {})
