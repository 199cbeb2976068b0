"""Modality attribution in the studies (omnifuse.experiments.shapley): a fold run's stored Shapley values against
the formula summed permutation by permutation on a toy network (an ensemble of two, calibrated, as a run scores
it), and the study summary (mean |value| per modality overall and per missingness pattern, over the runs)
against a hand count."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from omnifuse.experiments.shapley import (
    attributable,
    gather,
    read_summary,
    run_attribution,
    save_run_attribution,
    summary_rows,
    write_attribution,
)
from omnifuse.fuse.base import Batch, FusionMethod, MethodOutput
from omnifuse.fuse.calibration import apply_temperature
from omnifuse.fuse.data import Normalizer, load_fuse_data
from omnifuse.fuse.layers import probabilities
from tests.helpers import synthetic_cache_data


class Lin(FusionMethod):
    """``logit = bias + sum_j coef_j m_j (1 + s_j) + inter m_0 m_1``: ``m`` the presence [B, M], ``s_j`` the
    mean input of modality j (0 when masked); modalities 0 and 1 interact."""

    def __init__(self, info, coef, inter, bias) -> None:
        super().__init__(info)
        self.coef, self.inter, self.bias = torch.tensor(coef), float(inter), float(bias)
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, batch: Batch) -> MethodOutput:
        m = batch.mask.float()
        s = torch.stack([batch.x[n].flatten(1).mean(1) for n in self.info.names], 1)
        z = self.bias + (m * (1 + s)) @ self.coef + self.inter * m[:, 0] * m[:, 1]
        return MethodOutput(logits=z[:, None])

    def loss(self, batch, out):
        raise NotImplementedError


def _setup(n: int = 30):
    d = load_fuse_data(synthetic_cache_data(n=n, seed=3, present=0.6), "mortality", device="cpu")
    norm = Normalizer.fit(d, np.arange(d.n))
    info = d.model_info(norm)
    a = Lin(info, [0.7, -0.4, 0.5], 1.2, -0.3).eval()
    b = Lin(info, [-0.2, 0.9, 0.3], -0.8, 0.4).eval()
    return d, norm, a, b


def _score(models, d, norm, row: int, subset: tuple[int, ...], temperature: float) -> float:
    """The run's score of one row with only ``subset`` present: the members' mean probability, calibrated."""
    mask = torch.zeros(1, len(d.modalities), dtype=torch.bool)
    mask[0, list(subset)] = True
    with torch.no_grad():
        p = np.mean(
            [probabilities(m(d.batch(np.array([row]), norm, mask)).logits, "binary").numpy() for m in models], 0
        )
    return float(apply_temperature(p, [temperature], "binary")[0, 0])


def _by_permutations(models, d, norm, row: int, temperature: float) -> np.ndarray:
    """Shapley values as the mean over every order of the row's modalities of each one's marginal gain."""
    held = [j for j in range(len(d.modalities)) if bool(d.mask[row, j])]
    v = {  # v(S) of every subset, computed once
        S: _score(models, d, norm, row, S, temperature)
        for r in range(len(held) + 1)
        for S in itertools.combinations(held, r)
    }
    phi = np.full(len(d.modalities), np.nan)
    phi[held] = 0.0
    orders = list(itertools.permutations(held))
    for order in orders:
        for t, j in enumerate(order):
            before = tuple(sorted(order[:t]))
            phi[j] += (v[tuple(sorted((*before, j)))] - v[before]) / len(orders)
    return phi


def test_a_runs_values_are_the_shapley_values_of_its_calibrated_ensemble_score(tmp_path):
    d, norm, a, b = _setup()
    rows = np.arange(0, d.n, 2)
    run = SimpleNamespace(model=a, members=[a, b], test_rows=rows, normalizer=norm, temperature=[1.7])
    arrays, rec = run_attribution(run, d, batch_size=5)
    assert rec["rows"] == len(rows) and rec["sampled_rows"] == 0 and rec["seconds"] >= 0
    held = d.mask.numpy()[rows].sum(1)
    assert rec["subsets_per_row"] == pytest.approx(np.mean(2.0**held))
    assert [str(m) for m in arrays["modalities"]] == list(d.modalities)
    for i, r in enumerate(rows):
        np.testing.assert_allclose(arrays["values"][i], _by_permutations([a, b], d, norm, r, 1.7), atol=1e-6)
        own = tuple(int(j) for j in np.flatnonzero(d.mask.numpy()[r]))
        assert arrays["full"][i] == pytest.approx(_score([a, b], d, norm, r, own, 1.7), abs=1e-6)
    np.testing.assert_allclose(np.nansum(arrays["values"], 1) + arrays["baseline"], arrays["full"], atol=1e-6)


def test_the_study_summary_is_the_mean_absolute_value_per_modality_and_pattern(tmp_path):
    d, norm, a, b = _setup(40)
    names = list(d.modalities)
    folders, expected_rows = [], []
    for k, (model, rows) in enumerate([(a, np.arange(0, 20)), (b, np.arange(20, 40))]):
        run = SimpleNamespace(model=model, members=[model], test_rows=rows, normalizer=norm, temperature=[1.0])
        arrays, rec = run_attribution(run, d, batch_size=64)
        f = tmp_path / f"run{k}"
        f.mkdir()
        save_run_attribution(f, arrays)
        (f / "run.json").write_text('{"attribution": {"seconds": 1.5, "cpu_seconds": 1.0}}')
        folders.append(("lin", f))
        expected_rows.append(np.array([_by_permutations([model], d, norm, r, 1.0) for r in rows]))
    phi = np.concatenate(expected_rows)
    present = d.mask.numpy()[np.arange(40)]
    got = gather(names, folders)["lin"]
    assert got.runs == 2 and got.seconds == pytest.approx(3.0)
    np.testing.assert_allclose(got.values, phi, atol=1e-6)
    rows = summary_rows({"lin": got}, names)
    # by hand: over all stays, each modality over the stays holding it; then per pattern
    assert rows[0]["pattern"] == "all stays" and rows[0]["n"] == 40 and rows[0]["runs"] == 2
    for j, m in enumerate(names):
        assert rows[0][m] == pytest.approx(np.abs(phi[present[:, j], j]).mean(), abs=1e-6)
        assert rows[0][f"n_{m}"] == int(present[:, j].sum())
    patterns = {tuple(p) for p in present.tolist()}
    assert len(rows) == 1 + len(patterns)
    for r in rows[1:]:
        p = tuple(m in r["pattern"].split("+") for m in names)
        sel = (present == np.array(p)).all(1)
        assert r["n"] == int(sel.sum())
        for j, m in enumerate(names):
            if p[j]:
                assert r[m] == pytest.approx(np.abs(phi[sel, j]).mean(), abs=1e-6)
            else:
                assert math.isnan(r[m])
    # written and read back; the section names what was skipped and what it cost
    out = tmp_path / "study"
    out.mkdir()
    rows2, secs, figs = write_attribution(out, names, folders, ["lin", "logreg"], 30.0, draw_figures=False)
    back = read_summary(out / "attribution.csv")
    assert [r["pattern"] for r in back] == [r["pattern"] for r in rows2]
    for r, s in zip(back, rows2, strict=True):
        for m in names:
            assert (math.isnan(r[m]) and math.isnan(s[m])) or r[m] == pytest.approx(s[m], rel=1e-9)
    assert figs == []  # drawn in the study's test (tests/experiments/test_run_report.py)
    assert "Not attributed: logreg" in secs[0].note and "3 s of run time beside 30 s of training (10 %)" in secs[0].note
    assert secs[0].rows[0][:2] == ["lin", "40"]


def test_reference_learners_are_not_attributed():
    assert attributable("omnifuse") and attributable("concat") and attributable("dwfuse_only")
    assert not attributable("logreg") and not attributable("gbm")
