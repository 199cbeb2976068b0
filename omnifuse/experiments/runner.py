"""The resumable study runner: one training run per (method or variant, repeat, fold, missing rate), each in
its own folder with a ``DONE`` marker, fanned out over processes with joblib.

A study (compare, unimodal, ablation, sweep) is a :class:`StudyContext` (the cache, the task, the fold
splits, the training options, the modality combinations to evaluate) and a list of :class:`RunSpec`. A run
trains with the stage-two pieces of :mod:`omnifuse.fuse` (``inner_split``, ``Normalizer``, ``build_method``,
``Trainer``, ``predict_probs``: no second training loop) on the fold's training rows and stores the
**predictions** of its test rows: as they are (``overall``) and once per evaluated modality combination
(every modality outside the combination masked). Every metric, paired test and figure of a study is then
computed from these stored predictions, so a finished run is never recomputed and an interrupted study
resumes with the runs it has (``runs/<label>/<rate>/r<repeat>f<fold>/DONE``).

Pairing: every method of a study sees the same folds (``make_folds`` once per repeat, seeded by
``seed + repeat``, written to ``folds.json``) and the same simulated missingness masks (seeded by the study
seed, the repeat, the fold, the rate and the mode: :func:`mask_seed`), so fold-level metrics pair across
methods.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from omnifuse.fuse.base import build_method, get_method
from omnifuse.fuse.config import TrainConfig, resolve_config
from omnifuse.fuse.data import FuseData, Normalizer, inner_split, load_fuse_data, make_folds, simulate_missing
from omnifuse.fuse.tla import all_combinations, combination_name
from omnifuse.fuse.train import Trainer, predict_probs, seed_everything

log = logging.getLogger(__name__)

DONE = "DONE"

# Named variants of the OmniFuse network (the switches of the paper's table 4). ``dwfuse_only`` is the
# DWFuse-only row that the paper's table 3 compares against (row b of table 4).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "dwfuse_only": ("omnifuse", {"dwfuse": True, "tla": False, "imp_fw": False, "imp_bw": False}),
    "omnifuse_no_imp": ("omnifuse", {"imp_fw": False, "imp_bw": False}),
}


class StudyError(ValueError):
    """A study cannot run as asked (unknown method, a folder holding another study's runs...)."""


# ------------------------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class RunSpec:
    """One training run. ``label``: the name shown in tables (a registry method, a variant or a study's own
    name such as ``ablation_b`` or ``unimodal:vitals``); ``method``: the registry name it builds;
    ``params``: method parameters on top of the registry defaults; ``modalities``: the modalities the model
    sees (None = the study's); ``train_modality``: train only on rows holding it (unimodal models);
    ``rate``/``mode``: simulated missingness of every row (0 = none); ``record_imputation``: measure the
    imputation of each modality after every epoch (the imputation study)."""

    label: str
    method: str
    params: tuple[tuple[str, Any], ...] = ()
    repeat: int = 0
    fold: int = 0
    rate: float = 0.0
    mode: str = "random"
    modalities: tuple[str, ...] | None = None
    train_modality: str | None = None
    record_imputation: bool = False

    @property
    def key(self) -> str:
        safe = self.label.replace(":", "-").replace("/", "-")
        return f"{safe}/rate{self.rate:g}_{self.mode}/r{self.repeat}f{self.fold}"

    @property
    def method_params(self) -> dict[str, Any]:
        return dict(self.params)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["params"] = dict(self.params)
        d["modalities"] = None if self.modalities is None else list(self.modalities)
        return d


def resolve_method(label: str, overrides: dict[str, dict[str, Any]] | None = None) -> tuple[str, dict[str, Any]]:
    """``label`` (a registry method or a :data:`VARIANTS` name) -> (registry name, parameters), with
    ``overrides[registry name]`` then ``overrides[label]`` merged on top. Raises for an unknown label."""
    overrides = overrides or {}
    if label in VARIANTS:
        base, params = VARIANTS[label][0], dict(VARIANTS[label][1])
    else:
        base, params = label, {}
    try:
        get_method(base)
    except KeyError as e:
        raise StudyError(f"unknown method {label!r}; known: registry methods and variants {sorted(VARIANTS)}") from e
    params.update(overrides.get(base, {}))
    if label != base:
        params.update(overrides.get(label, {}))
    return base, params


def freeze_params(params: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A hashable, ordered form of method parameters (nested dicts as sorted JSON)."""
    out = []
    for k in sorted(params):
        v = params[k]
        if isinstance(v, (dict, list)):
            v = json.dumps(v, sort_keys=True)
        out.append((k, v))
    return tuple(out)


def thaw_params(params: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    out = {}
    for k, v in params:
        if isinstance(v, str) and v[:1] in "{[":
            try:
                v = json.loads(v)
            except json.JSONDecodeError:
                pass
        out[k] = v
    return out


def mask_seed(seed: int, repeat: int, fold: int, rate: float, mode: str) -> int:
    """The seed of the simulated missingness of one (repeat, fold, rate, mode): the same for every method."""
    return zlib.crc32(f"{seed}|{repeat}|{fold}|{rate:.6f}|{mode}".encode()) & 0x7FFFFFFF


def mask_digest(mask: torch.Tensor) -> str:
    """A short hash of a presence mask [N, M] (tests and run records compare masks across methods)."""
    return hashlib.sha1(np.packbits(mask.cpu().numpy().astype(np.uint8)).tobytes()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------- context
def combinations_for(names: Sequence[str], which: str | Sequence[str] = "full+single") -> list[tuple[bool, ...]]:
    """The modality combinations a study evaluates, as presence tuples over ``names``.

    ``which``: ``"full+single"`` (all modalities, then each alone: cheap), ``"full"``, ``"single"``,
    ``"loo"`` (all, then each left out), ``"all"`` (the 2^M - 1 combinations) or a list of names such as
    ``["vitals+apache", "history"]``."""
    M = len(names)
    full = tuple([True] * M)
    single = [tuple(i == j for i in range(M)) for j in range(M)]
    if isinstance(which, str):
        if which == "full":
            return [full]
        if which == "single":
            return single
        if which == "full+single":
            return [full] + ([] if M == 1 else single)
        if which == "loo":
            return [full] + ([] if M <= 2 else [tuple(i != j for i in range(M)) for j in range(M)])
        if which == "all":
            return sorted(all_combinations(M), key=lambda c: (-sum(c), c))
        which = [which]
    out = []
    for name in which:
        parts = name.split("+")
        bad = [p for p in parts if p not in names]
        if bad:
            raise StudyError(f"combination {name!r}: unknown modality {bad}; the study has {list(names)}")
        out.append(tuple(n in parts for n in names))
    return out


@dataclass
class StudyContext:
    """What every run of a study shares. ``cache``: a path (workers load it themselves) or loaded data;
    ``folds[repeat][fold] = (train rows, test rows)`` (positions in the task's rows); ``cfg``: the resolved
    training options; ``combos``: the combinations evaluated per run (presence tuples over ``modalities``)."""

    cache: Any
    task: str
    modalities: list[str]
    folds: list[list[tuple[np.ndarray, np.ndarray]]]
    cfg: TrainConfig
    combos: list[tuple[bool, ...]]
    seed: int = 0
    _data: dict = field(default_factory=dict, repr=False)

    def data(self, modalities: Sequence[str] | None = None) -> FuseData:
        """The task's data for ``modalities`` (default: the study's), loaded once per process."""
        key = tuple(modalities or self.modalities)
        d = self._data.get(key)
        if d is None:
            base = self._data.get("__base__")
            if base is None:
                base = _load_base(self.cache, self.task, self.modalities, self.cfg.device)
                self._data["__base__"] = base
            d = base if key == tuple(self.modalities) else _subset_modalities(base, list(key))
            self._data[key] = d
        return d

    def __getstate__(self) -> dict[str, Any]:
        st = dict(self.__dict__)
        st["_data"] = {}  # workers load their own copy (a path) or receive the pickled cache data
        return st


_PROCESS_DATA: dict[tuple, FuseData] = {}


def _load_base(cache: Any, task: str, modalities: list[str], device: str) -> FuseData:
    if isinstance(cache, FuseData):
        return cache
    if isinstance(cache, (str, Path)):
        key = (str(Path(cache).resolve()), task, tuple(modalities), device)
        if key not in _PROCESS_DATA:
            _PROCESS_DATA.clear()
            _PROCESS_DATA[key] = load_fuse_data(cache, task, modalities, device=device)
        return _PROCESS_DATA[key]
    return load_fuse_data(cache, task, modalities, device=device)


def _subset_modalities(d: FuseData, names: list[str]) -> FuseData:
    """The same rows with only ``names`` (a unimodal model's view of the data)."""
    idx = [d.modalities.index(n) for n in names]
    out = FuseData(**{**d.__dict__})
    out.modalities = list(names)
    out.kinds = {n: d.kinds[n] for n in names}
    out.x = {n: d.x[n] for n in names}
    out.tokens_mask = {n: v for n, v in d.tokens_mask.items() if n in names}
    out.continuous = {n: d.continuous.get(n) for n in names}
    out.mask = d.mask[:, idx].clone()
    out.natural_mask = d.natural_mask[:, idx].clone()
    return out


def build_context(cache: Any, task: str, *, modalities: list[str] | None = None, folds: int = 5, repeats: int = 1,
                  seed: int = 0, combinations: str | Sequence[str] = "full+single", out: Path | None = None,
                  train_options: dict[str, Any] | None = None) -> StudyContext:
    """Load the task once, make the patient-grouped folds of every repeat (``seed + repeat``) and resolve the
    training options (:class:`TrainConfig` fields; ``progress`` and checkpoints off per run). When ``out`` holds
    a ``folds.json`` from an earlier run of the study, the folds must be the same (else the cache or the
    options changed and the old runs cannot be reused: :class:`StudyError`)."""
    if folds < 2:
        raise StudyError(f"a cross-validated study needs folds >= 2, got {folds}")
    if repeats < 1:
        raise StudyError(f"repeats must be >= 1, got {repeats}")
    opts = dict(train_options or {})
    opts.setdefault("progress", False)
    opts["save_checkpoints"] = False
    cfg = resolve_config(None, task=task, seed=seed, folds=folds, **opts)
    if isinstance(cache, (str, Path)):
        data = _load_base(cache, task, modalities or _cache_modalities(cache), cfg.device)
    else:
        data = load_fuse_data(cache, task, modalities, device=cfg.device)
    names = list(data.modalities)
    splits = [make_folds(data, folds, seed=seed + r) for r in range(repeats)]
    ctx = StudyContext(cache=cache if isinstance(cache, (str, Path)) else data, task=task, modalities=names,
                       folds=splits, cfg=cfg, combos=combinations_for(names, combinations), seed=seed)
    ctx._data["__base__"] = data
    ctx._data[tuple(names)] = data
    if out is not None:
        check_folds(Path(out), data, splits)
    return ctx


def _cache_modalities(cache: str | Path) -> list[str]:
    from omnifuse.cache.reader import open_cache

    return [m.name for m in open_cache(cache).spec.modalities]


def folds_json(data: FuseData, splits: list[list[tuple[np.ndarray, np.ndarray]]]) -> dict[str, Any]:
    """The test stays of every (repeat, fold): ``{"repeats": [[[stay_id...], ...], ...]}``."""
    return {"task": data.task, "n_rows": data.n,
            "repeats": [[data.stay_id[te].tolist() for _, te in rep] for rep in splits]}


def check_folds(out: Path, data: FuseData, splits: list[list[tuple[np.ndarray, np.ndarray]]]) -> None:
    """Write ``folds.json``, or check that an existing one holds the same test stays."""
    out.mkdir(parents=True, exist_ok=True)
    p = out / "folds.json"
    cur = folds_json(data, splits)
    if p.exists():
        old = json.loads(p.read_text())
        if old != cur:
            raise StudyError(f"{p} holds other folds (another cache, task, seed or number of folds); use a new "
                             "output folder or remove the old one")
    else:
        p.write_text(json.dumps(cur))


# ------------------------------------------------------------------------------------------ a run
def execute_run(ctx: StudyContext, spec: RunSpec, folder: Path) -> dict[str, Any]:
    """Train ``spec`` on its fold and write ``predictions.npz``, ``run.json`` and then ``DONE`` into ``folder``.

    ``predictions.npz``: ``test_rows`` [n], ``present`` [n, M] (the study's modalities, after simulated
    missingness), ``y`` (labels), ``overall`` [n, C] (test rows as they are) and ``combo<i>`` [n, C] (every
    test row with the modalities outside ``ctx.combos[i]`` masked; a row lacking some of the combination keeps
    what it has of it). A model that does not see a modality of a combination gives no ``combo<i>``."""
    t0, c0 = time.perf_counter(), time.process_time()
    cfg = ctx.cfg
    base = ctx.data()
    if spec.rate > 0:
        m = simulate_missing(base.natural_mask, spec.rate, spec.mode, base.modalities,
                             seed=mask_seed(ctx.seed, spec.repeat, spec.fold, spec.rate, spec.mode))
        base = base.with_mask(m)
    names = list(spec.modalities) if spec.modalities else list(ctx.modalities)
    data = base if names == list(base.modalities) else _subset_modalities(base, names)
    train_rows, test_rows = ctx.folds[spec.repeat][spec.fold]
    if spec.train_modality is not None:
        j = data.modalities.index(spec.train_modality)
        train_rows = train_rows[data.mask[torch.as_tensor(train_rows, device=data.device), j].cpu().numpy()]
        if train_rows.size < 10:
            raise StudyError(f"{spec.label}: only {train_rows.size} training rows hold {spec.train_modality!r}")
    fseed = ctx.seed * 100 + spec.fold + 1000 * spec.repeat
    seed_everything(fseed)
    inner_tr, val = inner_split(data, train_rows, cfg.val_fraction, seed=fseed)
    norm = Normalizer.fit(data, train_rows, embeddings=cfg.normalize_embeddings)
    model = build_method(spec.method, data.model_info(norm), **thaw_params(spec.params)).to(data.device)
    trainer = Trainer(model, data, inner_tr, val, norm, cfg, seed=fseed, progress=None, fold=spec.fold)
    imputation: list[dict[str, Any]] = []
    if spec.record_imputation:
        from omnifuse.experiments.imputation import attach_imputation_probe

        attach_imputation_probe(model, data, test_rows, norm, imputation)
    best_epoch, best_val = trainer.fit()
    arrays: dict[str, np.ndarray] = {
        "test_rows": np.asarray(test_rows, dtype=np.int64),
        "present": base.mask[torch.as_tensor(test_rows, device=base.device)].cpu().numpy(),
        "y": data.labels_numpy(test_rows),
        "overall": predict_probs(model, data, test_rows, norm, cfg.eval_batch_size),
    }
    for i, combo in enumerate(ctx.combos):
        wanted = [n for n, k in zip(ctx.modalities, combo) if k]
        if not set(wanted) <= set(names):
            continue
        c = torch.tensor([n in wanted for n in names], dtype=torch.bool)
        mask = c.unsqueeze(0).expand(len(test_rows), -1).clone()
        arrays[f"combo{i}"] = predict_probs(model, data, test_rows, norm, cfg.eval_batch_size, mask)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / "predictions.npz", **arrays)
    if spec.record_imputation:
        from omnifuse.experiments.imputation import final_embeddings

        np.savez_compressed(folder / "embeddings.npz", **final_embeddings(model, data, test_rows, norm))
    rec = {"spec": spec.to_json(), "best_epoch": best_epoch, "best_val_auroc": _num(best_val),
           "n_train": int(len(inner_tr)), "n_val": int(len(val)), "n_test": int(len(test_rows)),
           "mask_digest": mask_digest(base.mask), "seconds": time.perf_counter() - t0,
           "cpu_seconds": time.process_time() - c0, "threads": torch.get_num_threads(),
           "history": [{k: _num(v) for k, v in h.items()} for h in trainer.history],
           "records": _jsonable(trainer.records), "imputation": imputation,
           "combos": [combination_name(c, ctx.modalities) for c in ctx.combos]}
    (folder / "run.json").write_text(json.dumps(rec, indent=1))
    (folder / DONE).write_text("")
    return rec


def _num(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
        return None if (math.isnan(v) or math.isinf(v)) else float(v)
    if isinstance(v, np.integer):
        return int(v)
    return v


def _jsonable(o: Any) -> Any:
    return json.loads(json.dumps(o, default=lambda v: _num(v) if isinstance(v, (np.generic,)) else str(v)))


def load_run(folder: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(predictions.npz arrays, run.json) of a finished run."""
    with np.load(folder / "predictions.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads((folder / "run.json").read_text())


# --------------------------------------------------------------------------------------- the runner
@dataclass
class RunnerStats:
    trained: int = 0
    reused: int = 0
    seconds: float = 0.0
    folders: dict[RunSpec, Path] = field(default_factory=dict)


def _spec_fingerprint(ctx: StudyContext, spec: RunSpec) -> dict[str, Any]:
    return {"spec": spec.to_json(), "train": {k: v for k, v in ctx.cfg.to_json().items()
                                              if k not in ("progress", "device", "method", "method_params")},
            "combos": [combination_name(c, ctx.modalities) for c in ctx.combos], "modalities": ctx.modalities}


def is_done(ctx: StudyContext, spec: RunSpec, folder: Path) -> bool:
    """True when ``folder`` holds a finished run of exactly this spec and these training options."""
    if not (folder / DONE).exists() or not (folder / "spec.json").exists():
        return False
    return json.loads((folder / "spec.json").read_text()) == _jsonable(_spec_fingerprint(ctx, spec))


def _worker(ctx: StudyContext, spec: RunSpec, folder: Path, threads: int | None) -> tuple[RunSpec, float]:
    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    _prepare_folder(ctx, spec, folder)
    execute_run(ctx, spec, folder)
    return spec, time.perf_counter() - t0


def _prepare_folder(ctx: StudyContext, spec: RunSpec, folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)  # an unfinished or outdated run: start it again
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text(json.dumps(_jsonable(_spec_fingerprint(ctx, spec)), indent=1))


def run_all(ctx: StudyContext, specs: Sequence[RunSpec], out: Path, *, n_jobs: int = 1, threads: int | None = None,
            progress: bool = True, on_done: Callable[[RunSpec], None] | None = None) -> RunnerStats:
    """Run every spec not finished yet under ``out/runs``; finished ones are reused.

    ``n_jobs`` > 1 trains that many runs at once in joblib (loky) processes, each with
    ``threads`` torch threads (default: the CPU count divided by ``n_jobs``, at least 1); ``n_jobs`` = 1
    trains in this process with its current thread setting. ``on_done(spec)`` is called after each run."""
    t0 = time.perf_counter()
    stats = RunnerStats()
    todo = []
    for s in specs:
        folder = Path(out) / "runs" / s.key
        stats.folders[s] = folder
        if is_done(ctx, s, folder):
            stats.reused += 1
        else:
            todo.append(s)
    if stats.reused:
        log.info("reusing %d finished run(s) in %s", stats.reused, out)
    bar = None
    if progress and todo:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                       TimeElapsedColumn())
        bar.start()
        task = bar.add_task("runs", total=len(todo), info=f"{stats.reused} reused")
    try:
        if n_jobs == 1 or len(todo) <= 1:
            if threads:
                torch.set_num_threads(threads)
            for s in todo:
                _, sec = _worker(ctx, s, stats.folders[s], None)
                stats.trained += 1
                if bar is not None:
                    bar.update(task, advance=1, info=f"{s.label} fold {s.fold} ({sec:.0f} s)")
                if on_done is not None:
                    on_done(s)
        else:
            from joblib import Parallel, delayed

            nt = threads or max(1, (os.cpu_count() or 1) // n_jobs)
            par = Parallel(n_jobs=n_jobs, backend="loky", return_as="generator_unordered")
            for s, sec in par(delayed(_worker)(ctx, s, stats.folders[s], nt) for s in todo):
                stats.trained += 1
                if bar is not None:
                    bar.update(task, advance=1, info=f"{s.label} fold {s.fold} ({sec:.0f} s)")
                if on_done is not None:
                    on_done(s)
    finally:
        if bar is not None:
            bar.stop()
    stats.seconds = time.perf_counter() - t0
    return stats


def fold_specs(ctx: StudyContext, labels: Sequence[str], overrides: dict[str, dict[str, Any]] | None = None, *,
               rate: float = 0.0, mode: str = "random", extra: dict[str, tuple[str, dict[str, Any]]] | None = None,
               ) -> list[RunSpec]:
    """One :class:`RunSpec` per label, repeat and fold. ``extra`` maps a study's own labels (``ablation_b``)
    to (registry method, parameters)."""
    extra = extra or {}
    specs = []
    for label in labels:
        if label in extra:
            base, params = extra[label][0], dict(extra[label][1])
            params.update((overrides or {}).get(base, {}))
            params.update((overrides or {}).get(label, {}))
            get_method(base)
        else:
            base, params = resolve_method(label, overrides)
        for r, rep in enumerate(ctx.folds):
            for k in range(len(rep)):
                specs.append(RunSpec(label=label, method=base, params=freeze_params(params), repeat=r, fold=k,
                                     rate=float(rate), mode=mode))
    return specs
