"""``omnifuse extract --dataset mimic`` writes the whole-stay EHR (``ehr_stay``) as a variable-length time series
(schema version 3): each stay's bins, zero padding to the cap, the step mask; stage two reads the 48 h ``ehr``
for mortality and the whole stay for phenotyping by default, and refuses the whole stay for mortality."""

from __future__ import annotations

import numpy as np
import pytest

from omnifuse.cache.reader import load_cache
from omnifuse.extract.run import extract_dataset
from omnifuse.fuse.data import DataError, load_fuse_data
from tests.helpers import MIMIC_III_DEMO as D3

pytestmark = pytest.mark.skipif(not D3.is_dir(), reason="MIMIC-III demo not present")


def test_extracted_cache_holds_the_whole_stay_with_its_step_mask(m3, tmp_path):
    a, c, x = m3
    path = tmp_path / "m3.zarr"
    extract_dataset("mimic", path, root=D3, phenotype_hours=100.0, progress=False)
    got = load_cache(path)
    assert got.attrs["schema_version"] == 3 and [m for m in got.modalities] == ["ehr", "ehr_stay"]
    spec = got.spec.modality("ehr_stay")
    assert spec.variable_length and spec.shape == (50, 76) and spec.preprocessing["input_for"] == ["phenotyping"]
    assert got.attrs["spec"]["adapter_options"]["phenotype_hours"] == 100.0
    md = got.modalities["ehr_stay"]
    assert md.tokens_mask is not None and md.mask.all()
    los = a.stays()["los_h"].to_numpy()
    lengths = md.tokens_mask.sum(1)
    assert np.array_equal(lengths, np.maximum(1, (np.minimum(los, 100.0) / 2 + 1 - 1e-6).astype(int)))
    assert np.array_equal(md.tokens_mask, np.arange(50)[None, :] < lengths[:, None])  # a prefix per row
    assert (md.x[~md.tokens_mask] == 0).all()  # zero padding
    assert np.array_equal(got.modalities["ehr"].x, x)  # the 48 h EHR as before
    for i in range(len(c)):
        n = min(24, lengths[i])
        assert np.array_equal(md.x[i, :n], x[i, :n])
    assert (lengths[los > 100.0] == 50).all() and (lengths[los <= 98.0] < 50).all()
    assert got.spec.extra["ehr_stay"]["stays_longer_than_cap"] == int((los > 100.0).sum()) > 0
    pheno = load_fuse_data(path, "phenotyping", device="cpu")
    mort = load_fuse_data(path, "mortality", device="cpu")
    assert pheno.modalities == ["ehr_stay"] and mort.modalities == ["ehr"]
    assert pheno.tokens_mask["ehr_stay"].sum(1).numpy().tolist() == lengths.tolist()
    assert load_fuse_data(path, "phenotyping", ["ehr"], device="cpu").modalities == ["ehr"]  # may be named
    with pytest.raises(DataError, match="'ehr_stay' is an input of 'phenotyping' only"):
        load_fuse_data(path, "mortality", ["ehr_stay"], device="cpu")
