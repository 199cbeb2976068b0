"""From finished runs to prediction cells (omnifuse.experiments.collect), on hand-made run folders: the overall
cell, the three per-combination views (all_masked, complete, partial) with their rows, labels and
probabilities, the reference subset, the options of ``run_preds``, pooled out-of-fold predictions, and the
cache's reference scores."""

import json
from pathlib import Path

import numpy as np
import pytest

from omnifuse.experiments.collect import collect, load_references, pooled, run_preds
from omnifuse.experiments.runner import RunSpec, StudyContext
from omnifuse.fuse.config import TrainConfig
from omnifuse.fuse.data import load_fuse_data

MODS = ["img", "rep", "ehr"]
# test rows 20..25 and what each holds of img, rep, ehr
PRESENT = np.array([[1, 1, 1], [1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=bool)
Y = np.array([[1.0], [0.0], [1.0], [0.0], [1.0], [0.0]])


def _ctx() -> StudyContext:
    """Combinations: all three, img alone, img+rep, rep+ehr (the run below stores no prediction for the last)."""
    combos = [(True, True, True), (True, False, False), (True, True, False), (False, True, True)]
    return StudyContext(cache=None, task="mortality", modalities=MODS, folds=[], cfg=TrainConfig(), combos=combos)


def _write_run(folder: Path, fold: int = 1) -> dict[str, np.ndarray]:
    """A finished run's ``predictions.npz`` and ``run.json``: probabilities 0.1 + row / 10 (+ 0.01 per combo)."""
    base = np.arange(6, dtype=np.float64)[:, None] / 10 + 0.1
    arrays = {
        "test_rows": np.arange(20, 26),
        "y": Y,
        "present": PRESENT,
        "overall": base,
        "combo0": base + 0.01,
        "combo1": base + 0.02,
        "combo2": base + 0.03,
    }
    folder.mkdir(parents=True)
    np.savez_compressed(folder / "predictions.npz", **arrays)
    (folder / "run.json").write_text(json.dumps({"spec": {"fold": fold}}))
    return arrays


def _cells(preds) -> dict[tuple[str, str], object]:
    return {(p.group, p.subset): p for p in preds}


def test_run_preds_views_hold_the_right_rows(tmp_path):
    a = _write_run(tmp_path / "run")
    spec = RunSpec("concat", "concat", repeat=0, fold=1, rate=0.3)
    refs = {"score": (np.zeros(30, dtype=np.float32), np.isin(np.arange(30), [20, 23, 24]))}
    preds = run_preds(_ctx(), spec, tmp_path / "run", references=refs)
    assert all((p.method, p.repeat, p.fold, p.rate) == ("concat", 0, 1, 0.3) for p in preds)
    cells = _cells(preds)
    assert len(cells) == len(preds)  # one cell per (group, subset)
    assert set(cells) == {
        ("overall", "as_is"),
        ("img+rep+ehr", "all_masked"),
        ("img+rep+ehr", "complete"),
        ("img+rep+ehr", "partial"),
        ("img", "all_masked"),
        ("img", "complete"),
        ("img+rep", "all_masked"),
        ("img+rep", "complete"),
        ("img+rep", "partial"),
        ("reference_subset:score", "as_is"),
    }  # no combo3 stored: rep+ehr has no cell

    def check(group: str, subset: str, rows: list[int], key: str) -> None:
        c = cells[(group, subset)]
        np.testing.assert_array_equal(c.y, Y[rows])
        np.testing.assert_array_equal(c.p, a[key][rows])

    check("overall", "as_is", [0, 1, 2, 3, 4, 5], "overall")
    # every row, masked down to the combination
    check("img+rep+ehr", "all_masked", [0, 1, 2, 3, 4, 5], "combo0")
    check("img", "all_masked", [0, 1, 2, 3, 4, 5], "combo1")
    check("img+rep", "all_masked", [0, 1, 2, 3, 4, 5], "combo2")
    # only the rows holding every modality of it
    check("img+rep+ehr", "complete", [0], "combo0")
    check("img", "complete", [0, 1, 3, 5], "combo1")
    check("img+rep", "complete", [0, 3], "combo2")
    # rows lacking some of it but holding at least one of it
    check("img+rep+ehr", "partial", [1, 2, 3, 4, 5], "combo0")
    check("img+rep", "partial", [1, 2, 5], "combo2")
    # the reference subset: the overall predictions of the test rows where the reference is valid
    check("reference_subset:score", "as_is", [0, 3, 4], "overall")


def test_run_preds_options(tmp_path):
    _write_run(tmp_path / "run")
    spec = RunSpec("omnifuse", "omnifuse", fold=1)
    no_partial = _cells(run_preds(_ctx(), spec, tmp_path / "run", partial=False))
    assert ("img+rep", "complete") in no_partial and not any(s == "partial" for _, s in no_partial)
    only = run_preds(_ctx(), spec, tmp_path / "run", combos=False, label="renamed")
    assert [(p.method, p.group, p.subset) for p in only] == [("renamed", "overall", "as_is")]
    # collect: every spec's cells, in order
    spec2 = RunSpec("omnifuse", "omnifuse", fold=2)
    _write_run(tmp_path / "run2", fold=2)
    both = collect(_ctx(), {spec: tmp_path / "run", spec2: tmp_path / "run2"}, [spec, spec2], combos=False)
    assert [(p.fold, p.group) for p in both] == [(1, "overall"), (2, "overall")]


def test_pooled_concatenates_the_folds_of_one_repeat(tmp_path):
    specs = [RunSpec("concat", "concat", fold=k) for k in range(2)] + [RunSpec("concat", "concat", repeat=1)]
    folders = {}
    for i, s in enumerate(specs):
        folders[s] = tmp_path / f"r{i}"
        _write_run(folders[s], fold=s.fold)
    got = pooled(_ctx(), folders, specs)
    assert set(got) == {"concat"}
    y, p = got["concat"]
    assert y.shape == (12, 1) and p.shape == (12, 1)  # two folds of repeat 0, not repeat 1's
    np.testing.assert_array_equal(y, np.concatenate([Y, Y]))


def test_load_references_from_a_cache(ref_cache):
    refs = load_references(ref_cache)
    assert set(refs) == {"score"}
    values, valid = refs["score"]
    assert values.dtype == np.float32 and valid.dtype == bool and values.shape == valid.shape
    assert 0.5 < valid.mean() < 0.9 and ((values[valid] >= 0) & (values[valid] <= 1)).all()
    assert load_references(load_fuse_data(ref_cache, "mortality", device="cpu")) == {}  # loaded data: none


def test_run_preds_needs_a_finished_run(tmp_path):
    with pytest.raises(FileNotFoundError):
        run_preds(_ctx(), RunSpec("concat", "concat"), tmp_path / "nothing")


def test_raw_probabilities_travel_with_the_cells_and_old_runs_read_as_no_calibration(tmp_path):
    """A run stores ``overall_raw`` beside the calibrated ``overall``: the overall and reference cells carry it;
    a run folder written before calibration existed has none (``p_raw`` None) and reads as before."""
    spec = RunSpec("concat", "concat", fold=1)
    arrays = _write_run(tmp_path / "old")
    raw = arrays["overall"] ** 2
    new = tmp_path / "new"
    new.mkdir()
    np.savez_compressed(new / "predictions.npz", **arrays, overall_raw=raw, temperature=np.array([1.7]))
    (new / "run.json").write_text(json.dumps({"spec": {"fold": 1}, "temperature": [1.7]}))
    refs = {"score": (np.zeros(30, dtype=np.float32), np.isin(np.arange(30), [20, 23, 24]))}
    cells = _cells(run_preds(_ctx(), spec, new, references=refs))
    np.testing.assert_array_equal(cells[("overall", "as_is")].p_raw, raw)
    np.testing.assert_array_equal(cells[("reference_subset:score", "as_is")].p_raw, raw[[0, 3, 4]])
    assert cells[("img", "complete")].p_raw is None  # per combination: calibrated only
    old = _cells(run_preds(_ctx(), spec, tmp_path / "old", references=refs))
    assert all(c.p_raw is None for c in old.values()) and set(old) == set(cells)
    # pooled before calibration: only labels whose every run stored it
    s2 = RunSpec("sum", "sum", fold=1)
    got = pooled(_ctx(), {spec: new, s2: tmp_path / "old"}, [spec, s2], raw=True)
    assert set(got) == {"concat"}
    np.testing.assert_array_equal(got["concat"][1], raw)
