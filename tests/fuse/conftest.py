"""Fixtures for stage-two tests: small synthetic caches with a learnable signal (see :mod:`tests.helpers`).

Fixtures: ``tiny_data`` (in memory, binary + multilabel + multiclass tasks, vector / sequence / timeseries
modalities with natural gaps), ``tiny_cache`` (written to disk), ``make_cache`` (a factory:
``make_cache(n=..., kinds=..., seed=...)`` -> path), ``fast`` (small training options), ``ref_cache`` (a cache
with a reference score, shared by the session).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from omnifuse.cache.reader import CacheData
from tests.helpers import FAST, synthetic_cache_data, write_cache_with_reference, write_synthetic_cache


@pytest.fixture
def tiny_data() -> CacheData:
    return synthetic_cache_data()


@pytest.fixture
def make_cache(tmp_path):
    def _make(name: str = "c.zarr", **kw) -> Path:
        return write_synthetic_cache(tmp_path / name, **kw)

    return _make


@pytest.fixture
def tiny_cache(make_cache) -> Path:
    return make_cache()


@pytest.fixture
def fast() -> dict:
    """:data:`tests.helpers.FAST` as a fixture (a fresh copy)."""
    return copy.deepcopy(FAST)


@pytest.fixture(scope="session")
def ref_cache(tmp_path_factory) -> Path:
    return write_cache_with_reference(tmp_path_factory.mktemp("fold") / "ref.zarr")
