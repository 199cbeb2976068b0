"""Helpers shared by the tests (imported from here, never from another test module or a conftest).

- ``synthetic_cache_data(...)`` builds a :class:`omnifuse.cache.reader.CacheData` in memory (three modalities
  with natural gaps, binary + multilabel + multiclass tasks, patients with several stays, a learnable signal);
  ``write_synthetic_cache(path, ...)`` writes the same rows with the real :class:`CacheWriter`;
  ``write_cache_with_reference(path)`` adds a reference score ``score`` (a noisy probability of the binary
  label, valid on about 70 % of rows).
- ``FAST``: small, fast ``train`` options; ``TINY_OVERRIDES`` / ``TINY_OPTIONS``: tiny method parameters and
  training options for studies.
- ``FakeTrainer``: what a fusion method's hooks see of the trainer (``TrainerView``), with fixed batches.
- ``TWO``, ``vector_batch(...)``, ``sigmoid(x)``: two vector modalities and hand-made batches of them for the
  fusion methods' mechanism tests; ``assert_learns(method, params)``: a method trained end to end with the real
  trainer on a synthetic cache reaches a test AUROC above 0.75.
- ``assert_png(path)``, ``read_csv_rows(path)``: a written figure is a drawn PNG; the rows of a written CSV.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib.image
import numpy as np
import torch

from omnifuse.cache.reader import CacheData, LabelData, ModalityData
from omnifuse.cache.schema import CacheSpec, ModalitySpec, TaskSpec
from omnifuse.fuse.base import Batch, ModalityInfo
from omnifuse.fuse.train import train

DEFAULT_KINDS = {"img": ("vector", (12,)), "rep": ("sequence", (6, 8)), "ehr": ("timeseries", (5, 4))}


def _rows(kind: str, shape: tuple[int, ...], z: np.ndarray, strength: float, rng: np.random.Generator):
    """Features of one modality carrying ``strength`` times the latent signal ``z`` [N, 2]."""
    n = z.shape[0]
    F = shape[-1]
    proj = rng.normal(size=(2, F))
    base = z @ proj * strength  # [N, F]
    tokens_mask = None
    if kind in ("vector", "tabular"):
        x = base + rng.normal(size=(n, F))
    else:
        L = shape[0]
        x = base[:, None, :] + rng.normal(size=(n, L, F))
        if kind == "sequence":
            lengths = rng.integers(1, L + 1, size=n)
            tokens_mask = np.arange(L)[None, :] < lengths[:, None]
            x = np.where(tokens_mask[..., None], x, 0.0)
    if kind in ("tabular", "timeseries"):
        x = x * 3.0 + 10.0  # raw scale, so normalisation matters
        nan = rng.random(x.shape) < 0.1
        nan[..., 0] = False  # column 0 always observed (no indicator for it)
        x = np.where(nan, np.nan, x)
    return x, tokens_mask


def synthetic_cache_data(
    n: int = 160,
    kinds: dict[str, tuple[str, tuple[int, ...]]] | None = None,
    seed: int = 0,
    present: float = 0.8,
    strengths: dict[str, float] | None = None,
    patients_per_stay: float = 0.7,
) -> CacheData:
    """``n`` stays of ``n * patients_per_stay`` patients; modalities ``{name: (kind, shape)}``, each present
    with probability ``present`` (every row keeps at least one); tasks ``mortality`` (binary), ``pheno``
    (multilabel, 3 labels) and ``subtype`` (multiclass, 3 classes), all driven by a latent z that every
    modality carries (with ``strengths``), about 5 % of rows unlabelled for mortality."""
    kinds = kinds or DEFAULT_KINDS
    strengths = strengths or {}
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2))
    names = list(kinds)
    mask = rng.random((n, len(names))) < present
    mask[~mask.any(1), 0] = True
    mods, specs = {}, []
    for j, (name, (kind, shape)) in enumerate(kinds.items()):
        x, tm = _rows(kind, shape, z, strengths.get(name, 1.5), rng)
        m = mask[:, j]
        bshape = (-1,) + (1,) * len(shape)
        dtype = np.float16 if kind in ("vector", "sequence") else np.float32
        x = np.where(m.reshape(bshape), x, 0.0).astype(dtype)
        if tm is not None:
            tm = tm & m[:, None]
        prep = {"continuous": list(range(shape[-1] - 1))} if kind in ("tabular", "timeseries") else {}
        mods[name] = ModalityData(name=name, kind=kind, x=x, mask=m, tokens_mask=tm, preprocessing=prep)
        specs.append(ModalitySpec(name, kind, shape, dtype=str(np.dtype(dtype)), preprocessing=prep))
    logit = 2.0 * z[:, 0] + 0.5 * rng.normal(size=n)
    y_bin = (logit > 0.3).astype(np.float32)[:, None]
    y_ml = (z @ rng.normal(size=(2, 3)) + 0.5 * rng.normal(size=(n, 3)) > 0).astype(np.float32)
    y_mc = np.digitize(z[:, 0] + 0.3 * rng.normal(size=n), [-0.4, 0.4]).astype(np.int64)
    lab_mask = rng.random(n) > 0.05
    tasks = [TaskSpec("mortality", "binary", ["died"]), TaskSpec("pheno", "multilabel", ["a", "b", "c"]),
             TaskSpec("subtype", "multiclass", ["low", "mid", "high"])]
    labels = {"mortality": LabelData("mortality", "binary", ["died"], y_bin, lab_mask),
              "pheno": LabelData("pheno", "multilabel", ["a", "b", "c"], y_ml, np.ones(n, bool)),
              "subtype": LabelData("subtype", "multiclass", ["low", "mid", "high"], y_mc, np.ones(n, bool))}
    n_pat = max(2, int(n * patients_per_stay))
    subject = np.array([f"p{int(i):05d}" for i in rng.integers(0, n_pat, size=n)])
    spec = CacheSpec("synthetic", "0", specs, tasks)
    return CacheData(stay_id=np.arange(1000, 1000 + n, dtype=np.int64), subject_id=subject, modalities=mods,
                     labels=labels, references={}, splits={}, spec=spec, attrs={})


def write_synthetic_cache(path: str | Path, references=None, **kw) -> Path:
    """Write :func:`synthetic_cache_data` rows to ``path`` with the real writer; returns the path.

    ``references``: optional ``fn(cache_data) -> {name: (values [N], mask [N])}`` of reference scores."""
    return write_cache_data(path, synthetic_cache_data(**kw), references)


def write_cache_data(path: str | Path, cd: CacheData, references=None) -> Path:
    """Write the rows of ``cd`` (e.g. :func:`synthetic_cache_data`, edited) to ``path`` with the real writer."""
    from omnifuse.cache.writer import CacheWriter

    refs = references(cd) if references is not None else {}
    cd.spec.references = sorted(refs)
    w = CacheWriter.create(path, cd.spec, cd.stay_id, cd.subject_id, overwrite=True)
    for name, lab in cd.labels.items():
        w.write_labels(name, lab.y, lab.mask)
    for name, (values, mask) in refs.items():
        w.write_reference(name, values, mask)
    for name, md in cd.modalities.items():
        for a, b in w.pending_blocks(name):
            x = np.nan_to_num(md.x[a:b]) if md.kind in ("vector", "sequence") else md.x[a:b]
            w.write_block(name, a, b, x=x, mask=md.mask[a:b],
                          tokens_mask=None if md.tokens_mask is None else md.tokens_mask[a:b])
    w.finalize()
    return Path(path)


FAST = dict(epochs=3, batch_size=32, n_boot=20, progress=False, device="cpu", mining_rows=64,
            method_params={"d": 16, "K": 2, "cra_hidden": 32, "latent": 8, "head_hidden": 16})
"""Small, fast training options for ``train`` in tests."""



TINY_OVERRIDES = {
    "omnifuse": {"d": 8, "K": 2, "cra_hidden": 16, "latent": 4, "head_hidden": 8},
    "concat": {"d": 8, "hidden": 8},
    "sum": {"d": 8, "hidden": 8},
}
TINY_OPTIONS = {"batch_size": 32, "device": "cpu", "mining_rows": 64, "patience": 10}


def write_cache_with_reference(path: Path, n: int = 150, seed: int = 0) -> Path:
    """:func:`write_synthetic_cache` with a reference score ``score`` (see the module docstring)."""

    def score(cd: CacheData) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        rng = np.random.default_rng(seed + 1)
        y = cd.labels["mortality"].y[:, 0]
        s = 1 / (1 + np.exp(-(2.0 * (y - 0.5) + rng.normal(size=n))))
        return {"score": (s.astype(np.float32), rng.random(n) < 0.7)}

    return write_synthetic_cache(path, references=score, n=n, seed=seed)


class FakeTrainer:
    """A stand-in for ``omnifuse.fuse.trainer.Trainer`` as the fusion methods see it
    (:class:`omnifuse.fuse.base.TrainerView`): fixed mining batches, records kept per key."""

    def __init__(self, batches: list[Batch] | None = None, *, fold: int = 0, seed: int = 0) -> None:
        self._batches = list(batches or [])
        self.epoch, self.fold, self.seed = 0, fold, seed
        self.device = torch.device("cpu")
        self.train_rows = np.concatenate([b.index.numpy() for b in self._batches]) if self._batches \
            else np.zeros(0, dtype=np.int64)
        self.generator = torch.Generator().manual_seed(seed)
        self.records: dict[str, list[object]] = {}

    def mining_batches(self) -> list[Batch]:
        return self._batches

    def batches(self, rows: np.ndarray) -> list[Batch]:
        """The fixed batches' rows whose index is in ``rows`` (evaluation batches of those rows)."""
        want = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        out = [b.select(torch.isin(b.index, want)) for b in self._batches]
        return [b for b in out if b.mask.shape[0] > 0]

    def record(self, key: str, value: object) -> None:
        self.records.setdefault(key, []).append(value)


# ------------------------------------------------------------------------------------------------------
# fusion methods: two vector modalities, hand-made batches, end-to-end learning
# ------------------------------------------------------------------------------------------------------
TWO = [ModalityInfo("a", "vector", (6,)), ModalityInfo("b", "vector", (6,))]
"""Two vector modalities ``a`` and ``b`` of six features."""


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def vector_batch(
    mask: torch.Tensor,
    y: torch.Tensor,
    seed: int = 0,
    dim: int = 6,
    index: torch.Tensor | None = None,
    names: tuple[str, ...] = ("a", "b"),
) -> Batch:
    """A batch of vector modalities ``names`` [B, dim] (standard normal where ``mask`` [B, M] holds, zero
    elsewhere), labels ``y`` (all labelled) and row indices ``index`` (default 0..B-1)."""
    g = torch.Generator().manual_seed(seed)
    b = mask.shape[0]
    x = {n: torch.randn(b, dim, generator=g) * mask[:, j : j + 1] for j, n in enumerate(names)}
    return Batch(x=x, mask=mask, y=y, y_mask=torch.ones(b, dtype=torch.bool),
                 index=torch.arange(b) if index is None else index)


def assert_learns(method: str, params: dict[str, object]) -> None:
    """``method`` (with ``d=16`` and ``params``) trained by ``train`` with the real trainer, 2 folds of 6 epochs
    on a 240-row synthetic cache, reaches a mean test AUROC above 0.75 on the binary task."""
    data = synthetic_cache_data(n=240, seed=3)
    res = train(data, "mortality", method, folds=2, epochs=6, batch_size=32, n_boot=10, progress=False,
                device="cpu", mining_rows=96, patience=6, lr=3e-3, method_params={"d": 16, **params})
    assert res.metrics["mean"]["auroc"] > 0.75, res.metrics["mean"]


# ------------------------------------------------------------------------------------------------------
# written files
# ------------------------------------------------------------------------------------------------------
def assert_png(path: str | Path) -> None:
    """``path`` is a PNG image larger than 100 x 100 pixels with something drawn on it (not a blank canvas)."""
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG file"
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100, img.shape
    assert img[..., :3].std() > 0.01, f"{path} is a blank canvas"


def read_csv_rows(path: str | Path) -> list[dict[str, str]]:
    """The rows of a CSV file with a header, as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
