"""Modality attribution (omnifuse.fuse.attribution): Shapley values checked against the formula computed by brute
force, one subset at a time, on toy networks whose modalities interact, and the axioms (efficiency, symmetry,
null player); the permutation estimate against the exact values; the study summary against a hand count."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from omnifuse.fuse.attribution import exact_weights, modality_shapley, shapley_figure, shapley_summary
from omnifuse.fuse.base import Batch, FusionMethod, MethodOutput
from omnifuse.fuse.calibration import apply_temperature
from omnifuse.fuse.data import FuseData, Normalizer, load_fuse_data
from omnifuse.fuse.layers import probabilities
from tests.helpers import assert_png, synthetic_cache_data

VEC4 = {n: ("vector", (3,)) for n in ("a", "b", "c", "d")}


class Toy(FusionMethod):
    """A fixed network over the modalities' presence ``m`` [B, M] and a per-row signal ``s`` [B, M] (each
    present modality's mean input): ``logit_c = bias_c + sum_j coef_cj m_j (1 + s_j) + inter_c m_0 m_1 (1 + s_2)``.
    ``inter`` makes modalities 0 and 1 interact, so their Shapley values differ from leave-one-out; it counts
    the rows it predicts (``rows_seen``)."""

    def __init__(self, info, coef, inter, bias) -> None:
        super().__init__(info)
        self.coef = torch.as_tensor(coef, dtype=torch.float32)  # [C, M]
        self.inter = torch.as_tensor(inter, dtype=torch.float32)  # [C]
        self.bias = torch.as_tensor(bias, dtype=torch.float32)  # [C]
        self.unused = nn.Parameter(torch.zeros(1))
        self.rows_seen = 0

    def forward(self, batch: Batch) -> MethodOutput:
        self.rows_seen += batch.mask.shape[0]
        m = batch.mask.float()
        s = torch.stack([batch.x[n].flatten(1).mean(1) for n in self.info.names], 1)
        z = self.bias + (m * (1 + s)) @ self.coef.T
        z = z + self.inter * (m[:, 0] * m[:, 1] * (1 + s[:, 2 % m.shape[1]]))[:, None]
        return MethodOutput(logits=z)

    def loss(self, batch, out):
        raise NotImplementedError("a fixed toy network is never trained")


def _data(task: str = "mortality", kinds=None, n: int = 40, present: float = 0.7, seed: int = 0):
    d = load_fuse_data(synthetic_cache_data(n=n, kinds=kinds, seed=seed, present=present), task, device="cpu")
    return d, Normalizer.fit(d, np.arange(d.n))


def _toy(d: FuseData, norm: Normalizer, coef, inter, bias) -> Toy:
    return Toy(d.model_info(norm), coef, inter, bias).eval()


def _value(model, d: FuseData, norm: Normalizer, row: int, subset: tuple[int, ...], temperature=None) -> np.ndarray:
    """v(S) of one row, straight from the network: [C] probabilities with the modalities outside S masked."""
    mask = torch.zeros(1, len(d.modalities), dtype=torch.bool)
    mask[0, list(subset)] = True
    with torch.no_grad():
        p = probabilities(model(d.batch(np.array([row]), norm, mask)).logits, d.task_kind).numpy()
    return p[0] if temperature is None else apply_temperature(p, temperature, d.task_kind)[0]


def brute_force(model, d: FuseData, norm: Normalizer, row: int, temperature=None) -> np.ndarray:
    """The Shapley formula summed subset by subset: [M, C], NaN for the modalities the row lacks."""
    present = [j for j in range(len(d.modalities)) if bool(d.mask[row, j])]
    m = len(present)
    C = _value(model, d, norm, row, ()).shape[0]
    phi = np.full((len(d.modalities), C), np.nan)
    for i in present:
        others = [j for j in present if j != i]
        total = np.zeros(C)
        for r in range(len(others) + 1):
            for S in itertools.combinations(others, r):
                w = math.factorial(len(S)) * math.factorial(m - len(S) - 1) / math.factorial(m)
                total += w * (
                    _value(model, d, norm, row, (*S, i), temperature) - _value(model, d, norm, row, S, temperature)
                )
        phi[i] = total
    return phi


def test_exact_weights_are_the_shapley_coefficients():
    w = exact_weights(2)  # subsets {}, {0}, {1}, {0, 1}
    np.testing.assert_allclose(w, [[-0.5, -0.5], [0.5, -0.5], [-0.5, 0.5], [0.5, 0.5]])
    for m in (1, 3, 5):  # each modality's weights of the sets holding it sum to 1, of the others to -1
        w, bits = exact_weights(m), (np.arange(2**m)[:, None] >> np.arange(m)) & 1
        np.testing.assert_allclose((w * bits).sum(0), 1.0)
        np.testing.assert_allclose((w * (1 - bits)).sum(0), -1.0)


def test_binary_values_match_the_formula_with_interacting_modalities():
    d, norm = _data()
    model = _toy(d, norm, coef=[[0.8, -0.5, 0.3]], inter=[1.5], bias=[-0.2])
    rows = np.arange(d.n)
    sv = modality_shapley(model, d, rows, norm, batch_size=7)
    assert sv.values.shape == (d.n, 3) and sv.baseline.shape == (d.n,) and sv.target is None
    present = d.mask.numpy()
    assert (np.isnan(sv.values) == ~present).all()
    assert (sv.n_permutations == 0).all()
    for r in rows:
        np.testing.assert_allclose(sv.values[r], brute_force(model, d, norm, r)[:, 0], atol=1e-6)
    # efficiency: the values add up to the stay's prediction minus the all-masked one
    np.testing.assert_allclose(np.nansum(sv.values, 1), sv.full - sv.baseline, atol=1e-6)
    np.testing.assert_allclose(sv.baseline, _value(model, d, norm, 0, ())[0], atol=1e-6)
    # the interaction splits its effect between modalities 0 and 1: not leave-one-out
    both = np.flatnonzero(present[:, 0] & present[:, 1])
    assert both.size
    loo = np.array(
        [sv.full[r] - _value(model, d, norm, r, tuple(j for j in range(3) if present[r, j] and j))[0] for r in both]
    )
    assert np.abs(loo - sv.values[both, 0]).max() > 0.01


def test_multilabel_values_per_label_and_temperature():
    d, norm = _data("pheno")
    coef = [[0.5, -1.0, 0.2], [1.0, 0.5, -0.7], [-0.3, 0.2, 0.9]]
    model = _toy(d, norm, coef=coef, inter=[1.0, -2.0, 0.5], bias=[0.1, -0.3, 0.0])
    t = [2.0, 0.5, 1.3]
    sv = modality_shapley(model, d, np.arange(12), norm, temperature=t)
    assert sv.values.shape == (12, 3, 3) and sv.baseline.shape == (12, 3)
    for r in range(12):
        np.testing.assert_allclose(sv.values[r], brute_force(model, d, norm, r, temperature=t), atol=1e-5)
    np.testing.assert_allclose(np.nansum(sv.values, 1), sv.full - sv.baseline, atol=1e-5)


def test_multiclass_attributes_the_predicted_class_or_a_given_one():
    d, norm = _data("subtype")
    model = _toy(
        d,
        norm,
        coef=[[1.0, 0.0, 0.5], [0.0, 1.0, -0.5], [-1.0, -1.0, 0.0]],
        inter=[0.5, -1.0, 2.0],
        bias=[0.0, 0.2, -0.2],
    )
    rows = np.arange(15)
    sv = modality_shapley(model, d, rows, norm)
    assert sv.values.shape == (15, 3) and sv.target is not None
    for r in rows:
        phi = brute_force(model, d, norm, r)
        cls = int(np.argmax(_value(model, d, norm, r, tuple(np.flatnonzero(d.mask[r].numpy())))))
        assert sv.target[r] == cls
        np.testing.assert_allclose(sv.values[r], phi[:, cls], atol=1e-6)
    given = modality_shapley(model, d, rows, norm, target=np.full(15, 2))
    for r in rows[:5]:
        np.testing.assert_allclose(given.values[r], brute_force(model, d, norm, r)[:, 2], atol=1e-6)
    with pytest.raises(ValueError, match="one class per row"):
        modality_shapley(model, d, rows, norm, target=np.zeros(3))


def test_identical_modalities_get_equal_values_and_a_null_modality_zero():
    kinds = {"x": ("vector", (4,)), "y": ("vector", (4,)), "z": ("vector", (4,))}
    d, norm = _data(kinds=kinds, present=0.8)
    # x and y enter symmetrically (presence only, no input signal): symmetric players; z is ignored
    model = _toy(d, norm, coef=[[0.0, 0.0, 0.0]], inter=[2.0], bias=[-1.0])

    def forward(batch):  # presence only: interaction of x and y, nothing of z
        m = batch.mask.float()
        return MethodOutput(logits=(-1.0 + 0.7 * (m[:, 0] + m[:, 1]) + 2.0 * m[:, 0] * m[:, 1])[:, None])

    model.forward = forward
    sv = modality_shapley(model, d, np.arange(d.n), norm)
    p = d.mask.numpy()
    both = p[:, 0] & p[:, 1]
    np.testing.assert_allclose(sv.values[both, 0], sv.values[both, 1], atol=1e-7)
    assert np.abs(sv.values[both, 0]).min() > 0.05
    np.testing.assert_allclose(sv.values[p[:, 2], 2], 0.0, atol=1e-7)


def test_rows_are_grouped_by_pattern_and_each_subset_predicted_once():
    d, norm = _data(n=60)
    model = _toy(d, norm, coef=[[0.8, -0.5, 0.3]], inter=[1.5], bias=[-0.2])
    rows = np.arange(d.n)
    together = modality_shapley(model, d, rows, norm, batch_size=5)
    held = d.mask.numpy().sum(1)
    assert model.rows_seen == int((2**held).sum())  # 2^m predictions per stay, no more
    alone = np.concatenate([modality_shapley(model, d, [r], norm).values for r in rows[::-1]])[::-1]
    np.testing.assert_allclose(together.values, alone, atol=1e-7)


def test_sampled_permutations_converge_to_the_exact_values():
    d, norm = _data(kinds=VEC4, n=12, present=1.0)
    model = _toy(d, norm, coef=[[0.9, -0.6, 0.4, 0.2]], inter=[2.0], bias=[-0.3])
    exact = modality_shapley(model, d, np.arange(d.n), norm)
    assert (exact.n_permutations == 0).all()
    sampled = modality_shapley(model, d, np.arange(d.n), norm, max_exact=2, n_permutations=3000, seed=1)
    assert (sampled.n_permutations == 3000).all()
    np.testing.assert_allclose(sampled.values, exact.values, atol=0.01)
    # every sampled order telescopes: efficiency holds exactly
    np.testing.assert_allclose(sampled.values.sum(1), sampled.full - sampled.baseline, atol=1e-6)
    few = modality_shapley(model, d, np.arange(d.n), norm, max_exact=2, n_permutations=2, seed=1)
    assert np.abs(few.values - exact.values).max() > 1e-4  # two orders are an estimate, not the value


def test_a_reference_learner_is_attributed_through_its_predict_proba():
    from omnifuse.fuse.methods import build_method

    d, norm = _data(n=80)
    learner = build_method("logreg", d.model_info(norm), seed=0)
    learner.fit(d, np.arange(d.n), norm)
    sv = modality_shapley(learner, d, np.arange(10), norm, batch_size=3)
    for r in range(10):
        present = np.flatnonzero(d.mask[r].numpy())
        m = len(present)
        for i in present:
            others = [j for j in present if j != i]
            total = 0.0
            for k in range(len(others) + 1):
                for S in itertools.combinations(others, k):
                    w = math.factorial(len(S)) * math.factorial(m - len(S) - 1) / math.factorial(m)
                    mk = torch.zeros(2, 3, dtype=torch.bool)
                    mk[0, list(S)] = True
                    mk[1, [*S, i]] = True
                    p = learner.predict_proba(d, np.array([r, r]), norm, mk)[:, 0]
                    total += w * (p[1] - p[0])
            assert sv.values[r, i] == pytest.approx(total, abs=1e-6)


def test_summary_by_pattern_against_a_hand_count(tmp_path):
    values = np.array([[0.1, -0.3, np.nan], [-0.2, np.nan, 0.4], [0.3, 0.1, np.nan], [np.nan, np.nan, -0.5]])
    present = ~np.isnan(values)
    rows = shapley_summary(values, present, ["a", "b", "c"])
    assert [r["pattern"] for r in rows] == ["all stays", "a+b", "a+c", "c"]
    assert rows[0]["n"] == 4 and rows[0]["n_a"] == 3 and rows[0]["n_c"] == 2
    assert rows[0]["a"] == pytest.approx((0.1 + 0.2 + 0.3) / 3) and rows[0]["c"] == pytest.approx(0.45)
    ab = rows[1]
    assert ab["n"] == 2 and ab["a"] == pytest.approx(0.2) and ab["b"] == pytest.approx(0.2) and math.isnan(ab["c"])
    assert rows[3]["c"] == pytest.approx(0.5) and rows[3]["n_a"] == 0
    # multilabel: |phi| averaged over labels
    ml = shapley_summary(np.stack([values, 3 * values], 2), present, ["a", "b", "c"])
    assert ml[0]["a"] == pytest.approx(2 * rows[0]["a"])
    assert_png(shapley_figure(tmp_path / "f" / "shap.png", rows, ["a", "b", "c"], title="mean |phi|"))
    with pytest.raises(ValueError, match="do not match"):
        shapley_summary(values, present[:, :2], ["a", "b"])
