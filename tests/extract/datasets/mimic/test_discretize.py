"""The [T, 76] discretiser against hand-computed answers."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from omnifuse.extract.datasets.mimic.discretize import discretize, n_bins
from omnifuse.extract.datasets.mimic.variables import CATEGORIES, VARIABLES, column_offsets, feature_names

HR = VARIABLES.index("Heart Rate")
EYE = VARIABLES.index("Glascow coma scale eye opening")
COL = {n: i for i, n in enumerate(feature_names())}


def _ev(rows):
    return pl.DataFrame(
        rows, schema={"row": pl.Int64, "hours": pl.Float64, "var": pl.Int8, "val": pl.Float64}, orient="row"
    )


def test_n_bins_formula():
    assert n_bins(48, 2) == 24 and n_bins(48, 1) == 48 and n_bins(48, 0.8) == 60 and n_bins(47.5, 2) == 24


def test_bins_last_wins_previous_imputation_and_masks():
    ev = _ev(
        [
            (0, 0.0, HR, 70.0),  # t = 0 -> bin 0
            (0, 1.5, HR, 72.0),  # bin 0, later: wins
            (0, 2.0, HR, 90.0),  # t = 2 exactly -> bin 0 (bins are (k*ts, (k+1)*ts])
            (0, 2.0001, HR, 95.0),  # bin 1
            (0, 7.0, HR, 100.0),  # bin 3
            (0, 48.0, HR, 60.0),  # last bin
            (0, 48.1, HR, 1.0),  # outside the window
            (0, -0.5, HR, 1.0),  # before ICU admission: ignored
            (1, 5.0, EYE, float(CATEGORIES["Glascow coma scale eye opening"].index("To Speech"))),
        ]
    )
    x = discretize(ev, 2, timestep=2.0, hours=48.0)
    assert x.shape == (2, 24, 76) and x.dtype == np.float32
    hr, m = x[0, :, COL["Heart Rate"]], x[0, :, COL["mask->Heart Rate"]]
    assert hr[0] == 90.0 and hr[1] == 95.0 and hr[2] == 95.0 and hr[3] == 100.0 and hr[22] == 100.0
    assert hr[23] == 60.0
    assert m.tolist() == [1, 1, 0, 1] + [0] * 19 + [1]
    # row 1: no heart rate -> normal value 86 everywhere, mask 0
    assert np.all(x[1, :, COL["Heart Rate"]] == 86.0) and x[1, :, COL["mask->Heart Rate"]].sum() == 0
    # categorical: normal "4 Spontaneously" before, "To Speech" from bin 2 on
    eye_cols = [COL[f"Glascow coma scale eye opening->{c}"] for c in CATEGORIES["Glascow coma scale eye opening"]]
    assert x[1, 0, eye_cols].tolist() == [0, 0, 0, 1, 0, 0, 0, 0]
    assert x[1, 2, COL["Glascow coma scale eye opening->To Speech"]] == 1 and x[1, 2, eye_cols].sum() == 1
    assert x[1, 23, COL["Glascow coma scale eye opening->To Speech"]] == 1
    assert x[1, :, COL["mask->Glascow coma scale eye opening"]].tolist() == [0, 0, 1] + [0] * 21
    # every categorical block is one-hot in every bin
    offs = column_offsets()
    for i, v in enumerate(VARIABLES):
        if v in CATEGORIES:
            assert np.all(x[:, :, offs[i] : offs[i] + len(CATEGORIES[v])].sum(-1) == 1)


def test_same_time_keeps_greatest_and_end_hours_cut():
    ev = _ev([(0, 3.0, HR, 80.0), (0, 3.0, HR, 120.0), (0, 3.0, HR, 100.0), (0, 10.0, HR, 50.0)])
    x = discretize(ev, 1, timestep=2.0, hours=48.0, end_hours=np.array([9.0]))
    hr = x[0, :, COL["Heart Rate"]]
    assert hr[1] == 120.0 and hr[4] == 120.0  # the event at 10 h lies after the stay's end (9 h)
    assert x[0, :, COL["mask->Heart Rate"]].sum() == 1


def test_timestep_one_hour():
    x = discretize(_ev([(0, 0.5, HR, 70.0), (0, 1.5, HR, 80.0)]), 1, timestep=1.0, hours=48.0)
    assert x.shape == (1, 48, 76) and x[0, 0, COL["Heart Rate"]] == 70.0 and x[0, 1, COL["Heart Rate"]] == 80.0


def test_rows_out_of_range_rejected():
    with pytest.raises(ValueError, match="rows"):
        discretize(_ev([(5, 1.0, HR, 70.0)]), 2, timestep=2.0, hours=48.0)


def test_same_time_tie_compares_keys_as_text_first():
    # the benchmark keeps the last of (chart time, variable, value) sorted with its uncleaned values as text:
    # heart rate "9" beats "15"; without a key the numbers compare ("15" wins)
    rows = [(0, 3.0, HR, 9.0, "9"), (0, 3.0, HR, 15.0, "15"), (0, 5.0, HR, 120.0, None), (0, 5.0, HR, 80.0, None)]
    ev = pl.DataFrame(
        rows,
        schema={"row": pl.Int64, "hours": pl.Float64, "var": pl.Int8, "val": pl.Float64, "key": pl.Utf8},
        orient="row",
    )
    x = discretize(ev, 1, timestep=2.0, hours=48.0)
    assert x[0, 1, COL["Heart Rate"]] == 9.0 and x[0, 2, COL["Heart Rate"]] == 120.0
    assert discretize(ev.drop("key"), 1, timestep=2.0, hours=48.0)[0, 1, COL["Heart Rate"]] == 15.0
    # categories without a key compare by their text: "To Speech" > "Spontaneously"
    cats = CATEGORIES["Glascow coma scale eye opening"]
    ev2 = _ev([(0, 1.0, EYE, float(cats.index("To Speech"))), (0, 1.0, EYE, float(cats.index("Spontaneously")))])
    assert discretize(ev2, 1, timestep=2.0, hours=48.0)[0, 0, COL["Glascow coma scale eye opening->To Speech"]] == 1


def test_whole_stay_bins_by_hand(tmp_path):
    """``discretize_stays``: each stay's int(min(LOS, cap) / ts + 1 - 1e-6) bins (at least 1), events after the
    cap ignored, stored one stay after another (offsets)."""
    from omnifuse.extract.datasets.mimic.discretize import discretize_stays, stay_bins

    path = tmp_path / "ev.parquet"
    _ev(
        [
            (0, 0.5, HR, 70.0),
            (0, 4.9, HR, 80.0),
            (0, 5.0, HR, 85.0),  # bin 2 = (4, 6], last wins
            (1, 9.99, HR, 90.0),  # bin 4 = (8, 10], the last bin under a 10 h cap
            (1, 10.5, HR, 1.0),  # after the cap: ignored
            (2, 0.0, HR, 60.0),  # a stay of length 0 with an event at admission: one bin
        ]
    ).write_parquet(path)
    los = np.array([5.0, 30.0, 0.0])
    assert stay_bins(los, 10.0, 2.0).tolist() == [3, 5, 1]
    assert stay_bins(np.array([48.0, 47.9, 400.0]), 336.0, 2.0).tolist() == [24, 24, 168]
    values, offsets = discretize_stays(path, np.arange(3), 2.0, 10.0, los)
    assert offsets.tolist() == [0, 3, 8, 9] and values.shape == (9, 76) and values.dtype == np.float32
    hr, m = values[:, COL["Heart Rate"]], values[:, COL["mask->Heart Rate"]]
    assert hr[:3].tolist() == [70, 70, 85] and m[:3].tolist() == [1, 0, 1]
    assert hr[3:8].tolist() == [86, 86, 86, 86, 90] and m[3:8].tolist() == [0, 0, 0, 0, 1]
    assert hr[8] == 60 and m[8] == 1
    # the same bins as the dense discretisation with the cap as its window and the LOS as each stay's end
    dense = discretize(pl.read_parquet(path), 3, 2.0, 10.0, end_hours=los)
    for i in range(3):
        assert np.array_equal(values[offsets[i] : offsets[i + 1]], dense[i, : offsets[i + 1] - offsets[i]])
