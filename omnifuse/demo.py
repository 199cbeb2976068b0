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
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from omnifuse.cache import open_cache

log = logging.getLogger(__name__)

DEMO_DATASET = "eicu-demo"
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


def run_demo(
    cache: Path = Path("cache/eicu-demo.zarr"),
    out: Path = Path("results/demo"),
    methods: Sequence[str] = DEMO_METHODS,
    folds: int = 5,
    repeats: int = DEMO_REPEATS,
    seed: int = 0,
    epochs: int | None = DEMO_EPOCHS,
    n_jobs: int | None = None,
    progress: bool = True,
):
    """Extract (if needed) and compare ``methods`` on the bundled eICU demo; returns the compare result.

    ``repeats`` and ``epochs`` (None: the trainer's 30) default to the demo's shortened protocol (module
    docstring); ``repeats=3, epochs=None`` is the full comparison's."""
    from omnifuse.experiments.compare import compare
    from omnifuse.extract.run import extract_dataset

    cache, out = Path(cache), Path(out)
    if not cache_is_finished(cache):
        log.info("extracting the bundled eICU-CRD demo into %s (once; an interrupted run resumes)", cache)
        summary = extract_dataset(DEMO_DATASET, out=cache, progress=progress)
        if progress:
            from rich.console import Console

            Console().print(summary.render())
    else:
        log.info("using the finished cache %s", cache)
    jobs, threads = default_jobs()
    if n_jobs is not None:
        jobs = n_jobs
    return compare(
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
    )
