"""mimic.cohort on the real demos: the root rules and their counts, mortality and phenotype labels, the
benchmark split."""

from __future__ import annotations

import numpy as np
import pytest

from omnifuse.extract.datasets.mimic.variables import feature_names
from tests.helpers import MIMIC_III_DEMO as D3
from tests.helpers import MIMIC_IV_DEMO as D4

pytestmark = pytest.mark.skipif(not (D3.is_dir() and D4.is_dir()), reason="MIMIC demos not present")


COL = {n: i for i, n in enumerate(feature_names())}


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
    assert (
        py.shape == (113, 25) and pm.all() and int(py.sum()) == 586
    )  # checked independently from the raw CSVs and the benchmark yaml
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
    assert int(py.sum()) == 532  # the MedFuse map (default); through the GEM 571 (test_peers.py)
    assert c.extra["phenotype_codes"]["admissions_with_icd10"] == 44
    # the demo's capillary refill has no text value: never observed
    assert x[:, :, COL["mask->Capillary refill rate"]].sum() == 0
    assert x[:, :, COL["mask->Glascow coma scale eye opening"]].sum() > 0


def test_medfuse_anchor_age_rule_is_compared_and_counted(m4, tmp_path):
    """MIMIC-IV age at the stay is anchor_age + year(intime) - anchor_year; MedFuse keeps anchor_age >= 18. No
    demo stay is decided otherwise; on a copy of the demo whose patients table makes one patient 18 at a stay
    but 17 in the anchor year (we keep, MedFuse drops) and another 17 at a stay but 18 in the anchor year (we
    drop, MedFuse keeps), both are counted and only the second is excluded."""
    import polars as pl

    from omnifuse.extract.datasets.mimic.cohort import base_stays
    from omnifuse.extract.datasets.mimic.readers import MimicLayout

    rules = {r["rule"]: r for r in m4[1].extra["cohort_rules"]}
    assert rules["age < 18 at ICU admission"]["excluded"] == 0
    assert rules["age < 18 at ICU admission"]["medfuse_anchor_age_rule_differs"] == 0
    root = tmp_path / "iv"
    (root / "icu").mkdir(parents=True)
    (root / "hosp").mkdir()
    (root / "icu/icustays.csv.gz").symlink_to(D4 / "icu/icustays.csv.gz")
    (root / "hosp/admissions.csv.gz").symlink_to(D4 / "hosp/admissions.csv.gz")
    icu = pl.read_csv(D4 / "icu/icustays.csv.gz", infer_schema_length=0)
    pat = pl.read_csv(D4 / "hosp/patients.csv.gz", infer_schema_length=0)
    stays, log = base_stays(MimicLayout.detect(D4))
    one = icu.group_by("subject_id").len().filter(pl.col("len") == 1)["subject_id"].cast(pl.Int64)
    kept = stays.filter(pl.col("subject_id").is_in(one.implode())).join(
        pat.select(pl.col("subject_id").cast(pl.Int64), pl.col("anchor_year").cast(pl.Int64)), on="subject_id"
    )
    d = kept["intime"].dt.year() - kept["anchor_year"]
    a = int(kept["subject_id"][int(np.flatnonzero(d.to_numpy() >= 1)[0])])  # a stay after the anchor year
    b = int(kept["subject_id"][int(np.flatnonzero(d.to_numpy() == 0)[0])])  # a stay in the anchor year
    d_a = int(d[int(np.flatnonzero(kept["subject_id"].to_numpy() == a)[0])])
    pat = pat.with_columns(
        pl.when(pl.col("subject_id") == str(a))
        .then(pl.lit(str(18 - d_a)))  # 18 at the stay, 17 or less in the anchor year
        .when(pl.col("subject_id") == str(b))
        .then(pl.lit("18"))
        .otherwise(pl.col("anchor_age"))
        .alias("anchor_age"),
        pl.when(pl.col("subject_id") == str(b))
        .then((pl.col("anchor_year").cast(pl.Int64) + 1).cast(pl.Utf8))  # 17 at the stay
        .otherwise(pl.col("anchor_year"))
        .alias("anchor_year"),
    )
    pat.write_csv(root / "hosp/patients.csv")
    got, log2 = base_stays(MimicLayout.detect(root))
    age = {r["rule"]: r for r in log2}["age < 18 at ICU admission"]
    assert age["excluded"] == 1 and age["medfuse_anchor_age_rule_differs"] == 2
    assert set(stays["stay_id"].to_list()) - set(got["stay_id"].to_list()) == set(
        stays.filter(pl.col("subject_id") == b)["stay_id"].to_list()
    )
    assert float(got.filter(pl.col("subject_id") == a)["age"].item()) == 18.0
