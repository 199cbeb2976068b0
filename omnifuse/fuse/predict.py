"""Scoring stays with a trained run: whatever modalities each stay has, missing ones imputed (forward CRA
only, then the joint output o: the inference the paper's figure 3b shows).

Besides the fused score, a method with per-modality heads (OmniFuse's DWFuse) reports each modality's own
probability ``p_<modality>`` and its **label-free** down-weighting factor ``weight_predicted_class_<modality>``:
eq. 10 needs the true label, so at inference the true class is replaced by the class the joint output
predicts. With several folds the probabilities are the mean over the fold models (each with its own
normaliser); ``fold=k`` uses one.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omnifuse.cache import fingerprint_differences
from omnifuse.fuse.base import FusionMethod, ModalityInfo, ModelInfo
from omnifuse.fuse.data import DataError, FuseData, Normalizer, load_fuse_data
from omnifuse.fuse.fold import data_fingerprint
from omnifuse.fuse.layers import probabilities
from omnifuse.fuse.methods import build_method
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
        [ModalityInfo(m["name"], m["kind"], tuple(m["shape"])) for m in meta["modalities"]],
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


def check_encoders(meta: dict[str, Any], cache: Any, names: list[str], run_dir: Path, allow: bool) -> None:
    """:class:`CheckpointError` naming what differs when ``cache`` was not encoded as the run's training cache
    (encoders, weights, preprocessing, shapes of the run's modalities); a warning instead with ``allow``."""
    expected = meta.get("cache_fingerprint")
    actual = data_fingerprint(cache)
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
) -> dict[str, np.ndarray]:
    """Score every stay of ``cache`` (path, Cache, CacheData) with the run in ``run_dir``.

    Returns columns: ``stay_id`` [N], ``score`` [N, C] (fused probabilities), ``p_<m>`` [N, C] and
    ``weight_predicted_class_<m>`` ([N] or [N, C] multilabel) per modality when the method has per-modality
    heads, ``present_<m>`` [N]. Writes a CSV to ``out`` when given. The cache must hold the modalities the run
    was trained on made by the same encoders, weights and preprocessing (its fingerprint's ``encoders_digest``
    part; ``allow_other_encoders`` scores anyway, for experts). The cache needs no labels (new stays);
    a NaN or infinite score raises :class:`omnifuse.fuse.trainer.PredictionError` naming the stays."""
    run_dir = Path(run_dir)
    folders = sorted(run_dir.glob("fold*/model.json")) + sorted(run_dir.glob("fold*/member*/model.json"))
    if not folders:
        raise FileNotFoundError(f"no checkpoint (fold*/model.json) in {run_dir}; was the run saved?")
    if fold is not None:
        folders = [f for f in folders if f"fold{fold}" in (f.parent.name, f.parent.parent.name)]
        if not folders:
            raise FileNotFoundError(f"no fold{fold} checkpoint in {run_dir}")
    meta0 = read_model_json(folders[0].parent)
    names = [m["name"] for m in meta0["modalities"]]
    data = (
        cache
        if isinstance(cache, FuseData)
        else load_fuse_data(
            cache,
            meta0["task"],
            names,
            device=device,
            allow_incomplete=allow_incomplete,
            unlabelled=(meta0["task_kind"], list(meta0.get("classes", []))),
        )
    )
    for n in names:
        want, got = meta0["raw_shapes"][n], list(data.raw_shape(n))
        if want != got:
            raise DataError(f"modality {n!r}: the run was trained on shape {want}, the cache has {got}")
    check_encoders(meta0, cache, names, run_dir, allow_other_encoders)
    rows = np.arange(data.n)
    acc: dict[str, np.ndarray] = {}
    for f in folders:
        model, norm, meta = load_model(f.parent, data.device)
        cols: dict[str, list[np.ndarray]] = {}
        with torch.no_grad():
            for s in range(0, data.n, batch_size):
                b = data.batch(rows[s : s + batch_size], norm)
                o = model(b)
                cols.setdefault("score", []).append(probabilities(o.logits, meta["task_kind"]).cpu().numpy())
                if o.per_modality_logits is not None:
                    for n, z in o.per_modality_logits.items():
                        cols.setdefault(f"p_{n}", []).append(probabilities(z, meta["task_kind"]).cpu().numpy())
                    weights = model.label_free_weights(o)
                    for n, w in (weights or {}).items():
                        cols.setdefault(f"weight_predicted_class_{n}", []).append(w.cpu().numpy())
        for k, v in cols.items():
            acc[k] = acc.get(k, 0) + check_finite(np.concatenate(v), data.stay_id, f"{k} of {f.parent.name}") / len(
                folders
            )
    res: dict[str, np.ndarray] = {"stay_id": data.stay_id}
    res.update(acc)
    present = data.mask.cpu().numpy()
    for j, n in enumerate(names):
        res[f"present_{n}"] = present[:, j]
    if out is not None:
        write_scores(out, res, meta0.get("classes", []))
    return res


def write_scores(path: str | Path, res: dict[str, np.ndarray], classes: list[str]) -> None:
    """CSV of :func:`predict`'s columns; [N, C] columns expand to ``<name>_<class>`` (binary: ``<name>``)."""
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
            row = []
            for b in blocks:
                for x in b[i]:
                    row.append(int(x) if isinstance(x, (np.integer, np.bool_)) else f"{float(x):.6g}")
            w.writerow(row)
