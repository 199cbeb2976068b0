"""encode_present (omnifuse.fuse.layers): the backbone run on the rows holding each modality gives what the
whole-batch backbone gives at those rows (zeros elsewhere), with the same random draws (dropout masks, the
generator's state after), the same gradients, and falls back to the whole batch where that cannot hold."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from omnifuse.fuse.base import Batch, ModalityInfo, ModelInfo
from omnifuse.fuse.encoders import EncoderBank
from omnifuse.fuse.layers import encode_present
from tests.fuse.methods.same_step import MIXED, mixed_batch

LAB = ModalityInfo(
    "lab",
    "tabular",
    (5,),
    feature_kinds=("numeric", "numeric", "binary", "categorical:3", "numeric"),
    bin_edges=((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0, 3.0), None, None, (-1.0, 1.0)),
)


def lab_batch(batch: Batch) -> Batch:
    """``batch`` with a tabular modality with column kinds added (present in about two rows of three)."""
    g = torch.Generator().manual_seed(11)
    n = batch.mask.shape[0]
    present = torch.rand(n, generator=g) < 0.66
    x = torch.randn(n, 5, generator=g)
    x[:, 3] = torch.randint(0, 4, (n,), generator=g).float()
    x = x * present.unsqueeze(1)
    return Batch(
        x={**batch.x, "lab": x},
        mask=torch.cat([batch.mask, present.unsqueeze(1)], dim=1),
        y=batch.y,
        y_mask=batch.y_mask,
        index=batch.index,
        tokens_mask=batch.tokens_mask,
    )


def masked(E: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.unsqueeze(-1), E, torch.zeros_like(E))


def run(bank: EncoderBank, batch: Batch, fn, seed: int = 0):
    torch.manual_seed(seed)
    E = fn(bank, batch)
    state = torch.get_rng_state()
    weight = torch.randn(E.shape, generator=torch.Generator().manual_seed(1))
    bank.zero_grad(set_to_none=True)
    (masked(E, batch.mask) * weight).sum().backward()
    grads = {k: p.grad.clone() for k, p in bank.named_parameters() if p.grad is not None}
    return E.detach(), state, grads


@pytest.mark.parametrize("options", [{}, {"numeric": "ple", "pool": "mean", "rnn": "lstm"}])
@pytest.mark.parametrize("training", [True, False])
def test_encode_present_is_the_whole_batch_at_the_present_rows(options: dict, training: bool) -> None:
    info = ModelInfo([*MIXED, LAB], "binary", 1)
    torch.manual_seed(0)
    bank = EncoderBank(info, 8, {"dropout": 0.4, **options})
    bank.train(training)
    batch = lab_batch(mixed_batch(seed=2))
    assert not batch.mask.all(0).any() and batch.mask.any(0).all()  # every modality is subset
    new, state_new, grads_new = run(bank, batch, encode_present)
    old, state_old, grads_old = run(bank, batch, lambda b, x: b(x))
    assert torch.equal(state_new, state_old)  # the same random draws, in the same number
    # float32 rounding only: a matrix product over fewer rows may block its sums differently (outputs are O(1)
    # after the encoders' LayerNorm, one unit in the last place about 1e-7)
    torch.testing.assert_close(new, masked(old, batch.mask), rtol=1e-5, atol=1e-6)
    assert torch.equal(new[~batch.mask], torch.zeros_like(new[~batch.mask]))
    assert set(grads_new) == set(grads_old)
    # gradients sum O(1) terms over the rows, in another order (float32: about rows x 6e-8 x the largest term)
    for k, g in grads_new.items():
        torch.testing.assert_close(g, grads_old[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


def test_dropout_masks_are_those_of_the_whole_batch() -> None:
    # a present row's dropout mask depends on the whole batch's draw: with the rows of another row count the
    # numbers would change. Same seed, three present rows of six: the masks (zeros) fall where the whole
    # batch's do.
    info = ModelInfo([ModalityInfo("v", "vector", (4,))], "binary", 1)
    torch.manual_seed(0)
    bank = EncoderBank(info, 6, {"dropout": 0.5})
    drop = bank.encoders[0].net[2]
    seen = {}
    drop.register_forward_hook(lambda mod, inp, out: seen.__setitem__("out", out.detach()))
    mask = torch.tensor([[True], [False], [True], [False], [False], [True]])
    x = torch.randn(6, 4) * mask
    batch = Batch(x={"v": x}, mask=mask, y=torch.zeros(6, 1), y_mask=torch.ones(6, dtype=torch.bool),
                  index=torch.arange(6))
    torch.manual_seed(5)
    bank(batch)
    whole = seen["out"][mask[:, 0]]
    torch.manual_seed(5)
    encode_present(bank, batch)
    torch.testing.assert_close(seen["out"], whole)


class BatchNormEncoder(nn.Module):
    """Not row-wise in training (batch statistics): must run on the whole batch."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(7, d), nn.BatchNorm1d(d), nn.Dropout(0.3))

    def forward(self, x: torch.Tensor, tokens_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x)


def test_encoders_that_are_not_row_wise_and_step_masks_run_on_the_whole_batch() -> None:
    info = ModelInfo(list(MIXED), "binary", 1)
    torch.manual_seed(0)
    bank = EncoderBank(info, 8, {"dropout": 0.3})
    bank.encoders[1] = BatchNormEncoder(8)  # "vec"
    bank.train()
    batch = mixed_batch(seed=3)
    steps = torch.ones(batch.mask.shape[0], 5, dtype=torch.bool)
    steps[:, 4] = False  # a variable-length time series: its dropout acts on packed steps
    batch.tokens_mask["ts"] = steps
    new, state_new, grads_new = run(bank, batch, encode_present)
    old, state_old, grads_old = run(bank, batch, lambda b, x: b(x))
    assert torch.equal(state_new, state_old)
    torch.testing.assert_close(new, masked(old, batch.mask), rtol=1e-5, atol=1e-6)
    for k, g in grads_new.items():
        torch.testing.assert_close(g, grads_old[k], rtol=1e-4, atol=1e-5)


def test_a_modality_held_by_no_row_is_not_encoded_without_dropout() -> None:
    info = ModelInfo(list(MIXED), "binary", 1)
    torch.manual_seed(0)
    bank = EncoderBank(info, 8)
    batch = mixed_batch(seed=4, drop=False)
    keep = batch.mask.clone()
    keep[:, 0] = False
    batch = batch.with_mask(keep)
    calls = []
    bank.encoders[0].register_forward_hook(lambda *a: calls.append(1))
    bank.eval()
    E = encode_present(bank, batch)
    assert not calls and torch.equal(E[:, 0], torch.zeros_like(E[:, 0]))
    bank.train()  # dropout active: the encoder still runs (its draws are part of the random stream)
    torch.manual_seed(0)
    encode_present(bank, batch)
    state = torch.get_rng_state()
    torch.manual_seed(0)
    bank(batch)
    assert calls and torch.equal(state, torch.get_rng_state())
