"""The contracts of stage two (omnifuse.fuse.base): batches (select, with_mask, to), the model description,
and the method protocol's defaults on the least a method implements."""

from __future__ import annotations

import copy

import pytest
import torch

from omnifuse.fuse.base import Batch, FusionMethod, MethodOutput, ModalityInfo, ModelInfo
from omnifuse.fuse.methods import build_method
from tests.helpers import TINY_OVERRIDES, FakeTrainer

MODS = [
    ModalityInfo("img", "vector", (3,)),
    ModalityInfo("rep", "sequence", (4, 2)),
    ModalityInfo("ehr", "timeseries", (2, 2)),
]


def _batch(n: int = 4) -> Batch:
    """Rows 10.. of three modalities, every value 1 + row position, all present; token masks all True."""
    x = {
        m.name: (torch.arange(n, dtype=torch.float32) + 1).view(-1, *([1] * len(m.shape))).expand(n, *m.shape).clone()
        for m in MODS
    }
    mask = torch.ones(n, 3, dtype=torch.bool)
    return Batch(
        x=x,
        mask=mask,
        y=torch.arange(n, dtype=torch.float32).view(-1, 1) % 2,
        y_mask=torch.tensor([True] * (n - 1) + [False]),
        index=torch.arange(10, 10 + n),
        tokens_mask={"rep": torch.ones(n, 4, dtype=torch.bool)},
        natural_mask=mask.clone(),
    )


def test_model_info_names_and_count() -> None:
    info = ModelInfo(MODS, "multilabel", 3)
    assert info.names == ["img", "rep", "ehr"] and info.num_modalities == 3


def test_batch_select_slices_every_field_alike() -> None:
    b = _batch()
    for rows in (torch.tensor([False, True, False, True]), torch.tensor([1, 3])):
        s = b.select(rows)
        assert s.index.tolist() == [11, 13] and s.y_mask.tolist() == [True, False]
        assert s.y[:, 0].tolist() == [1.0, 1.0] and s.mask.shape == (2, 3) and s.natural_mask.shape == (2, 3)
        for name, v in s.x.items():
            assert v.shape[0] == 2 and bool((v[0] == 2).all()) and bool((v[1] == 4).all()), name
        assert s.tokens_mask["rep"].shape == (2, 4)
    bare = Batch(x=b.x, mask=b.mask, y=b.y, y_mask=b.y_mask, index=b.index)
    assert bare.select(torch.tensor([0])).natural_mask is None


def test_batch_with_mask_zeroes_newly_masked_inputs_and_tokens() -> None:
    b = _batch()
    mask = torch.tensor([[True, False, True], [False, True, True], [True, True, True], [True, True, False]])
    m = b.with_mask(mask)
    assert m.mask is mask and torch.equal(m.natural_mask, b.natural_mask)  # the natural mask is kept
    assert m.y is b.y and m.index is b.index
    for j, name in enumerate(("img", "rep", "ehr")):
        v = m.x[name]
        for r in range(4):
            want = 0.0 if not mask[r, j] else float(r + 1)
            assert bool((v[r] == want).all()), (name, r)
    assert m.tokens_mask["rep"].tolist() == [[False] * 4, [True] * 4, [True] * 4, [True] * 4]  # rep masked in row 0
    assert bool((b.x["rep"] > 0).all())  # the original batch is untouched


def test_batch_to_keeps_values() -> None:
    b = _batch()
    c = b.to("cpu")
    assert c is not b and c.index.tolist() == b.index.tolist()
    for name in b.x:
        assert torch.equal(c.x[name], b.x[name])
    assert torch.equal(c.tokens_mask["rep"], b.tokens_mask["rep"]) and torch.equal(c.natural_mask, b.natural_mask)


# ------------------------------------------------------------------------------------------------------
# the protocol's defaults
# ------------------------------------------------------------------------------------------------------
class _Minimal(FusionMethod):
    """The least a method implements: forward and loss."""

    def __init__(self, info: ModelInfo) -> None:
        super().__init__(info)
        self.w = torch.nn.Linear(3, 1)
        self.frozen = torch.nn.Linear(3, 1)
        self.frozen.requires_grad_(False)

    def forward(self, batch: Batch) -> MethodOutput:
        return MethodOutput(logits=self.w(batch.x["a"]))

    def loss(self, batch: Batch, out: MethodOutput) -> tuple[torch.Tensor, dict[str, float]]:
        loss = out.logits.pow(2).mean()
        return loss, {"task": float(loss.detach())}


def test_protocol_defaults() -> None:
    info = ModelInfo([ModalityInfo("a", "vector", (3,))], "binary", 1)
    model = _Minimal(info)
    opt = model.configure_optimizer(lr=0.003, weight_decay=0.02)
    assert type(opt) is torch.optim.AdamW
    params = [p for g in opt.param_groups for p in g["params"]]
    assert len(params) == 2 and all(p.requires_grad for p in params)
    assert {id(p) for p in params} == {id(p) for p in model.w.parameters()}
    assert opt.param_groups[0]["lr"] == 0.003 and opt.param_groups[0]["weight_decay"] == 0.02
    assert model.selection_start_epoch == 0 and not model.ignores_masked_inputs
    batch = Batch(
        x={"a": torch.ones(2, 3)},
        mask=torch.ones(2, 1, dtype=torch.bool),
        y=torch.zeros(2, 1),
        y_mask=torch.ones(2, dtype=torch.bool),
        index=torch.arange(2),
    )
    out = model(batch)
    assert model.label_free_weights(out) is None
    assert model.train_drop(batch, torch.Generator()) is batch
    trainer = FakeTrainer([batch])
    model.on_train_start(trainer)
    model.on_epoch_start(trainer, 0)
    model.after_backward(batch, out)
    model.on_epoch_end(trainer, 0)
    assert trainer.records == {}
    model.train()
    with model.evaluating():
        assert not model.training
    assert model.training
    model.eval()
    with model.evaluating():
        assert not model.training
    assert not model.training


# ------------------------------------------------------------------------------------------------------
# the optimiser: AdamW's multi-tensor (foreach) implementation, the same updates (issue 14, item 3)
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["concat", "omnifuse", "gblend"])
def test_foreach_adamw_trains_the_same_weights_as_the_loop(method: str) -> None:
    """Five steps of the default optimiser (``foreach=True``) and of AdamW's per-parameter loop
    (``foreach=False``) from the same weights, batches and hyper-parameters: every parameter bit for bit."""
    info = ModelInfo(MODS, "binary", 1)
    params = TINY_OVERRIDES.get(method, {})
    torch.manual_seed(0)
    a = build_method(method, info, **params)
    b = copy.deepcopy(a)
    opt_a = a.configure_optimizer(lr=0.01, weight_decay=0.05)
    assert opt_a.defaults["foreach"] is True
    opt_b = torch.optim.AdamW([p for p in b.parameters() if p.requires_grad], lr=0.01, weight_decay=0.05, foreach=False)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        batch = _batch(6)
        batch.x = {k: v + torch.randn(v.shape, generator=g) for k, v in batch.x.items()}
        for model, opt in ((a, opt_a), (b, opt_b)):
            torch.manual_seed(2)  # the same dropout in both
            model.train()
            out = model(batch)
            loss, _ = model.loss(batch, out)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    sa, sb = a.state_dict(), b.state_dict()
    moved = [k for k in sa if not torch.equal(sa[k], build_method(method, info, **params).state_dict()[k])]
    assert moved  # the steps changed weights
    assert all(torch.equal(sa[k], sb[k]) for k in sa), [k for k in sa if not torch.equal(sa[k], sb[k])]
