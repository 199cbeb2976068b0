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
