"""Scoring stays with a trained run: whatever modalities each stay has, missing ones imputed (forward CRA
only, then the joint output o: the inference the paper's figure 3b shows).

Besides the fused score, a method with per-modality heads (OmniFuse's DWFuse) reports each modality's own
probability ``p_<modality>`` and its **label-free** down-weighting factor ``weight_predicted_class_<modality>``:
eq. 10 needs the true label, so at inference the true class is replaced by the class the joint output
predicts.

Honest scoring. Each fold's ``train_stays.npy`` records the stay ids it trained on (training and inner
validation rows; runs saved before it: recovered from ``predictions.csv`` for k-fold runs). A stay that some
fold models trained on is scored by the fold model(s) that did not (k-fold: the one where it was a test row),
``scored_by`` = ``out_of_fold:<k>``; a stay no model trained on (a new stay) by the mean of the fold models,
``all_folds``; a stay every fold model used trained on (a model trained on all rows, or ``fold=k`` asked for
its own training stays) by them all, flagged ``in_training`` with a warning. ``fold=k`` restricts the models
to fold ``k``'s. Stays are matched by stay id when the scored cache is the run's training cache or another
cache of the same dataset (name and version of the cache fingerprint, :func:`dataset_match`); a cache of
another dataset is scored as new stays, and coinciding ids are reported.

Calibration: a fold's ``model.json`` ``temperature`` (:func:`omnifuse.fuse.calibration.apply_temperature`;
absent in older runs: T = 1) rescales that fold model's fused probabilities before the models are averaged
and before attribution; per-modality ``p_<modality>`` are not rescaled (the temperature is the fused
output's).

Attribution (``shap``, on by default): ``shap_<modality>`` are the Shapley values of the stay's modalities for
its calibrated fused probability (:mod:`omnifuse.fuse.attribution`; positive class, each label, or the
predicted class ``shap_class`` for multiclass), averaged over the models that scored the stay, with
``shap_baseline`` the all-masked prediction: ``shap_baseline + sum of shap_<m>`` over the stay's modalities
is its score. It costs 2^M forward passes per stay and model (M: the stay's modalities; sampled
permutations beyond :data:`omnifuse.fuse.attribution.MAX_EXACT`, their count in ``shap_permutations``).
"""

from __future__ import annotations

import csv
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omnifuse.cache import CacheData, fingerprint_differences
from omnifuse.fuse.attribution import MAX_EXACT, N_PERMUTATIONS, modality_shapley
from omnifuse.fuse.base import FusionMethod, ModalityInfo, ModelInfo
from omnifuse.fuse.calibration import apply_temperature
from omnifuse.fuse.data import DataError, FuseData, Normalizer, load_fuse_data
from omnifuse.fuse.fold import data_fingerprint
from omnifuse.fuse.layers import probabilities
from omnifuse.fuse.methods import build_method
from omnifuse.fuse.train import TRAIN_STAYS
from omnifuse.fuse.trainer import check_finite

MAX_PARAMETERS = 200_000_000
"""The most parameters a checkpoint's ``model.json`` may ask for (the largest registered network at its
defaults holds a few million): a corrupt or hostile file is refused before anything is allocated."""


log = logging.getLogger(__name__)

MAX_PARAMETER_VALUE = 1_000_000
"""The largest number a checkpoint's method parameter may hold (widths, depths, counts): K = 1e9 cascade blocks
would be refused here, before anything is built."""


class CheckpointError(ValueError):
    """A run folder's checkpoint cannot be used (not JSON, not safetensors, out of bounds...)."""


def read_model_json(folder: Path) -> dict[str, Any]:
    """``folder/model.json``, checked: JSON, the keys a checkpoint needs, sizes within bounds."""
    path = folder / "model.json"
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from e
    need = ("method", "method_params", "task", "task_kind", "num_outputs", "modalities", "raw_shapes")
    missing = [k for k in need if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}")
    sizes = [meta["num_outputs"], *(d for m in meta["modalities"] for d in m.get("shape", []))]
    if not all(isinstance(v, int) and 0 < v <= 10_000_000 for v in sizes):
        raise CheckpointError(f"{path}: output and input sizes must be whole numbers in 1..10,000,000")
    params = meta["method_params"]
    big = (
        sorted(
            k
            for k, v in params.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) > MAX_PARAMETER_VALUE
        )
        if isinstance(params, dict)
        else ["method_params"]
    )
    if big:
        raise CheckpointError(
            f"{path}: method parameter(s) {', '.join(big)} out of bounds (at most {MAX_PARAMETER_VALUE:,}): refused"
        )
    return meta


def _model_info(meta: dict[str, Any]) -> ModelInfo:
    return ModelInfo(
        [ModalityInfo.from_json(m) for m in meta["modalities"]],
        meta["task_kind"],
        int(meta["num_outputs"]),
    )


def load_model(
    folder: str | Path, device: str | torch.device = "cpu"
) -> tuple[FusionMethod, Normalizer, dict[str, Any]]:
    """(model in eval mode, normaliser, model.json dict) from a fold folder of a run. The network is first
    built without memory (torch's meta device) to check its size against :data:`MAX_PARAMETERS`; a file that
    is not what it should be raises :class:`CheckpointError` (or ``DataError`` for the normaliser) naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = read_model_json(folder)
    info, params = _model_info(meta), dict(meta["method_params"])
    try:
        with torch.device("meta"):
            n_params = sum(p.numel() for p in build_method(meta["method"], info, **params).parameters())
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{folder / 'model.json'}: cannot build {meta['method']!r} ({e})") from e
    if n_params > MAX_PARAMETERS:
        raise CheckpointError(
            f"{folder / 'model.json'} asks for {n_params:,} parameters (at most {MAX_PARAMETERS:,}): refused"
        )
    model = build_method(meta["method"], info, **params)
    weights = folder / "model.safetensors"
    try:
        model.load_state_dict(load_file(str(weights)))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(
            f"{weights} is not a checkpoint of this run's model ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from e
    model.to(device).eval()
    return model, Normalizer.load(folder / "normalizer.json"), meta


def check_encoders(
    meta: dict[str, Any],
    cache: Any,
    names: list[str],
    run_dir: Path,
    allow: bool,
    actual: dict[str, Any] | None = None,
) -> None:
    """:class:`CheckpointError` naming what differs when ``cache`` was not encoded as the run's training cache
    (encoders, weights, preprocessing, shapes of the run's modalities); a warning instead with ``allow``.
    ``actual``: the cache's fingerprint when already computed."""
    expected = meta.get("cache_fingerprint")
    actual = data_fingerprint(cache) if actual is None else actual
    if expected is None or actual is None:
        log.warning("cannot check that the cache was encoded as the run's training cache (no fingerprint)")
        return
    diffs = fingerprint_differences(expected, actual, encoders_only=True, modalities=names)
    if not diffs:
        return
    shown = "; ".join(diffs[:3]) + (f"; and {len(diffs) - 3} more" if len(diffs) > 3 else "")
    if allow:
        log.warning("scoring a cache encoded differently from %s's training cache: %s", run_dir, shown)
        return
    raise CheckpointError(
        f"the cache was not encoded as {run_dir}'s training cache: {shown}. Re-extract it with "
        "the run's encoders, or pass --allow-other-encoders to score anyway"
    )


SCORED_NEW = "all_folds"
"""``scored_by`` of a stay no fold model trained on: the mean of the (chosen) fold models."""

SCORED_IN_TRAINING = "in_training"
"""``scored_by`` of a stay every chosen fold model trained on: scored anyway (not out-of-sample), warned."""

SCORED_OUT_OF_FOLD = "out_of_fold:"
"""``scored_by`` prefix of a stay some fold models trained on: ``out_of_fold:<k>`` names the fold(s) that did
not, whose mean scores it (``+`` between several)."""


def _checkpoints(run_dir: Path, fold: int | None) -> list[tuple[int, Path]]:
    """(fold number, folder) of every network of the run (ensemble members after their fold's first)."""
    found = sorted(run_dir.glob("fold*/model.json")) + sorted(run_dir.glob("fold*/member*/model.json"))
    if not found:
        raise FileNotFoundError(f"no checkpoint (fold*/model.json) in {run_dir}; was the run saved?")
    out = []
    for f in found:
        folder = f.parent
        top = folder if re.fullmatch(r"fold\d+", folder.name) else folder.parent
        m = re.fullmatch(r"fold(\d+)", top.name)
        if m is None:
            raise CheckpointError(f"{folder}: not a fold<k> folder of a run")
        out.append((int(m.group(1)), folder))
    if fold is not None:
        out = [(k, f) for k, f in out if k == fold]
        if not out:
            raise FileNotFoundError(f"no fold{fold} checkpoint in {run_dir}")
    return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def training_stays(run_dir: str | Path, folds: list[int]) -> dict[int, np.ndarray] | None:
    """Per fold of ``folds``, the stay ids its models trained on (training and inner validation rows).

    Read from ``fold<k>/train_stays.npy`` (written by :func:`omnifuse.fuse.train.save_training_stays`); for a
    k-fold run saved before that file existed, recovered from ``predictions.csv`` (fold ``k`` trained on the
    test rows of every other fold, since the folds partition the labelled rows); None when neither tells (a
    run on a stored split or a single hold-out, saved before the file): nothing can be matched then. A file
    that is there but damaged (empty, truncated, not ``.npy``, not a 1-D integer array) is a
    :class:`CheckpointError` naming it, never a fallback: a damaged record of the training stays could
    otherwise let a fold model score stays it trained on. (When only some folds have the file, it is read as a
    run saved before it: ``predictions.csv``.)"""
    run_dir = Path(run_dir)
    files = {k: run_dir / f"fold{k}" / TRAIN_STAYS for k in folds}
    if all(p.exists() for p in files.values()):
        out = {}
        for k, p in files.items():
            try:
                ids = np.load(p, allow_pickle=False)
            except (OSError, ValueError, EOFError) as e:  # EOFError: an empty or truncated header
                raise CheckpointError(
                    f"{p} is not a .npy array of stay ids ({type(e).__name__}: {str(e)[:80]}); the file is damaged: "
                    "restore it, or remove every fold's train_stays.npy to fall back on predictions.csv"
                ) from e
            if not isinstance(ids, np.ndarray):  # an .npz archive under the .npy name
                raise CheckpointError(f"{p} is not a .npy array of stay ids (an .npz archive)")
            if ids.ndim != 1 or ids.dtype.kind not in "iu":
                raise CheckpointError(f"{p} must hold a 1-D array of integer stay ids, got {ids.dtype} {ids.shape}")
            out[k] = ids.astype(np.int64)
        return out
    cfg = _read_json(run_dir / "config.json")
    pred = run_dir / "predictions.csv"
    if not isinstance(cfg, dict) or cfg.get("split") or int(cfg.get("folds") or 0) < 2 or not pred.exists():
        return None
    try:
        with open(pred, newline="") as f:
            rows = [(int(r["stay_id"]), int(r["fold"])) for r in csv.DictReader(f)]
    except (OSError, KeyError, ValueError, TypeError):
        return None
    stays = np.array([s for s, _ in rows], dtype=np.int64)
    test_fold = np.array([k for _, k in rows], dtype=np.int64)
    return {k: np.unique(stays[test_fold != k]) for k in folds}


def dataset_match(run_dir: str | Path, cache: Any, actual: dict[str, Any] | None) -> tuple[bool, str]:
    """Whether the stay ids of ``cache`` may be matched to the run's training stays, and why (one line).

    The rule: the run's ``config.json`` records its training cache's fingerprint. The same ``digest``: the same
    cache. Another digest but the same dataset identity (the fingerprint's ``dataset``: adapter name and
    version; a rebuilt, re-encoded, relabelled or extended cache of it): the ids name the same stays, matched.
    Another dataset identity: the ids may name other patients: not matched (every stay is new). When either
    identity is unknown (a run trained on data built in memory, or scoring such data): matched, since a false
    match costs a stay only the mean over the other folds, while a missed one would score it in-sample."""
    run_fp = (_read_json(Path(run_dir) / "config.json") or {}).get("cache_fingerprint")
    ident: dict[str, Any] | None = None
    if actual is not None:
        ident = actual.get("dataset")
    elif isinstance(cache, CacheData):
        ident = {"name": cache.spec.dataset, "version": cache.spec.dataset_version}
    if not isinstance(run_fp, dict) or ident is None:
        return True, "the dataset of the run or of the scored stays is not recorded: stays matched by stay_id"
    if actual is not None and actual.get("digest") == run_fp.get("digest"):
        return True, "the run's training cache: stays matched by stay_id"
    theirs = run_fp.get("dataset") or {}
    name = f"{ident.get('name')} {ident.get('version')}"
    if theirs == ident:
        return True, f"another cache of the run's dataset ({name}): stays matched to the training stays by stay_id"
    return False, (
        f"a cache of dataset {name}, the run was trained on {theirs.get('name')} {theirs.get('version')}: "
        "its stays are scored as new stays"
    )


def scoring_plan(
    stay_id: np.ndarray, selected: list[int], trained: dict[int, np.ndarray] | None, match: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(weights [n, F] of the ``selected`` folds per stay, rows summing to 1; ``scored_by`` [n] str): see the
    module docstring. ``trained``: :func:`training_stays` of every fold of the run (None: unknown)."""
    n, F = len(stay_id), len(selected)
    weights = np.full((n, F), 1.0 / F)
    scored_by = np.full(n, SCORED_NEW, dtype=object)
    if trained is None or not match:
        return weights, scored_by.astype(str)
    seen_by = {k: np.isin(stay_id, ids) for k, ids in trained.items()}
    seen = np.zeros(n, dtype=bool)
    for v in seen_by.values():
        seen |= v
    clean = np.stack([~seen_by.get(k, np.zeros(n, dtype=bool)) for k in selected], axis=1)  # [n, F]
    oof = seen & clean.any(1)
    weights[oof] = clean[oof] / clean[oof].sum(1, keepdims=True)
    names = np.array([str(k) for k in selected], dtype=object)
    for i in np.flatnonzero(oof):
        scored_by[i] = SCORED_OUT_OF_FOLD + "+".join(names[clean[i]])
    scored_by[seen & ~clean.any(1)] = SCORED_IN_TRAINING
    return weights, scored_by.astype(str)


def honest_summary(scored_by: np.ndarray) -> str:
    """One line saying how many stays were in the run's training data and which models scored them."""
    s = np.asarray(scored_by).astype(str)
    n = len(s)
    oof = np.char.startswith(s, SCORED_OUT_OF_FOLD)
    inside = s == SCORED_IN_TRAINING
    new = int((s == SCORED_NEW).sum())
    seen = int(oof.sum() + inside.sum())
    if not seen:
        return f"none of the {n:,} stays was in the run's training data: each scored by the mean of the fold models"
    single = all("+" not in v for v in s[oof])
    who = "the fold model that did not train on it" if single else "the fold models that did not train on it"
    line = f"{seen:,} of {n:,} stays were in the run's training data: "
    if not inside.any():
        line += f"each scored by {who}"
    else:
        line += (
            f"{int(oof.sum()):,} scored by {who}, {int(inside.sum()):,} trained on by every fold model used "
            "(flagged in_training: their scores are not out-of-sample)"
        )
    return line + (
        f"; the other {new:,}, which no fold model trained on, by the mean of the fold models" if new else ""
    )


def _temperature(meta: dict[str, Any], folder: Path) -> np.ndarray | None:
    """The fold's calibration from ``model.json`` (None: absent or all 1, T = 1)."""
    t = meta.get("temperature")
    if t is None:
        return None
    try:
        arr = np.asarray(t, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{folder / 'model.json'}: temperature must be a list of numbers") from e
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise CheckpointError(f"{folder / 'model.json'}: temperatures must be finite and positive, got {t}")
    return None if np.all(arr == 1.0) else arr


def predict(
    run_dir: str | Path,
    cache: Any,
    out: str | Path | None = None,
    *,
    fold: int | None = None,
    batch_size: int = 1024,
    device: str = "cpu",
    allow_incomplete: bool = False,
    allow_other_encoders: bool = False,
    shap: bool = True,
    shap_max_exact: int = MAX_EXACT,
    shap_permutations: int = N_PERMUTATIONS,
) -> dict[str, np.ndarray]:
    """Score every stay of ``cache`` (path, Cache, CacheData) with the run in ``run_dir``, honestly (see the
    module docstring: each stay by the fold models that did not train on it).

    Returns columns: ``stay_id`` [N], ``score`` [N, C] (fused probabilities, calibrated when the run was),
    ``scored_by`` [N] str, ``p_<m>`` [N, C] and ``weight_predicted_class_<m>`` ([N] or [N, C] multilabel) per
    modality when the method has per-modality heads, ``present_<m>`` [N] and, with ``shap``,
    ``shap_baseline`` and ``shap_<m>`` ([N]; [N, C] multilabel; NaN where the stay lacks ``m``), for
    multiclass ``shap_class`` (the class attributed: the predicted one) and, when the run has more than
    ``shap_max_exact`` modalities, ``shap_permutations`` (0: exact). Writes a CSV to ``out`` when given. The
    cache must hold the modalities the run was trained on made by the same encoders, weights and
    preprocessing (its fingerprint's ``encoders_digest`` part; ``allow_other_encoders`` scores anyway, for
    experts). The cache needs no labels (new stays); a NaN or infinite score raises
    :class:`omnifuse.fuse.trainer.PredictionError` naming the stays."""
    run_dir = Path(run_dir)
    checkpoints = _checkpoints(run_dir, fold)
    meta0 = read_model_json(checkpoints[0][1])
    names = [m["name"] for m in meta0["modalities"]]
    kind = meta0["task_kind"]
    data = (
        cache
        if isinstance(cache, FuseData)
        else load_fuse_data(
            cache,
            meta0["task"],
            names,
            device=device,
            allow_incomplete=allow_incomplete,
            unlabelled=(kind, list(meta0.get("classes", []))),
        )
    )
    for n in names:
        want, got = meta0["raw_shapes"][n], list(data.raw_shape(n))
        if want != got:
            raise DataError(f"modality {n!r}: the run was trained on shape {want}, the cache has {got}")
    actual = data_fingerprint(cache)
    check_encoders(meta0, cache, names, run_dir, allow_other_encoders, actual)
    run_folds = sorted({k for k, _ in _checkpoints(run_dir, None)})
    selected = sorted({k for k, _ in checkpoints})
    match, why = dataset_match(run_dir, cache, actual)
    trained = training_stays(run_dir, run_folds)
    weights, scored_by = scoring_plan(data.stay_id, selected, trained, match)
    members = {k: sum(1 for j, _ in checkpoints if j == k) for k in selected}
    loaded = []
    acc: dict[str, np.ndarray] = {}
    for k, folder in checkpoints:
        model, norm, meta = load_model(folder, data.device)
        temperature = _temperature(meta, folder)
        w_all = weights[:, selected.index(k)] / members[k]
        rows = np.flatnonzero(w_all > 0)
        loaded.append((model, norm, temperature, rows, w_all[rows]))
        cols: dict[str, list[np.ndarray]] = {}
        with torch.no_grad():
            for s in range(0, len(rows), batch_size):
                b = data.batch(rows[s : s + batch_size], norm)
                o = model(b)
                score = probabilities(o.logits, kind).float().cpu().numpy()
                if temperature is not None:
                    score = apply_temperature(score, temperature, kind)
                cols.setdefault("score", []).append(score)
                if o.per_modality_logits is not None:
                    for n, z in o.per_modality_logits.items():
                        cols.setdefault(f"p_{n}", []).append(probabilities(z, kind).cpu().numpy())
                    lf = model.label_free_weights(o)
                    for n, w in (lf or {}).items():
                        cols.setdefault(f"weight_predicted_class_{n}", []).append(w.cpu().numpy())
        for key, v in cols.items():
            arr = check_finite(np.concatenate(v), data.stay_id[rows], f"{key} of {folder.name}")
            _accumulate(acc, key, rows, arr, w_all[rows], data.n)
    res: dict[str, np.ndarray] = {"stay_id": data.stay_id}
    res["score"] = acc.pop("score", np.zeros((data.n, int(meta0["num_outputs"]))))  # none: a cache without rows
    res["scored_by"] = scored_by
    res.update(acc)
    present = data.mask.cpu().numpy()
    for j, n in enumerate(names):
        res[f"present_{n}"] = present[:, j]
    if shap:
        res.update(_attribution(data, loaded, res["score"], batch_size, shap_max_exact, shap_permutations))
    _report(res["scored_by"], why, trained is None, match, data.stay_id, trained)
    if out is not None:
        write_scores(out, res, meta0.get("classes", []))
    return res


def _accumulate(acc: dict[str, np.ndarray], key: str, rows: np.ndarray, v: np.ndarray, w: np.ndarray, n: int) -> None:
    """``acc[key][rows] += w * v`` (``v`` [k, ...], ``w`` [k]), the [n, ...] array created at zero."""
    if key not in acc:
        acc[key] = np.zeros((n, *v.shape[1:]), dtype=np.float64)
    acc[key][rows] += v * w.reshape(-1, *([1] * (v.ndim - 1)))


def _attribution(
    data: FuseData, loaded: list[tuple], score: np.ndarray, batch_size: int, max_exact: int, n_permutations: int
) -> dict[str, np.ndarray]:
    """``shap_*`` columns: each model's Shapley values of its stays, weighted as their scores were."""
    start = time.perf_counter()
    kind, names = data.task_kind, data.modalities
    target = score.argmax(1) if kind == "multiclass" else None
    acc: dict[str, np.ndarray] = {}
    for model, norm, temperature, rows, w in loaded:
        if not len(rows):
            continue
        sv = modality_shapley(
            model,
            data,
            rows,
            norm,
            batch_size,
            temperature=temperature,
            target=None if target is None else target[rows],
            max_exact=max_exact,
            n_permutations=n_permutations,
        )
        _accumulate(acc, "shap_baseline", rows, sv.baseline, w, data.n)
        for j, n in enumerate(names):
            _accumulate(acc, f"shap_{n}", rows, sv.values[:, j], w, data.n)
        if len(names) > max_exact:
            _accumulate(acc, "shap_permutations", rows, sv.n_permutations.astype(np.float64), w, data.n)
    out: dict[str, np.ndarray] = {}
    if target is not None:
        out["shap_class"] = target.astype(np.int64)
    out.update(acc)
    if "shap_permutations" in out:
        out["shap_permutations"] = np.rint(out["shap_permutations"]).astype(np.int64)
    log.info(
        "modality attribution (Shapley values over %d modalities): %.1f s for %d model(s)",
        len(names),
        time.perf_counter() - start,
        len(loaded),
    )
    return out


def _report(
    scored_by: np.ndarray,
    why: str,
    unknown: bool,
    match: bool,
    stay_id: np.ndarray,
    trained: dict[int, np.ndarray] | None,
) -> None:
    """Log how the stays were scored (one line), and warn of what the scores cannot promise."""
    if unknown:
        log.warning(
            "the run does not record which stays each fold trained on (saved before train_stays.npy, on a "
            "stored split or a hold-out): every stay is scored by the mean of the fold models, and stays it "
            "trained on cannot be told apart"
        )
        return
    if not match:
        shared = np.zeros(len(stay_id), dtype=bool)
        for ids in (trained or {}).values():
            shared |= np.isin(stay_id, ids)
        if shared.any():
            log.warning("%d stay id(s) also name training stays of the run, but this is %s", int(shared.sum()), why)
        else:
            log.info("%s", why)
    else:
        log.info("%s", why)
    line = honest_summary(scored_by)
    if (np.asarray(scored_by) == SCORED_IN_TRAINING).any():
        log.warning("%s", line)
    else:
        log.info("%s", line)


def write_scores(path: str | Path, res: dict[str, np.ndarray], classes: list[str]) -> None:
    """CSV of :func:`predict`'s columns; [N, C] columns expand to ``<name>_<class>`` (binary: ``<name>``);
    text columns (``scored_by``) are written as they are, NaN (a modality the stay lacks) as ``nan``."""
    header, blocks = [], []
    for k, v in res.items():
        v = np.asarray(v)
        if v.ndim == 2 and v.shape[1] > 1:
            header += [f"{k}_{c}" for c in (classes if len(classes) == v.shape[1] else range(v.shape[1]))]
            blocks.append(v)
        else:
            header.append(k)
            blocks.append(v.reshape(-1, 1))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i in range(blocks[0].shape[0]):
            row: list[int | str] = []
            for b in blocks:
                for x in b[i]:
                    if isinstance(x, str):
                        row.append(x)
                    else:
                        row.append(int(x) if isinstance(x, (np.integer, np.bool_)) else f"{float(x):.6g}")
            w.writerow(row)
