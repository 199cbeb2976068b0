"""ShaSpec (omnifuse.fuse.methods.shaspec): a missing modality's feature generated from the available shared
features at the right slots (mean and first), the residual fusion of present slots, the distribution-alignment
and domain-classification losses against hand computations, learning end to end, and one fold through
``run_fold`` for every task kind and every pattern of missing modalities."""

from __future__ import annotations

import math

import pytest
import torch

import omnifuse.fuse.methods.shaspec  # noqa: F401  (registers the method)
from omnifuse.fuse.base import ModalityInfo, ModelInfo
from omnifuse.fuse.methods import build_method
from omnifuse.fuse.methods.shaspec import alignment_loss, domain_loss, generate_missing
from tests.helpers import (
    TASK_OUTPUTS,
    TWO,
    assert_learns,
    assert_run_fold_every_combination,
    vector_batch,
    write_synthetic_cache,
)

THREE = TWO + [ModalityInfo("c", "vector", (6,))]


def test_generate_missing_fills_the_missing_slots_from_the_available_shared_features() -> None:
    r = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)  # row 0: [0,1],[2,3],[4,5]; row 1: +6
    fused = -torch.ones(2, 3, 2)
    mask = torch.tensor([[True, False, True], [False, True, False]])
    mean = generate_missing(r, fused, mask, "mean")
    assert mean[0, 1].tolist() == [2.0, 3.0]  # mean of r_a [0,1] and r_c [4,5]
    assert mean[1, 0].tolist() == [8.0, 9.0] and mean[1, 2].tolist() == [8.0, 9.0]  # r_b of row 1
    assert mean[0, 0].tolist() == [-1.0, -1.0] and mean[1, 1].tolist() == [-1.0, -1.0]  # present: fused
    first = generate_missing(r, fused, mask, "first")
    assert first[0, 1].tolist() == [0.0, 1.0]  # the first available modality's shared feature (their code)
    picked = generate_missing(r, fused, mask, "first", pick=torch.tensor([2, 1]))
    assert picked[0, 1].tolist() == [4.0, 5.0]
    empty = generate_missing(r, fused, torch.zeros(2, 3, dtype=torch.bool), "mean")
    assert torch.equal(empty, torch.zeros(2, 3, 2))


def test_forward_fuses_present_slots_residually_and_generates_missing_ones() -> None:
    torch.manual_seed(0)
    model = build_method("shaspec", ModelInfo(THREE, "multiclass", 3), d=4, hidden=None).eval()
    mask = torch.tensor([[True, False, True], [True, True, True]])
    batch = vector_batch(mask, torch.tensor([0, 2]), names=("a", "b", "c"))
    with torch.no_grad():
        out = model(batch)
        E = model.enc(batch) * mask.unsqueeze(-1)  # a missing slot is zero
        r = model.shared(E)  # one encoder for every modality
        s = torch.stack([model.specific[j](E[:, j]) for j in range(3)], dim=1)
        residual = r + model.proj(torch.cat([r, s], dim=-1))
    f = out.extra["fused"]
    torch.testing.assert_close(f[0, [0, 2]], residual[0, [0, 2]])
    torch.testing.assert_close(f[0, 1], (r[0, 0] + r[0, 2]) / 2)  # generated from the available shared features
    torch.testing.assert_close(f[1], residual[1])
    torch.testing.assert_close(out.logits, model.head(f.reshape(2, -1)))
    torch.testing.assert_close(out.extra["domain_logits"], model.domain(s))


def test_first_fill_in_training_draws_an_available_modality() -> None:
    torch.manual_seed(0)
    model = build_method("shaspec", ModelInfo(THREE, "binary", 1), d=4, fill="first", dropout=0.0).train()
    mask = torch.tensor([[True, False, True]]).expand(200, 3)
    out = model(vector_batch(mask, torch.zeros(200, 1), names=("a", "b", "c")))
    r, f = out.extra["shared"], out.extra["fused"]
    from_a = torch.isclose(f[:, 1], r[:, 0]).all(1)
    from_c = torch.isclose(f[:, 1], r[:, 2]).all(1)
    assert bool((from_a | from_c).all()) and 50 < int(from_a.sum()) < 150


def test_alignment_loss_hand_computed() -> None:
    r = torch.tensor([[[0.0, 0.0], [1.0, 2.0], [3.0, -1.0]], [[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, True, True], [True, False, True]])
    # cycle (a,b) row 0: |[-1,-2]| mean 1.5; (b,c) row 0: |[-2,3]| mean 2.5; (c,a) rows 0,1: [3,-1,-1,-1] mean 1.5
    assert float(alignment_loss(r, mask)) == pytest.approx(1.5 + 2.5 + 1.5)
    assert float(alignment_loss(r, mask, "l2")) == pytest.approx(2.5 + 6.5 + 3.0)
    # two modalities: one pair; one modality: none
    assert float(alignment_loss(r[:, :2], mask[:, :2])) == pytest.approx(1.5)
    assert float(alignment_loss(r[:, :1], mask[:, :1])) == 0.0


def test_domain_loss_hand_computed() -> None:
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [5.0, 5.0]]])
    mask = torch.tensor([[True, True], [True, False]])
    want = (
        -math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(math.e / (1 + math.e)) - math.log(0.5)
    ) / 3  # slots (0,a), (0,b), (1,a); (1,b) is missing
    assert float(domain_loss(logits, mask)) == pytest.approx(want, rel=1e-6)


def test_loss_combines_task_alignment_and_domain_terms() -> None:
    torch.manual_seed(0)
    model = build_method("shaspec", ModelInfo(THREE, "binary", 1), d=4, alpha=0.3, beta=0.7).train()
    mask = torch.tensor([[True, True, False], [True, True, True], [False, True, True]])
    batch = vector_batch(mask, torch.tensor([[1.0], [0.0], [1.0]]), names=("a", "b", "c"))
    loss, t = model.loss(batch, model(batch))
    assert float(loss) == pytest.approx(t["task"] + 0.3 * t["dao"] + 0.7 * t["dco"], rel=1e-5)
    with pytest.raises(ValueError, match="shaspec fill must be one of"):
        build_method("shaspec", ModelInfo(THREE, "binary", 1), fill="zero")


def test_learns_with_the_trainer() -> None:
    assert_learns("shaspec", {"hidden": 16})


# ------------------------------------------------------------------------------------------------------
# one fold through run_fold: every task kind, every combination of modalities
# ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_synthetic_cache(tmp_path_factory.mktemp("shaspec") / "c.zarr", n=120, seed=1)


@pytest.mark.parametrize("task,c", TASK_OUTPUTS)
def test_run_fold_every_task_and_missing_pattern(cache, task: str, c: int) -> None:
    assert_run_fold_every_combination(cache, "shaspec", {"d": 8, "hidden": 8, "fill": "first"}, task, c)
