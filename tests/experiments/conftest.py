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

from tests.fuse.conftest import synthetic_cache_data

TINY_OVERRIDES = {
    "omnifuse": {"d": 8, "K": 2, "cra_hidden": 16, "latent": 4, "head_hidden": 8},
    "concat": {"d": 8, "hidden": 8},
    "sum": {"d": 8, "hidden": 8},
}
TINY_OPTIONS = {"batch_size": 32, "device": "cpu", "mining_rows": 64, "patience": 10}


def write_cache_with_reference(path: Path, n: int = 150, seed: int = 0) -> Path:
    from omnifuse.cache.writer import CacheWriter

    cd = synthetic_cache_data(n=n, seed=seed)
    cd.spec.references = ["score"]
    w = CacheWriter.create(path, cd.spec, cd.stay_id, cd.subject_id, overwrite=True)
    for name, lab in cd.labels.items():
        w.write_labels(name, lab.y, lab.mask)
    rng = np.random.default_rng(seed + 1)
    y = cd.labels["mortality"].y[:, 0]
    score = 1 / (1 + np.exp(-(2.0 * (y - 0.5) + rng.normal(size=n))))
    w.write_reference("score", score.astype(np.float32), rng.random(n) < 0.7)
    for name, md in cd.modalities.items():
        for a, b in w.pending_blocks(name):
            x = np.nan_to_num(md.x[a:b]) if md.kind in ("vector", "sequence") else md.x[a:b]
            w.write_block(name, a, b, x=x, mask=md.mask[a:b],
                          tokens_mask=None if md.tokens_mask is None else md.tokens_mask[a:b])
    w.finalize()
    return Path(path)


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
