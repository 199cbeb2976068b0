"""``omnifuse experiment sweep`` (omnifuse.experiments.sweep) end to end: the simulated masks per rate, the
same masks for every method, the table and figure, and an unknown modality refused."""

import numpy as np
import pytest

from omnifuse.experiments.runner import load_run
from omnifuse.experiments.sweep import sweep
from tests.helpers import assert_png, read_csv_rows


def test_sweep_rates_and_masks(ref_cache, tmp_path, tiny):
    out = tmp_path / "sw"
    r = sweep(ref_cache, "mortality", rates=[0.0, 0.6], folds=2, out=out, **tiny)
    assert r.runs_trained == 2 * 2 * 2
    a0, _ = load_run(out / "runs" / "omnifuse" / "rate0_random" / "r0f1")
    a6, r6 = load_run(out / "runs" / "omnifuse" / "rate0.6_random" / "r0f1")
    b6, q6 = load_run(out / "runs" / "omnifuse_no_imp" / "rate0.6_random" / "r0f1")
    assert a6["present"].sum() < 0.7 * a0["present"].sum() and a6["present"].any(1).all()
    assert np.array_equal(a6["present"], b6["present"]) and r6["mask_digest"] == q6["mask_digest"]
    rows = read_csv_rows(out / "results.csv")
    assert {(x["method"], float(x["rate"])) for x in rows} == {
        (m, q) for m in ("omnifuse", "omnifuse_no_imp") for q in (0.0, 0.6)
    }
    assert_png(out / "sweep.png")
    with pytest.raises(ValueError, match="modality must be"):
        sweep(ref_cache, "mortality", rates=[0.5], modality="nonesuch", folds=2, out=tmp_path / "x", **tiny)
