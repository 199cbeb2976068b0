"""The plausible ranges the built-in datasets declare mask nothing on their real demos: the checks catch
broken values (tests/reliability) without changing a single number of clean data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from omnifuse.extract.datasets.base import Item
from omnifuse.extract.datasets.eicu.adapter import EicuDemoAdapter
from omnifuse.extract.datasets.mimic import MimicAdapter
from omnifuse.extract.pipeline import build_spec
from omnifuse.extract.values import ValueGuard

MIMIC_DEMOS = [Path("/work/shared/data/mimic-iii-demo-1.4"), Path("/work/shared/data/mimic-iv-demo-2.2")]


def _masked_by_declared_ranges(adapter) -> dict[str, int]:
    """Cells the pipeline's checks would mask, per array modality, over every row of ``adapter``."""
    cohort = adapter.cohort()
    raws = [r for r in adapter.modalities() if r.input == "array" and r.available]
    spec = build_spec(adapter, cohort, raws, {})
    out = {}
    for r in raws:
        guard = ValueGuard(spec.modality(r.name))
        items = adapter.inputs(r.name, np.arange(len(cohort)))
        out[r.name] = sum(sum(guard.check(it.value).masked.values()) for it in items if isinstance(it, Item))
    return out


def test_eicu_demo_has_no_value_outside_the_declared_ranges():
    adapter = EicuDemoAdapter()
    ranges = {r.name: r.ranges for r in adapter.modalities() if r.input == "array"}
    assert ranges["apache"] is not None and len(ranges["apache"]) == 71  # every column has a range
    assert ranges["vitals"] is not None and ranges["vitals"]["urine_ml"] == (0, None)  # an hourly sum: >= 0 only
    assert ranges["vitals"]["nibp_systolic"] == (25, 300)
    assert _masked_by_declared_ranges(adapter) == {"vitals": 0, "apache": 0}


@pytest.mark.skipif(not all(d.is_dir() for d in MIMIC_DEMOS), reason="MIMIC demos not present")
@pytest.mark.parametrize("root", MIMIC_DEMOS, ids=["mimic-iii", "mimic-iv"])
def test_mimic_demos_have_no_value_outside_the_declared_ranges(root, tmp_path):
    adapter = MimicAdapter(root, workdir=tmp_path)
    ranges = adapter.modalities()[0].ranges
    assert ranges is not None and len(ranges) == 76 and ranges["Fraction inspired oxygen"] == (0.21, 1)
    assert _masked_by_declared_ranges(adapter) == {"ehr": 0}
