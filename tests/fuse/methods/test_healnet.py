"""HEALNet (omnifuse.fuse.methods.healnet): the latent array updated by each present modality's
cross-attention in turn and left as it is where a modality is missing (the output does not depend on a missing
modality's values), the single-token attention equal to the general formula, the self-normalising gated
feed-forward, the L1 term over the fusion parameters, learning end to end, and one fold through ``run_fold``
for every task kind and every pattern of missing modalities (none present included)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from omnifuse.fuse.base import Batch, ModelInfo
from omnifuse.fuse.methods.healnet import HEALNet, LatentAttention
from omnifuse.fuse.registry import build_method
from tests.helpers import (
    TASK_OUTPUTS,
    TWO,
    assert_learns,
    assert_run_fold_every_combination,
    vector_batch,
    write_synthetic_cache,
)


def _model(**kw) -> HEALNet:
    torch.manual_seed(0)
    model = build_method("healnet", ModelInfo(TWO, "binary", 1), d=8, latents=3, latent_dim=8, **kw)
    assert isinstance(model, HEALNet)
    return model.eval()


def test_a_missing_modality_skips_its_update() -> None:
    model = _model()
    mask = torch.tensor([[True, False], [True, True], [False, True]])
    batch = vector_batch(mask, torch.zeros(3, 1))
    with torch.no_grad():
        S = model.fuse(model.contexts(batch), mask)
        ctx = model.contexts(batch)
        # by hand: per layer, modality a's cross-attention then feed-forward, both residual; b skipped for row 0
        x = model.latents.unsqueeze(0).expand(3, -1, -1)
        for layer in range(2):
            for j in range(2):
                upd = x + model.layers[layer].cross[j](x, ctx[j])
                upd = upd + model.layers[layer].cross_ff[j](upd)
                x = torch.where(mask[:, j].view(3, 1, 1), upd, x)
    torch.testing.assert_close(S, x)
    only_a = model.latents.unsqueeze(0)
    with torch.no_grad():
        for layer in range(2):
            only_a = only_a + model.layers[layer].cross[0](only_a, ctx[0][:1])
            only_a = only_a + model.layers[layer].cross_ff[0](only_a)
    torch.testing.assert_close(S[:1], only_a)
    # the missing modality's values never reach the output, in training mode too (dropout off)
    moved_x = {n: v.clone() for n, v in batch.x.items()}
    for j, n in enumerate(("a", "b")):
        moved_x[n][~mask[:, j]] = 5 * torch.randn(int((~mask[:, j]).sum()), 6)
    moved = dataclasses.replace(batch, x=moved_x)
    model_train = _model().train()

    def logits(b: Batch) -> torch.Tensor:
        torch.manual_seed(1)  # the same dropout masks
        return model_train(b).logits

    torch.testing.assert_close(logits(moved), logits(batch))
    # a present modality does move it
    moved.x["a"][0] += 1.0
    assert not torch.allclose(logits(moved)[0], logits(batch)[0])


def test_single_context_token_attention_is_the_general_formula() -> None:
    torch.manual_seed(0)
    single = LatentAttention(8, 6, heads=2, dim_head=4, dropout=0.0, temperature=0.5, single=True)
    general = LatentAttention(8, 6, heads=2, dim_head=4, dropout=0.0, temperature=0.5)
    general.to_kv.load_state_dict(single.to_kv.state_dict())
    general.to_out.load_state_dict(single.to_out.state_dict())
    assert single.norm_context is not None and general.norm_context is not None
    general.norm_context.load_state_dict(single.norm_context.state_dict())
    assert single.to_q is None and general.to_q is not None
    x, ctx = torch.randn(3, 5, 8), torch.randn(3, 1, 6)
    torch.testing.assert_close(single(x, ctx), general(x, ctx))
    # the general form by hand: softmax(q k^T scale / T) v over two context tokens, LeakyReLU(0.01) output
    ctx2 = torch.randn(3, 2, 6)
    q = general.to_q(general.norm(x)).view(3, 5, 2, 4).transpose(1, 2)
    k, v = general.to_kv(general.norm_context(ctx2)).chunk(2, dim=-1)
    k, v = k.view(3, 2, 2, 4).transpose(1, 2), v.view(3, 2, 2, 4).transpose(1, 2)
    w = torch.softmax(q @ k.transpose(-1, -2) * 0.5 / 0.5, dim=-1)
    want = F.leaky_relu(general.to_out((w @ v).transpose(1, 2).reshape(3, 5, 8)), 0.01)
    torch.testing.assert_close(general(x, ctx2), want)


def _fuse_on_every_row(model: HEALNet, contexts: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """The fusion as first written: each modality's update computed on every row, kept where it is present
    (the reference of the present-rows-only update)."""
    x = model.latents.unsqueeze(0).expand(mask.shape[0], -1, -1)
    here = mask.view(mask.shape[0], mask.shape[1], 1, 1)
    for layer in model.layers:
        for j, (ctx, att, ff) in enumerate(zip(contexts, layer.cross, layer.cross_ff, strict=True)):
            upd = x + att(x, ctx)
            upd = upd + ff(upd)
            x = torch.where(here[:, j], upd, x)
            for self_att, self_ff in zip(layer.self_attn, layer.self_ff, strict=True):
                x = x + self_att(x)
                x = x + self_ff(x)
    return x


@pytest.mark.parametrize("tokens,self_per_cross_attn", [(1, 0), (2, 1)])
def test_present_rows_update_equals_the_update_on_every_row_in_training(tokens: int, self_per_cross_attn: int) -> None:
    """Same seed, training mode (dropout on): the same latents and gradients as computing every row's update,
    so the dropout draws are the same too."""
    mods = [*TWO, dataclasses.replace(TWO[0], name="c")]
    torch.manual_seed(0)
    model = build_method(
        "healnet", ModelInfo(mods, "binary", 1), d=8, latents=3, latent_dim=8, tokens=tokens,
        self_per_cross_attn=self_per_cross_attn, attn_dropout=0.3, ff_dropout=0.4,
    ).train()
    mask = torch.tensor([[True, False, True], [True, True, False], [False, False, False], [False, True, True]])
    mask[:, 2] = False  # a modality no row holds: its update is computed on no row, its dropout still drawn
    batch = vector_batch(mask, torch.zeros(4, 1), names=("a", "b", "c"))
    results = []
    for fuse in (model.fuse, lambda c, m: _fuse_on_every_row(model, c, m)):
        model.zero_grad()
        torch.manual_seed(11)
        S = fuse(model.contexts(batch), mask)
        nxt = torch.rand(3)  # the generator's state after the fusion: the same number of draws
        (S.pow(2).sum() + S.sum()).backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results.append((S.detach(), nxt, grads))
    (s1, n1, g1), (s2, n2, g2) = results
    torch.testing.assert_close(s1, s2)
    torch.testing.assert_close(n1, n2)
    assert len(g1) == len(g2)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)  # sums over rows in another order
    assert not torch.equal(s1[0], s1[2])  # the updated row differs from the untouched one


def test_self_normalising_feed_forward_and_l1_term() -> None:
    model = _model()
    ff = model.layers[0].cross_ff[0][1]
    x = torch.randn(4, 8)
    h, gate = ff.inp(x).chunk(2, dim=-1)
    torch.testing.assert_close(ff(x), ff.out(h * F.selu(gate)))
    assert not _model(snn=False).layers[0].cross_ff[0][1].snn
    enc = {id(p) for p in model.enc.parameters()}
    want = sum(float(p.detach().abs().sum()) for p in model.parameters() if id(p) not in enc)
    assert float(model.l1_penalty().detach()) == pytest.approx(want, rel=1e-5)
    batch = vector_batch(torch.tensor([[True, True], [True, False]]), torch.tensor([[1.0], [0.0]]))
    out = model(batch)
    loss, terms = model.loss(batch, out)
    task = F.binary_cross_entropy_with_logits(out.logits, batch.y)
    assert float(loss.detach()) == pytest.approx(float(task.detach()) + 1e-5 * want, rel=1e-5)
    assert set(terms) == {"task", "l1"}


def test_learns_with_the_trainer() -> None:
    assert_learns("healnet", {"latents": 4, "latent_dim": 16})


# ------------------------------------------------------------------------------------------------------
# one fold through run_fold: every task kind, every combination of modalities (the empty one included)
# ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_synthetic_cache(tmp_path_factory.mktemp("healnet") / "c.zarr", n=120, seed=1)


@pytest.mark.parametrize("task,c", TASK_OUTPUTS)
def test_run_fold_every_task_and_missing_pattern(cache, task: str, c: int) -> None:
    assert_run_fold_every_combination(cache, "healnet", {"d": 8, "latents": 4, "latent_dim": 8, "tokens": 2}, task, c)
