"""The stage-two trainer, generic over fusion methods (the hooks of :class:`omnifuse.fuse.base.FusionMethod`).

``train(cache, task, method, ...)`` runs patient-grouped k-fold cross-validation (or a split stored in the
cache): per fold a normaliser fitted on the fold's training rows, an inner validation split of those rows for
early stopping on validation AUROC, AdamW, the best state restored, the test fold evaluated (overall, per
modality combination, per natural presence pattern). The run folder receives ``config.json`` (resolved),
``metrics.json``, ``predictions.csv``, ``lazy_combinations.json`` and per fold ``fold<k>/model.safetensors``
with ``model.json`` and ``normalizer.json`` (never pickle).
"""

from __future__ import annotations

import copy
import csv
import itertools
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omnifuse.fuse import metrics as M
from omnifuse.fuse.base import Batch, FusionMethod, build_method, get_method
from omnifuse.fuse.config import TrainConfig, load_toml, resolve_config
from omnifuse.fuse.data import (FuseData, Normalizer, inner_split, load_fuse_data, make_folds, simulate_missing,
                                split_from_cache)
from omnifuse.fuse.dwfuse import probabilities
from omnifuse.fuse.tla import all_combinations, combination_name

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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def predict_probs(model: FusionMethod, data: FuseData, rows: np.ndarray, norm: Normalizer, batch_size: int,
                  mask: torch.Tensor | None = None) -> np.ndarray:
    """Probabilities [len(rows), C] of the fused output (eval mode, no gradient). ``mask`` [len(rows), M]
    may remove modalities (they are then imputed by methods that impute)."""
    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(rows), batch_size):
            r = rows[s:s + batch_size]
            b = data.batch(r, norm, None if mask is None else mask[s:s + batch_size])
            out.append(probabilities(model(b).logits, data.task_kind).float().cpu())
    if not out:
        return np.zeros((0, data.num_outputs), dtype=np.float32)
    return torch.cat(out).numpy()


def _labels(data: FuseData, rows: np.ndarray) -> np.ndarray:
    return data.labels_numpy(rows)


def _score(data: FuseData, rows: np.ndarray, probs: np.ndarray) -> float:
    return M.auroc(_labels(data, rows), probs, data.task_kind)


class Trainer:
    """One fold's training loop. Methods reach it in their hooks: ``epoch``, ``data``, ``train_rows``,
    ``normalizer``, ``device``, ``mining_batches()`` (fixed bounded subset of training rows, eval batches) and
    ``record(key, value)`` (logged per fold, e.g. TLA's lazy combination)."""

    def __init__(self, model: FusionMethod, data: FuseData, train_rows: np.ndarray, val_rows: np.ndarray,
                 normalizer: Normalizer, cfg: TrainConfig, seed: int, progress: Any = None, fold: int = 0) -> None:
        self.model, self.data, self.cfg = model, data, cfg
        self.train_rows, self.val_rows = train_rows, val_rows
        self.normalizer = normalizer
        self.device = data.device
        self.seed = seed
        self.fold = fold
        self.epoch = 0
        self.generator = torch.Generator().manual_seed(seed)
        self.records: dict[str, list] = {}
        self.history: list[dict[str, Any]] = []
        self._mining: list[Batch] | None = None
        self.progress = progress
        rng = np.random.default_rng(seed + 17)
        n = min(cfg.mining_rows, len(train_rows))
        self.mining_rows = np.sort(rng.choice(train_rows, size=n, replace=False)) if n else train_rows[:0]

    def record(self, key: str, value: Any) -> None:
        self.records.setdefault(key, []).append(value)

    def mining_batches(self) -> list[Batch]:
        if self._mining is None:
            bs = self.cfg.eval_batch_size
            self._mining = [self.data.batch(self.mining_rows[s:s + bs], self.normalizer)
                            for s in range(0, len(self.mining_rows), bs)]
        return self._mining

    def fit(self) -> tuple[int, float]:
        """Train with early stopping on validation AUROC; restores the best weights. Returns (best epoch,
        best validation AUROC)."""
        cfg, model = self.cfg, self.model
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                weight_decay=cfg.weight_decay)
        model.on_train_start(self)
        best_score, best_auroc, best_epoch, best_state, bad = -math.inf, math.nan, -1, None, 0
        # a method may declare that model selection (and patience) starts later (two-stage training)
        start = min(int(getattr(model, "selection_start_epoch", 0) or 0), max(cfg.epochs - 1, 0))
        task = None
        if self.progress is not None:
            task = self.progress.add_task(f"fold {self.fold}", total=cfg.epochs, info="")
        for epoch in range(cfg.epochs):
            self.epoch = epoch
            model.train()
            model.on_epoch_start(self, epoch)
            t0 = time.perf_counter()
            tot, nb, term_sums = 0.0, 0, {}
            for batch in self.data.iter_batches(self.train_rows, cfg.batch_size, self.normalizer, shuffle=True,
                                                generator=self.generator):
                batch = model.train_drop(batch, self.generator)
                out = model(batch)
                loss, terms = model.loss(batch, out)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"fold {self.fold} epoch {epoch}: non-finite loss {terms}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                model.after_backward(batch, out)
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                tot += float(loss.detach())
                nb += 1
                for k, v in terms.items():
                    term_sums[k] = term_sums.get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v)
            model.on_epoch_end(self, epoch)
            vp = predict_probs(model, self.data, self.val_rows, self.normalizer, cfg.eval_batch_size)
            val_auroc = _score(self.data, self.val_rows, vp)
            yv = _labels(self.data, self.val_rows)
            val_brier = M.brier(yv, vp, self.data.task_kind) if len(self.val_rows) else math.nan
            score = val_auroc if not math.isnan(val_auroc) else -val_brier
            rec = {"epoch": epoch, "loss": tot / max(nb, 1), "val_auroc": val_auroc, "val_brier": val_brier,
                   "seconds": time.perf_counter() - t0, **{f"loss_{k}": v / max(nb, 1) for k, v in term_sums.items()}}
            self.history.append(rec)
            if task is not None:
                self.progress.update(task, advance=1, info=f"loss {rec['loss']:.4f}  val AUROC {val_auroc:.4f}")
            if epoch < start:
                continue  # e.g. mdrop's contrastive stage: the classifier is not trained yet, nothing to select
            if score > best_score + 1e-6:
                best_score, best_auroc, best_epoch, bad = score, val_auroc, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad += 1
                if bad >= cfg.patience:
                    break
        if best_state is not None:
            model.load_state_dict(best_state)
        if task is not None:
            self.progress.update(task, completed=cfg.epochs)
        return best_epoch, best_auroc


def _combination_metrics(model: FusionMethod, data: FuseData, rows: np.ndarray, norm: Normalizer,
                         cfg: TrainConfig) -> dict[str, Any]:
    """Per modality combination: test rows holding every modality of it, masked down to it."""
    res: dict[str, Any] = {}
    have = data.mask[torch.as_tensor(rows, device=data.device)].cpu()
    y = _labels(data, rows)
    for combo in all_combinations(len(data.modalities)):
        c = torch.tensor(combo)
        sel = (have | ~c).all(1).numpy()
        if not sel.any():
            continue
        r = rows[sel]
        mask = c.unsqueeze(0).expand(len(r), -1).clone()
        p = predict_probs(model, data, r, norm, cfg.eval_batch_size, mask)
        res[combination_name(combo, data.modalities)] = {
            "n": int(sel.sum()), "auroc": M.auroc(y[sel], p, data.task_kind), "auprc": M.auprc(y[sel], p, data.task_kind)}
    return res


def _pattern_metrics(data: FuseData, rows: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """Test rows grouped by the modalities they actually hold, scored as they are."""
    have = data.mask[torch.as_tensor(rows, device=data.device)].cpu().numpy()
    y = _labels(data, rows)
    res = {}
    for pat in sorted({tuple(h) for h in have.tolist()}, key=lambda t: (-sum(t), t)):
        sel = (have == np.array(pat)).all(1)
        name = combination_name(pat, data.modalities) or "(none)"
        res[name] = {"n": int(sel.sum()), "auroc": M.auroc(y[sel], probs[sel], data.task_kind),
                     "auprc": M.auprc(y[sel], probs[sel], data.task_kind)}
    return res


def _save_checkpoint(model: FusionMethod, norm: Normalizer, cfg: TrainConfig, folder: Path, data: FuseData,
                     method_params: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    norm.save(folder / "normalizer.json")
    info = model.info
    (folder / "model.json").write_text(json.dumps({
        "method": cfg.method, "method_params": method_params, "task": data.task, "task_kind": info.task_kind,
        "classes": data.classes, "num_outputs": info.num_outputs,
        "modalities": [{"name": m.name, "kind": m.kind, "shape": list(m.shape)} for m in info.modalities],
        "raw_shapes": {n: list(data.raw_shape(n)) for n in data.modalities},
    }, indent=1))


def _json_safe(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_safe(v) for v in o]
    if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
        return None
    if isinstance(o, (np.floating, np.integer)):
        return _json_safe(o.item())
    return o


def _mean_metrics(folds: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for k in ("auroc", "auprc", "brier", "auroc_micro", "auprc_micro"):
        v = [f[k] for f in folds if k in f and f[k] is not None and not math.isnan(f[k])]
        if v:
            out[k] = float(np.mean(v))
            out[f"{k}_std"] = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
    return out


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
    cfg = resolve_config(config, task=task, method=method, modalities=modalities, folds=folds,
                         missing_rate=missing_rate, seed=seed, **overrides)
    if not cfg.task:
        raise ValueError("no task given")
    entry = get_method(cfg.method)
    method_params = {**entry.defaults, **cfg.method_params}
    data = load_fuse_data(cache, cfg.task, cfg.modalities, device=cfg.device)
    cfg.modalities = list(data.modalities)
    if cfg.missing_rate > 0:
        # one mask for the whole run, seeded by seed and rate: every method sees the same missingness
        data = data.with_mask(simulate_missing(data.natural_mask, cfg.missing_rate, cfg.missing_mode,
                                               data.modalities, seed=cfg.seed * 1000 + int(round(cfg.missing_rate * 100))))
    if cfg.split:
        tr, va, te = split_from_cache(data, cfg.split)
        splits = [(np.concatenate([tr, va]), te)]
        fixed_val = va if len(va) else None
    else:
        splits = make_folds(data, cfg.folds, seed=cfg.seed)
        fixed_val = None
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(
            _json_safe({**cfg.to_json(), "method_params_resolved": method_params, "n_rows": data.n,
                        "cache": str(cache) if isinstance(cache, (str, Path)) else None}), indent=1))
    progress = None
    if cfg.progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), TimeElapsedColumn())
        progress.start()
    results: list[FoldResult] = []
    try:
        for k, (train_rows, test_rows) in enumerate(splits):
            fseed = cfg.seed * 100 + k
            seed_everything(fseed)
            if fixed_val is not None:
                inner_tr, val = np.setdiff1d(train_rows, fixed_val), fixed_val
            else:
                inner_tr, val = inner_split(data, train_rows, cfg.val_fraction, seed=fseed)
            norm = Normalizer.fit(data, train_rows, embeddings=cfg.normalize_embeddings)
            info = data.model_info(norm)
            model = build_method(cfg.method, info, **cfg.method_params).to(data.device)
            trainer = Trainer(model, data, inner_tr, val, norm, cfg, seed=fseed, progress=progress, fold=k)
            best_epoch, best_val = trainer.fit()
            probs = predict_probs(model, data, test_rows, norm, cfg.eval_batch_size)
            y = _labels(data, test_rows)
            fm = M.evaluate(y, probs, data.task_kind, n_boot=cfg.n_boot, seed=fseed)
            fm["by_combination"] = _combination_metrics(model, data, test_rows, norm, cfg)
            fm["by_pattern"] = _pattern_metrics(data, test_rows, probs)
            fm.update({"fold": k, "best_epoch": best_epoch, "val_auroc": best_val, "n_train": int(len(inner_tr)),
                       "n_val": int(len(val)), "n_test": int(len(test_rows))})
            results.append(FoldResult(k, test_rows, probs, fm, best_epoch, best_val, trainer.history, trainer.records))
            if out_dir is not None and cfg.save_checkpoints:
                _save_checkpoint(model, norm, cfg, out_dir / f"fold{k}", data, method_params)
    finally:
        if progress is not None:
            progress.stop()
    metrics = {"task": data.task, "task_kind": data.task_kind, "method": cfg.method,
               "auprc_definition": "average precision (step-wise, scikit-learn's average_precision_score)",
               "folds": [r.metrics for r in results], "mean": _mean_metrics([r.metrics for r in results]),
               "history": [r.history for r in results]}
    # mean per combination over folds
    combos: dict[str, dict[str, list]] = {}
    for r in results:
        for name, v in r.metrics["by_combination"].items():
            for key in ("auroc", "auprc"):
                if v[key] is not None and not math.isnan(v[key]):
                    combos.setdefault(name, {}).setdefault(key, []).append(v[key])
    metrics["mean"]["by_combination"] = {n: {k: float(np.mean(v)) for k, v in d.items()} for n, d in combos.items()}
    metrics = _json_safe(metrics)
    result = RunResult(out_dir, _json_safe(cfg.to_json()), metrics, results)
    if out_dir is not None:
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
        write_predictions(out_dir / "predictions.csv", data, results)
        lazy = {f"fold{r.fold}": r.records.get("lazy_combination", []) for r in results}
        (out_dir / "lazy_combinations.json").write_text(json.dumps(_json_safe(lazy), indent=1))
    return result


def write_predictions(path: Path, data: FuseData, results: list[FoldResult]) -> None:
    """CSV: stay_id, fold, the label(s) and the score(s) (probabilities) of every test row."""
    C = data.num_outputs
    if data.task_kind == "binary":
        lab_cols, score_cols = ["label"], ["score"]
    else:
        lab_cols = ["label"] if data.task_kind == "multiclass" else [f"label_{c}" for c in data.classes]
        score_cols = [f"score_{c}" for c in data.classes]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["stay_id", "fold", *lab_cols, *score_cols])
        for r in results:
            y = _labels(data, r.test_rows)
            for i, row in enumerate(r.test_rows):
                labs = [int(y[i])] if data.task_kind == "multiclass" else [int(v) for v in y[i][:C]]
                w.writerow([int(data.stay_id[row]), r.fold, *labs, *(f"{p:.6g}" for p in r.probs[i])])


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
        grid = {"beta": [0.25, 0.5, 1.0], "alpha": [0.05, 0.1, 0.5], "lambda_backward": [0.5, 1.0],
                "lambda_dwfuse": [1.0, 10.0], "lambda_tla": [0.1, 0.5, 1.0]}
    keys = list(grid)
    points = []
    base = resolve_config(config, task=task, method=method, **{k: v for k, v in overrides.items()})
    out_dir = Path(out) if out is not None else None
    for values in itertools.product(*(grid[k] for k in keys)):
        params = dict(zip(keys, values))
        cfg = copy.deepcopy(base)
        cfg.method_params = {**cfg.method_params, **params}
        cfg.save_checkpoints = False
        res = train(cache, config=cfg)
        points.append({"params": params, "val_auroc": res.mean_val_auroc,
                       "test_auroc": res.metrics["mean"].get("auroc")})
    valid = [p for p in points if p["val_auroc"] is not None and not math.isnan(p["val_auroc"])]
    best = max(valid, key=lambda p: p["val_auroc"])["params"] if valid else None
    summary = _json_safe({"best": best, "selection": "mean inner-validation AUROC over folds", "points": points})
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
    """A short rich table of a run: per fold and mean AUROC, AUPRC (average precision) with CIs, Brier."""
    from rich.table import Table

    m = result.metrics if isinstance(result, RunResult) else result
    t = Table(title=f"{m.get('method')} on {m.get('task')}")
    for col in ("fold", "n test", "AUROC [95% CI]", "AUPRC (AP) [95% CI]", "Brier", "best epoch"):
        t.add_column(col)

    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}"

    for fm in m["folds"]:
        ci_a, ci_p = fm.get("auroc_ci") or [None, None], fm.get("auprc_ci") or [None, None]
        t.add_row(str(fm["fold"]), str(fm["n_test"]), f"{f(fm['auroc'])} [{f(ci_a[0])}, {f(ci_a[1])}]",
                  f"{f(fm['auprc'])} [{f(ci_p[0])}, {f(ci_p[1])}]", f(fm["brier"]), str(fm["best_epoch"]))
    mean = m["mean"]
    t.add_row("mean", "", f"{f(mean.get('auroc'))} ± {f(mean.get('auroc_std'))}",
              f"{f(mean.get('auprc'))} ± {f(mean.get('auprc_std'))}", f(mean.get("brier")), "")
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
        t = Table(title="mean over folds, per modality combination (others masked)")
        t.add_column("combination")
        t.add_column("AUROC")
        t.add_column("AUPRC (AP)")
        for name, v in combos.items():
            t.add_row(name, f"{v.get('auroc', float('nan')):.3f}", f"{v.get('auprc', float('nan')):.3f}")
        console.print(t)
