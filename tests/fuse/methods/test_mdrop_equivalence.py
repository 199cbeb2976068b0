"""The faster mdrop (the per-modality LayerNorm applied once per slot, not once per view; the pairs' rows
gathered at once and each pair's InfoNCE from one product; the unimodal supervised losses at once) computes
what the previous implementation computed: the same logits (bit for bit), losses and gradients from the same
seed, up to float rounding.

The reference implementations below are the previous code, kept here only to compare against."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from omnifuse.fuse.base import Batch, MethodOutput
from omnifuse.fuse.layers import task_loss
from omnifuse.fuse.methods import build_method
from omnifuse.fuse.methods.mdrop import ContrastiveModalityDropout
from tests.fuse.methods.same_step import assert_same_step, mixed_batch, mixed_info, training_step


# ---------------------------------------------------------------------------------- the previous code
def old_represent(self: ContrastiveModalityDropout, E: torch.Tensor, fill: torch.Tensor, shown: torch.Tensor):
    v, b, m = shown.shape
    x = torch.where(shown.unsqueeze(-1), E.unsqueeze(0), fill.view(1, 1, m, self.d))
    return self.fusor(x.reshape(v * b, m, self.d)).view(v, b, -1)


def old_contrastive_loss(self: ContrastiveModalityDropout, batch: Batch, out: MethodOutput) -> torch.Tensor:
    avail, distinct = out.extra["avail"], out.extra["distinct"]
    Z = self.project(out)
    y = batch.y if self.info.task_kind != "multiclass" else batch.y.view(-1)
    ym = batch.y_mask.to(torch.bool)
    losses = []
    for a, b, rows in self.view_pairs(avail, distinct):
        if int(rows.sum()) < 1:
            continue
        losses.append(self.pair_loss(Z[a][rows], Z[b][rows], batch.index[rows], y[rows], ym[rows], a, b))
    if not losses:
        return Z.sum() * 0.0
    return torch.stack(losses).mean()


def old_supervised_loss(self: ContrastiveModalityDropout, batch: Batch, out: MethodOutput):
    kind = self.info.task_kind
    fused = task_loss(out.logits, batch.y, kind, batch.y_mask)
    lab = batch.y_mask.to(torch.bool)
    distinct = out.extra["distinct"]
    uni = []
    for i in range(self.info.num_modalities):
        rows = batch.mask[:, i].to(torch.bool) & distinct & lab
        if bool(rows.any()):
            uni.append(task_loss(out.extra["view_logits"][i], batch.y, kind, batch.y_mask, rows=rows))
    return fused, (torch.stack(uni).mean() if uni else None)


def use_old(model: Any) -> None:
    model.represent = old_represent.__get__(model)
    model.contrastive_loss = old_contrastive_loss.__get__(model)
    model.supervised_loss = old_supervised_loss.__get__(model)


# ---------------------------------------------------------------------------------- the comparisons
CASES = [
    ("binary", 1, {}),
    ("binary", 1, {"mode": "joint", "label_aware": True}),
    ("multilabel", 3, {"mode": "joint", "label_aware": True, "label_form": "supcon"}),
    ("multiclass", 3, {"mode": "joint", "loss": "sigmoid", "label_aware": True}),
    ("binary", 1, {"mode": "joint", "loss": "sigmoid", "pairs": "uni_fused", "token_on_present": True}),
    ("multiclass", 3, {"mode": "joint", "pairs": "uni_uni", "token_space": "embedding", "empty": "zero"}),
    ("binary", 1, {"mode": "supervised", "fusion": "transformer"}),
    ("binary", 1, {"mode": "joint", "memory_bank": 16, "label_aware": True}),
]


@pytest.mark.parametrize(("kind", "outputs", "params"), CASES)
@pytest.mark.parametrize("stage_epoch", [0, 5])
def test_mdrop_step_is_unchanged(kind: str, outputs: int, params: dict, stage_epoch: int) -> None:
    info = mixed_info(kind, outputs)
    batch = mixed_batch(kind, outputs, seed=stage_epoch)

    def build() -> Any:
        return build_method("mdrop", info, d=8, heads=2, ff=16, dropout=0.3, contrastive_epochs=3, **params)

    def stage(model: Any) -> None:
        model.stage = model._stage_for(stage_epoch)

    def old(model: Any) -> None:
        stage(model)
        use_old(model)

    new = training_step(build, batch, seed=3, before=stage)
    ref = training_step(build, batch, seed=3, before=old)
    assert new["model"].stage == ref["model"].stage
    assert_same_step(new, ref, exact_logits=True)


def test_mdrop_contrastive_pairs_without_rows_are_left_out() -> None:
    # a batch where no row holds two modalities: no pair has rows, the loss is a zero that keeps the graph;
    # one where only the pair (ts, vec) has rows: the batched loss is that pair's loss
    info = mixed_info()
    model = build_method("mdrop", info, d=8, dropout=0.0)
    model.train()
    batch = mixed_batch(seed=1, drop=False)
    one = torch.zeros_like(batch.mask)
    one[:, 0] = True
    single = batch.with_mask(one)
    out = model(single)
    loss = model.contrastive_loss(single, out)
    assert float(loss.detach()) == 0.0 and loss.requires_grad
    two = one.clone()
    two[:5, 1] = True
    pair = batch.with_mask(two)
    out = model(pair)
    Z = model.project(out)
    rows = two[:, 0] & two[:, 1]
    want = model.pair_loss(Z[0][rows], Z[1][rows], pair.index[rows], pair.y[rows], pair.y_mask[rows], 0, 1)
    # the uni-fused pairs (ts, fused) and (vec, fused) have the same five rows
    want_f0 = model.pair_loss(Z[0][rows], Z[4][rows], pair.index[rows], pair.y[rows], pair.y_mask[rows], 0, 4)
    want_f1 = model.pair_loss(Z[1][rows], Z[4][rows], pair.index[rows], pair.y[rows], pair.y_mask[rows], 1, 4)
    got = model.contrastive_loss(pair, out)
    torch.testing.assert_close(got, (want + want_f0 + want_f1) / 3)
