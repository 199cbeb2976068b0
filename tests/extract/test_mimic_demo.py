"""The MIMIC adapter end to end on the real MIMIC-III and MIMIC-IV demos: cohort, labels, values."""

from __future__ import annotations

import csv
import gzip
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from omnifuse.extract.datasets.base import Adapter, Item
from omnifuse.extract.datasets.mimic import MimicAdapter
from omnifuse.extract.datasets.mimic.readers import iter_event_batches
from omnifuse.extract.datasets.mimic.variables import feature_names
from omnifuse.extract.datasets.registry import build_adapter

D3 = Path("/work/shared/data/mimic-iii-demo-1.4")
D4 = Path("/work/shared/data/mimic-iv-demo-2.2")
pytestmark = pytest.mark.skipif(not (D3.is_dir() and D4.is_dir()), reason="MIMIC demos not present")
COL = {n: i for i, n in enumerate(feature_names())}


@pytest.fixture(scope="module")
def m3(tmp_path_factory):
    a = MimicAdapter(D3, workdir=tmp_path_factory.mktemp("m3"))
    return a, a.cohort(), a.ehr_arrays()


@pytest.fixture(scope="module")
def m4(tmp_path_factory):
    a = build_adapter("mimic", root=D4, workdir=tmp_path_factory.mktemp("m4"))
    return a, a.cohort(), a.ehr_arrays()


def test_protocol_and_modalities(m4):
    a, c, x = m4
    assert isinstance(a, Adapter)
    mods = {m.name: m for m in a.modalities()}
    assert mods["ehr"].shape == (24, 76) and mods["ehr"].feature_names == feature_names()
    assert mods["ehr"].preprocessing["continuous"] == [2, 3, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58]
    assert mods["cxr"].input == "image" and mods["report"].provenance_codes == ["findings", "impression"]
    got = a.inputs("ehr", np.array([0, 5]))
    assert isinstance(got[0], Item) and np.array_equal(got[1].value, x[5])
    assert a.inputs("cxr", np.array([0, 1])) == [None, None]  # no CXR source: missing
    assert "PhysioNet" in c.extra["data_use"]


def test_mimic3_cohort_and_labels(m3):
    a, c, x = m3
    rules = {r["rule"]: r["excluded"] for r in c.extra["cohort_rules"]}
    assert len(c) == 113 and x.shape == (113, 24, 76)
    assert rules["transfer between ICU units or wards"] == 10
    assert rules["admission with more than one ICU stay"] == 11
    assert rules["age < 18 at ICU admission"] == 1
    assert rules["no usable event of the 17 variables during the ICU stay"] == 1
    y, mask = c.labels["mortality"]
    assert int(mask.sum()) == 57 and int(y[mask].sum()) == 17
    py, pm = c.labels["phenotyping"]
    assert py.shape == (113, 25) and pm.all() and int(py.sum()) == 586  # checked independently from the raw CSVs and the benchmark yaml
    assert int(py[:, c.tasks[1].classes.index("Essential hypertension")].sum()) == 49
    assert set(np.unique(c.splits["benchmark"])) <= {"train", "val", "test"}
    assert int((c.splits["benchmark"] == "test").sum()) == 18
    assert len(np.unique(c.stay_id)) == len(c)


def test_mimic4_cohort_and_labels(m4):
    a, c, x = m4
    rules = {r["rule"]: r["excluded"] for r in c.extra["cohort_rules"]}
    assert len(c) == 112
    assert rules["transfer between ICU units or wards"] == 11
    assert rules["admission with more than one ICU stay"] == 17
    y, mask = c.labels["mortality"]
    assert int(mask.sum()) == 54 and int(y[mask].sum()) == 9
    py, _ = c.labels["phenotyping"]
    assert int(py.sum()) == 571
    assert c.extra["phenotype_codes"]["admissions_with_icd10"] == 44
    # the demo's capillary refill has no text value: never observed
    assert x[:, :, COL["mask->Capillary refill rate"]].sum() == 0
    assert x[:, :, COL["mask->Glascow coma scale eye opening"]].sum() > 0


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


def test_mimic3_refuses_cxr():
    with pytest.raises(ValueError, match="MIMIC-IV subject_ids only"):
        MimicAdapter(D3, cxr_root="/nonexistent")


def test_mortality_task_option(tmp_path, m4):
    a = MimicAdapter(D4, task="mortality", timestep=1.0, workdir=tmp_path)
    c = a.cohort()
    assert len(c) == 54 and c.labels["mortality"][1].all() and [t.name for t in c.tasks] == ["mortality"]
    assert a.modalities()[0].shape == (48, 76)
    x = a.ehr_arrays()
    # 1-h bins: the 2-h bin k of the default cohort holds the value of 1-h bin 2k+1 (last wins, same stay)
    _, c2, x2 = m4
    r2 = int(np.flatnonzero(c2.stay_id == c.stay_id[0])[0])
    assert np.allclose(x[0, 1::2, :59], x2[r2, :, :59])


def _write_csv(path: Path, rows: list[dict], gz: bool) -> None:
    opener = gzip.open if gz else open
    with opener(path, "wt", newline="") as f:  # type: ignore[operator]
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@pytest.mark.parametrize("gz", [True, False])
def test_chartevents_streamed(tmp_path, gz):
    rows = [{"subject_id": "1", "hadm_id": "10", "stay_id": "100", "charttime": "2100-01-01 0%d:00:00" % (i % 10),
             "itemid": str(220045 if i % 3 else 999999), "value": str(60 + i), "valuenum": str(60 + i),
             "valueuom": "bpm"} for i in range(1000)]
    p = tmp_path / ("chartevents.csv.gz" if gz else "chartevents.csv")
    _write_csv(p, rows, gz)
    batches = list(iter_event_batches(p, {220045}, batch_rows=100, block_bytes=4096))
    assert len(batches) > 1  # really streamed in pieces
    df = pl.concat(batches)
    assert df.height == sum(1 for r in rows if r["itemid"] == "220045")
    assert df.columns == ["hadm_id", "stay_id", "charttime", "itemid", "value", "valuenum", "valueuom"]
    assert sorted(df["valuenum"].to_list()) == sorted(float(r["valuenum"]) for r in rows if r["itemid"] == "220045")
