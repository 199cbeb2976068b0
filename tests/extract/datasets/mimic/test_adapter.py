"""The MIMIC adapter on the real MIMIC-III and MIMIC-IV demos: the protocol, the modalities, the task option,
MIMIC-III refusing chest X-rays, declared plausible ranges that mask nothing of the real data."""

from __future__ import annotations

import numpy as np
import pytest

from omnifuse.extract.datasets.base import Adapter, Item
from omnifuse.extract.datasets.mimic import MimicAdapter
from omnifuse.extract.datasets.mimic.adapter import PHENOTYPE_HOURS, ehr_ranges
from omnifuse.extract.datasets.mimic.variables import feature_names
from tests.helpers import MIMIC_III_DEMO as D3
from tests.helpers import MIMIC_IV_DEMO as D4
from tests.helpers import masked_by_declared_ranges

pytestmark = pytest.mark.skipif(not (D3.is_dir() and D4.is_dir()), reason="MIMIC demos not present")


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


@pytest.mark.parametrize("demo", ["m3_clean", "m4_clean"], ids=["mimic-iii", "mimic-iv"])
def test_clean_mode_demos_have_no_value_outside_the_declared_ranges(demo, request):
    adapter = request.getfixturevalue(demo)[0]
    ranges = adapter.modalities()[0].ranges
    assert ranges is not None and len(ranges) == 76 and ranges["Fraction inspired oxygen"] == (0.21, 1)
    assert masked_by_declared_ranges(adapter) == {"ehr": 0, "ehr_stay": 0}


@pytest.mark.parametrize("demo", ["m3", "m4"], ids=["mimic-iii", "mimic-iv"])
def test_benchmark_mode_declares_only_one_hot_and_mask_ranges(demo, request):
    adapter = request.getfixturevalue(demo)[0]
    assert adapter.modalities()[0].ranges == ehr_ranges("benchmark")
    assert adapter.modalities()[0].preprocessing["ehr_mode"] == "benchmark"
    assert adapter.modalities()[1].ranges == ehr_ranges("benchmark")
    assert masked_by_declared_ranges(adapter) == {"ehr": 0, "ehr_stay": 0}


def test_ranges_by_mode():
    bounded = ehr_ranges("benchmark")
    assert len(bounded) == 76 - 12 and set(bounded.values()) == {(0, 1)}
    assert "Heart Rate" not in bounded and bounded["mask->Heart Rate"] == (0, 1)
    assert ehr_ranges("clean")["Heart Rate"] == (0, 350)  # the benchmark's valid range, checked again


def test_bad_task_and_window_are_refused():
    with pytest.raises(ValueError, match="task must be 'both', 'mortality' or 'phenotyping', got 'los'"):
        MimicAdapter(D4, task="los")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="need 0 < timestep <= hours, got timestep=4.0, hours=2.0"):
        MimicAdapter(D4, timestep=4.0, hours=2.0)
    with pytest.raises(ValueError, match=r"ehr_mode must be one of \('benchmark', 'clean'\), got 'raw'"):
        MimicAdapter(D4, ehr_mode="raw")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"phenotype_map must be one of \('medfuse', 'gem'\), got 'ccsr'"):
        MimicAdapter(D4, phenotype_map="ccsr")


def test_options_declared_on_the_registry():
    from omnifuse.extract.datasets.registry import get_dataset

    entry = get_dataset("mimic")
    opts = entry.resolve_options({"root": str(D3)})
    assert opts.ehr_mode == "benchmark" and opts.phenotype_map == "medfuse" and opts.phenotype_hours == 336.0
    assert entry.resolve_options({"root": str(D3), "phenotype_hours": "240"}).phenotype_hours == 240.0
    with pytest.raises(ValueError, match="ehr"):
        entry.resolve_options({"root": str(D3), "ehr_mode": "raw"})
    a = MimicAdapter(D3, ehr_mode="clean", phenotype_map="gem")
    assert a.options()["ehr_mode"] == "clean" and a.options()["phenotype_map"] == "gem"


@pytest.mark.parametrize("demo", ["m3", "m4"], ids=["mimic-iii", "mimic-iv"])
def test_whole_stay_ehr_of_the_phenotyping_task(demo, request):
    """``ehr_stay``: each stay's first min(LOS, 336 h) in 2-h bins, int(min(LOS, cap) / 2 + 1 - 1e-6) of them
    (the benchmark's phenotyping discretisation, capped), as variable-length items; an input of phenotyping
    only, while the 48 h ``ehr`` is mortality's default. Its first bins are the 48 h ``ehr``'s (every step of
    the discretiser is causal); the bins beyond are the stay's own, never padded."""
    a, c, x = request.getfixturevalue(demo)
    mods = {m.name: m for m in a.modalities()}
    stay = mods["ehr_stay"]
    assert PHENOTYPE_HOURS == 336.0 and stay.shape == (168, 76) and stay.kind == "timeseries"
    assert stay.feature_names == mods["ehr"].feature_names and stay.dtype == "float32"
    pre = stay.preprocessing
    assert pre["variable_length"] is True and pre["input_for"] == ["phenotyping"] and pre["hours"] == 336.0
    assert pre["continuous"] == mods["ehr"].preprocessing["continuous"]
    assert mods["ehr"].preprocessing["default_for"] == ["mortality"] and "input_for" not in mods["ehr"].preprocessing
    los = a.stays()["los_h"].to_numpy()
    want = np.maximum(1, (np.minimum(los, 336.0) / 2.0 + 1.0 - 1e-6).astype(np.int64))
    items = a.inputs("ehr_stay", np.arange(len(c)))
    lengths = np.array([it.value.shape[0] for it in items])
    assert np.array_equal(lengths, want) and lengths.max() <= 168
    for i, it in enumerate(items):
        v = it.value
        assert v.shape == (lengths[i], 76) and v.dtype == np.float32
        k = min(24, lengths[i])
        assert np.array_equal(v[:k], x[i, :k])  # the 48 h window is the start of the stay
        assert np.all(v[:, :59][1:][v[1:, 59:].sum(1) == 0] == v[:, :59][:-1][v[1:, 59:].sum(1) == 0])
    ex = c.extra["ehr_stay"]
    assert ex["stays_longer_than_cap"] == int((los > 336.0).sum()) and ex["max_bins"] == 168
    assert ex["bins_per_stay"]["max"] == int(lengths.max()) and ex["bins_per_stay"]["mean"] == round(lengths.mean(), 2)
    assert a.options()["phenotype_hours"] == 336.0 and a.version == "3"


def test_phenotype_hours_option(tmp_path, m4):
    """A cap of 48 h: every stay's whole-stay EHR is its 48 h ``ehr`` cut at discharge (bins after discharge are
    not stored); 0: no ``ehr_stay`` and the ``ehr`` has no task key (the cache of version 2 of the adapter);
    the mortality task has none either; a cap below one bin is refused."""
    _, c4, x4 = m4
    a = MimicAdapter(D4, phenotype_hours=48.0, workdir=tmp_path / "a")
    assert np.array_equal(a.cohort().stay_id, c4.stay_id)
    values, offsets = a.ehr_stay_arrays()
    los = a.stays()["los_h"].to_numpy()
    assert a.modalities()[1].shape == (24, 76)
    for i in range(len(c4)):
        n = int(offsets[i + 1] - offsets[i])
        assert n == max(1, int(min(los[i], 48.0) / 2.0 + 1.0 - 1e-6))
        assert np.array_equal(values[offsets[i] : offsets[i + 1]], x4[i, :n])
    b = MimicAdapter(D4, phenotype_hours=0, workdir=tmp_path / "b")
    assert [m.name for m in b.modalities()] == ["ehr", "cxr", "report"]
    assert "default_for" not in b.modalities()[0].preprocessing
    with pytest.raises(ValueError, match="no whole-stay EHR"):
        b.ehr_stay_arrays()
    m = MimicAdapter(D4, task="mortality", workdir=tmp_path / "m")
    assert [r.name for r in m.modalities()] == ["ehr", "cxr", "report"]
    with pytest.raises(ValueError, match="phenotype_hours must be 0"):
        MimicAdapter(D4, phenotype_hours=1.0)
