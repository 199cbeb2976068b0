"""The baselines' shared parts (omnifuse.fuse.methods.common): clear errors for problems and batches a method
cannot take, the encoder bank, the missing-slot fill, the supervised family's loss, and batches moved to a
device."""

from __future__ import annotations

import pytest
import torch

from omnifuse.fuse.base import Batch, ModalityInfo, ModelInfo
from omnifuse.fuse.layers import task_loss
from omnifuse.fuse.methods import build_method
from omnifuse.fuse.methods.common import (
    EncoderBank,
    MissingFill,
    batches_on,
    check_batch,
    check_info,
    check_missing_mode,
)
from tests.helpers import TWO, vector_batch


@pytest.mark.parametrize(
    "info,message",
    [
        (ModelInfo(TWO, "regression", 1), "unknown task kind 'regression'"),
        (ModelInfo([], "binary", 1), "at least one modality"),
        (ModelInfo(TWO, "binary", 2), "a binary task has one output, got num_outputs=2"),
        (ModelInfo(TWO, "multiclass", 1), "a multiclass task needs at least 2 classes, got 1"),
        (ModelInfo(TWO, "multilabel", 0), "num_outputs must be positive, got 0"),
        (ModelInfo([TWO[0], TWO[0]], "binary", 1), r"modality names must be unique, got \['a', 'a'\]"),
    ],
)
def test_check_info_names_the_problem(info: ModelInfo, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_info(info)


def test_check_info_accepts_every_task_kind() -> None:
    for kind, c in (("binary", 1), ("multilabel", 3), ("multiclass", 2)):
        check_info(ModelInfo(TWO, kind, c))


def test_check_batch_names_what_does_not_match() -> None:
    info = ModelInfo(TWO, "binary", 1)
    batch = vector_batch(torch.ones(3, 2, dtype=torch.bool), torch.zeros(3, 1))
    check_batch(info, batch)
    lacking = Batch(x={"a": batch.x["a"]}, mask=batch.mask, y=batch.y, y_mask=batch.y_mask, index=batch.index)
    with pytest.raises(KeyError, match=r"batch lacks modality input\(s\) \['b'\]"):
        check_batch(info, lacking)
    wide = Batch(x=batch.x, mask=torch.ones(3, 3, dtype=torch.bool), y=batch.y, y_mask=batch.y_mask, index=batch.index)
    with pytest.raises(ValueError, match=r"batch.mask must be \[B, 2\] \(one column per modality\), got \(3, 3\)"):
        check_batch(info, wide)
    swapped = Batch(
        x={"b": batch.x["b"], "a": batch.x["a"]}, mask=batch.mask, y=batch.y, y_mask=batch.y_mask, index=batch.index
    )
    with pytest.raises(ValueError, match=r"in the order \['a', 'b'\], got \['b', 'a'\]"):
        check_batch(info, swapped)
    # a method's forward runs the check
    with pytest.raises(KeyError, match="batch lacks modality"):
        build_method("concat", info, d=4)(lacking)


def test_missing_modes() -> None:
    assert check_missing_mode("zero") == "zero" and check_missing_mode("token") == "token"
    with pytest.raises(ValueError, match=r"missing must be one of \('zero', 'token'\), got 'mean'"):
        check_missing_mode("mean")
    with pytest.raises(ValueError, match="missing must be one of"):
        MissingFill(2, 4, "mean")


def test_encoder_bank_stacks_one_encoder_per_modality() -> None:
    torch.manual_seed(0)
    mods = [ModalityInfo("a", "vector", (6,)), ModalityInfo("s", "sequence", (3, 5))]
    bank = EncoderBank(ModelInfo(mods, "binary", 1), 8).eval()
    g = torch.Generator().manual_seed(1)
    batch = Batch(
        x={"a": torch.randn(4, 6, generator=g), "s": torch.randn(4, 3, 5, generator=g)},
        mask=torch.ones(4, 2, dtype=torch.bool),
        y=torch.zeros(4, 1),
        y_mask=torch.ones(4, dtype=torch.bool),
        index=torch.arange(4),
        tokens_mask={"s": torch.tensor([[True, True, False]] * 4)},
    )
    E = bank(batch)
    assert E.shape == (4, 2, 8) and len(bank.encoders) == 2 and bank.names == ["a", "s"]
    torch.testing.assert_close(E[:, 0], bank.encoders[0](batch.x["a"], None))
    torch.testing.assert_close(E[:, 1], bank.encode(batch, 1))
    # the sequence encoder reads the token mask: a masked token's values do not matter
    moved = Batch(
        x={"a": batch.x["a"], "s": batch.x["s"].clone()},
        mask=batch.mask,
        y=batch.y,
        y_mask=batch.y_mask,
        index=batch.index,
        tokens_mask=batch.tokens_mask,
    )
    moved.x["s"][:, 2] += 100.0
    torch.testing.assert_close(bank(moved), E)


def test_missing_fill_zero_and_token() -> None:
    torch.manual_seed(0)
    E = torch.randn(3, 2, 4)
    mask = torch.tensor([[True, False], [False, True], [True, True]])
    zero = MissingFill(2, 4)
    assert zero.token is None
    out = zero(E, mask)
    torch.testing.assert_close(out[mask], E[mask])
    assert torch.equal(out[~mask], torch.zeros(2, 4))
    tok = MissingFill(2, 4, "token")
    assert tok.token is not None and tok.token.shape == (2, 4) and float(tok.token.detach().abs().max()) < 0.2
    out = tok(E, mask)
    torch.testing.assert_close(out[mask], E[mask])
    torch.testing.assert_close(out[0, 1], tok.token[1])
    torch.testing.assert_close(out[1, 0], tok.token[0])
    out.sum().backward()  # the token is learned: two missing slots, one per modality
    torch.testing.assert_close(tok.token.grad, torch.ones(2, 4))


def test_supervised_loss_is_the_task_loss_over_labelled_rows() -> None:
    torch.manual_seed(0)
    model = build_method("concat", ModelInfo(TWO, "multiclass", 3), d=4)
    batch = vector_batch(torch.ones(5, 2, dtype=torch.bool), torch.tensor([0, 1, 2, 0, 1]))
    batch.y_mask[1] = False
    out = model(batch)
    loss, terms = model.loss(batch, out)
    torch.testing.assert_close(loss, task_loss(out.logits, batch.y, "multiclass", batch.y_mask))
    assert terms == {"task": pytest.approx(float(loss.detach()))}
    assert model.ignores_masked_inputs


def test_batches_on_moves_each_batch_lazily() -> None:
    batches = [vector_batch(torch.ones(2, 2, dtype=torch.bool), torch.zeros(2, 1), seed=s) for s in range(3)]
    moved = batches_on(batches, torch.device("cpu"))
    first = next(moved)
    assert first is not batches[0] and torch.equal(first.x["a"], batches[0].x["a"])
    rest = list(moved)
    assert len(rest) == 2 and torch.equal(rest[1].x["b"], batches[2].x["b"])
