"""The resumable study runner: one training run per (method or variant, repeat, fold, missing rate), each in
its own folder with a ``DONE`` marker, fanned out over processes with joblib.

A study (compare, unimodal, ablation, sweep, imputation) is a :class:`StudyContext` (the cache, the task, the
fold splits, the training options, the modality combinations to evaluate) and a list of :class:`RunSpec`.
Every run goes through :func:`omnifuse.fuse.fold.run_fold`, the code path of ``omnifuse train`` too, and
stores the **predictions** of its test rows: as they are (``overall``) and once per evaluated modality
combination (every modality outside the combination masked). Every metric, paired test and figure of a study
is then computed from these stored predictions, so a finished run is never recomputed and an interrupted
study resumes with the runs it has (``runs/<label>/<rate>/r<repeat>f<fold>/DONE``).

Pairing: every method of a study sees the same folds and the same simulated missingness masks (the seed
policy of :mod:`omnifuse.fuse.fold`; the folds are written to ``folds.json``), so fold-level metrics pair
across methods.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from omnifuse.cache.reader import open_cache
from omnifuse.cache.schema import task_inputs
from omnifuse.experiments.config import CombinationStudyConfig, StudyConfig
from omnifuse.experiments.report import ResultT, Section, StudyResult, write_study
from omnifuse.experiments.shapley import SHAPLEY_FILE, attributable, run_attribution, save_run_attribution
from omnifuse.fuse.config import TrainConfig, resolve_config
from omnifuse.fuse.data import FuseData, load_fuse_data
from omnifuse.fuse.fold import FoldPlan, FoldRun, data_fingerprint, fold_data, make_repeated_folds, run_fold, run_seed
from omnifuse.fuse.methods import check_params, get_method
from omnifuse.fuse.tla import all_combinations, combination_name
from omnifuse.fuse.trainer import TrainerCallback
from omnifuse.utils import ensure_writable, json_safe, make_progress, save_arrays

log = logging.getLogger(__name__)

DONE = "DONE"


class StudyError(ValueError):
    """A study cannot run as asked (unknown method, a folder holding another study's runs...)."""


# ------------------------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class RunSpec:
    """One training run. ``label``: the name shown in tables (a registry method or variant, or a study's own
    name such as ``unimodal:vitals``); ``method``: the registry entry it builds; ``params``: method parameters
    on top of the entry's defaults; ``modalities``: the modalities the model sees (None = the study's);
    ``train_modality``: train only on rows holding it (unimodal models); ``rate``/``mode``: simulated
    missingness of every row (0 = none)."""

    label: str
    method: str
    params: tuple[tuple[str, Any], ...] = ()
    repeat: int = 0
    fold: int = 0
    rate: float = 0.0
    mode: str = "random"
    modalities: tuple[str, ...] | None = None
    train_modality: str | None = None

    @property
    def key(self) -> str:
        safe = self.label.replace(":", "-").replace("/", "-")
        return f"{safe}/rate{self.rate:g}_{self.mode}/r{self.repeat}f{self.fold}"

    @property
    def method_params(self) -> dict[str, Any]:
        return thaw_params(self.params)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["params"] = dict(self.params)
        d["modalities"] = None if self.modalities is None else list(self.modalities)
        return d


def method_params(label: str, overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The parameters a study gives registry entry ``label`` on top of its defaults: ``overrides`` of the
    entry's base network (e.g. ``omnifuse`` for ``dwfuse_only``), then of ``label`` itself. Raises
    :class:`StudyError` for a name the registry does not know."""
    try:
        entry = get_method(label)
    except KeyError as e:
        raise StudyError(str(e.args[0]) if e.args else str(e)) from e
    overrides = overrides or {}
    params = dict(overrides.get(entry.base, {}))
    if label != entry.base:
        params.update(overrides.get(label, {}))
    try:
        check_params(label, params)
    except ValueError as e:
        raise StudyError(str(e)) from e
    return params


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
            with contextlib.suppress(json.JSONDecodeError):
                v = json.loads(v)
        out[k] = v
    return out


def mask_digest(mask: torch.Tensor) -> str:
    """A short hash of a presence mask [N, M] (tests and run records compare masks across methods)."""
    return hashlib.sha1(np.packbits(mask.cpu().numpy().astype(np.uint8)).tobytes()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------- context
def combinations_for(names: Sequence[str], which: str | Sequence[str] = "full+single") -> list[tuple[bool, ...]]:
    """The modality combinations a study evaluates, as presence tuples over ``names``.

    ``which``: ``"full+single"`` (all modalities, then each alone: cheap), ``"full"``, ``"single"``,
    ``"loo"`` (all, then each left out), ``"all"`` (the 2^M - 1 combinations) or a list of names such as
    ``["vitals+apache", "history"]``."""
    n_mod = len(names)
    full = tuple([True] * n_mod)
    single = [tuple(i == j for i in range(n_mod)) for j in range(n_mod)]
    if isinstance(which, str):
        named = {
            "full": [full],
            "single": single,
            "full+single": [full] + ([] if n_mod == 1 else single),
            "loo": [full] + ([] if n_mod <= 2 else [tuple(i != j for i in range(n_mod)) for j in range(n_mod)]),
            "all": sorted(all_combinations(n_mod), key=lambda c: (-sum(c), c)),
        }
        if which in named:
            return named[which]
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
    training options; ``combos``: the combinations evaluated per run (presence tuples over ``modalities``);
    ``attribution``: every fusion network's run also stores its test rows' Shapley values
    (:mod:`omnifuse.experiments.shapley`); ``provenance``: what the cache's fingerprint records of its making
    (dataset, adapter options, encoders; written to ``config.json``)."""

    cache: Any
    task: str
    modalities: list[str]
    folds: list[list[tuple[np.ndarray, np.ndarray]]]
    cfg: TrainConfig
    combos: list[tuple[bool, ...]]
    seed: int = 0
    fingerprint: str | None = None  # the cache's fingerprint digest: finished runs are reused only for it
    attribution: bool = False
    provenance: dict[str, Any] | None = None
    _data: dict = field(default_factory=dict, repr=False)

    def data(self, modalities: Sequence[str] | None = None) -> FuseData:
        """The task's data for ``modalities`` (default: the study's), loaded once per process."""
        key = tuple(modalities or self.modalities)
        d = self._data.get(key)
        if d is None:
            base = self._data.get("__base__")
            if base is None:
                base = _load_base(self.cache, self.task, self.modalities, self.cfg)
                self._data["__base__"] = base
            d = base if key == tuple(self.modalities) else base.subset_modalities(list(key))
            self._data[key] = d
        return d

    @property
    def combo_names(self) -> list[list[str]]:
        """The evaluated combinations as lists of modality names."""
        return [[n for n, k in zip(self.modalities, c, strict=True) if k] for c in self.combos]

    def __getstate__(self) -> dict[str, Any]:
        st = dict(self.__dict__)
        st["_data"] = {}  # workers load their own copy (a path) or receive the pickled cache data
        return st


_PROCESS_DATA: dict[tuple, FuseData] = {}


def _load_base(cache: Any, task: str, modalities: list[str], cfg: TrainConfig) -> FuseData:
    if isinstance(cache, FuseData):
        return cache
    if isinstance(cache, (str, Path)):
        key = (
            str(Path(cache).resolve()),
            task,
            tuple(modalities),
            cfg.device,
            cfg.allow_incomplete,
            cfg.data_in_memory,
        )
        if key not in _PROCESS_DATA:
            _PROCESS_DATA.clear()
            _PROCESS_DATA[key] = load_fuse_data(
                cache,
                task,
                modalities,
                device=cfg.device,
                allow_incomplete=cfg.allow_incomplete,
                in_memory=cfg.data_in_memory,
            )
        return _PROCESS_DATA[key]
    return load_fuse_data(cache, task, modalities, device=cfg.device, allow_incomplete=cfg.allow_incomplete)


def build_context(
    cache: Any,
    task: str,
    *,
    modalities: list[str] | None = None,
    folds: int = 5,
    repeats: int = 1,
    seed: int = 0,
    combinations: str | Sequence[str] = "full+single",
    out: Path | None = None,
    train_options: dict[str, Any] | None = None,
) -> StudyContext:
    """Load the task once, make the patient-grouped folds of every repeat (the seed policy of
    :mod:`omnifuse.fuse.fold`) and resolve the training options (:class:`TrainConfig` fields; ``progress`` and
    checkpoints off per run). When ``out`` holds a ``folds.json`` from an earlier run of the study, the folds
    must be the same (else the cache or the options changed and the old runs cannot be reused:
    :class:`StudyError`)."""
    if folds < 2:
        raise StudyError(f"a cross-validated study needs folds >= 2, got {folds}")
    if repeats < 1:
        raise StudyError(f"repeats must be >= 1, got {repeats}")
    opts = dict(train_options or {})
    opts.setdefault("progress", False)
    opts["save_checkpoints"] = False
    cfg = resolve_config(None, task=task, seed=seed, folds=folds, **opts)
    if out is not None:
        ensure_writable(Path(out))
    if isinstance(cache, (str, Path)):
        data = _load_base(cache, task, modalities or _cache_modalities(cache, task), cfg)
    else:
        data = load_fuse_data(cache, task, modalities, device=cfg.device, allow_incomplete=cfg.allow_incomplete)
    names = list(data.modalities)
    splits = make_repeated_folds(data, folds, repeats, seed)
    ctx = StudyContext(
        cache=cache if isinstance(cache, (str, Path)) else data,
        task=task,
        modalities=names,
        folds=splits,
        cfg=cfg,
        combos=combinations_for(names, combinations),
        seed=seed,
    )
    ctx._data["__base__"] = data
    ctx._data[tuple(names)] = data
    if out is not None:
        check_folds(Path(out), data, splits)
    fp = data_fingerprint(cache)
    ctx.fingerprint = None if fp is None else fp["digest"]
    ctx.provenance = None if fp is None else {k: fp[k] for k in PROVENANCE_KEYS if k in fp}
    return ctx


PROVENANCE_KEYS = ("schema", "dataset", "adapter_options", "modalities", "encoders_digest", "digest")
"""The parts of the cache fingerprint a study records in ``config.json`` (``cache_provenance``)."""


def _cache_modalities(cache: str | Path, task: str) -> list[str]:
    """The cache's modalities for ``task`` when none are named (``cache.schema.task_inputs``: MIMIC's whole-stay
    EHR for phenotyping only, the 48 h one for mortality)."""
    return task_inputs(open_cache(cache).spec, task)


def folds_json(data: FuseData, splits: list[list[tuple[np.ndarray, np.ndarray]]]) -> dict[str, Any]:
    """The test stays of every (repeat, fold): ``{"repeats": [[[stay_id...], ...], ...]}``."""
    return {
        "task": data.task,
        "n_rows": data.n,
        "repeats": [[data.stay_id[te].tolist() for _, te in rep] for rep in splits],
    }


def check_folds(out: Path, data: FuseData, splits: list[list[tuple[np.ndarray, np.ndarray]]]) -> None:
    """Write ``folds.json``, or check that an existing one holds the same test stays."""
    out.mkdir(parents=True, exist_ok=True)
    p = out / "folds.json"
    cur = folds_json(data, splits)
    if p.exists():
        old = json.loads(p.read_text())
        if old != cur:
            raise StudyError(
                f"{p} holds other folds (another cache, task, seed or number of folds); use a new "
                "output folder or remove the old one"
            )
    else:
        p.write_text(json.dumps(cur))


# ------------------------------------------------------------------------------------------ a run
class RunProbe(TrainerCallback, Protocol):
    """A study's observer of one run (e.g. the imputation probe): a trainer callback that also writes its
    findings into the run folder when the run ends and returns what goes into ``run.json``."""

    def finish(self, run: FoldRun, data: FuseData, folder: Path) -> dict[str, Any]: ...


ProbeFactory = Callable[[RunSpec, np.ndarray], RunProbe]
"""``factory(spec, test rows) -> probe``: one probe per run; must pickle (a module-level class does)."""


def execute_run(ctx: StudyContext, spec: RunSpec, folder: Path, probe: ProbeFactory | None = None) -> dict[str, Any]:
    """Train ``spec`` on its fold (:func:`omnifuse.fuse.fold.run_fold`) and write ``predictions.npz``,
    ``run.json`` and then ``DONE`` into ``folder``.

    ``predictions.npz``: ``test_rows`` [n], ``present`` [n, M] (the study's modalities, after simulated
    missingness), ``y`` (labels), ``overall`` [n, C] (test rows as they are), ``combo<i>`` [n, C] (every
    test row with the modalities outside ``ctx.combos[i]`` masked; a row lacking some of the combination keeps
    what it has of it), all calibrated with the run's temperature (``calibrate``), ``overall_raw`` [n, C] (the
    overall probabilities before calibration) and ``temperature`` [C] (multiclass [1]; ones when not
    calibrated). A model that does not see a modality of a combination gives no ``combo<i>``. Runs stored
    before calibration existed have neither ``overall_raw`` nor ``temperature`` (:func:`load_run` reads them
    as they are: no calibration information).

    With ``ctx.attribution`` a fusion network's run (not a reference learner) also writes ``shapley.npz``: its
    test rows' Shapley values (:func:`omnifuse.experiments.shapley.run_attribution`), and ``run.json``'s
    ``attribution`` (their cost; ``seconds`` and ``cpu_seconds`` stay those of training and prediction)."""
    t0, c0 = time.perf_counter(), time.process_time()
    base = fold_data(ctx.data(), spec.rate, spec.mode, ctx.seed, spec.repeat, spec.fold)
    names = list(spec.modalities) if spec.modalities else list(ctx.modalities)
    data = base if names == list(base.modalities) else base.subset_modalities(names)
    train_rows, test_rows = ctx.folds[spec.repeat][spec.fold]
    plan = FoldPlan(
        spec.method,
        train_rows,
        test_rows,
        seed=run_seed(ctx.seed, spec.repeat, spec.fold),
        fold=spec.fold,
        params=spec.method_params,
        train_modality=spec.train_modality,
        combos=ctx.combo_names,
    )
    watcher = probe(spec, test_rows) if probe is not None else None
    run = run_fold(data, plan, ctx.cfg, callbacks=[watcher] if watcher is not None else ())
    arrays: dict[str, np.ndarray] = {
        "test_rows": run.test_rows,
        "y": run.y,
        "overall": run.overall,
        "overall_raw": run.overall if run.overall_raw is None else run.overall_raw,
        "temperature": np.asarray(run.temperature, dtype=np.float64),
        "present": base.mask[torch.as_tensor(test_rows, device=base.device)].cpu().numpy(),
        **{f"combo{i}": p for i, p in run.combos.items()},
    }
    folder.mkdir(parents=True, exist_ok=True)
    save_arrays(folder / "predictions.npz", arrays)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    attribution: dict[str, Any] = {}
    if ctx.attribution and attributable(spec.method):
        values, attribution = run_attribution(
            run, data, ctx.cfg.eval_batch_size, seed=run_seed(ctx.seed, spec.repeat, spec.fold)
        )
        save_run_attribution(folder, values)
    rec = {
        "spec": spec.to_json(),
        "method_params": {**get_method(spec.method).defaults, **spec.method_params},
        "parameters": parameter_count(run.model),
        "best_epoch": run.best_epoch,
        "best_epoch_is_last": any(run.best_is_last),
        "best_val_auroc": run.best_val_auroc,
        "temperature": run.temperature,
        "n_train": run.n_train,
        "n_val": run.n_val,
        "n_test": int(len(test_rows)),
        "mask_digest": mask_digest(base.mask),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "threads": torch.get_num_threads(),
        "history": run.history,
        "records": run.records,
        "combos": [combination_name(c, ctx.modalities) for c in ctx.combos],
        **({"attribution": attribution} if attribution else {}),
        **(watcher.finish(run, data, folder) if watcher is not None else {}),
    }
    (folder / "run.json").write_text(json.dumps(json_safe(rec), indent=1))
    (folder / DONE).write_text("")
    return rec


def parameter_count(model: Any) -> int | None:
    """The trainable parameters of a network (None for a reference learner)."""
    if not isinstance(model, torch.nn.Module):
        return None
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_train_ratio(ctx: StudyContext) -> float:
    """n_test / n_train of the study's folds (the correction of :func:`omnifuse.experiments.stats.corrected_ttest`)."""
    te = np.mean([len(t) for rep in ctx.folds for _, t in rep])
    tr = np.mean([len(t) for rep in ctx.folds for t, _ in rep])
    return float(te / tr) if tr else 0.0


def load_run(folder: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(predictions.npz arrays, run.json) of a finished run. A run stored before calibration existed has no
    ``overall_raw`` array and no ``temperature``: callers read that as "no calibration information"."""
    with np.load(folder / "predictions.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads((folder / "run.json").read_text())


# --------------------------------------------------------------------------------------- the runner
@dataclass
class RunnerStats:
    trained: int = 0
    reused: int = 0
    stale: int = 0  # finished runs of this spec made from another cache (fingerprint): retrained
    unattributed: int = 0  # finished runs without the Shapley values the study asks for: retrained
    seconds: float = 0.0
    folders: dict[RunSpec, Path] = field(default_factory=dict)


def _spec_fingerprint(ctx: StudyContext, spec: RunSpec, probe: ProbeFactory | None) -> dict[str, Any]:
    return json_safe(
        {
            "spec": spec.to_json(),
            "probe": None if probe is None else str(probe),
            "train": {
                k: v
                for k, v in ctx.cfg.to_json().items()
                if k not in ("progress", "device", "data_in_memory", "method", "method_params")
            },
            "combos": [combination_name(c, ctx.modalities) for c in ctx.combos],
            "modalities": ctx.modalities,
            "cache": ctx.fingerprint,
        }
    )


def is_done(ctx: StudyContext, spec: RunSpec, folder: Path, probe: ProbeFactory | None = None) -> bool:
    """True when ``folder`` holds a finished run of exactly this spec, these training options and this cache
    (its fingerprint)."""
    return _finished(folder) == _spec_fingerprint(ctx, spec, probe)


def _finished(folder: Path) -> dict[str, Any] | None:
    """The fingerprint a finished run in ``folder`` was made for (None when there is no finished run)."""
    if not (folder / DONE).exists() or not (folder / "spec.json").exists():
        return None
    try:
        return dict(json.loads((folder / "spec.json").read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError):
        return None


def lacks_attribution(ctx: StudyContext, spec: RunSpec, folder: Path) -> bool:
    """A finished run of a study asking for attribution (``ctx.attribution``) that a fusion network trained
    without storing its Shapley values: they need the fold's model, which a study run does not keep, so the run
    is trained again."""
    return ctx.attribution and attributable(spec.method) and not (folder / SHAPLEY_FILE).exists()


def _stale(ctx: StudyContext, spec: RunSpec, folder: Path, probe: ProbeFactory | None) -> bool:
    """A finished run of the same spec and options made from another cache."""
    old = _finished(folder)
    new = _spec_fingerprint(ctx, spec, probe)
    return old is not None and old.get("cache") != new["cache"] and {**old, "cache": None} == {**new, "cache": None}


_WATCHED: list[int] = []


def exit_with_parent(parent: int, interval: float = 1.0) -> None:
    """In a worker process: a daemon thread ends this process (``os._exit``) as soon as its parent ``parent``
    is gone, so a killed study leaves no worker running and writing into its folder. Started once per
    process."""
    if parent in _WATCHED or parent == os.getpid():
        return
    _WATCHED.append(parent)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        log.warning("study process %d is gone: worker %d stops", parent, os.getpid())
        os._exit(3)

    threading.Thread(target=watch, name="omnifuse-parent-watch", daemon=True).start()


BACKENDS = ("loky", "dask")
"""Where :func:`run_all` trains the runs it dispatches: ``loky`` (joblib processes on this machine) or ``dask``
(the workers of a Dask distributed cluster, one task per run)."""

WORKER_WAIT_S = 60.0
"""How long a study waits for a first worker to join an empty Dask cluster."""

Outcome = tuple[RunSpec, float, str]
"""A finished run as a dispatcher yields it: (spec, seconds, where it ran)."""
Outcomes = Generator[Outcome, None, None]


def _where() -> str:
    """What runs this code: a Dask worker's address, else ``process <pid>``."""
    dist = sys.modules.get("distributed")
    if dist is not None:
        with contextlib.suppress(ValueError):  # not in a Dask worker
            return str(dist.get_worker().address)
    return f"process {os.getpid()}"


def _tag(e: BaseException, spec: RunSpec, where: str) -> None:
    """Name the run (and the worker) that raised ``e``; the tag survives pickling back to the study process."""
    e.add_note(f"omnifuse: in run {spec.key} ({where})")
    e._omnifuse_run = (spec.key, where)  # type: ignore[attr-defined]


def _worker(
    ctx: StudyContext,
    spec: RunSpec,
    folder: Path,
    threads: int | None,
    probe: ProbeFactory | None,
    parent: int | None = None,
) -> Outcome:
    """Train one run into ``folder`` (emptied first: an unfinished or outdated run starts again); an exception
    leaves with the run's name attached (:func:`_tag`)."""
    if parent is not None:
        exit_with_parent(parent)
    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    try:
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        (folder / "spec.json").write_text(json.dumps(_spec_fingerprint(ctx, spec, probe), indent=1))
        execute_run(ctx, spec, folder, probe)
    except Exception as e:
        _tag(e, spec, _where())
        raise
    return spec, time.perf_counter() - t0, _where()


def _dispatch_here(
    ctx: StudyContext,
    todo: list[RunSpec],
    folders: dict[RunSpec, Path],
    threads: int | None,
    probe: ProbeFactory | None,
) -> Outcomes:
    """One run after the other in this process (``threads`` torch threads, else the current setting)."""
    if threads:
        torch.set_num_threads(threads)
    for s in todo:
        yield _worker(ctx, s, folders[s], None, probe)


def _dispatch_loky(
    ctx: StudyContext,
    todo: list[RunSpec],
    folders: dict[RunSpec, Path],
    n_jobs: int,
    threads: int | None,
    probe: ProbeFactory | None,
) -> Outcomes:
    """``n_jobs`` joblib (loky) processes on this machine, ``threads`` torch threads each (default: CPU count /
    ``n_jobs``); each ends itself when this process is gone (:func:`exit_with_parent`)."""
    from joblib import Parallel, delayed

    nt = threads or max(1, (os.cpu_count() or 1) // n_jobs)
    par = Parallel(n_jobs=n_jobs, backend="loky", return_as="generator_unordered")
    main = os.getpid()
    yield from par(delayed(_worker)(ctx, s, folders[s], nt, probe, main) for s in todo)


def connect_dask(scheduler: str | None) -> Any:
    """A ``distributed.Client`` of ``scheduler``: an address (``tcp://host:8786``, ``host:8786``) or a scheduler
    file (JSON written by ``dask scheduler --scheduler-file FILE``). :class:`StudyError` in one line when
    Dask is not installed, the file does not exist or the scheduler cannot be reached."""
    if not scheduler:
        raise StudyError("--backend dask needs --scheduler (tcp://host:8786 or a scheduler file)")
    try:
        from distributed import Client
    except ImportError as e:
        raise StudyError("--backend dask needs Dask distributed: pip install 'omnifuse[cluster]'") from e
    is_address = "://" in scheduler or re.fullmatch(r"[\w.\-\[\]:]+:\d+", scheduler) is not None
    if not is_address and not Path(scheduler).expanduser().is_file():
        raise StudyError(f"--scheduler {scheduler}: neither an address (tcp://host:8786) nor a scheduler file")
    try:
        if is_address:
            return Client(scheduler, set_as_default=False)
        return Client(scheduler_file=str(Path(scheduler).expanduser()), set_as_default=False)
    except (OSError, TimeoutError) as e:
        raise StudyError(f"cannot reach the Dask scheduler {scheduler}: {type(e).__name__}: {e}") from e


def _worker_report(paths: list[str]) -> dict[str, Any]:
    """Run on every Dask worker before the runs: its versions and which of ``paths`` it cannot see."""
    import omnifuse

    return {
        "omnifuse": omnifuse.__version__,
        "torch": torch.__version__,
        "missing": [p for p in paths if not Path(p).exists()],
    }


def check_dask_workers(client: Any, scheduler: str, out: Path, cache: Any) -> int:
    """Check every worker of ``client`` before dispatching: it imports the same omnifuse, and it sees the out
    folder (a token file written here) and the cache (when a path), so runs are written where this process
    reads them. :class:`StudyError` naming the first worker that fails; a different torch is a warning (its
    numbers may differ in the last digits). Returns the number of workers."""
    out.mkdir(parents=True, exist_ok=True)
    token = out / f".omnifuse-dispatch-{uuid.uuid4().hex}"
    token.write_text("")
    paths = [str(token)] + ([str(cache)] if isinstance(cache, Path) else [])
    try:
        reports = client.run(_worker_report, paths)
    except Exception as e:
        raise StudyError(
            f"a worker of {scheduler} cannot run omnifuse ({type(e).__name__}: {e}); install the same omnifuse "
            "in the workers' environment (pip install 'omnifuse[cluster]')"
        ) from e
    finally:
        token.unlink(missing_ok=True)
    import omnifuse

    for addr, rep in sorted(reports.items()):
        if rep["omnifuse"] != omnifuse.__version__:
            raise StudyError(
                f"Dask worker {addr} runs omnifuse {rep['omnifuse']}, this study {omnifuse.__version__}: install "
                "the same version on every worker"
            )
        if rep["missing"]:
            what = "the out folder" if rep["missing"][0] == str(token) else "the cache"
            raise StudyError(
                f"Dask worker {addr} cannot see {what} {out if what == 'the out folder' else cache}: the out "
                "folder and the cache must be on a file system every worker shares, under the same path"
            )
        if rep["torch"] != torch.__version__:
            log.warning(
                "Dask worker %s runs torch %s, this study %s: its runs may differ in the last digits",
                addr,
                rep["torch"],
                torch.__version__,
            )
    return len(reports)


def _remote_context(ctx: StudyContext) -> StudyContext:
    """``ctx`` with the cache as an absolute path (a worker's working folder is not this process's)."""
    if isinstance(ctx.cache, (str, Path)):
        return replace(ctx, cache=Path(ctx.cache).resolve(), _data={})
    return ctx


def _dispatch_dask(
    ctx: StudyContext,
    todo: list[RunSpec],
    folders: dict[RunSpec, Path],
    out: Path,
    threads: int | None,
    probe: ProbeFactory | None,
    scheduler: str | None,
) -> Outcomes:
    """Every run as a task of the Dask cluster of ``scheduler``, one run per worker thread at a time,
    ``threads`` torch threads each (default 1). Connects and checks the workers (:func:`check_dask_workers`)
    at once, so a wrong scheduler or folder stops the study before any run; the runs are submitted when
    the first outcome is asked for (:func:`_dask_outcomes`)."""
    client = connect_dask(scheduler)
    try:
        try:
            client.wait_for_workers(1, timeout=WORKER_WAIT_S)
        except TimeoutError as e:
            raise StudyError(f"no Dask worker joined {scheduler} within {WORKER_WAIT_S:.0f} s") from e
        remote = _remote_context(ctx)
        n_workers = check_dask_workers(client, str(scheduler), Path(out).resolve(), remote.cache)
        log.info(
            "dispatching %d run(s) to the Dask scheduler %s (%d worker(s), %d thread(s))",
            len(todo),
            scheduler,
            n_workers,
            sum(client.nthreads().values()),
        )
    except BaseException:
        client.close()
        raise
    return _dask_outcomes(client, remote, todo, folders, threads or 1, probe)


def _dask_outcomes(
    client: Any,
    ctx: StudyContext,
    todo: list[RunSpec],
    folders: dict[RunSpec, Path],
    threads: int,
    probe: ProbeFactory | None,
) -> Outcomes:
    """Submit every run to ``client`` (closed at the end) and yield them as they finish, logging each
    (``k/n``, the worker that trained it). A worker that dies running a run (the scheduler gives up on it
    after ``distributed.scheduler.allowed-failures`` retries: ``KilledWorker``) is that run's failure. When
    the study stops (an error, or the generator closed), the runs not started are cancelled; a run in flight
    on a worker still finishes (Dask cannot interrupt a task).

    Dask's futures, not joblib's ``dask`` backend: joblib 1.6 never returns when a worker dies (its backend
    calls joblib's completion callback only for tasks that return)."""
    from distributed import as_completed

    with client:
        shared = client.scatter(ctx, broadcast=True, hash=False)  # sent once, not with every run
        token = uuid.uuid4().hex[:8]
        futures = {
            client.submit(_worker, shared, s, folders[s].resolve(), threads, probe, key=f"omnifuse-{s.key}-{token}"): s
            for s in todo
        }
        try:
            for k, fut in enumerate(as_completed(futures, loop=client.loop), 1):
                try:
                    s, sec, where = fut.result()
                except Exception as e:
                    if getattr(e, "_omnifuse_run", None) is None:  # the worker died, or the scheduler is gone
                        _tag(e, futures[fut], "the Dask cluster")
                    raise
                log.info("run %d/%d finished on %s: %s (%.0f s)", k, len(todo), where, s.key, sec)
                yield s, sec, where
        finally:
            with contextlib.suppress(Exception):
                client.cancel([f for f in futures if not f.done()])


RUN_COST: dict[str, float] = {
    "m3care": 45.5,
    "omnifuse": 45.3,
    "healnet": 35.2,
    "umse": 31.7,
    "mdrop": 27.3,
    "drfuse": 26.9,
    "muse": 23.2,
    "flexmoe": 21.9,
    "smil": 19.4,
    "medfuse": 15.8,
    "shaspec": 15.5,
    "ogm_ge": 15.5,
    "pmr": 14.6,
    "gblend": 13.9,
    "dwfuse_only": 12.6,
    "concat": 10.6,
    "se_gate": 10.4,
    "sum": 8.8,
    "logreg": 5.2,
    "gbm": 3.3,
}
"""The relative cost of one run of a registry entry (CPU seconds of one fold run on the 8-modality eICU demo, 1
thread, ``benchmarks/methods_time.py``; docs/methods.md): only the order in which parallel runs are dispatched
(:func:`dispatch_order`)."""

DEFAULT_RUN_COST = 15.0
"""The cost of an entry :data:`RUN_COST` does not list (nor its base method): about the median."""


def run_cost(spec: RunSpec) -> float:
    """:data:`RUN_COST` of the run's label, else of its registry entry, else of that entry's base method, else
    :data:`DEFAULT_RUN_COST`."""
    for name in (spec.label, spec.method):
        if name in RUN_COST:
            return RUN_COST[name]
    try:
        base = get_method(spec.method).base
    except KeyError:
        return DEFAULT_RUN_COST
    return RUN_COST.get(base, DEFAULT_RUN_COST)


def dispatch_order(todo: Sequence[RunSpec]) -> list[RunSpec]:
    """``todo`` with the most expensive runs first (:func:`run_cost`; equal costs keep their order): parallel
    workers then end together instead of one finishing the slowest method alone (longest processing time
    first). Only when runs start; each run's folder and numbers are its own, whatever the order."""
    return sorted(todo, key=lambda s: -run_cost(s))


def _spec_stamp(folder: Path) -> int | None:
    """When ``folder/spec.json`` was last written (None: absent); a run writes it when it starts."""
    try:
        return (folder / "spec.json").stat().st_mtime_ns
    except OSError:
        return None


def _report_failure(
    e: Exception, todo: list[RunSpec], folders: dict[RunSpec, Path], before: dict[RunSpec, int | None] | None
) -> None:
    """Log which run failed: the one the exception names (raised inside a run, or a Dask run whose worker
    died), else, with ``before`` (the ``spec.json`` stamps at dispatch; a loky worker that died:
    ``TerminatedWorkerError`` names no run), the runs that had started and not finished (``spec.json``
    written since dispatch, no ``DONE``)."""
    tagged = getattr(e, "_omnifuse_run", None)
    if tagged is not None:
        log.error("run %s failed on %s: %s: %s", tagged[0], tagged[1], type(e).__name__, e)
    elif before is not None:
        started = [
            s.key for s in todo if _spec_stamp(folders[s]) not in (None, before[s]) and not (folders[s] / DONE).exists()
        ]
        log.error(
            "a worker failed (%s: %s); runs started and not finished: %s",
            type(e).__name__,
            e,
            ", ".join(started) or "none",
        )
        e.add_note(f"omnifuse: runs started and not finished: {', '.join(started) or 'none'}")
    else:
        return
    log.error("finished runs are kept: run the study again to resume")


def run_all(
    ctx: StudyContext,
    specs: Sequence[RunSpec],
    out: Path,
    *,
    n_jobs: int = 1,
    threads: int | None = None,
    progress: bool = True,
    on_done: Callable[[RunSpec], None] | None = None,
    probe: ProbeFactory | None = None,
    backend: str = "loky",
    scheduler: str | None = None,
) -> RunnerStats:
    """Run every spec not finished yet under ``out/runs``; finished ones are reused.

    ``backend="loky"`` (default): ``n_jobs`` > 1 trains that many runs at once in joblib (loky) processes,
    each with ``threads`` torch threads (default: the CPU count divided by ``n_jobs``, at least 1) and each
    ending itself when this process ends; ``n_jobs`` = 1 trains in this process with its current thread
    setting. ``backend="dask"``: the runs are tasks of the Dask cluster whose scheduler is ``scheduler`` (an
    address or a scheduler file), one per worker thread at a time, ``threads`` torch threads each (default 1;
    ``n_jobs`` is not used); ``out`` and the cache must be on a file system every worker shares. A run's
    numbers do not depend on the backend (its seeds are its own; same ``threads``, same software).

    A run that raises stops the study with that exception, after an error log naming the run and its worker;
    the runs finished so far are kept. ``on_done(spec)`` is called after each run; ``probe`` observes every
    run (see :class:`RunProbe`). Runs in parallel (several loky processes, Dask) start the most expensive first
    (:func:`dispatch_order`); in one process they run in the order of ``specs``."""
    if backend not in BACKENDS:
        raise StudyError(f"unknown backend {backend!r}; backends: {', '.join(BACKENDS)}")
    t0 = time.perf_counter()
    stats = RunnerStats()
    todo = []
    for s in specs:
        folder = Path(out) / "runs" / s.key
        stats.folders[s] = folder
        finished = is_done(ctx, s, folder, probe)
        if finished and lacks_attribution(ctx, s, folder):
            stats.unattributed += 1
            todo.append(s)
        elif finished:
            stats.reused += 1
        else:
            stats.stale += _stale(ctx, s, folder, probe)
            todo.append(s)
    if stats.reused:
        log.info("reusing %d finished run(s) in %s", stats.reused, out)
    if stats.stale:
        log.warning(
            "%d finished run(s) in %s were made from another cache (its fingerprint changed): retraining them",
            stats.stale,
            out,
        )
    if stats.unattributed:
        log.warning(
            "%d finished run(s) in %s were trained without attribution (Shapley values need the fold's model, "
            "which a study run does not keep): retraining them",
            stats.unattributed,
            out,
        )
    here = backend == "loky" and (n_jobs == 1 or len(todo) <= 1)
    parallel = backend == "loky" and not here  # a dead loky worker names no run: see _report_failure
    if not here:
        todo = dispatch_order(todo)  # in one process, the order of the specs (a stop keeps whole methods)
    before = {s: _spec_stamp(stats.folders[s]) for s in todo} if parallel else None
    if backend == "dask" and todo:
        outcomes = _dispatch_dask(ctx, todo, stats.folders, Path(out), threads, probe, scheduler)
    elif here or not todo:
        outcomes = _dispatch_here(ctx, todo, stats.folders, threads if here else None, probe)
    else:
        outcomes = _dispatch_loky(ctx, todo, stats.folders, n_jobs, threads, probe)
    bar = make_progress() if progress and todo else None
    task = bar.add_task("runs", total=len(todo), info=f"{stats.reused} reused") if bar is not None else None

    def done(s: RunSpec, sec: float) -> None:
        stats.trained += 1
        if bar is not None:
            bar.update(task, advance=1, info=f"{s.label} fold {s.fold} ({sec:.0f} s)")
        if on_done is not None:
            on_done(s)

    if bar is not None:
        bar.start()
    try:
        with contextlib.closing(outcomes):  # a stop (an error, on_done raising) cancels what is dispatched
            while True:
                try:
                    s, sec, _ = next(outcomes)
                except StopIteration:
                    break
                except Exception as e:
                    _report_failure(e, todo, stats.folders, before)
                    raise
                done(s, sec)
    finally:
        if bar is not None:
            bar.stop()
    stats.seconds = time.perf_counter() - t0
    return stats


def run_study(
    ctx: StudyContext, specs: Sequence[RunSpec], cfg: StudyConfig, probe: ProbeFactory | None = None
) -> RunnerStats:
    """:func:`run_all` of a study's ``specs`` with the study configuration's runner options: into ``cfg.out``,
    ``cfg.n_jobs`` runs at once with ``cfg.threads`` torch threads each, ``cfg.progress``, on ``cfg.backend``
    (``cfg.scheduler`` for Dask); ``probe`` observes every run."""
    return run_all(
        ctx,
        specs,
        Path(cfg.out),
        n_jobs=cfg.n_jobs,
        threads=cfg.threads,
        progress=cfg.progress,
        probe=probe,
        backend=cfg.backend,
        scheduler=cfg.scheduler,
    )


def fold_specs(
    ctx: StudyContext,
    labels: Sequence[str],
    overrides: dict[str, dict[str, Any]] | None = None,
    *,
    rate: float = 0.0,
    mode: str = "random",
) -> list[RunSpec]:
    """One :class:`RunSpec` per registry entry (method or variant), repeat and fold, with the study's
    ``overrides`` (see :func:`method_params`)."""
    specs = []
    for label in labels:
        params = freeze_params(method_params(label, overrides))
        for r, rep in enumerate(ctx.folds):
            for k in range(len(rep)):
                specs.append(
                    RunSpec(label=label, method=label, params=params, repeat=r, fold=k, rate=float(rate), mode=mode)
                )
    return specs


# ----------------------------------------------------------------------------------- study helpers
def study_context(cache: Any, cfg: StudyConfig, combinations: str | Sequence[str] | None = None) -> StudyContext:
    """:func:`build_context` from a study's configuration (``combinations`` overrides the configuration's)."""
    given = cfg.combinations if isinstance(cfg, CombinationStudyConfig) else None
    combos: str | Sequence[str] = combinations or given or "full+single"
    if isinstance(combos, list) and len(combos) == 1:
        combos = combos[0]
    return build_context(
        cache,
        cfg.task,
        modalities=cfg.modalities,
        folds=cfg.folds,
        repeats=cfg.repeats,
        seed=cfg.seed,
        combinations=combos,
        out=Path(cfg.out),
        train_options=cfg.train_options(),
    )


def study_record(name: str, cache: Any, ctx: StudyContext, cfg: StudyConfig, **extra: Any) -> dict[str, Any]:
    """What a study writes to ``config.json``: its name, the cache, the resolved configuration, what the
    context resolved (modalities, combinations, training options) and ``extra``."""
    return json_safe(
        {
            "study": name,
            "cache": str(cache) if isinstance(cache, (str, Path)) else None,
            "cache_fingerprint": ctx.fingerprint,
            "cache_provenance": ctx.provenance,
            "config": cfg.to_json(),
            "modalities": ctx.modalities,
            "combinations": [combination_name(c, ctx.modalities) for c in ctx.combos],
            "train": {k: v for k, v in ctx.cfg.to_json().items() if k not in ("method", "method_params", "task")},
            **extra,
        }
    )


def finish_study(
    name: str,
    cfg: StudyConfig,
    record: dict[str, Any],
    stats: RunnerStats,
    t0: float,
    tables: tuple[list[dict[str, Any]], list[dict[str, Any]], list[Section], list[Path]],
    extra: dict[str, Any] | None = None,
    result_cls: type[ResultT] = StudyResult,  # type: ignore[assignment]
) -> ResultT:
    """The study's result (``tables`` = summary rows, fold records, sections, figures) with the runner's counts
    and the wall time since ``t0``, written to ``cfg.out`` and printed (:func:`write_study`)."""
    summary, folds, sections, figures = tables
    res = result_cls(
        out=Path(cfg.out),
        config=record,
        summary=summary,
        folds=folds,
        sections=sections,
        figures=figures,
        runs_trained=stats.trained,
        runs_reused=stats.reused,
        runs_stale=stats.stale,
        seconds=time.perf_counter() - t0,
        extra=extra or {},
    )
    return write_study(res, cfg.print_table, title=f"{name}: {cfg.task}")
