"""Our numpy StratifiedGroupKFold (issue 14, item 1): the folds of scikit-learn's
``StratifiedGroupKFold(shuffle=True)`` (the reference, used here only), position for position, on random
binary, multiclass and multilabel-stratum problems with varied group sizes and seeds, and on the edge cases
the splitting code meets (one stratum, ties everywhere, one row per patient, as many patients as folds)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import StratifiedGroupKFold

from omnifuse.fuse.data import DataError, _group_split, inner_split, load_fuse_data, make_folds, stratified_group_kfold


def _sklearn(strat: np.ndarray, groups: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return list(cv.split(np.zeros(len(strat)), strat, groups))


def _assert_same(strat: np.ndarray, groups: np.ndarray, k: int, seed: int) -> None:
    want, got = _sklearn(strat, groups, k, seed), stratified_group_kfold(strat, groups, k, seed)
    assert len(got) == len(want) == k
    for (wtr, wte), (gtr, gte) in zip(want, got, strict=True):
        np.testing.assert_array_equal(gtr, wtr)
        np.testing.assert_array_equal(gte, wte)


def _problem(rng: np.random.Generator, kind: str) -> tuple[np.ndarray, np.ndarray, int]:
    n = int(rng.integers(20, 600))
    k = int(rng.integers(2, 11))
    per = int(rng.choice([1, 2, 3, 8]))  # mean rows per patient: one stay each up to many
    groups = rng.integers(0, max(k, n // per), n)
    if kind == "binary":
        y = (rng.random(n) < rng.uniform(0.05, 0.5)).astype(np.int64)
    elif kind == "multiclass":
        c = int(rng.integers(3, 7))
        y = rng.choice(c, n, p=rng.dirichlet(np.ones(c)))
    else:  # the multilabel stratum of FuseData.strat_labels: the rarest positive label, -1 when none
        labels = rng.random((n, 5)) < rng.uniform(0.02, 0.4, 5)
        prev = labels.mean(axis=0)
        score = np.where(labels, prev[None, :], np.inf)
        y = np.where(np.isfinite(score.min(axis=1)), score.argmin(axis=1), -1)
    if rng.random() < 0.5:
        groups = np.array([f"p{g:05d}" for g in groups])  # subject ids are strings in the data
    return y.astype(np.int64), groups, k


@pytest.mark.parametrize("kind", ["binary", "multiclass", "multilabel"])
def test_same_folds_as_scikit_learn_on_random_problems(kind):
    rng = np.random.default_rng({"binary": 0, "multiclass": 1, "multilabel": 2}[kind])
    checked = 0
    while checked < 40:
        y, groups, k = _problem(rng, kind)
        if np.unique(groups).size < k or np.unique(y, return_counts=True)[1].min() < k:
            continue  # what _group_split never passes on (too few patients, or a stratum smaller than k)
        _assert_same(y, groups, k, seed=int(rng.integers(0, 2**31 - 1)))
        checked += 1


def test_same_folds_on_edge_cases():
    rng = np.random.default_rng(3)
    # one stratum only (every row the same label)
    _assert_same(np.zeros(50, dtype=np.int64), rng.integers(0, 20, 50), 5, 0)
    # ties everywhere: identical patients, so the fold sizes and the shuffled order decide
    _assert_same(np.tile([0, 1], 40), np.repeat(np.arange(40), 2), 4, 7)
    # one row per patient
    _assert_same(rng.integers(0, 2, 97), np.arange(97), 10, 11)
    # as many patients as folds, and one patient holding most rows
    y = np.random.default_rng(4).permutation(np.r_[np.zeros(20), np.ones(20)]).astype(np.int64)
    _assert_same(y, np.r_[np.zeros(25), np.repeat(np.arange(1, 6), 3)], 6, 2)
    for seed in range(5):  # a few seeds on one problem: the shuffle is scikit-learn's RandomState
        _assert_same(rng.integers(0, 3, 120), rng.integers(0, 30, 120), 5, seed)


def test_the_split_functions_use_it_and_keep_their_fallbacks(tiny_data):
    d = load_fuse_data(tiny_data, "mortality", device="cpu")
    labelled = np.flatnonzero(d.y_mask.numpy())
    strat, groups = d.strat_labels()[labelled], d.subject_id[labelled]
    folds = make_folds(d, 4, seed=3)
    for (tr, te), (wtr, wte) in zip(folds, _sklearn(strat, groups, 4, 3), strict=True):
        np.testing.assert_array_equal(tr, labelled[wtr])
        np.testing.assert_array_equal(te, labelled[wte])
    tr0 = folds[0][0]
    a, v = inner_split(d, tr0, 0.2, seed=5)
    wtr, wva = _sklearn(d.strat_labels()[tr0], d.subject_id[tr0], 5, 5)[0]
    np.testing.assert_array_equal(a, tr0[wtr])
    np.testing.assert_array_equal(v, tr0[wva])
    # a stratum smaller than the folds: grouped, unstratified folds (GroupKFold over shuffled patients)
    y = np.r_[np.zeros(38), np.ones(2)].astype(np.int64)
    sp = _group_split(y, np.arange(40) // 2, 4, 0, True)
    assert sorted(np.concatenate([te for _, te in sp]).tolist()) == list(range(40))
    with pytest.raises(DataError, match="3 patients cannot be split into 4"):
        _group_split(np.zeros(6, dtype=np.int64), np.arange(6) // 2, 4, 0, True)
