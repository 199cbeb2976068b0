"""The runner's bookkeeping: combinations, method resolution, patient-grouped folds shared by every method,
seeded missingness masks shared by every method, and resuming an interrupted study."""

import json

import numpy as np
import pytest
import torch

from omnifuse.experiments import runner
from omnifuse.experiments.runner import (
    DEFAULT_RUN_COST,
    DONE,
    RUN_COST,
    RunSpec,
    StudyError,
    build_context,
    combinations_for,
    dispatch_order,
    fold_specs,
    load_run,
    method_params,
    run_all,
    run_cost,
)
from tests.helpers import TINY_OPTIONS, TINY_OVERRIDES


def test_combinations_for():
    names = ["a", "b", "c"]
    assert combinations_for(names, "full+single") == [
        (True, True, True),
        (True, False, False),
        (False, True, False),
        (False, False, True),
    ]
    allc = combinations_for(names, "all")
    assert len(allc) == 7 and len(set(allc)) == 7 and allc[0] == (True, True, True)
    assert combinations_for(names, "loo")[1:] == [(False, True, True), (True, False, True), (True, True, False)]
    assert combinations_for(names, ["a+c", "b"]) == [(True, False, True), (False, True, False)]
    assert combinations_for(["a"], "full+single") == [(True,)]
    with pytest.raises(StudyError, match="unknown modality"):
        combinations_for(names, ["a+x"])


def test_method_params_of_variants_and_overrides():
    """A variant gets the overrides of its base network, then its own (the variant's switches come from the
    registry entry, not from the study)."""
    assert method_params("dwfuse_only") == {}
    p = method_params("dwfuse_only", {"omnifuse": {"d": 8, "tla": True}, "dwfuse_only": {"K": 2}})
    assert p == {"d": 8, "tla": True, "K": 2}  # overrides win, the variant's own last
    assert method_params("concat", {"concat": {"d": 4}}) == {"d": 4}
    with pytest.raises(StudyError, match="unknown fusion method"):
        method_params("nonesuch")


def test_folds_are_patient_grouped_partitions_and_checked_on_resume(ref_cache, tmp_path):
    ctx = build_context(
        ref_cache, "mortality", folds=3, repeats=2, seed=5, out=tmp_path / "s", train_options=TINY_OPTIONS
    )
    data = ctx.data()
    labelled = np.flatnonzero(data.y_mask.numpy())
    for rep in ctx.folds:
        tests = np.concatenate([te for _, te in rep])
        assert np.array_equal(np.sort(tests), labelled)  # every labelled row tested exactly once per repeat
        for tr, te in rep:
            assert not set(data.subject_id[tr]) & set(data.subject_id[te])
            assert np.array_equal(np.sort(np.concatenate([tr, te])), labelled)
    # repeats differ
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(ctx.folds[0], ctx.folds[1], strict=True))
    saved = json.loads((tmp_path / "s" / "folds.json").read_text())
    assert saved["repeats"][1][2] == data.stay_id[ctx.folds[1][2][1]].tolist()
    build_context(ref_cache, "mortality", folds=3, repeats=2, seed=5, out=tmp_path / "s", train_options=TINY_OPTIONS)
    with pytest.raises(StudyError, match="other folds"):
        build_context(
            ref_cache, "mortality", folds=3, repeats=2, seed=6, out=tmp_path / "s", train_options=TINY_OPTIONS
        )


def test_same_folds_and_same_masks_for_every_method(ref_cache, tmp_path):
    ctx = build_context(
        ref_cache, "mortality", folds=2, seed=0, combinations="full", train_options={**TINY_OPTIONS, "epochs": 1}
    )
    methods = ["omnifuse", "concat", "dwfuse_only"]
    specs = fold_specs(ctx, methods, TINY_OVERRIDES, rate=0.4)
    st = run_all(ctx, specs, tmp_path / "s", progress=False)
    assert st.trained == 6
    by_fold: dict[int, list] = {}
    for s in specs:
        arrays, run = load_run(st.folders[s])
        by_fold.setdefault(s.fold, []).append((arrays["test_rows"], arrays["present"], run["mask_digest"]))
    natural = ctx.data().natural_mask.numpy()
    digests = set()
    for k, got in by_fold.items():
        rows0, present0, digest0 = got[0]
        assert np.array_equal(rows0, ctx.folds[0][k][1])
        for rows, present, digest in got[1:]:
            assert np.array_equal(rows, rows0) and np.array_equal(present, present0) and digest == digest0
        # the simulated mask only removes modalities, never all of a row's, and it removed some
        nat = natural[rows0]
        assert (present0 <= nat).all() and present0.any(1).all() and present0.sum() < nat.sum()
        digests.add(digest0)
    assert len(digests) == 2  # seeded by fold: the two folds' masks differ


def test_resume_after_interruption(ref_cache, tmp_path):
    ctx = build_context(
        ref_cache, "mortality", folds=2, seed=0, combinations="full", train_options={**TINY_OPTIONS, "epochs": 1}
    )
    specs = fold_specs(ctx, ["concat", "sum"], TINY_OVERRIDES)
    out = tmp_path / "s"
    done = []

    class Killed(Exception):
        pass

    def kill_after_two(spec):
        done.append(spec)
        if len(done) == 2:
            raise Killed

    with pytest.raises(Killed):
        run_all(ctx, specs, out, progress=False, on_done=kill_after_two)
    finished = [s for s in specs if (out / "runs" / s.key / DONE).exists()]
    assert finished == specs[:2]
    # a run killed while writing: its folder exists without the DONE marker
    half = out / "runs" / specs[2].key
    half.mkdir(parents=True)
    (half / "predictions.npz").write_text("truncated")
    before = {s: (out / "runs" / s.key / "predictions.npz").read_bytes() for s in finished}
    st = run_all(ctx, specs, out, progress=False)
    assert (st.trained, st.reused) == (2, 2)
    assert all((out / "runs" / s.key / DONE).exists() for s in specs)
    assert all((out / "runs" / s.key / "predictions.npz").read_bytes() == b for s, b in before.items())
    st = run_all(ctx, specs, out, progress=False)
    assert (st.trained, st.reused) == (0, 4)
    # other training options: the old runs are not reused
    ctx2 = build_context(
        ref_cache, "mortality", folds=2, seed=0, combinations="full", train_options={**TINY_OPTIONS, "epochs": 2}
    )
    st = run_all(ctx2, fold_specs(ctx2, ["concat"], TINY_OVERRIDES), out, progress=False)
    assert (st.trained, st.reused) == (2, 0)


def test_parallel_runs_match_sequential(ref_cache, tmp_path):
    ctx = build_context(
        ref_cache, "mortality", folds=2, seed=0, combinations="full", train_options={**TINY_OPTIONS, "epochs": 1}
    )
    specs = fold_specs(ctx, ["concat"], TINY_OVERRIDES)
    a = run_all(ctx, specs, tmp_path / "seq", progress=False)
    b = run_all(ctx, specs, tmp_path / "par", n_jobs=2, threads=1, progress=False)
    assert b.trained == 2
    for s in specs:
        pa, pb = load_run(a.folders[s])[0], load_run(b.folders[s])[0]
        np.testing.assert_allclose(pa["overall"], pb["overall"], rtol=1e-5, atol=1e-6)


def test_unimodal_run_trains_only_on_rows_holding_the_modality(ref_cache, tmp_path):
    from omnifuse.experiments.runner import RunSpec, freeze_params

    ctx = build_context(
        ref_cache, "mortality", folds=2, seed=0, combinations="full+single", train_options={**TINY_OPTIONS, "epochs": 1}
    )
    spec = RunSpec(
        "unimodal:rep",
        "concat",
        freeze_params(TINY_OVERRIDES["concat"]),
        fold=1,
        modalities=("rep",),
        train_modality="rep",
    )
    st = run_all(ctx, [spec], tmp_path / "u", progress=False)
    arrays, run = load_run(st.folders[spec])
    tr = ctx.folds[0][1][0]
    j = ctx.modalities.index("rep")
    assert run["n_train"] + run["n_val"] == int(ctx.data().mask[torch.as_tensor(tr), j].sum())
    keys = {k for k in arrays if k.startswith("combo")}
    assert keys == {f"combo{1 + j}"}  # only the combination the model can see: "rep" alone


def test_calibrated_and_uncalibrated_runs_are_never_reused_for_each_other(ref_cache, tmp_path):
    """``calibrate`` is a training option: it is part of a run's spec.json, so a finished run of one setting is
    retrained for the other; each run stores its temperature and its raw probabilities."""
    from omnifuse.fuse.calibration import apply_temperature

    out = tmp_path / "s"

    def run(calibrate: bool):
        ctx = build_context(
            ref_cache,
            "mortality",
            folds=2,
            seed=0,
            combinations="full",
            train_options={**TINY_OPTIONS, "epochs": 2, "calibrate": calibrate},
        )
        specs = fold_specs(ctx, ["concat", "logreg"], TINY_OVERRIDES)
        return specs, run_all(ctx, specs, out, progress=False)

    specs, st = run(True)
    assert (st.trained, st.reused) == (4, 0)
    on = {s: load_run(st.folders[s]) for s in specs}
    assert json.loads((st.folders[specs[0]] / "spec.json").read_text())["train"]["calibrate"] is True
    specs, st = run(False)
    assert (st.trained, st.reused) == (4, 0)
    for s in specs:
        (a_on, r_on), (a_off, r_off) = on[s], load_run(st.folders[s])
        assert r_off["temperature"] == [1.0] and a_off["temperature"].tolist() == [1.0]
        np.testing.assert_array_equal(a_off["overall"], a_off["overall_raw"])
        np.testing.assert_array_equal(a_on["overall_raw"], a_off["overall_raw"])  # the same training
        scaled = apply_temperature(a_on["overall_raw"], r_on["temperature"], "binary")
        np.testing.assert_allclose(a_on["overall"], scaled, atol=1e-7)  # T = 1 returns the unclipped values
        assert (r_on["temperature"] == [1.0]) == (s.label == "logreg")  # reference learners keep T = 1
    specs, st = run(False)
    assert (st.trained, st.reused) == (0, 4)


def test_dispatch_order_puts_the_longest_runs_first_and_keeps_ties_in_order():
    specs = [
        RunSpec("concat", "concat", fold=0),
        RunSpec("logreg", "logreg", fold=0),
        RunSpec("omnifuse", "omnifuse", fold=0),
        RunSpec("concat", "concat", fold=1),
        RunSpec("ablation_c", "ablation_c", fold=0),  # a variant the table does not list: its base's cost
        RunSpec("unimodal:vitals", "concat", fold=0),  # a study's own label: its registry entry's cost
        RunSpec("mystery", "mystery", fold=0),  # unknown: the middle value
        RunSpec("omnifuse", "omnifuse", fold=1),
    ]
    assert run_cost(specs[4]) == RUN_COST["omnifuse"] and run_cost(specs[5]) == RUN_COST["concat"]
    assert run_cost(specs[6]) == DEFAULT_RUN_COST
    got = [(s.label, s.fold) for s in dispatch_order(specs)]
    assert got == [
        ("omnifuse", 0),
        ("ablation_c", 0),
        ("omnifuse", 1),
        ("mystery", 0),
        ("concat", 0),
        ("concat", 1),
        ("unimodal:vitals", 0),
        ("logreg", 0),
    ]
    back = [(s.label, s.fold) for s in dispatch_order(list(reversed(specs)))]
    assert back[:3] == [("omnifuse", 1), ("ablation_c", 0), ("omnifuse", 0)]  # stable: ties keep the given order
    assert sorted(dispatch_order(specs), key=specs.index) == specs


def test_parallel_runs_start_longest_first_with_the_same_results(ref_cache, tmp_path, monkeypatch):
    """Two workers get the runs most expensive first; every run's folder and numbers are the sequential
    study's (in the order of the specs), and the sequential study keeps the specs' order."""
    ctx = build_context(
        ref_cache, "mortality", folds=2, seed=0, combinations="full", train_options={**TINY_OPTIONS, "epochs": 1}
    )
    specs = fold_specs(ctx, ["sum", "concat"], TINY_OVERRIDES)  # concat costs more than sum
    seen: dict[str, list] = {}

    def spy(name, real):
        def dispatch(ctx, todo, *a, **k):
            seen[name] = list(todo)
            return real(ctx, todo, *a, **k)

        return dispatch

    monkeypatch.setattr(runner, "_dispatch_here", spy("here", runner._dispatch_here))
    monkeypatch.setattr(runner, "_dispatch_loky", spy("loky", runner._dispatch_loky))
    a = run_all(ctx, specs, tmp_path / "seq", progress=False)
    b = run_all(ctx, specs, tmp_path / "par", n_jobs=2, threads=1, progress=False)
    assert seen["here"] == specs
    assert [s.label for s in seen["loky"]] == ["concat", "concat", "sum", "sum"]
    assert list(b.folders) == specs and b.trained == 4
    for s in specs:
        assert b.folders[s] == tmp_path / "par" / "runs" / s.key
        pa, pb = load_run(a.folders[s])[0], load_run(b.folders[s])[0]
        np.testing.assert_array_equal(pa["overall"], pb["overall"])
