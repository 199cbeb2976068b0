"""M3Care (omnifuse.fuse.methods.m3care): the kernel, bandwidth, similarity and threshold against hand
computations, the neighbour aggregation picking the most similar patients that hold the missing modality, the
evaluation bank (a row's prediction never depends on the other rows of its batch), the stabilisation term,
learning end to end, and one fold through ``run_fold`` for every task kind and every missing pattern."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import omnifuse.fuse.methods.m3care  # noqa: F401  (registers the method)
from omnifuse.fuse.base import ModelInfo
from omnifuse.fuse.methods import build_method
from omnifuse.fuse.methods.m3care import (
    combine_similarity,
    filter_similarity,
    gaussian_kernel,
    mean_pair_distance,
    neighbour_graph,
    sq_dists,
)
from tests.helpers import (
    TASK_OUTPUTS,
    TWO,
    FakeTrainer,
    assert_learns,
    assert_run_fold_every_combination,
    vector_batch,
    write_synthetic_cache,
)


def test_kernel_bandwidth_similarity_and_threshold_hand_computed() -> None:
    dist = torch.tensor([[0.0, 2.0, 6.0], [2.0, 0.0, 4.0], [6.0, 4.0, 0.0]])
    valid = torch.tensor([[True, True, False], [True, True, False], [False, False, False]])
    assert float(mean_pair_distance(dist, valid, 9.0)) == pytest.approx(2.0)  # the pairs (0,1), (1,0)
    assert float(mean_pair_distance(dist, torch.ones(3, 3, dtype=torch.bool), 9.0)) == pytest.approx(4.0)
    assert float(mean_pair_distance(dist, torch.eye(3, dtype=torch.bool), 9.0)) == 9.0  # no pair: the fallback
    # bandwidth 2, three kernels, mul 2: bandwidths 1, 2, 4 (their guassian_kernel)
    k = gaussian_kernel(dist, torch.tensor(2.0))
    assert float(k[0, 1]) == pytest.approx((math.exp(-2) + math.exp(-1) + math.exp(-0.5)) / 3, rel=1e-6)
    assert float(k[0, 0]) == pytest.approx(1.0)
    # the similarity: the mean over the modalities both patients hold
    ka, kb = torch.full((3, 3), 0.8), torch.full((3, 3), 0.2)
    present = torch.tensor([[True, True], [True, False], [False, False]])
    sim = combine_similarity([ka, kb], present)
    assert float(sim[0, 0]) == pytest.approx(0.5) and float(sim[0, 1]) == pytest.approx(0.8)
    assert float(sim[0, 2]) == 0.0 and float(sim[2, 2]) == 0.0  # no common modality
    # the threshold sigmoid(0) = 0.5: below or at it 0, above it the similarity itself
    out = filter_similarity(torch.tensor([[0.7, 0.4], [0.5, 0.9]]), torch.zeros(1))
    torch.testing.assert_close(out, torch.tensor([[0.7, 0.0], [0.0, 0.9]]))


def test_neighbour_aggregation_picks_the_most_similar_patients_holding_the_modality() -> None:
    torch.manual_seed(0)
    model = build_method("m3care", ModelInfo(TWO, "binary", 1), d=4, heads=2, gcn_layers=1).train()
    with torch.no_grad():
        model.eps.fill_(30.0)  # the raw-embedding kernel only (sigmoid(eps) = 1): a controlled similarity
        for lin in model.gcn[1]:
            lin.weight.copy_(torch.eye(4))
            lin.bias.zero_()
    v = torch.tensor([3.0, 1.0, -1.0, -3.0])
    a = torch.stack([v, v + 0.1 * torch.tensor([1.0, -1, 0, 0]), v + 0.1 * torch.tensor([0, 0, 1.0, -1]), -v])
    b = torch.randn(4, 4)
    H = torch.stack([a, b], dim=1)  # [4 patients, 2 modalities, 4]
    present = torch.tensor([[True, False], [True, True], [True, True], [True, True]])  # patient 0 lacks b
    H = H * present.unsqueeze(-1)
    ones = torch.ones(4, 4, dtype=torch.bool)
    sim, _ = model._graph(H, present, ones, torch.ones(4, dtype=torch.bool))
    assert float(sim[0, 1]) > 0.9 and float(sim[0, 2]) > 0.9  # near copies of patient 0's first modality
    assert float(sim[0, 3]) == 0.0  # the dissimilar patient is filtered out
    w = neighbour_graph(sim, present[:, 1])
    assert float(w[0, 0]) == 0.0 and float(w[0, 3]) == 0.0  # neither patient 0 itself nor the dissimilar one
    torch.testing.assert_close(w[0, 1:3], sim[0, 1:3] / sim[0, 1:3].sum())
    imputed = model.impute(H, present, sim)
    torch.testing.assert_close(imputed[0, 1], F.selu(w[0, 1] * b[1] + w[0, 2] * b[2]))


def test_evaluation_neighbours_are_the_bank_never_the_batch() -> None:
    torch.manual_seed(0)
    model = build_method("m3care", ModelInfo(TWO, "multiclass", 3), d=8, heads=2, bank=6)
    bank_rows = vector_batch(torch.ones(8, 2, dtype=torch.bool), torch.arange(8) % 3, seed=1)
    model.on_epoch_end(FakeTrainer([bank_rows]), 0)
    assert model.bank_mask.all() and model.bank_h.shape == (6, 2, 8)  # the first six training rows
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.bank_h, model.enc(bank_rows.select(torch.arange(6))))
        mask = torch.tensor([[True, False], [True, True], [False, True]])
        batch = vector_batch(mask, torch.tensor([0, 1, 2]), seed=2)
        out = model(batch)
        sim = out.extra["similarity"]  # [B, bank + B]
        assert sim.shape == (3, 9)
        off = sim[:, 6:] * (1 - torch.eye(3))
        assert float(off.abs().max()) == 0.0  # no edge to another row of the batch
        for i in range(3):
            torch.testing.assert_close(model(batch.select(torch.tensor([i]))).logits, out.logits[i : i + 1])
        model.bank_h.mul_(-1.0)  # other neighbours, another imputation
        assert not torch.allclose(model(batch).extra["imputed"][0, 1], out.extra["imputed"][0, 1])


def _graph_per_modality(model, H, present, allowed, bw_rows):
    """``_graph`` as first written, one modality at a time with the pure functions (the reference of the
    batched version)."""
    kernels, stab = [], H.sum() * 0.0
    for j in range(model.info.num_modalities):
        here = present[:, j]
        proj = model.sim_proj[j](H[:, j])
        if bool(here.any()):
            stab = stab + (proj[here].norm() - H[here, j].norm()).abs()
        dp, dr = sq_dists(model.norm(proj)), sq_dists(model.norm(H[:, j]))
        valid = (here & bw_rows).unsqueeze(1) & (here & bw_rows).unsqueeze(0)
        kp = gaussian_kernel(dp, mean_pair_distance(dp, valid, 2.0 * model.d), model.kernels, model.kernel_mul)
        kr = gaussian_kernel(dr, mean_pair_distance(dr, valid, 2.0 * model.d), model.kernels, model.kernel_mul)
        mix = torch.sigmoid(model.eps[j])
        kernels.append((1 - mix) * kp + mix * kr)
    sim = combine_similarity(kernels, present) * allowed.to(H.dtype)
    return filter_similarity(sim, model.threshold), stab


def _impute_per_modality(model, H, present, sim):
    out = []
    for j in range(model.info.num_modalities):
        a, x = neighbour_graph(sim, present[:, j]), H[:, j]
        for lin in model.gcn[j]:
            x = F.selu(lin(a @ x))
        out.append(x)
    return torch.stack(out, dim=1)


def test_batched_graph_and_imputation_equal_the_loop_over_modalities() -> None:
    torch.manual_seed(0)
    from omnifuse.fuse.base import ModalityInfo

    info = ModelInfo([ModalityInfo(n, "vector", (6,)) for n in "abcd"], "binary", 1)
    model = build_method("m3care", info, d=8, heads=2, gcn_layers=2)
    with torch.no_grad():
        model.threshold.fill_(-1.5)
        model.eps.copy_(torch.tensor([-0.3, 0.5, 2.0, -2.0]))
    g = torch.Generator().manual_seed(1)
    present = torch.rand(7, 4, generator=g) < 0.6
    present[:, 3] = False  # a modality nobody holds: the fallback bandwidth
    present[0] = False  # a patient with nothing
    H = torch.randn(7, 4, 8, generator=g, requires_grad=True) * present.unsqueeze(-1)
    allowed = torch.rand(7, 7, generator=g) < 0.8
    bw_rows = torch.tensor([True, True, True, True, True, False, False])
    sim, stab = model._graph(H, present, allowed, bw_rows)
    imputed = model.impute(H, present, sim)
    ref_sim, ref_stab = _graph_per_modality(model, H, present, allowed, bw_rows)
    ref_imputed = _impute_per_modality(model, H, present, ref_sim)
    torch.testing.assert_close(sim, ref_sim, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stab, ref_stab)
    torch.testing.assert_close(imputed, ref_imputed, rtol=1e-5, atol=1e-6)
    assert float(sim.abs().sum()) > 0
    grads = torch.autograd.grad((imputed.pow(2).sum() + stab), [H, model.threshold, model.eps])
    ref_grads = torch.autograd.grad((ref_imputed.pow(2).sum() + ref_stab), [H, model.threshold, model.eps])
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _full_graph_reference(model, batch):
    """Evaluation as first written: the full (bank + B)^2 graph through ``_graph`` and ``impute``, then the batch
    rows kept (the reference of the blockwise ``_bank_graph``)."""
    mask = batch.mask.to(torch.bool)
    b, k = mask.shape[0], model.bank_size
    E = model.enc(batch)
    H = torch.where(mask.unsqueeze(-1), E, torch.zeros_like(E))
    nodes = torch.cat([model.bank_h, H], dim=0)
    present = torch.cat([model.bank_mask, mask], dim=0)
    allowed = torch.eye(k + b, dtype=torch.bool)
    allowed[:, :k] = True
    bw_rows = torch.zeros(k + b, dtype=torch.bool)
    bw_rows[:k] = True
    sim, stab = model._graph(nodes, present, allowed, bw_rows)
    return sim[k:], model.impute(nodes, present, sim)[k:], stab


@pytest.mark.parametrize("gcn_layers", [1, 2, 3])
def test_blockwise_evaluation_equals_the_full_graph(gcn_layers: int) -> None:
    torch.manual_seed(0)
    names = ("a", "b", "c")
    from omnifuse.fuse.base import ModalityInfo

    info = ModelInfo([ModalityInfo(n, "vector", (6,)) for n in names], "binary", 1)
    model = build_method("m3care", info, d=8, heads=2, bank=12, gcn_layers=gcn_layers)
    g = torch.Generator().manual_seed(3)
    bank_mask = torch.rand(10, 3, generator=g) < 0.7  # 10 rows for a bank of 12: two empty bank rows
    bank_rows = vector_batch(bank_mask, torch.zeros(10, 1), seed=4, names=names)
    model.on_epoch_end(FakeTrainer([bank_rows]), 0)
    with torch.no_grad():
        model.threshold.fill_(-2.0)  # a low threshold: most edges kept, so the aggregation matters
    model.eval()
    mask = torch.rand(9, 3, generator=g) < 0.6
    mask[0] = False  # a row without any modality
    mask[1] = True
    batch = vector_batch(mask, torch.zeros(9, 1), seed=5, names=names)
    with torch.no_grad():
        out = model(batch)
        sim, imputed, stab = _full_graph_reference(model, batch)
    torch.testing.assert_close(out.extra["similarity"], sim, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.extra["imputed"], imputed, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.extra["stab"], stab)
    assert float(sim[:, 12:].abs().sum()) > 0 and float(imputed.abs().sum()) > 0


def test_stabilisation_term_hand_computed() -> None:
    torch.manual_seed(0)
    info = ModelInfo(TWO, "binary", 1)
    model = build_method("m3care", info, d=4, heads=2, lambda_stab=0.5, dropout=0.0, encoder={"dropout": 0.0})
    model.train()
    mask = torch.tensor([[True, True], [True, False], [False, True]])
    batch = vector_batch(mask, torch.tensor([[1.0], [0.0], [1.0]]))
    out = model(batch)
    with torch.no_grad():
        E = model.enc(batch)
        want = 0.0
        for j in range(2):  # |  ||proj_m(v_m)||_F - ||v_m||_F | over the rows holding m (their sum_of_diff)
            v = E[mask[:, j], j]
            want += abs(float(model.sim_proj[j](v).norm()) - float(v.norm()))
    assert float(out.extra["stab"]) == pytest.approx(want, rel=1e-5)
    loss, terms = model.loss(batch, out)
    assert float(loss) == pytest.approx(terms["task"] + 0.5 * want, rel=1e-5)


def test_learns_with_the_trainer() -> None:
    assert_learns("m3care", {"heads": 2, "bank": 64})


# ------------------------------------------------------------------------------------------------------
# one fold through run_fold: every task kind, every combination of modalities
# ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_synthetic_cache(tmp_path_factory.mktemp("m3care") / "c.zarr", n=120, seed=1)


@pytest.mark.parametrize("task,c", TASK_OUTPUTS)
def test_run_fold_every_task_and_missing_pattern(cache, task: str, c: int) -> None:
    run = assert_run_fold_every_combination(cache, "m3care", {"d": 8, "heads": 2, "bank": 32}, task, c)
    assert bool(run.model.bank_mask.any())  # the bank of training rows the test rows were imputed from
