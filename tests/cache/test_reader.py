"""Reading the cache: round trip of every array, row and modality selection, and the stores it refuses."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import zarr

from omnifuse.cache import CacheError, SchemaMismatchError, load_cache, open_cache
from omnifuse.cache.reader import to_torch
from tests.helpers import write_toy_cache


def test_round_trip(tmp_path):
    path = tmp_path / "c.zarr"
    spec, stay, subj, truth, (y, ym, yp, yc, ref, refm) = write_toy_cache(path)
    d = load_cache(path)
    assert d.n == 37 and d.stay_id.dtype == np.int64
    np.testing.assert_array_equal(d.stay_id, stay)
    np.testing.assert_array_equal(d.subject_id, subj)  # strings kept faithfully
    for name, (x, mask, tm, prov) in truth.items():
        m = d.modalities[name]
        np.testing.assert_array_equal(m.mask, mask)
        assert m.x.dtype == np.dtype(spec.modality(name).dtype)
        expect = np.where(mask.reshape(-1, *[1] * (x.ndim - 1)), x, 0)
        if tm is not None:
            np.testing.assert_array_equal(m.tokens_mask, tm & mask[:, None])
            expect = np.where((tm & mask[:, None])[..., None], expect, 0)
        if prov is not None:
            np.testing.assert_array_equal(m.provenance, np.where(mask, prov, -1))
        np.testing.assert_allclose(m.x.astype(np.float32), expect, rtol=1e-3, atol=1e-3, equal_nan=True)
        assert (m.x[~mask] == 0).all()  # missing rows are zeros, never stale data
    assert np.isnan(d.modalities["ehr"].x[0, 0, 0]) == bool(truth["ehr"][1][0])
    np.testing.assert_array_equal(d.labels["mort"].y[:, 0], np.where(ym, y, 0))
    np.testing.assert_array_equal(d.labels["mort"].mask, ym)
    np.testing.assert_array_equal(d.labels["pheno"].y, yp)
    assert d.labels["stage"].y.dtype == np.int64 and d.labels["stage"].kind == "multiclass"
    np.testing.assert_array_equal(d.labels["stage"].y[d.labels["stage"].mask], yc[d.labels["stage"].mask])
    np.testing.assert_allclose(d.references["apache"][0][refm], ref[refm])
    np.testing.assert_array_equal(d.references["apache"][1], refm)
    assert d.splits["official"][0] == "test" and d.splits["official"][1] == "train"
    # selected modalities and rows
    rows = np.array([3, 17, 36])
    part = load_cache(path, modalities=["img"], rows=rows)
    assert list(part.modalities) == ["img"]
    np.testing.assert_array_equal(part.stay_id, stay[rows])
    np.testing.assert_array_equal(part.modalities["img"].mask, truth["img"][1][rows])


def test_row_and_modality_selections_are_checked(tmp_path):
    path = tmp_path / "c.zarr"
    _, stay, _, truth, _ = write_toy_cache(path)
    c = open_cache(path)
    keep = np.zeros(37, bool)
    keep[[0, 5]] = True
    np.testing.assert_array_equal(c.load(rows=keep).stay_id, stay[[0, 5]])  # a boolean mask over the rows
    np.testing.assert_array_equal(c.load(rows=slice(30, None)).stay_id, stay[30:])
    with pytest.raises(CacheError, match=r"boolean row selection has shape \(3,\), cache has 37 rows"):
        c.load(rows=np.ones(3, bool))
    with pytest.raises(CacheError, match="row positions outside 0..36"):
        c.load(rows=np.array([0, 37]))
    with pytest.raises(KeyError, match=r"no modality 'ct' in cache; it has \['img', 'rep', 'ehr'\]"):
        c.load(modalities=["ct"])
    assert c.completeness() == {"img": 1.0, "rep": 1.0, "ehr": 1.0} and c.block_rows("img") == 8
    tensors = to_torch(c.load(modalities=["rep"]))
    assert tensors["rep"]["x"].shape == (37, 5, 4) and tensors["rep"]["x"].dtype == torch.float16
    assert tensors["rep"]["tokens_mask"].shape == (37, 5) and tensors["rep"]["mask"].dtype == torch.bool
    assert tensors["rep"]["mask"].tolist() == truth["rep"][1].tolist()


def test_other_schema_version_is_refused(tmp_path):
    path = tmp_path / "c.zarr"
    write_toy_cache(path)
    doc = json.loads((path / "zarr.json").read_text())
    doc["attributes"]["omnifuse"]["schema_version"] = 0
    (path / "zarr.json").write_text(json.dumps(doc))
    with pytest.raises(SchemaMismatchError, match="schema version 0.*re-run `omnifuse extract`"):
        open_cache(path)


def test_not_a_cache_is_refused(tmp_path):
    zarr.open_group(str(tmp_path / "z.zarr"), mode="w")
    with pytest.raises(SchemaMismatchError, match="not an omnifuse cache"):
        open_cache(tmp_path / "z.zarr")
    with pytest.raises(CacheError, match="no cache at"):
        open_cache(tmp_path / "absent.zarr")
