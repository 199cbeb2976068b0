"""Flex-MoE (omnifuse.fuse.methods.flexmoe): the combination index, the missing-modality bank indexed by the
observed combination, the sparse expert dispatch, the G-/S-Router loss against a hand computation, the S-Router
targets with fewer experts than combinations, the warm-up on full-modality rows, learning end to end, and one
fold through ``run_fold`` for every task kind and every pattern of missing modalities (none present included)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from omnifuse.fuse.base import ModalityInfo, ModelInfo
from omnifuse.fuse.methods.flexmoe import (
    FlexMoE,
    combination_table,
    cv_squared,
    gate_loss,
    prob_in_top_k,
    route,
)
from omnifuse.fuse.registry import build_method
from tests.helpers import (
    TASK_OUTPUTS,
    FakeTrainer,
    assert_learns,
    assert_run_fold_every_combination,
    vector_batch,
    write_synthetic_cache,
)

THREE = [ModalityInfo(n, "vector", (6,)) for n in ("a", "b", "c")]


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _cv2(x: np.ndarray) -> float:
    return float(x.var(ddof=1) / (x.mean() ** 2 + 1e-10))


def test_combination_index_is_theirs_largest_first_and_empty_last() -> None:
    table = combination_table(3)
    # bit j = modality j present; full = 0, pairs (0,1), (0,2), (1,2) = 1..3, singles 4..6, empty 7
    assert table[0b111] == 0
    assert [table[0b011], table[0b101], table[0b110]] == [1, 2, 3]
    assert [table[0b001], table[0b010], table[0b100]] == [4, 5, 6]
    assert table[0] == 7 and sorted(table) == list(range(8))


def test_missing_slots_hold_the_bank_entry_of_the_rows_combination() -> None:
    torch.manual_seed(0)
    model = build_method("flexmoe", ModelInfo(THREE, "binary", 1), d=8, heads=2).eval()
    assert isinstance(model, FlexMoE)
    mask = torch.tensor([[True, True, True], [True, False, True], [False, True, False], [False, False, False]])
    batch = vector_batch(mask, torch.zeros(4, 1), names=("a", "b", "c"))
    with torch.no_grad():
        slots, combo = model.slots(batch)
        enc = model.enc(batch)
    assert combo.tolist() == [0, 2, 5, 7]
    torch.testing.assert_close(slots[0], enc[0])  # full row: the encoders' outputs
    torch.testing.assert_close(slots[1, 1], model.bank[2, 1].detach())  # {a, c} observed: b from bank[2]
    torch.testing.assert_close(slots[1, [0, 2]], enc[1, [0, 2]])
    torch.testing.assert_close(slots[2, [0, 2]], model.bank[5, [0, 2]].detach())  # {b} observed: bank[5]
    torch.testing.assert_close(slots[3], model.bank[7].detach())  # nothing observed: the empty entry
    with torch.no_grad():
        ref = model(batch).logits
        model.bank[3].add_(1.0)  # a combination no row has: no prediction moves
        torch.testing.assert_close(model(batch).logits, ref)
        model.bank[5, 0].add_(1.0)  # row 2's entry: only row 2 moves
        moved = model(batch).logits
    assert not torch.allclose(moved[2], ref[2])
    torch.testing.assert_close(moved[[0, 1, 3]], ref[[0, 1, 3]])


def test_experts_run_only_on_their_tokens_and_mix_by_the_gates() -> None:
    torch.manual_seed(0)
    model = build_method("flexmoe", ModelInfo(THREE, "binary", 1), d=8, heads=2, top_k=2)
    experts = model.blocks[0].experts
    x = torch.randn(5, 8)
    idx = torch.tensor([[0, 3], [2, 0], [6, 5], [3, 2], [1, 0]])
    gates = torch.softmax(torch.randn(5, 2), dim=1)
    want = torch.stack(
        [sum(gates[t, j] * experts.expert(int(idx[t, j]), x[t : t + 1])[0] for j in range(2)) for t in range(5)]
    )
    torch.testing.assert_close(experts(x, idx, gates), want)
    logits = torch.tensor([[0.1, 2.0, -1.0, 0.5]])
    top, g = route(logits, 2)
    assert top.tolist() == [[1, 3]]
    torch.testing.assert_close(g, torch.softmax(torch.tensor([[2.0, 0.5]]), dim=1))


CLEAN = torch.tensor([[1.0, 0.5, -0.2], [0.1, 0.3, 0.2], [-0.5, 0.4, 0.9], [0.2, 0.0, -0.1]])
NOISY = torch.tensor([[1.1, 0.4, -0.1], [0.0, 0.5, 0.2], [-0.6, 0.3, 1.0], [0.3, 0.1, -0.3]])
STD = torch.full((4, 3), 0.5)


def _hand_prob_in_top1() -> np.ndarray:
    """P(e in top-1) by hand: threshold = the best other noisy logit."""
    c, n, s = CLEAN.numpy(), NOISY.numpy(), STD.numpy()
    p = np.zeros_like(c)
    for t in range(4):
        for e in range(3):
            best_other = max(n[t, j] for j in range(3) if j != e)
            p[t, e] = _phi((c[t, e] - best_other) / s[t, e])
    return p


def test_prob_in_top_k_hand_computed() -> None:
    np.testing.assert_allclose(prob_in_top_k(CLEAN, NOISY, STD, 1).numpy(), _hand_prob_in_top1(), rtol=1e-5)


def test_gate_loss_hand_computed() -> None:
    # tokens 0, 1 of full rows, token 2 of a row whose combination's expert is 2, token 3 of an empty row
    target = torch.tensor([0, 0, 2, -1])
    n = NOISY.numpy()
    g = np.zeros((4, 3))
    g[np.arange(4), n.argmax(1)] = 1.0  # top-1: the gate of the chosen expert is 1
    p = _hand_prob_in_top1()
    ce = -math.log(math.exp(n[2, 2]) / np.exp(n[2]).sum())  # S-Router: token 2 towards expert 2
    full, rest = [0, 1], [2, 3]
    want = (
        ce
        + _cv2(g[full].sum(0))
        + _cv2(p[full].sum(0))
        + _cv2(g[rest][:, 1:].sum(0))  # the other tokens are balanced over experts 1..E-1
        + _cv2(p[rest][:, 1:].sum(0))
    )
    got = gate_loss(CLEAN, NOISY, STD, target, 1, smooth_load=True)
    assert float(got) == pytest.approx(want, rel=1e-5)
    # every token full: no S-Router term, balance over all tokens; the count of routed tokens as the load
    got_full = gate_loss(CLEAN, NOISY, STD, torch.zeros(4, dtype=torch.long), 1, smooth_load=False)
    assert float(got_full) == pytest.approx(_cv2(g.sum(0)) + _cv2((g > 0).sum(0).astype(float)), rel=1e-5)
    assert float(cv_squared(torch.tensor([3.0]))) == 0.0


def test_router_loss_sums_over_slots_and_the_s_router_targets_wrap() -> None:
    torch.manual_seed(0)
    info = ModelInfo(THREE, "multiclass", 3)
    model = build_method("flexmoe", info, d=8, heads=2, top_k=2, experts=3, warmup_epochs=0)
    # 7 non-empty combinations on 3 experts: combination c >= 1 targets expert 1 + (c - 1) mod 2
    assert model.expert_of_combo.tolist() == [0, 1, 2, 1, 2, 1, 2, -1]
    mask = torch.tensor([[True, True, True], [True, False, True], [False, True, False], [False, False, False]])
    batch = vector_batch(mask, torch.tensor([0, 1, 2, 0]), names=("a", "b", "c"))
    model.train()
    out = model(batch)
    clean, noisy, std = out.extra["routers"][0]  # [B, M, E]
    target = model.expert_of_combo[out.extra["combination"]]
    want = sum(gate_loss(clean[:, j], noisy[:, j], std[:, j], target, 2, True) for j in range(3))
    torch.testing.assert_close(model.router_loss(out), want)
    loss, terms = model.loss(batch, out)
    assert float(loss.detach()) == pytest.approx(terms["task"] + model.gate_weight * terms["gate"], rel=1e-5)


def test_warm_up_trains_on_the_full_modality_rows_only() -> None:
    torch.manual_seed(0)
    model = build_method("flexmoe", ModelInfo(THREE, "binary", 1), d=8, heads=2, warmup_epochs=2).train()
    partial = vector_batch(
        torch.tensor([[True, False, True], [False, True, True]]), torch.ones(2, 1), names=("a", "b", "c")
    )
    model.on_epoch_start(FakeTrainer(), 0)
    loss, terms = model.loss(partial, model(partial))
    assert float(loss.detach()) == 0.0 and terms["gate"] == 0.0
    mixed = vector_batch(
        torch.tensor([[True, True, True], [False, True, True]]), torch.tensor([[1.0], [0.0]]), names=("a", "b", "c")
    )
    out = model(mixed)
    _, terms = model.loss(mixed, out)
    assert terms["task"] == pytest.approx(float(F.binary_cross_entropy_with_logits(out.logits[0], mixed.y[0]).detach()))
    model.on_epoch_start(FakeTrainer(), 2)  # after the warm-up: every row
    loss, terms = model.loss(partial, model(partial))
    assert terms["task"] > 0 and terms["gate"] > 0


def test_learns_with_the_trainer() -> None:
    assert_learns("flexmoe", {"heads": 2, "warmup_epochs": 1})


# ------------------------------------------------------------------------------------------------------
# one fold through run_fold: every task kind, every combination of modalities (the empty one included)
# ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_synthetic_cache(tmp_path_factory.mktemp("flexmoe") / "c.zarr", n=120, seed=1)


@pytest.mark.parametrize("task,c", TASK_OUTPUTS)
def test_run_fold_every_task_and_missing_pattern(cache, task: str, c: int) -> None:
    assert_run_fold_every_combination(cache, "flexmoe", {"d": 8, "heads": 2, "warmup_epochs": 1}, task, c)
