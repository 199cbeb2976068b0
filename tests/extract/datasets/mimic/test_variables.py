"""mimic.variables: the 76 columns in the benchmark's header order and the 12 continuous channels."""

from __future__ import annotations

from omnifuse.extract.datasets.mimic.variables import continuous_indices, feature_names


def test_feature_names_match_benchmark_header():
    names = feature_names()
    assert len(names) == 76 and len(set(names)) == 76
    assert names[:3] == ["Capillary refill rate->0.0", "Capillary refill rate->1.0", "Diastolic blood pressure"]
    assert names[4] == "Glascow coma scale eye opening->To Pain"
    assert names[58] == "pH" and names[59] == "mask->Capillary refill rate" and names[-1] == "mask->pH"
    cont = continuous_indices()
    assert len(cont) == 12 and all("->" not in names[i] for i in cont)
    assert sum("->" in n and not n.startswith("mask") for n in names) == 47


def test_benchmark_items_and_texts():
    from omnifuse.extract.datasets.mimic.variables import (
        ADDED_ITEMS,
        BENCHMARK_ITEMS,
        CRR_TEXT,
        CRR_TEXT_BENCHMARK,
        ITEMS,
        PANDAS1_NA_VALUES,
    )

    assert len(BENCHMARK_ITEMS) == 114 and set(ITEMS) == BENCHMARK_ITEMS | ADDED_ITEMS
    assert {ITEMS[i][0] for i in ADDED_ITEMS} == {"Capillary refill rate"}
    assert set(CRR_TEXT) - set(CRR_TEXT_BENCHMARK) == {"Normal <3 Seconds", "Abnormal >3 Seconds"}
    assert "None" not in PANDAS1_NA_VALUES and {"", "NA", "nan", "NULL"} <= PANDAS1_NA_VALUES
