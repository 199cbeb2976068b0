"""Fixtures for the experiment tests: a small synthetic cache with a reference score, tiny training options.

The rows come from ``tests.fuse.conftest.synthetic_cache_data`` (three modalities, natural gaps, patients with
several stays); the cache written here adds a reference score ``score`` (a noisy probability of the binary
label, valid on about 70 % of rows), so the reference-subset bookkeeping of ``compare`` can be checked.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.fuse.conftest import write_synthetic_cache

TINY_OVERRIDES = {
    "omnifuse": {"d": 8, "K": 2, "cra_hidden": 16, "latent": 4, "head_hidden": 8},
    "concat": {"d": 8, "hidden": 8},
    "sum": {"d": 8, "hidden": 8},
}
TINY_OPTIONS = {"batch_size": 32, "device": "cpu", "mining_rows": 64, "patience": 10}


def write_cache_with_reference(path: Path, n: int = 150, seed: int = 0) -> Path:
    def score(cd):
        rng = np.random.default_rng(seed + 1)
        y = cd.labels["mortality"].y[:, 0]
        s = 1 / (1 + np.exp(-(2.0 * (y - 0.5) + rng.normal(size=n))))
        return {"score": (s.astype(np.float32), rng.random(n) < 0.7)}

    return write_synthetic_cache(path, references=score, n=n, seed=seed)


@pytest.fixture(scope="session")
def ref_cache(tmp_path_factory) -> Path:
    return write_cache_with_reference(tmp_path_factory.mktemp("exp") / "ref.zarr")


@pytest.fixture
def tiny() -> dict:
    """Keyword arguments every study accepts: tiny models, 2 epochs, no progress bar, no printing."""
    return {"epochs": 2, "progress": False, "print_table": False,
            "method_overrides": copy.deepcopy(TINY_OVERRIDES), "options": dict(TINY_OPTIONS)}


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the networks are tiny, and on a shared CPU more threads only contend."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
