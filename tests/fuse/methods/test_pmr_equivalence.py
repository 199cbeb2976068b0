"""The faster PMR (the prototype terms of every modality at once) computes what the modality-by-modality
implementation computed: the same logits, loss, loss terms and gradients from the same seed, up to float
rounding. The reference below is the previous code, kept here only to compare against."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from omnifuse.fuse.base import Batch
from omnifuse.fuse.layers import masked_mean
from omnifuse.fuse.methods import build_method
from omnifuse.fuse.methods.pmr import PrototypicalRebalance, label_groups, prototype_logits
from tests.fuse.methods.same_step import assert_same_step, mixed_batch, mixed_info, training_step


def old_modality_terms(self: PrototypicalRebalance, U: torch.Tensor, batch: Batch):
    t = label_groups(batch.y, self.info.task_kind, self.info.num_outputs)
    lab = batch.y_mask.to(torch.bool)
    pce, score, ent, valid = [], [], [], []
    for m in range(self.info.num_modalities):
        rows = lab & batch.mask[:, m].to(torch.bool)
        ready = bool(self.seen[m].all()) and bool(rows.any())
        logits = prototype_logits(U[:, m], self.protos[m], self.temperature)
        logp = torch.log_softmax(logits, dim=-1)
        nll = -logp.gather(-1, t.unsqueeze(-1)).squeeze(-1).mean(1)
        p = logp.exp()
        s = p.gather(-1, t.unsqueeze(-1)).squeeze(-1).mean(1)
        h = -(p * logp).sum(-1).mean(1)
        pce.append(masked_mean(nll, rows))
        score.append(masked_mean(s.detach(), rows))
        ent.append(masked_mean(h, rows))
        valid.append(ready)
    return torch.stack(pce), torch.stack(score), torch.stack(ent), torch.tensor(valid, device=U.device)


@pytest.mark.parametrize(
    ("kind", "outputs", "params"),
    [
        ("binary", 1, {}),
        ("multilabel", 3, {"coef": "tanh", "temperature": 0.5}),
        ("multiclass", 3, {"mu": 0.3}),
    ],
)
@pytest.mark.parametrize("epoch", [0, 9])
@pytest.mark.parametrize("empty_modality", [False, True])
def test_pmr_step_is_unchanged(kind: str, outputs: int, params: dict, epoch: int, empty_modality: bool) -> None:
    info = mixed_info(kind, outputs)
    batch = mixed_batch(kind, outputs, seed=epoch)
    if empty_modality:  # no row holds "tab": its terms are 0 and it is not valid
        keep = batch.mask.clone()
        keep[:, 2] = False
        keep[~keep.any(1) & batch.mask.any(1), 0] = True
        batch = batch.with_mask(keep)

    def build() -> Any:
        return build_method("pmr", info, d=8, dropout=0.3, **params)

    def ready(model: Any) -> None:
        g = torch.Generator().manual_seed(7)
        model.protos.copy_(torch.randn(model.protos.shape, generator=g))
        model.seen.fill_(True)
        model.seen[3, 0, 0] = False  # "seq" not ready yet
        model.epoch, model._epoch_protos_done = epoch, True

    def old(model: Any) -> None:
        ready(model)
        model.modality_terms = old_modality_terms.__get__(model)

    new = training_step(build, batch, seed=5, before=ready)
    ref = training_step(build, batch, seed=5, before=old)
    assert_same_step(new, ref, exact_logits=True)
    assert any(k.startswith("pce_") for k in new["terms"])
    torch.testing.assert_close(new["model"].last_ratios, ref["model"].last_ratios)
