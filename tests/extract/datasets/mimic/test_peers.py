"""The adapter against the peers' own outputs on the real demos (fixtures/, made by fixtures/make_fixtures.py from
mimic3-benchmarks run on the MIMIC-III demo and MedFuse's mimic4extract run on the MIMIC-IV demo, pandas 1.5.3;
docs/mimic.md, "Checked against the peers").

Defaults (``ehr_mode="benchmark"``, ``phenotype_map="medfuse"``): the same cohorts, the same in-hospital-mortality
and phenotype labels, and every cell of the discretised EHR equal to the benchmark's (MIMIC-III, both tasks) and
to MedFuse's outside the GCS columns (MIMIC-IV: MedFuse's own discretiser stops on the demo's numeric GCS).
No cell is excepted. ``ehr_mode="clean"`` and ``phenotype_map="gem"`` depart exactly where docs/mimic.md says.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from omnifuse.extract.datasets.mimic import MimicAdapter
from omnifuse.extract.datasets.mimic.ccs import PHENOTYPES
from omnifuse.extract.datasets.mimic.cohort import phenotype_labels
from omnifuse.extract.datasets.mimic.variables import feature_names
from tests.helpers import MIMIC_III_DEMO as D3
from tests.helpers import MIMIC_IV_DEMO as D4

pytestmark = pytest.mark.skipif(not (D3.is_dir() and D4.is_dir()), reason="MIMIC demos not present")

FIXTURES = Path(__file__).parent / "fixtures"
NAMES = feature_names()


def _labels(name: str) -> pl.DataFrame:
    ref = pl.read_csv(FIXTURES / name, infer_schema_length=0)
    assert ref.columns == ["stay_id", "period_length", "ihm", *PHENOTYPES]
    return ref.with_columns(pl.col("stay_id").cast(pl.Int64))


def _check_labels(run, ref: pl.DataFrame, n_stays: int, n_ihm: int) -> None:
    _, c, _ = run
    row = {int(s): i for i, s in enumerate(c.stay_id)}
    assert len(ref) == n_stays and sorted(row) == ref["stay_id"].to_list()  # the same cohort
    y, mask = c.labels["mortality"]
    ours_ihm = {int(c.stay_id[i]): int(y[i, 0]) for i in np.flatnonzero(mask)}
    ref_ihm = {s: int(v) for s, v in zip(ref["stay_id"], ref["ihm"], strict=True) if v}
    assert len(ref_ihm) == n_ihm and ours_ihm == ref_ihm
    py, pmask = c.labels["phenotyping"]
    rows = [row[s] for s in ref["stay_id"]]
    assert pmask.all() and np.array_equal(py[rows], ref.select(PHENOTYPES).to_numpy().astype(np.float32))


def _variable(column: str) -> str:
    return column[len("mask->") :] if column.startswith("mask->") else column.split("->")[0]


def _mismatches(x: np.ndarray, stay_ids: np.ndarray, ref: pl.DataFrame) -> tuple[int, Counter, int, set[int]]:
    """Compare the reference's (stay, bin) rows with ours: (cells compared, stays differing per variable, cells
    differing, stays differing)."""
    row = {int(s): i for i, s in enumerate(stay_ids)}
    cols = [NAMES.index(n) for n in ref.columns[2:]]
    r = ref.select(ref.columns[2:]).to_numpy().astype(np.float32)
    o = x[[row[s] for s in ref["stay_id"]], ref["bin"].to_numpy()][:, cols]
    bad = r != o
    by_var: dict[str, set[int]] = {}
    for j in np.flatnonzero(bad.any(0)):
        by_var.setdefault(_variable(ref.columns[2 + j]), set()).update(ref["stay_id"].to_numpy()[bad[:, j]].tolist())
    per_var = Counter({v: len(s) for v, s in by_var.items()})
    return bad.size, per_var, int(bad.sum()), set(ref["stay_id"].to_numpy()[bad.any(1)].tolist())


def test_mimic3_cohort_and_labels_equal_the_benchmark(m3):
    _check_labels(m3, _labels("m3_labels.csv.gz"), 113, 57)


def test_mimic3_ehr_equals_the_benchmark_in_every_cell(m3):
    _, c, x = m3
    ref = pl.read_csv(FIXTURES / "m3_ehr.csv.gz")
    assert ref.columns[2:] == NAMES
    labels = _labels("m3_labels.csv.gz")
    # bins per stay: 24 for in-hospital mortality; the discretiser's int(period / 2 + 1 - 1e-6), at most 24,
    # for phenotyping
    n_bins = dict(ref.group_by("stay_id").len().iter_rows())
    for sid, period, ihm in labels.select("stay_id", "period_length", "ihm").iter_rows():
        full = int(float(period) / 2.0 + 1.0 - 1e-6)
        assert n_bins[sid] == (24 if ihm else min(24, full))
    compared, per_var, bad, _ = _mismatches(x, c.stay_id, ref)
    assert compared == 2206 * 76 and bad == 0, f"cells differing from the benchmark, stays per variable: {per_var}"
    # in-hospital mortality alone: 57 stays x 24 bins
    ihm = labels.filter(pl.col("ihm") != "")["stay_id"]
    assert ref.filter(pl.col("stay_id").is_in(ihm.implode())).height == 57 * 24
    # bins after ICU discharge (stays shorter than 46 h): the last values carried, masks 0
    row = {int(s): i for i, s in enumerate(c.stay_id)}
    short = [(s, n) for s, n in n_bins.items() if n < 24]
    assert len(short) == 51  # of the 113 stays, 51 are shorter than 46 h
    for s, n in short:
        r = row[s]
        assert np.all(x[r, n:, 59:] == 0) and np.all(x[r, n:, :59] == x[r, n - 1, :59])


def test_mimic3_clean_mode_departs_where_documented(m3_clean):
    _, c, x = m3_clean
    ref = pl.read_csv(FIXTURES / "m3_ehr.csv.gz")
    ihm = _labels("m3_labels.csv.gz").filter(pl.col("ihm") != "")["stay_id"]
    _, per_var, _, stays = _mismatches(x, c.stay_id, ref.filter(pl.col("stay_id").is_in(ihm.implode())))
    # urine pH 5 and mean pressures of 1 and 3 removed, Metavision capillary refill read, numeric ties,
    # FiO2 fractions not divided, systolic 11647 removed: stays of the 57 differing per variable
    assert per_var == {
        "pH": 21,
        "Capillary refill rate": 15,
        "Respiratory rate": 5,
        "Mean blood pressure": 5,
        "Fraction inspired oxygen": 1,
        "Systolic blood pressure": 1,
    }
    assert 57 - len(stays) == 19  # stays whose 24 x 76 matrix is the benchmark's


def test_mimic4_cohort_and_labels_equal_medfuse(m4):
    _check_labels(m4, _labels("m4_labels.csv.gz"), 112, 54)
    assert m4[1].extra["phenotype_codes"]["phenotype_map"] == "medfuse"


def test_mimic4_gem_map_departs_where_documented(m4):
    a, c, _ = m4
    ref = _labels("m4_labels.csv.gz")
    gem, stats = phenotype_labels(a.layout, a.stays()["hadm_id"].to_numpy(), "gem")
    assert stats["phenotype_map"] == "gem"
    row = {int(s): i for i, s in enumerate(c.stay_id)}
    theirs = ref.select(PHENOTYPES).to_numpy().astype(np.float32)
    ours = gem[[row[s] for s in ref["stay_id"]]]
    differ = (ours != theirs).any(1)
    assert int((~differ).sum()) == 88  # stays with all 25 labels equal
    assert np.all(ours[ours != theirs] == 1)  # every difference: positive through the GEM, negative in MedFuse
    per_group = Counter({PHENOTYPES[j]: int((ours[:, j] != theirs[:, j]).sum()) for j in range(25)})
    assert per_group["Respiratory failure; insufficiency; arrest (adult)"] == 9
    assert per_group["Diabetes mellitus with complications"] == 8
    assert per_group["Cardiac dysrhythmias"] == 6
    assert per_group["Pleurisy; pneumothorax; pulmonary collapse"] == 4


def test_mimic4_ehr_equals_medfuse_outside_gcs(m4):
    _, c, x = m4
    ref = pl.read_csv(FIXTURES / "m4_ehr_no_gcs.csv.gz")
    assert ref.columns[2:] == [n for n in NAMES if "Glascow coma scale" not in n] and len(ref.columns) == 29
    assert ref["stay_id"].n_unique() == 54 and ref.height == 54 * 24
    compared, per_var, bad, _ = _mismatches(x, c.stay_id, ref)
    assert compared == 54 * 24 * 27 and bad == 0, f"cells differing from MedFuse, stays per variable: {per_var}"


def _whole_stay_reference() -> tuple[pl.DataFrame, dict[int, int]]:
    """The benchmark's phenotyping discretisation of every MIMIC-III demo stay, every bin (``m3_ehr.csv.gz``:
    bins 0-23, ``m3_ehr_stay_tail.csv.gz``: the bins after), and each stay's number of bins."""
    floats = {c: pl.Float64 for c in NAMES}
    head = pl.read_csv(FIXTURES / "m3_ehr.csv.gz", schema_overrides=floats)
    tail = pl.read_csv(FIXTURES / "m3_ehr_stay_tail.csv.gz", schema_overrides=floats)
    assert tail.columns == head.columns and tail["bin"].min() == 24
    ref = pl.concat([head, tail]).sort("stay_id", "bin")
    n_bins = dict(ref.group_by("stay_id").len().iter_rows())
    for sid, period in _labels("m3_labels.csv.gz").select("stay_id", "period_length").iter_rows():
        assert n_bins[sid] == int(float(period) / 2.0 + 1.0 - 1e-6)  # Discretizer.transform(X, end=period)
    return ref, n_bins


def _compare_whole_stay(values: np.ndarray, offsets: np.ndarray, stay_ids: np.ndarray, ref: pl.DataFrame) -> int:
    """Cells of the reference's (stay, bin) rows that differ from ours (every reference row must be ours)."""
    row = {int(s): i for i, s in enumerate(stay_ids)}
    start = offsets[[row[s] for s in ref["stay_id"]]]
    b = ref["bin"].to_numpy()
    assert (start + b < offsets[[row[s] + 1 for s in ref["stay_id"]]]).all()
    r = ref.select(ref.columns[2:]).to_numpy().astype(np.float32)
    return int((values[start + b] != r).sum())


def test_mimic3_whole_stay_ehr_equals_the_benchmarks_phenotyping_in_every_cell(m3, tmp_path):
    """``ehr_stay`` against mimic3-benchmarks' phenotyping discretisation (the whole stay, no cap): with a cap
    above the longest demo stay (850 h), every bin of every stay; with the default cap (336 h), each stay's first
    min(bins, 168) bins, the longer stays cut there."""
    ref, n_bins = _whole_stay_reference()
    assert ref.height == sum(n_bins.values()) == 5782 and max(n_bins.values()) == 425 and len(n_bins) == 113
    a = MimicAdapter(D3, phenotype_hours=852.0, workdir=tmp_path)
    values, offsets = a.ehr_stay_arrays()
    assert np.array_equal(a.cohort().stay_id, m3[1].stay_id)
    row = {int(s): i for i, s in enumerate(a.cohort().stay_id)}
    assert all(offsets[row[s] + 1] - offsets[row[s]] == n for s, n in n_bins.items())  # the same bins per stay
    assert values.shape == (5782, 76) and _compare_whole_stay(values, offsets, a.cohort().stay_id, ref) == 0
    # the default cap: the first 168 bins of each stay
    d, _, _ = m3
    values, offsets = d.ehr_stay_arrays()
    capped = ref.filter(pl.col("bin") < 168)
    lengths = np.diff(offsets)
    assert all(lengths[row[s]] == min(n, 168) for s, n in n_bins.items())
    assert sum(n > 168 for n in n_bins.values()) == d.cohort().extra["ehr_stay"]["stays_longer_than_cap"] == 6
    assert _compare_whole_stay(values, offsets, d.cohort().stay_id, capped) == 0
