"""``omnifuse train``: cross-validated training and evaluation of one fusion method on a cache.

Patient-grouped k-fold cross-validation (or a split stored in the cache); every fold runs through
:func:`omnifuse.fuse.fold.run_fold`, the same code path as every study, with the seed policy written there.
Per fold the test rows are evaluated overall, per modality combination in both views of
:func:`omnifuse.fuse.fold.combination_views` (``all_masked``: every test row masked down to the combination;
``complete``: only the rows holding it) and per natural presence pattern. The run folder receives
``config.json`` (resolved), ``metrics.json``, ``predictions.csv``, ``lazy_combinations.json`` and per fold
``fold<k>/model.safetensors`` with ``model.json`` and ``normalizer.json`` (never pickle).

Probabilities are calibrated per fold (``calibrate``, :mod:`omnifuse.fuse.calibration`; see
:func:`omnifuse.fuse.fold.run_fold`): the metrics are those of the calibrated probabilities, with the Brier score
and ECE before calibration beside them (``brier_uncalibrated``, ``ece_uncalibrated``), each fold's
``temperature``, and the out-of-fold predictions pooled over the folds before and after (``pooled``,
``pooled_uncalibrated``); ``predictions.csv`` holds both probabilities and ``model.json`` the temperature.
"""

from __future__ import annotations

import copy
import csv
import itertools
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from omnifuse.fuse import metrics
from omnifuse.fuse.config import TrainConfig, load_toml, resolve_config
from omnifuse.fuse.data import FuseData, load_fuse_data, split_from_cache
from omnifuse.fuse.fold import (
    FoldPlan,
    FoldRun,
    combination_views,
    data_fingerprint,
    fold_data,
    make_repeated_folds,
    run_fold,
    run_seed,
)
from omnifuse.fuse.methods import check_params, get_method
from omnifuse.fuse.tla import all_combinations, combination_name
from omnifuse.utils import ensure_writable, json_safe, make_progress

log = logging.getLogger(__name__)


@dataclass
class FoldResult:
    fold: int
    test_rows: np.ndarray
    probs: np.ndarray  # [n_test, C]
    metrics: dict[str, Any]
    best_epoch: int
    best_val_auroc: float
    history: list[dict[str, Any]]
    records: dict[str, list]
    probs_raw: np.ndarray | None = None  # [n_test, C] before calibration (None: the same as probs)
    temperature: list[float] = field(default_factory=list)


@dataclass
class RunResult:
    """What a run produced; ``metrics`` is the content of metrics.json."""

    out: Path | None
    config: dict[str, Any]
    metrics: dict[str, Any]
    folds: list[FoldResult] = field(default_factory=list)

    @property
    def mean_val_auroc(self) -> float:
        v = [f.best_val_auroc for f in self.folds if not math.isnan(f.best_val_auroc)]
        return float(np.mean(v)) if v else float("nan")


def _scores(y: np.ndarray, p: np.ndarray, kind: str) -> dict[str, Any]:
    return {"n": int(len(y)), "auroc": metrics.auroc(y, p, kind), "auprc": metrics.auprc(y, p, kind)}


def _uncalibrated_metrics(run: FoldRun, kind: str) -> dict[str, Any]:
    """A fold's temperature and the Brier score and ECE of its test predictions before calibration."""
    raw = run.overall if run.overall_raw is None else run.overall_raw
    return {
        "temperature": list(run.temperature),
        "brier_uncalibrated": metrics.brier(run.y, raw, kind),
        "ece_uncalibrated": metrics.expected_calibration_error(run.y, raw, kind, metrics.ECE_BINS),
    }


def combination_metrics(
    run: FoldRun,
    modalities: list[str],
    combos: list[tuple[bool, ...]],
    kind: str,
) -> dict[str, dict[str, Any]]:
    """Per combination, AUROC and AUPRC of its ``all_masked`` and ``complete`` views (``{name: {view: ...}}``);
    a view without a row is left out."""
    res: dict[str, dict[str, Any]] = {}
    for i, combo in enumerate(combos):
        if i not in run.combos:
            continue
        views = combination_views(run.present, np.asarray(combo, dtype=bool), run.combos[i])
        res[combination_name(combo, modalities)] = {
            v: _scores(run.y[sel], run.combos[i][sel], kind) for v, sel in views.items() if v != "partial" and sel.any()
        }
    return res


def pattern_metrics(data: FuseData, run: FoldRun) -> dict[str, Any]:
    """Test rows grouped by the modalities they hold, scored as they are."""
    res = {}
    for pat in sorted({tuple(h) for h in run.present.tolist()}, key=lambda t: (-sum(t), t)):
        sel = (run.present == np.array(pat)).all(1)
        name = combination_name(pat, data.modalities) or "(none)"
        res[name] = _scores(run.y[sel], run.overall[sel], data.task_kind)
    return res


def save_checkpoints(
    run: FoldRun,
    cfg: TrainConfig,
    folder: Path,
    data: FuseData,
    method_params: dict[str, Any],
    fingerprint: dict[str, Any] | None = None,
) -> None:
    """``folder``/model.safetensors, model.json, normalizer.json of the fold's network (ensemble members 2..n
    in ``folder/member<i>``). Reference learners are not saved (safetensors holds tensors, and nothing is ever
    pickled): their predictions are in the run's predictions.csv."""
    if get_method(cfg.method).kind == "reference":
        return
    for i, member in enumerate(run.members or [run.model]):
        dst = folder if i == 0 else folder / f"member{i}"
        _save_network(member, run.normalizer, cfg, dst, data, method_params, fingerprint, run.temperature)


def _save_network(
    model: Any,
    norm: Any,
    cfg: TrainConfig,
    folder: Path,
    data: FuseData,
    method_params: dict[str, Any],
    fingerprint: dict[str, Any] | None,
    temperature: list[float] | None = None,
) -> None:
    """One network's checkpoint. ``model.json``'s ``temperature`` (floats: one per output for binary and
    multilabel tasks, one for multiclass; all 1 when the run was not calibrated) is the fold's: fitted on the
    averaged probabilities of the fold's members, the same in every member's file; ``omnifuse predict``
    rescales probabilities with it (:func:`omnifuse.fuse.calibration.apply_temperature`)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    norm.save(folder / "normalizer.json")
    info = model.info
    (folder / "model.json").write_text(
        json.dumps(
            {
                "method": cfg.method,
                "method_params": method_params,
                "task": data.task,
                "task_kind": info.task_kind,
                "classes": data.classes,
                "num_outputs": info.num_outputs,
                "modalities": [m.to_json() for m in info.modalities],
                "raw_shapes": {n: list(data.raw_shape(n)) for n in data.modalities},
                "temperature": [float(t) for t in temperature]
                if temperature
                else [1.0] * (1 if info.task_kind == "multiclass" else int(info.num_outputs)),
                "cache_fingerprint": None
                if fingerprint is None
                else {k: fingerprint[k] for k in ("schema", "modalities", "encoders_digest", "digest")},
            },
            indent=1,
        )
    )


TRAIN_STAYS = "train_stays.npy"
"""The file of a fold folder that names the stays the fold trained on (see :func:`save_training_stays`)."""


def save_training_stays(folder: Path, data: FuseData, train_rows: np.ndarray) -> None:
    """``folder/train_stays.npy``: the sorted stay ids (int64 [n], a plain ``.npy``, no pickle) of the fold's
    training rows, its inner validation rows included (they chose the epoch): the stays ``omnifuse predict``
    must not score with this fold's model when it claims out-of-fold scores."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / TRAIN_STAYS, np.sort(np.asarray(data.stay_id[train_rows], dtype=np.int64)), allow_pickle=False)


def _mean_metrics(folds: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in ("auroc", "auprc", "brier", "ece", "brier_uncalibrated", "ece_uncalibrated", "auroc_micro", "auprc_micro"):
        v = [f[k] for f in folds if k in f and f[k] is not None and not math.isnan(f[k])]
        if v:
            out[k] = float(np.mean(v))
            out[f"{k}_std"] = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
    combos: dict[str, dict[str, dict[str, list[float]]]] = {}
    for f in folds:
        for name, views in f["by_combination"].items():
            for view, v in views.items():
                for key in ("auroc", "auprc"):
                    if v[key] is not None and not math.isnan(v[key]):
                        combos.setdefault(name, {}).setdefault(view, {}).setdefault(key, []).append(v[key])
    out["by_combination"] = {
        n: {view: {k: float(np.mean(x)) for k, x in d.items()} for view, d in views.items()}
        for n, views in combos.items()
    }
    return out


def pooled_metrics(data: FuseData, results: list[FoldResult]) -> dict[str, dict[str, float]]:
    """AUROC, AUPRC, Brier score and ECE of the out-of-fold predictions of every fold scored together:
    ``pooled`` (the reported, calibrated probabilities) and ``pooled_uncalibrated`` (before calibration). Beside
    the fold means they show fold models on different probability scales (a pooled AUROC below the fold mean)."""
    if not results:
        return {}
    kind = data.task_kind
    y = data.labels_numpy(np.concatenate([r.test_rows for r in results]))
    out = {}
    for key, probs in (
        ("pooled", [r.probs for r in results]),
        ("pooled_uncalibrated", [r.probs if r.probs_raw is None else r.probs_raw for r in results]),
    ):
        p = np.concatenate(probs)
        out[key] = {
            "auroc": metrics.auroc(y, p, kind),
            "auprc": metrics.auprc(y, p, kind),
            "brier": metrics.brier(y, p, kind),
            "ece": metrics.expected_calibration_error(y, p, kind, metrics.ECE_BINS),
        }
    return out


def _splits(data: FuseData, cfg: TrainConfig) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """(train rows, test rows, fixed validation rows or None) per fold."""
    if cfg.split:
        tr, va, te = split_from_cache(data, cfg.split)
        return [(np.concatenate([tr, va]), te, va if len(va) else None)]
    return [(tr, te, None) for tr, te in make_repeated_folds(data, cfg.folds, 1, cfg.seed)[0]]


def _write_run(out_dir: Path, data: FuseData, results: list[FoldResult], metrics_json: dict[str, Any]) -> None:
    (out_dir / "metrics.json").write_text(json.dumps(metrics_json, indent=1))
    write_predictions(out_dir / "predictions.csv", data, results)
    lazy = {f"fold{r.fold}": r.records.get("lazy_combination", []) for r in results}
    (out_dir / "lazy_combinations.json").write_text(json.dumps(json_safe(lazy), indent=1))


def train(
    cache: Any,
    task: str | None = None,
    method: str | None = None,
    *,
    modalities: list[str] | None = None,
    folds: int | None = None,
    missing_rate: float | None = None,
    seed: int | None = None,
    out: str | Path | None = None,
    config: str | Path | dict | TrainConfig | None = None,
    **overrides: Any,
) -> RunResult:
    """Cross-validated training and evaluation of a fusion method on a cache (path, ``Cache``,
    ``CacheData`` or :class:`FuseData`). Options: the fields of :class:`TrainConfig` (file < flags).
    Writes the run folder when ``out`` is given. Returns a :class:`RunResult`."""
    cfg = resolve_config(
        config,
        task=task,
        method=method,
        modalities=modalities,
        folds=folds,
        missing_rate=missing_rate,
        seed=seed,
        **overrides,
    )
    if not cfg.task:
        raise ValueError("no task given")
    entry = get_method(cfg.method)
    check_params(cfg.method, cfg.method_params)
    method_params = {**entry.defaults, **cfg.method_params}
    if out is not None:
        ensure_writable(Path(out))
    data = load_fuse_data(
        cache,
        cfg.task,
        cfg.modalities,
        device=cfg.device,
        allow_incomplete=cfg.allow_incomplete,
        in_memory=cfg.data_in_memory,
    )
    cfg.modalities = list(data.modalities)
    fingerprint = data_fingerprint(cache)
    combos = all_combinations(len(data.modalities))
    combo_names = [[n for n, k in zip(data.modalities, c, strict=True) if k] for c in combos]
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(
            json.dumps(
                json_safe(
                    {
                        **cfg.to_json(),
                        "method_params_resolved": method_params,
                        "n_rows": data.n,
                        "streamed_modalities": data.streamed,  # the features read from the cache, not memory
                        "cache": str(cache) if isinstance(cache, (str, Path)) else None,
                        "cache_fingerprint": fingerprint,
                    }
                ),
                indent=1,
            )
        )
    progress = make_progress() if cfg.progress else None
    if progress is not None:
        progress.start()
    results: list[FoldResult] = []
    try:
        for k, (train_rows, test_rows, val_rows) in enumerate(_splits(data, cfg)):
            fdata = fold_data(data, cfg.missing_rate, cfg.missing_mode, cfg.seed, 0, k)
            plan = FoldPlan(
                cfg.method,
                train_rows,
                test_rows,
                seed=run_seed(cfg.seed, 0, k),
                fold=k,
                params=dict(cfg.method_params),
                val_rows=val_rows,
                combos=combo_names,
            )
            run = run_fold(fdata, plan, cfg, progress=progress)
            fm = metrics.evaluate(run.y, run.overall, data.task_kind, n_boot=cfg.n_boot, seed=plan.seed)
            fm["by_combination"] = combination_metrics(run, data.modalities, combos, data.task_kind)
            fm["by_pattern"] = pattern_metrics(data, run)
            fm.update(
                {
                    "fold": k,
                    "best_epoch": run.best_epoch,
                    "best_epoch_is_last": any(run.best_is_last),
                    "val_auroc": run.best_val_auroc,
                    "n_train": run.n_train,
                    "n_val": run.n_val,
                    "n_test": int(len(run.test_rows)),
                    **_uncalibrated_metrics(run, data.task_kind),
                }
            )
            results.append(
                FoldResult(
                    k,
                    run.test_rows,
                    run.overall,
                    fm,
                    run.best_epoch,
                    run.best_val_auroc,
                    run.history,
                    run.records,
                    probs_raw=run.overall_raw,
                    temperature=list(run.temperature),
                )
            )
            if out_dir is not None and cfg.save_checkpoints:
                save_checkpoints(run, cfg, out_dir / f"fold{k}", data, method_params, fingerprint)
                save_training_stays(out_dir / f"fold{k}", data, train_rows)
    finally:
        if progress is not None:
            progress.stop()
    metrics_json = json_safe(
        {
            "task": data.task,
            "task_kind": data.task_kind,
            "method": cfg.method,
            "auprc_definition": "average precision (step-wise, scikit-learn's average_precision_score)",
            "combination_views": {
                "all_masked": "every test row, the modalities outside the combination masked",
                "complete": "the test rows holding every modality of the combination",
            },
            "calibration": "temperature scaling on each fold's inner validation split"
            if cfg.calibrate
            else "none (--no-calibrate)",
            "ece_definition": f"expected calibration error, {metrics.ECE_BINS} equal-width bins (binary: positive-"
            "class probability; multiclass: top-label confidence; multilabel: mean over labels)",
            "folds": [r.metrics for r in results],
            "mean": _mean_metrics([r.metrics for r in results]),
            **pooled_metrics(data, results),
            "history": [r.history for r in results],
        }
    )
    result = RunResult(out_dir, json_safe(cfg.to_json()), metrics_json, results)
    if out_dir is not None:
        _write_run(out_dir, data, results, metrics_json)
    return result


def write_predictions(path: Path, data: FuseData, results: list[FoldResult]) -> None:
    """CSV: stay_id, fold, the label(s), the score(s) (probabilities, calibrated when the run was) and the
    same before calibration (``score_uncalibrated``, ``score_uncalibrated_<class>``) of every test row."""
    C = data.num_outputs
    if data.task_kind == "binary":
        lab_cols, score_cols = ["label"], ["score"]
    else:
        lab_cols = ["label"] if data.task_kind == "multiclass" else [f"label_{c}" for c in data.classes]
        score_cols = [f"score_{c}" for c in data.classes]
    raw_cols = [c.replace("score", "score_uncalibrated", 1) for c in score_cols]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["stay_id", "fold", *lab_cols, *score_cols, *raw_cols])
        for r in results:
            y = data.labels_numpy(r.test_rows)
            raw = r.probs if r.probs_raw is None else r.probs_raw
            for i, row in enumerate(r.test_rows):
                labs = [int(y[i])] if data.task_kind == "multiclass" else [int(v) for v in y[i][:C]]
                scores = [f"{p:.6g}" for p in (*r.probs[i], *raw[i])]
                w.writerow([int(data.stay_id[row]), r.fold, *labs, *scores])


def grid(
    cache: Any,
    task: str | None = None,
    method: str | None = None,
    *,
    grid: dict[str, list] | None = None,
    config: str | Path | dict | TrainConfig | None = None,
    out: str | Path | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Cross-validated grid search over method parameters (by default OmniFuse's beta, alpha and lambdas, as
    the paper did). Each point trains all folds; the choice is by the mean over folds of the best **inner
    validation** AUROC (the test folds never choose). ``grid`` (or the TOML ``[grid]`` table) maps parameter
    names to value lists. Writes ``grid.json`` and ``grid.csv`` when ``out`` is given; returns
    ``{"best": params, "points": [...]}``."""
    if grid is None and isinstance(config, (str, Path)):
        grid = load_toml(config).get("grid")
    if grid is None:
        grid = {
            "beta": [0.25, 0.5, 1.0],
            "alpha": [0.05, 0.1, 0.5],
            "lambda_backward": [0.5, 1.0],
            "lambda_dwfuse": [1.0, 10.0],
            "lambda_tla": [0.1, 0.5, 1.0],
        }
    keys = list(grid)
    points = []
    base = resolve_config(config, task=task, method=method, **{k: v for k, v in overrides.items()})
    out_dir = Path(out) if out is not None else None
    for values in itertools.product(*(grid[k] for k in keys)):
        params = dict(zip(keys, values, strict=True))
        cfg = copy.deepcopy(base)
        cfg.method_params = {**cfg.method_params, **params}
        cfg.save_checkpoints = False
        res = train(cache, config=cfg)
        points.append(
            {"params": params, "val_auroc": res.mean_val_auroc, "test_auroc": res.metrics["mean"].get("auroc")}
        )
    valid = [p for p in points if p["val_auroc"] is not None and not math.isnan(p["val_auroc"])]
    best = max(valid, key=lambda p: p["val_auroc"])["params"] if valid else None
    summary = json_safe({"best": best, "selection": "mean inner-validation AUROC over folds", "points": points})
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "grid.json").write_text(json.dumps(summary, indent=1))
        with open(out_dir / "grid.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow([*keys, "val_auroc", "test_auroc"])
            for p in points:
                w.writerow([*(p["params"][k] for k in keys), p["val_auroc"], p["test_auroc"]])
    return summary


def results_table(result: RunResult | dict[str, Any]):
    """A short rich table of a run: per fold, mean and pooled out of fold: AUROC, AUPRC (average precision) with
    CIs, Brier score and ECE (before calibration in brackets), each fold's temperature and best epoch."""
    from rich.table import Table

    m = result.metrics if isinstance(result, RunResult) else result
    calibrated = any(t != 1.0 for fm in m["folds"] for t in fm.get("temperature") or [])
    t = Table(
        title=f"{m.get('method')} on {m.get('task')}",
        caption="Brier and ECE of the calibrated probabilities (before temperature scaling in brackets); pooled: "
        "every fold's test predictions scored together"
        if calibrated
        else None,
    )
    for col in ("fold", "n test", "AUROC [95% CI]", "AUPRC (AP) [95% CI]", "Brier", "ECE", "T", "best epoch"):
        t.add_column(col)

    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}"

    def both(d: dict[str, Any], key: str, raw: Any = None) -> str:
        """The value, and in brackets the one before calibration when the run was calibrated."""
        raw = d.get(f"{key}_uncalibrated") if raw is None else raw
        return f"{f(d.get(key))} ({f(raw)})" if calibrated and raw is not None else f(d.get(key))

    def temp(v: list[float] | None) -> str:
        if not v:
            return "-"
        return f"{v[0]:.2f}" if len(v) == 1 else f"{min(v):.2f}-{max(v):.2f}"

    for fm in m["folds"]:
        ci_a, ci_p = fm.get("auroc_ci") or [None, None], fm.get("auprc_ci") or [None, None]
        t.add_row(
            str(fm["fold"]),
            str(fm["n_test"]),
            f"{f(fm['auroc'])} [{f(ci_a[0])}, {f(ci_a[1])}]",
            f"{f(fm['auprc'])} [{f(ci_p[0])}, {f(ci_p[1])}]",
            both(fm, "brier"),
            both(fm, "ece"),
            temp(fm.get("temperature")),
            str(fm["best_epoch"]),
        )
    mean = m["mean"]
    t.add_row(
        "mean",
        "",
        f"{f(mean.get('auroc'))} ± {f(mean.get('auroc_std'))}",
        f"{f(mean.get('auprc'))} ± {f(mean.get('auprc_std'))}",
        both(mean, "brier"),
        both(mean, "ece"),
        "",
        "",
    )
    pooled, raw = m.get("pooled"), m.get("pooled_uncalibrated") or {}
    if pooled:
        t.add_row(
            "pooled",
            str(sum(fm["n_test"] for fm in m["folds"])),
            *(both(pooled, k, raw.get(k)) for k in ("auroc", "auprc", "brier", "ece")),
            "",
            "",
        )
    return t


def print_results(result: RunResult | dict[str, Any], console: Any = None) -> None:
    """Print :func:`results_table` (and the per-combination mean AUROC when there are several modalities)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    console.print(results_table(result))
    m = result.metrics if isinstance(result, RunResult) else result
    combos = m["mean"].get("by_combination") or {}
    if len(combos) > 1:
        t = Table(
            title="mean over folds, per modality combination (the other modalities masked)",
            caption="all test rows: every test row masked down to the combination (the paper's table 3); "
            "rows holding it: only the test rows that hold every modality of the combination",
        )
        t.add_column("combination")
        for view in ("all test rows", "rows holding it"):
            t.add_column(f"AUROC, {view}")
            t.add_column(f"AUPRC (AP), {view}")
        for name, views in combos.items():
            cells = []
            for view in ("all_masked", "complete"):
                v = views.get(view, {})
                cells += [f"{v.get('auroc', float('nan')):.3f}", f"{v.get('auprc', float('nan')):.3f}"]
            t.add_row(name, *cells)
        console.print(t)
