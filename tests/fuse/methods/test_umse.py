"""UMSE with modality-aware attention and skip bottleneck (omnifuse.fuse.methods.umse): the skip bottleneck
against a hand computation, the grouped per-modality layers equal to torch's pre-norm transformer layer, the
modalities exchanging information only through the bottleneck and a missing one skipped, the prediction read
from the present modalities' [CLS], learning end to end, and one fold through ``run_fold`` for every task kind and
every pattern of missing modalities (none present included)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from omnifuse.fuse.base import ModelInfo
from omnifuse.fuse.methods.umse import UMSE, GroupedEncoderLayer, skip_bottleneck
from omnifuse.fuse.registry import build_method
from tests.helpers import (
    TASK_OUTPUTS,
    TWO,
    assert_learns,
    assert_run_fold_every_combination,
    vector_batch,
    write_synthetic_cache,
)


def test_skip_bottleneck_averages_the_present_modalities_only() -> None:
    outs = torch.tensor(
        [
            [[[1.0, 2.0]], [[0.0, 0.0]], [[5.0, 5.0]]],
            [[[3.0, 4.0]], [[9.0, 9.0]], [[7.0, 7.0]]],
            [[[8.0, 8.0]], [[6.0, 2.0]], [[1.0, 1.0]]],
        ]
    )  # [M=3, B=3, K=1, d=2]
    mask = torch.tensor([[True, True, False], [False, False, True], [False, False, False]])
    prev = torch.full((3, 1, 2), -1.0)
    got = skip_bottleneck(outs, mask, prev)
    assert got[0].tolist() == [[2.0, 3.0]]  # mean of modalities 0 and 1
    assert got[1].tolist() == [[6.0, 2.0]]  # modality 2 alone
    assert got[2].tolist() == [[-1.0, -1.0]]  # nothing present: the bottleneck stays


def test_grouped_layer_is_torchs_pre_norm_layer_without_output_projection() -> None:
    torch.manual_seed(0)
    grouped = GroupedEncoderLayer(2, 8, 2, 16, 0.0).eval()
    x = torch.randn(2, 3, 5, 8)
    out = grouped(x)
    for g in range(2):
        ref = nn.TransformerEncoderLayer(8, 2, 16, 0.0, activation="relu", batch_first=True, norm_first=True).eval()
        with torch.no_grad():
            ref.norm1.weight.copy_(grouped.ln1_w[g])
            ref.norm1.bias.copy_(grouped.ln1_b[g])
            ref.norm2.weight.copy_(grouped.ln2_w[g])
            ref.norm2.bias.copy_(grouped.ln2_b[g])
            ref.self_attn.in_proj_weight.copy_(grouped.w_qkv[g].T)
            ref.self_attn.in_proj_bias.copy_(grouped.b_qkv[g])
            ref.self_attn.out_proj.weight.copy_(torch.eye(8))  # theirs has no output projection
            ref.self_attn.out_proj.bias.zero_()
            ref.linear1.weight.copy_(grouped.w1[g].T)
            ref.linear1.bias.copy_(grouped.b1[g])
            ref.linear2.weight.copy_(grouped.w2[g].T)
            ref.linear2.bias.copy_(grouped.b2[g])
            torch.testing.assert_close(out[g], ref(x[g]), rtol=1e-5, atol=1e-5)


def _model(**kw) -> UMSE:
    torch.manual_seed(0)
    model = build_method("umse", ModelInfo(TWO, "binary", 1), d=8, heads=2, **kw)
    assert isinstance(model, UMSE)
    return model.eval()


def test_modalities_meet_only_in_the_bottleneck_and_a_missing_one_is_skipped() -> None:
    both = torch.tensor([[True, True], [True, False]])
    batch = vector_batch(both, torch.zeros(2, 1))
    moved = vector_batch(both, torch.zeros(2, 1))
    moved.x["a"] = batch.x["a"].clone()
    moved.x["b"] = batch.x["b"] + 1.0  # b moves on both rows (row 1 holds no b)
    one = _model(layers=1)
    with torch.no_grad():
        cls1, _ = one.fuse(one.enc(batch), both)
        cls1m, _ = one.fuse(one.enc(moved), both)
    torch.testing.assert_close(cls1m[:, 0], cls1[:, 0])  # one layer: a's [CLS] never sees b
    two = _model(layers=2)
    with torch.no_grad():
        cls2, _ = two.fuse(two.enc(batch), both)
        cls2m, _ = two.fuse(two.enc(moved), both)
        ref, out = two(batch).logits, two(moved).logits
    assert not torch.allclose(cls2m[0, 0], cls2[0, 0])  # two layers: b reaches a through the bottleneck
    torch.testing.assert_close(cls2m[1, 0], cls2[1, 0])  # ... but not where b is missing (skipped)
    torch.testing.assert_close(out[1], ref[1])
    # the prediction reads the mean of the present modalities' [CLS]
    with torch.no_grad():
        pooled = torch.stack([cls2[0].mean(0), cls2[1, 0]])
        torch.testing.assert_close(ref, two.head(two.norm_out(pooled)))
        none = vector_batch(torch.tensor([[False, False]]), torch.zeros(1, 1))
        _, bott = two.fuse(two.enc(none), none.mask)
        torch.testing.assert_close(two(none).logits, two.head(two.norm_out(bott.mean(1))))
        torch.testing.assert_close(bott[0], two.bottleneck)  # nothing present: the bottleneck is never updated


def test_learns_with_the_trainer() -> None:
    assert_learns("umse", {"heads": 2, "ff_mult": 2})


# ------------------------------------------------------------------------------------------------------
# one fold through run_fold: every task kind, every combination of modalities (the empty one included)
# ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_synthetic_cache(tmp_path_factory.mktemp("umse") / "c.zarr", n=120, seed=1)


@pytest.mark.parametrize("task,c", TASK_OUTPUTS)
def test_run_fold_every_task_and_missing_pattern(cache, task: str, c: int) -> None:
    assert_run_fold_every_combination(cache, "umse", {"d": 8, "heads": 2, "ff_mult": 2, "hidden": 8}, task, c)
