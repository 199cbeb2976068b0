"""The demo's shortened protocol is the full comparison's, cut short (omnifuse.demo): its folds are the first
repeats of compare's, and a network trained with an epoch cap above its best epoch is the network trained
without the cap (the same selected epoch, the same predictions); only a run whose best epoch reaches the cap
can differ, and it is flagged."""

from __future__ import annotations

import numpy as np
import pytest

from omnifuse import demo
from omnifuse.fuse.config import resolve_config
from omnifuse.fuse.data import load_fuse_data
from omnifuse.fuse.fold import FoldPlan, make_repeated_folds, run_fold, run_seed
from tests.helpers import TINY_OPTIONS, TINY_OVERRIDES, synthetic_cache_data


@pytest.fixture(scope="module")
def data():
    return load_fuse_data(synthetic_cache_data(n=200, seed=4), "mortality", device="cpu")


def test_the_demos_folds_are_the_first_repeats_of_the_full_comparisons(data):
    full = make_repeated_folds(data, 5, 3, seed=0)
    short = make_repeated_folds(data, 5, demo.DEMO_REPEATS, seed=0)
    assert demo.DEMO_REPEATS >= 2 and len(short) == demo.DEMO_REPEATS
    for r in range(demo.DEMO_REPEATS):
        for (tr_a, te_a), (tr_b, te_b) in zip(full[r], short[r], strict=True):
            assert np.array_equal(tr_a, tr_b) and np.array_equal(te_a, te_b)


def _fold(data, method: str, epochs: int):
    """Fold 1 of ``method`` with a high learning rate and patience 3: the validation loss turns within a few
    epochs (a tiny model at the default 1e-3 still improves at epoch 30)."""
    tr, te = make_repeated_folds(data, 5, 1, seed=0)[0][1]
    opts = {**TINY_OPTIONS, "patience": 3, "lr": 0.02}
    cfg = resolve_config(None, task="mortality", epochs=epochs, progress=False, **opts)
    plan = FoldPlan(method, tr, te, seed=run_seed(0, 0, 1), fold=1, params=TINY_OVERRIDES[method],
                    combos=[["img"]])
    return run_fold(data, plan, cfg)


@pytest.mark.parametrize("method", ["omnifuse", "concat"])
def test_an_epoch_cap_above_the_best_epoch_gives_the_same_network(data, method):
    full = _fold(data, method, epochs=20)
    best = full.best_epoch
    assert 0 <= best < len(full.history) - 1  # early stopping ended it after its best epoch
    capped = _fold(data, method, epochs=best + 1)  # the cap just above the best epoch
    assert capped.best_epoch == best and len(capped.history) == best + 1
    # the same epochs trained (histories agree up to the cap), the same network kept, the same predictions
    for a, b in zip(full.history, capped.history, strict=False):
        assert a["loss"] == b["loss"] and a["val_loss"] == b["val_loss"]
    assert np.array_equal(full.overall_raw, capped.overall_raw) and np.array_equal(full.overall, capped.overall)
    assert all(np.array_equal(full.combos[i], capped.combos[i]) for i in full.combos)
    assert full.temperature == capped.temperature
    # the run whose best epoch is the last one allowed is flagged (the only case that can differ)
    assert capped.best_is_last == [best > 0]


def test_the_demo_runs_compare_with_its_shortened_protocol(monkeypatch, tmp_path):
    """``run_demo`` on a finished cache: no extraction, ``compare`` with the demo's repeats and epoch cap, and the
    full comparison's protocol when asked (``repeats=3, epochs=None``)."""
    import omnifuse.experiments.compare as compare_module

    calls: list[dict] = []
    monkeypatch.setattr(demo, "cache_is_finished", lambda path: True)
    monkeypatch.setattr(compare_module, "compare", lambda *a, **k: calls.append({"args": a, **k}))
    demo.run_demo(tmp_path / "c.zarr", tmp_path / "out", progress=False, n_jobs=1)
    demo.run_demo(tmp_path / "c.zarr", tmp_path / "out", progress=False, n_jobs=1, repeats=3, epochs=None)
    short, full = calls
    assert short["args"][1:] == ("mortality", list(demo.DEMO_METHODS))
    assert (short["folds"], short["repeats"], short["epochs"]) == (5, demo.DEMO_REPEATS, demo.DEMO_EPOCHS)
    assert (demo.DEMO_REPEATS, demo.DEMO_EPOCHS) == (2, 10)
    assert (full["repeats"], full["epochs"]) == (3, None)
    assert short["combinations"] == full["combinations"] == "full+single"
    assert short["modalities"] == full["modalities"] == list(demo.DEMO_MODALITIES)  # the demo's own cache
