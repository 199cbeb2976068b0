"""The cache fingerprint: the same store gives the same digests however it is opened; labels move the labels
digest but not the encoders digest; differences are named one line each."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from omnifuse.cache import CacheError, CacheWriter, load_cache, open_cache
from omnifuse.cache.fingerprint import cache_fingerprint, canonical_json, fingerprint_differences
from tests.helpers import synthetic_cache_data, write_toy_cache


def test_fingerprint_is_stable_and_follows_the_labels(tmp_path):
    path = tmp_path / "c.zarr"
    _, _, _, _, (y, ym, *_rest) = write_toy_cache(path)
    fp = cache_fingerprint(path)
    assert fp == cache_fingerprint(open_cache(path)) == cache_fingerprint(load_cache(path))
    assert fp["schema"] == 3 and fp["dataset"] == {"name": "toy", "version": "1"}
    assert fp["modalities"]["img"]["encoder_hash"] == "abc" and fp["modalities"]["rep"]["shape"] == [5, 4]
    assert all(len(fp[k]) == 64 for k in ("rows", "inputs", "labels", "encoders_digest", "digest"))
    assert canonical_json({"b": 1, "a": [1, 2]}) == b'{"a":[1,2],"b":1}'
    w = CacheWriter.open(path)
    assert w.write_labels("mort", np.where(ym, ~y, y), ym) == int(ym.sum())  # every labelled row flipped
    changed = cache_fingerprint(path)
    assert changed["labels"] != fp["labels"] and changed["digest"] != fp["digest"]
    assert (changed["rows"], changed["inputs"], changed["encoders_digest"]) == (
        fp["rows"],
        fp["inputs"],
        fp["encoders_digest"],
    )
    assert fingerprint_differences(fp, changed) == [
        f"labels differ (labels digest '{changed['labels'][:12]}...', expected '{fp['labels'][:12]}...')"
    ]
    assert fingerprint_differences(fp, changed, encoders_only=True) == []


def test_differences_name_modalities_and_their_properties(tmp_path):
    path = tmp_path / "c.zarr"
    write_toy_cache(path)
    fp = cache_fingerprint(path)
    other = copy.deepcopy(fp)
    other["modalities"]["img"]["encoder_hash"] = "def"
    other["modalities"]["img"]["preprocessing"]["image_size"] = 224
    del other["modalities"]["ehr"]
    other["adapter_options"] = {"root": "/data"}
    assert fingerprint_differences(fp, other, encoders_only=True) == [
        'modality \'img\': encoder_hash is "def", expected "abc"',
        "modality 'img': preprocessing.image_size is 224, expected none",
        "modality 'ehr' is not in the cache",
    ]
    assert fingerprint_differences(fp, other, modalities=["rep"]) == ['adapter_options.root is "/data", expected none']


def test_data_built_in_memory_has_no_fingerprint():
    with pytest.raises(CacheError, match="cache_fingerprint needs a stored cache"):
        cache_fingerprint(synthetic_cache_data(n=20))
