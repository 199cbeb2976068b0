"""``omnifuse demo``: the whole product on real data with one command and no credentials.

1. Extract the bundled eICU-CRD demo (2,520 ICU stays, ODbL) into a cache, unless a finished one is there
   (an interrupted extraction resumes);
2. train OmniFuse, the Concat baseline and the two reference learners (logistic regression and gradient
   boosting on the cached features) with patient-grouped 5-fold cross-validation, repeated
   :data:`DEMO_REPEATS` times, on in-hospital mortality, every method on the same folds, rows, training drops
   and masks;
3. print and write the results table: AUROC and AUPRC (average precision), fold mean with bootstrap CIs and
   pooled out of fold, Brier score, parameter counts, corrected resampled t-tests, and APACHE IVa's
   predicted mortality (a reference score, never an input) on the same folds and stays.

**The demo is the full comparison, shortened, not another protocol.** It calls
:func:`omnifuse.experiments.compare.compare` with the options of ``omnifuse experiment compare`` (the same
folds, run seeds, training drops, validation split, model selection on the validation loss with patience 10,
calibration), with two differences, both chosen so that a from-scratch demo fits in about 5 minutes on 2 CPU
cores:

- :data:`DEMO_REPEATS` = 2 repeats of the 5 folds instead of 3: repeat ``r``'s folds and run seeds do not depend
  on how many repeats there are (:mod:`omnifuse.fuse.fold`), so the demo's 10 folds are the first 10 of the
  full comparison's 15 (10 pairs for the corrected t-test);
- :data:`DEMO_EPOCHS` = 10 epochs at most instead of 30. Training is the same up to the cap, and the model kept
  is the one of the best validation epoch, so a network whose best epoch is below 10 in the full comparison
  is the same network, with the same predictions, in the demo. In the full comparison of the README
  (3 x 5 folds) OmniFuse's best epochs were 2 to 8 and Concat's 1 to 5: every demo run equals its
  full-comparison run. A run whose best epoch is the cap is flagged (the trainer's warning, ``best_epoch_is_last``
  in its ``run.json``): only such a run can differ. Without the cap a run trains 10 more epochs after its best
  one (the patience), which is a third of OmniFuse's training time.

Fold means, CIs and p-values are over the demo's 10 folds, so they differ from the full comparison's over 15.
``--repeats 3 --epochs 30`` gives the full comparison's protocol exactly.

**The demo's cache leaves out one modality, the ``exam`` text** (:data:`DEMO_LEFT_OUT`): it is the text of the
physicalExam rows whose vital signs and GCS the ``exam_values`` modality holds as structured values, the weakest
modality alone (OmniFuse's AUROC on it 0.57 in the README's demo, against 0.75 for ``exam_values``), and the
slowest to encode: 104 of the 189 s of the quiet extraction (MiniLM at 20 texts/s, against 36 for ``history`` and
80 for ``diagnosis``). So ``omnifuse demo`` extracts the seven :data:`DEMO_MODALITIES` into its own cache
(:data:`DEMO_CACHE`), says so in one line (:func:`demo_note`) and records them in its results (``config.json``:
``modalities``; ``demo.json``: those left out and why). ``omnifuse demo --all-modalities``
(``run_demo(all_modalities=True)``) extracts all eight into :data:`FULL_CACHE`, the cache of ``omnifuse extract
--dataset eicu-demo``, whose default extraction is unchanged. The training protocol is the same either way: on its
own cache every demo run is the full comparison's run on that cache (``omnifuse experiment compare -c
cache/eicu-demo-no-exam.zarr``). A cache whose modalities are not the ones asked for is refused
(:class:`DemoCacheError`), never reused.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from omnifuse.cache import open_cache
from omnifuse.extract.datasets.base import Adapter, Cohort, Item, RawModality, Skip

log = logging.getLogger(__name__)

DEMO_DATASET = "eicu-demo"
EICU_DEMO_MODALITIES = ("vitals", "apache", "history", "diagnosis", "exam", "admission", "exam_values", "treatments")
"""The modalities of ``omnifuse extract --dataset eicu-demo``'s default extraction, in its order."""
DEMO_MODALITIES = ("vitals", "apache", "history", "diagnosis", "admission", "exam_values", "treatments")
"""The modalities the demo extracts and trains on: the eICU demo's eight but :data:`DEMO_LEFT_OUT`."""
DEMO_LEFT_OUT = {
    "exam": "the physical-exam text: its vital signs and GCS are the exam_values modality, and encoding it is "
    "over half of the extraction"
}
"""Modalities of the eICU demo left out of ``omnifuse demo``'s cache, with why (module docstring)."""
DEMO_CACHE = Path("cache/eicu-demo-no-exam.zarr")
"""The demo's cache (its :data:`DEMO_MODALITIES` only)."""
FULL_CACHE = Path("cache/eicu-demo.zarr")
"""The cache of ``omnifuse demo --all-modalities``: where ``omnifuse extract --dataset eicu-demo`` writes all
eight modalities."""
DEMO_TASK = "mortality"
DEMO_METHODS = ("omnifuse", "concat", "logreg", "gbm")
DEMO_REPEATS = 2
"""Repeats of the demo's 5-fold cross-validation (10 paired splits for the corrected t-test): the first two of
the full comparison's three (see the module docstring)."""
DEMO_EPOCHS = 10
"""The demo's maximum epochs per network (the full comparison: 30 with patience 10); a network whose best epoch
is below it is the full comparison's network (see the module docstring)."""


def cache_is_finished(path: Path) -> bool:
    """True when ``path`` holds a finished omnifuse cache (schema checked); False when absent or unfinished."""
    if not Path(path).exists():
        return False
    return bool(open_cache(path).meta.get("finalized", False))


def default_jobs() -> tuple[int, int]:
    """(runs at once, torch threads per run): on a CPU machine one single-threaded run per core (measured on
    2 cores: two 1-thread runs beat one 2-thread run); on a GPU one run at a time."""
    import torch

    if torch.cuda.is_available():
        return 1, torch.get_num_threads()
    try:
        cores = len(os.sched_getaffinity(0))  # the cores this process may use (Linux)
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4)), 1


class DemoCacheError(ValueError):
    """A cache at the demo's path holds other modalities than the demo asks for (it is not reused)."""


class ModalitySubset:
    """``adapter`` with only ``names`` of its modalities (in the adapter's order): an extraction of it writes a
    finished cache of those modalities alone, the rest of the adapter (cohort, inputs, options) unchanged."""

    def __init__(self, adapter: Adapter, names: Sequence[str]) -> None:
        have = [m.name for m in adapter.modalities()]
        unknown = [n for n in names if n not in have]
        if unknown:
            raise ValueError(f"{adapter.name} has no modality {unknown}; it has {have}")
        self.adapter, self.names = adapter, tuple(names)
        self.name, self.version = adapter.name, adapter.version
        self.license = getattr(adapter, "license", "")

    def options(self) -> dict:
        return self.adapter.options()

    def cohort(self) -> Cohort:
        return self.adapter.cohort()

    def modalities(self) -> list[RawModality]:
        return [m for m in self.adapter.modalities() if m.name in self.names]

    def inputs(self, modality: str, rows: np.ndarray) -> list[Item | Skip | None]:
        if modality not in self.names:
            raise KeyError(f"modality {modality!r} is left out; this extraction has {list(self.names)}")
        return self.adapter.inputs(modality, rows)


def demo_note(all_modalities: bool, cache: Path) -> str:
    """The one line ``omnifuse demo`` prints about its modalities: what it leaves out, and how to get them all."""
    if all_modalities:
        return f"demo: all eight modalities of the eICU demo (cache {cache})"
    left = ", ".join(f"`{name}` ({why})" for name, why in DEMO_LEFT_OUT.items())
    return (
        f"demo: {len(DEMO_MODALITIES)} of the eICU demo's 8 modalities, cache {cache}; left out: {left}; "
        f"`omnifuse demo --all-modalities` or `omnifuse extract --dataset eicu-demo` builds the full cache "
        f"({FULL_CACHE})"
    )


def check_demo_cache(cache: Path, modalities: Sequence[str] | None) -> None:
    """Refuse (:class:`DemoCacheError`, one line) a cache at ``cache`` whose modalities are not ``modalities``
    in that order (None: every modality of the dataset, i.e. the default extraction's). Nothing there: fine."""
    if not Path(cache).exists():
        return
    c = open_cache(cache)
    have = [m.name for m in c.spec.modalities]
    want = list(EICU_DEMO_MODALITIES if modalities is None else modalities)
    if c.spec.dataset != DEMO_DATASET or have != want:
        extra, lacking = [m for m in have if m not in want], [m for m in want if m not in have]
        parts = [f"dataset {c.spec.dataset!r}"] if c.spec.dataset != DEMO_DATASET else []
        parts += [f"extra: {', '.join(extra)}"] if extra else []
        parts += [f"lacking: {', '.join(lacking)}"] if lacking else []
        what = "; ".join(parts) or f"another order: {', '.join(have)}"
        hint = "" if modalities is None else ", or --all-modalities for the eICU demo's eight modalities"
        raise DemoCacheError(
            f"{cache} holds other modalities than the demo asks for ({what}): give another --cache{hint}"
        )


def run_demo(
    cache: Path | None = None,
    out: Path = Path("results/demo"),
    methods: Sequence[str] = DEMO_METHODS,
    folds: int = 5,
    repeats: int = DEMO_REPEATS,
    seed: int = 0,
    epochs: int | None = DEMO_EPOCHS,
    n_jobs: int | None = None,
    progress: bool = True,
    all_modalities: bool = False,
):
    """Extract (if needed) and compare ``methods`` on the bundled eICU demo; returns the compare result.

    ``repeats`` and ``epochs`` (None: the trainer's 30) default to the demo's shortened protocol (module
    docstring); ``repeats=3, epochs=None`` is the full comparison's. ``all_modalities``: all eight modalities
    (default: :data:`DEMO_MODALITIES`); ``cache`` defaults to :data:`FULL_CACHE` or :data:`DEMO_CACHE` then.
    A cache there with other modalities raises :class:`DemoCacheError`."""
    from omnifuse.experiments.compare import compare

    modalities = None if all_modalities else list(DEMO_MODALITIES)
    cache = Path(cache) if cache is not None else (FULL_CACHE if all_modalities else DEMO_CACHE)
    out = Path(out)
    print(demo_note(all_modalities, cache), flush=True)
    check_demo_cache(cache, modalities)
    if not cache_is_finished(cache):
        log.info("extracting the bundled eICU-CRD demo into %s (once; an interrupted run resumes)", cache)
        summary = extract_demo(cache, modalities, progress=progress)
        if progress:
            from rich.console import Console

            Console().print(summary.render())
    else:
        log.info("using the finished cache %s", cache)
    jobs, threads = default_jobs()
    if n_jobs is not None:
        jobs = n_jobs
    res = compare(
        cache,
        DEMO_TASK,
        list(methods),
        folds=folds,
        repeats=repeats,
        seed=seed,
        out=out,
        epochs=epochs,
        n_jobs=jobs,
        threads=threads,
        progress=progress,
        combinations="full+single",
        modalities=modalities,
    )
    write_demo_record(out, cache, all_modalities)
    return res


def write_demo_record(out: Path, cache: Path, all_modalities: bool) -> Path:
    """``out/demo.json``: the demo's cache, its modalities, those left out and why, and the printed line (the
    study's own ``config.json`` holds the modalities too)."""
    import json

    record = {
        "cache": str(cache),
        "modalities": list(EICU_DEMO_MODALITIES if all_modalities else DEMO_MODALITIES),
        "left_out": {} if all_modalities else dict(DEMO_LEFT_OUT),
        "full_cache": f"omnifuse demo --all-modalities, or omnifuse extract --dataset eicu-demo (into {FULL_CACHE})",
        "note": demo_note(all_modalities, cache),
    }
    Path(out).mkdir(parents=True, exist_ok=True)
    path = Path(out) / "demo.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def extract_demo(cache: Path, modalities: Sequence[str] | None, **overrides):
    """Extract the bundled eICU demo into ``cache``: ``modalities`` only (None: all, ``omnifuse extract --dataset
    eicu-demo``'s extraction); ``overrides``: ``ExtractConfig`` fields (``progress``, ``limit``...)."""
    from omnifuse.extract.config import extract_config
    from omnifuse.extract.datasets.registry import get_dataset
    from omnifuse.extract.pipeline import extract
    from omnifuse.extract.run import extract_dataset

    if modalities is None:
        return extract_dataset(DEMO_DATASET, out=cache, **overrides)
    cfg = extract_config(None, dataset=DEMO_DATASET, out=cache, **overrides)
    adapter = ModalitySubset(get_dataset(DEMO_DATASET).build_adapter(cfg.dataset_options), modalities)
    return extract(adapter, config=cfg)
