"""From finished runs to the prediction cells that :mod:`omnifuse.experiments.stats` scores.

Groups and subsets (DESIGN.md, "Evaluation"):

- ``overall`` / ``as_is``: every test row with the modalities it holds (after simulated missingness);
- ``<combination>`` / ``all_masked``: every test row, the modalities outside the combination masked (the
  paper's table 3);
- ``<combination>`` / ``complete``: test rows holding every modality of the combination, the others masked;
- ``<combination>`` / ``partial``: test rows that lack some modality of the combination naturally (or by the
  simulated mask) but hold at least one of it, scored with what they hold of it: reported separately
  (the views are those of :func:`omnifuse.fuse.fold.combination_views`);
- ``reference_subset`` / ``as_is``: test rows with a valid reference score (APACHE IVa on eICU), the methods'
  overall predictions on them and, as method ``reference:<name>``, the reference score itself.

Probabilities are the run's calibrated ones (``overall``, ``combo<i>``); the ``overall`` and
``reference_subset`` cells also carry the same rows before calibration (:attr:`FoldPred.p_raw`, from the run's
``overall_raw``), so the tables show both. A run stored before calibration existed has no ``overall_raw``: its
cells have ``p_raw`` None (no calibration information), and everything else reads as before.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from omnifuse.experiments.runner import RunSpec, StudyContext, load_run
from omnifuse.experiments.stats import FoldPred
from omnifuse.fuse.fold import combination_views
from omnifuse.fuse.tla import combination_name

log = logging.getLogger(__name__)


def load_references(cache: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{name: (values float32 [N], valid bool [N])}`` of the cache's reference scores (none for data
    passed as :class:`FuseData`)."""
    from omnifuse.cache.reader import Cache, CacheData, open_cache

    if isinstance(cache, (str, Path)):
        cache = open_cache(cache)
    if isinstance(cache, Cache):
        if not cache.spec.references:
            return {}
        cache = cache.load(modalities=[])
    if isinstance(cache, CacheData):
        return {
            k: (np.asarray(v, dtype=np.float32), np.asarray(m, dtype=bool)) for k, (v, m) in cache.references.items()
        }
    return {}


def run_preds(
    ctx: StudyContext,
    spec: RunSpec,
    folder: Path,
    *,
    label: str | None = None,
    combos: bool = True,
    partial: bool = True,
    references: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> list[FoldPred]:
    """The prediction cells of one finished run (see the module docstring). ``label`` renames the method."""
    arrays, _ = load_run(folder)
    name = label or spec.label
    rows, y, present = arrays["test_rows"], arrays["y"], arrays["present"]
    raw = arrays.get("overall_raw")
    out = [FoldPred(name, spec.repeat, spec.fold, "overall", "as_is", y, arrays["overall"], spec.rate, raw)]
    if combos:
        for i, c in enumerate(ctx.combos):
            key = f"combo{i}"
            if key not in arrays:
                continue
            gname = combination_name(c, ctx.modalities)
            for view, sel in combination_views(present, np.asarray(c, dtype=bool), arrays[key]).items():
                if view != "partial" or partial:
                    out.append(FoldPred(name, spec.repeat, spec.fold, gname, view, y[sel], arrays[key][sel], spec.rate))
    for ref, (_vals, valid) in (references or {}).items():
        ok = valid[rows]
        out.append(
            FoldPred(
                name,
                spec.repeat,
                spec.fold,
                f"reference_subset:{ref}",
                "as_is",
                y[ok],
                arrays["overall"][ok],
                spec.rate,
                None if raw is None else raw[ok],
            )
        )
    return out


def reference_preds(
    ctx: StudyContext, references: dict[str, tuple[np.ndarray, np.ndarray]], task_kind: str, rate: float = 0.0
) -> list[FoldPred]:
    """The reference scores themselves on every fold's test rows where they are valid (binary tasks only)."""
    if task_kind != "binary":
        if references:
            log.info("reference scores are single probabilities; task kind %s has no comparison", task_kind)
        return []
    data = ctx.data()
    out = []
    for ref, (vals, valid) in references.items():
        v = vals.astype(np.float64)
        if np.nanmax(np.where(valid, v, np.nan)) > 1.0 or np.nanmin(np.where(valid, v, np.nan)) < 0.0:
            log.warning("reference %s holds values outside [0, 1]: its Brier score is not a probability score", ref)
        for r, rep in enumerate(ctx.folds):
            for k, (_, te) in enumerate(rep):
                ok = valid[te]
                out.append(
                    FoldPred(
                        f"reference:{ref}",
                        r,
                        k,
                        f"reference_subset:{ref}",
                        "as_is",
                        data.labels_numpy(te[ok]),
                        v[te[ok]][:, None],
                        rate,
                    )
                )
    return out


def collect(ctx: StudyContext, folders: dict[RunSpec, Path], specs: Sequence[RunSpec], **kw: Any) -> list[FoldPred]:
    out: list[FoldPred] = []
    for s in specs:
        out.extend(run_preds(ctx, s, folders[s], **kw))
    return out


def pooled(
    ctx: StudyContext,
    folders: dict[RunSpec, Path],
    specs: Sequence[RunSpec],
    repeat: int = 0,
    *,
    raw: bool = False,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per method label, the out-of-fold ``(y, overall probabilities)`` of one repeat (every labelled row once).
    ``raw``: the probabilities before calibration instead, for the labels whose every run stored them (the
    others are left out: no calibration information)."""
    acc: dict[str, tuple[list, list]] = {}
    missing: set[str] = set()
    for s in specs:
        if s.repeat != repeat:
            continue
        a, _ = load_run(folders[s])
        if raw and "overall_raw" not in a:
            missing.add(s.label)
            continue
        ys, ps = acc.setdefault(s.label, ([], []))
        ys.append(a["y"])
        ps.append(a["overall_raw" if raw else "overall"])
    return {k: (np.concatenate(v[0]), np.concatenate(v[1])) for k, v in acc.items() if k not in missing}
