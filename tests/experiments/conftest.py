"""Fixtures for the experiment tests: a small synthetic cache with a reference score (``ref_cache``, from
:func:`tests.helpers.write_cache_with_reference`), tiny study options (``tiny``) and one torch thread."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from tests.helpers import TINY_OPTIONS, TINY_OVERRIDES, write_cache_with_reference


@pytest.fixture(scope="session")
def ref_cache(tmp_path_factory) -> Path:
    return write_cache_with_reference(tmp_path_factory.mktemp("exp") / "ref.zarr")


@pytest.fixture
def tiny() -> dict:
    """Keyword arguments every study accepts: tiny models, 2 epochs, no progress bar, no printing."""
    return {
        "epochs": 2,
        "repeats": 1,
        "progress": False,
        "print_table": False,
        "method_overrides": copy.deepcopy(TINY_OVERRIDES),
        "options": dict(TINY_OPTIONS),
    }


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the networks are tiny, and on a shared CPU more threads only contend."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
