"""mimic.events on the real demos: events matched to their stay by admission and stay id, timed from ICU
admission, binned; values checked by hand from the raw CSV files."""

from __future__ import annotations

import csv
import gzip
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from omnifuse.extract.datasets.mimic.variables import feature_names
from tests.helpers import MIMIC_III_DEMO as D3
from tests.helpers import MIMIC_IV_DEMO as D4

pytestmark = pytest.mark.skipif(not (D3.is_dir() and D4.is_dir()), reason="MIMIC demos not present")


COL = {n: i for i, n in enumerate(feature_names())}


def _raw_rows(path: Path, upper: bool):
    with gzip.open(path, "rt", newline="") as f:
        for r in csv.DictReader(f):
            yield {k.lower(): v for k, v in r.items()} if upper else r


def _t(s: str) -> datetime:
    return datetime.strptime(s, "%Y-%m-%d %H:%M:%S")


def _hand_bin(root: Path, upper: bool, stay_id: int, itemids: set[str], bin_k: int, ts: float = 2.0):
    stays = _raw_rows(root / ("ICUSTAYS.csv.gz" if upper else "icu/icustays.csv.gz"), upper)
    st = next(r for r in stays if int(r["icustay_id" if upper else "stay_id"]) == stay_id)
    intime = _t(st["intime"])
    sid_key = "icustay_id" if upper else "stay_id"
    vals = []
    for r in _raw_rows(root / ("CHARTEVENTS.csv.gz" if upper else "icu/chartevents.csv.gz"), upper):
        if r["itemid"] in itemids and r["hadm_id"] == st["hadm_id"] and r[sid_key] in ("", str(stay_id)):
            h = (_t(r["charttime"]) - intime).total_seconds() / 3600
            if bin_k * ts < h <= (bin_k + 1) * ts and r["value"]:
                vals.append((h, float(r["value"])))
    vals.sort()
    last_t = vals[-1][0]
    return max(v for h, v in vals if h == last_t), len(vals)


def test_hand_checked_heart_rate_bin3_mimic3(m3):
    a, c, x = m3
    row = int(np.flatnonzero(c.labels["mortality"][1])[0])
    expected, n = _hand_bin(D3, True, int(c.stay_id[row]), {"211", "220045"}, 3)
    assert n > 0 and x[row, 3, COL["Heart Rate"]] == pytest.approx(expected)
    assert x[row, 3, COL["mask->Heart Rate"]] == 1


def test_hand_checked_values_mimic4(m4):
    a, c, x = m4
    row = int(np.flatnonzero(c.labels["mortality"][1])[2])
    sid = int(c.stay_id[row])
    expected, n = _hand_bin(D4, False, sid, {"220045"}, 3)
    assert n > 0 and x[row, 3, COL["Heart Rate"]] == pytest.approx(expected)
    exp_rr, _ = _hand_bin(D4, False, sid, {"220210", "224689", "224690", "224422"}, 5)
    assert x[row, 5, COL["Respiratory rate"]] == pytest.approx(exp_rr)
