"""``omnifuse experiment imputation``: how close the CRA's imputed embeddings come to the true ones (the
paper's figures 7 and 8).

On the test rows of one fold, for each modality m: the rows holding m and at least one other modality are
encoded with m present (the true embedding ``v_m = e_m(x_m)``, eq. 1) and again with m masked (the forward
CRA's imputation ``v'_m``, eq. 4-5); their cosine similarity, averaged over rows, is measured before training
(epoch -1) and after every epoch, beside the similarity of the placeholder without imputation (``v^miss_m``,
the encoder's output for an empty input, eq. 2-3) and the validation AUROC (figure 7). After training, a
t-SNE map (scikit-learn) of the true and imputed embeddings of each modality (figure 8).
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as Fn

from omnifuse.experiments import figures
from omnifuse.experiments.config import ImputationConfig, study_config
from omnifuse.experiments.report import Section, StudyResult, fnum, write_config
from omnifuse.experiments.runner import (
    RunSpec,
    StudyError,
    finish_study,
    freeze_params,
    method_params,
    run_study,
    study_context,
    study_record,
)
from omnifuse.fuse.data import FuseData, Normalizer
from omnifuse.fuse.fold import FoldRun
from omnifuse.fuse.methods.omnifuse import OmniFuse
from omnifuse.fuse.trainer import Trainer
from omnifuse.utils import save_arrays


def _probe_rows(data: FuseData, rows: np.ndarray, j: int, max_rows: int) -> np.ndarray:
    have = data.mask[torch.as_tensor(rows, device=data.device)].cpu().numpy()
    ok = have[:, j] & (np.delete(have, j, axis=1).any(axis=1) if have.shape[1] > 1 else False)
    return rows[ok][:max_rows]


@torch.no_grad()
def _pairs(
    model: OmniFuse, data: FuseData, rows: np.ndarray, norm: Normalizer, j: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(true v_m [n, d], imputed v'_m [n, d]) of modality j on ``rows`` (model in eval mode)."""
    full = data.batch(rows, norm)
    v_true = model.encode(full)[:, j]
    mask = full.mask.clone()
    mask[:, j] = False
    out = model(full.with_mask(mask))
    return v_true, out.extra["v_prime"][:, j]


def measure_imputation(
    model: Any,
    data: FuseData,
    rows: np.ndarray,
    norm: Normalizer,
    max_rows: int = 512,
) -> dict[str, dict[str, float]]:
    """``{"cos": {m: mean cos(v'_m, v_m)}, "cos_miss": {m: mean cos(v^miss_m, v_m)}, "n": {m: rows}}``."""
    if not isinstance(model, OmniFuse) or not model.use_imp_fw:
        raise StudyError("the imputation study needs OmniFuse with forward imputation (imp_fw=True)")
    was = model.training
    model.eval()
    res: dict[str, dict[str, float]] = {"cos": {}, "cos_miss": {}, "n": {}}
    try:
        with torch.no_grad():
            miss = model.missing_embeddings(data.device, data.tokens_mask)  # its step-masked series by name
            for j, m in enumerate(data.modalities):
                r = _probe_rows(data, rows, j, max_rows)
                if r.size == 0:
                    continue
                vt, vp = _pairs(model, data, r, norm, j)
                res["cos"][m] = float(Fn.cosine_similarity(vp, vt, dim=1).mean())
                res["cos_miss"][m] = float(Fn.cosine_similarity(miss[j].expand_as(vt), vt, dim=1).mean())
                res["n"][m] = int(r.size)
    finally:
        model.train(was)
    return res


class ImputationProbe:
    """A run probe (:class:`omnifuse.experiments.runner.RunProbe`): :func:`measure_imputation` of the run's test
    rows before training (epoch -1) and after every epoch, and at the end the real and imputed embeddings
    (``embeddings.npz``, :func:`final_embeddings`)."""

    def __init__(self, spec: RunSpec, test_rows: np.ndarray, max_rows: int = 512) -> None:
        self.rows, self.max_rows = test_rows, max_rows
        self.records: list[dict[str, Any]] = []

    def _measure(self, trainer: Trainer, epoch: int) -> None:
        self.records.append(
            {
                "epoch": epoch,
                **measure_imputation(trainer.model, trainer.data, self.rows, trainer.normalizer, self.max_rows),
            }
        )

    def on_train_start(self, trainer: Trainer) -> None:
        self._measure(trainer, -1)

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> None:
        self._measure(trainer, epoch)

    def finish(self, run: FoldRun, data: FuseData, folder: Path) -> dict[str, Any]:
        save_arrays(folder / "embeddings.npz", final_embeddings(run.model, data, self.rows, run.normalizer))
        return {"imputation": self.records}


def final_embeddings(
    model: OmniFuse,
    data: FuseData,
    rows: np.ndarray,
    norm: Normalizer,
    max_rows: int = 400,
) -> dict[str, np.ndarray]:
    """``real_<m>`` and ``imputed_<m>`` [n, d] float32 of the trained model on ``rows`` (at most ``max_rows``)."""
    out: dict[str, np.ndarray] = {}
    model.eval()
    for j, m in enumerate(data.modalities):
        r = _probe_rows(data, rows, j, max_rows)
        if r.size == 0:
            continue
        vt, vp = _pairs(model, data, r, norm, j)
        out[f"real_{m}"] = vt.float().cpu().numpy()
        out[f"imputed_{m}"] = vp.float().cpu().numpy()
    return out


def tsne_maps(
    emb: dict[str, np.ndarray], modalities: list[str], seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per modality, a joint 2-D t-SNE of the real and imputed embeddings -> (real [n, 2], imputed [n, 2])."""
    from sklearn.manifold import TSNE

    maps = {}
    for m in modalities:
        if f"real_{m}" not in emb:
            continue
        a, b = emb[f"real_{m}"], emb[f"imputed_{m}"]
        n = a.shape[0]
        if n < 5:
            continue
        z = TSNE(
            n_components=2,
            perplexity=float(min(30, max(2, (2 * n - 1) // 3))),
            init="pca",
            random_state=seed,
        ).fit_transform(np.concatenate([a, b]).astype(np.float64))
        maps[m] = (z[:n], z[n:])
    return maps


def imputation(cache: Any, task: str | None = None, *, config: Any = None, **overrides: Any) -> StudyResult:
    """Train OmniFuse on fold ``fold`` of ``folds`` and follow its imputation of every modality across epochs
    (figure 7: imputation.png) and map real against imputed embeddings (figure 8: tsne.png, t-SNE of at
    most ``tsne_rows`` test rows per modality). Options: :class:`ImputationConfig`. The epochs run in full
    (early stopping off unless ``options`` sets ``patience``) so the curve covers them all. Writes config.json,
    results.csv/json/md; prints the table.

    Measured on the eICU demo cache on 2 CPU cores shared with other jobs, 1 thread, 30 epochs: 9.7 min wall
    (112 CPU s).
    """
    t0 = time.perf_counter()
    cfg = study_config(ImputationConfig, config, task=task, **overrides)
    out, fold = Path(cfg.out), cfg.fold
    cfg.options.setdefault("patience", cfg.train_options().get("epochs", 30))
    ctx = study_context(cache, cfg, combinations="full")
    if len(ctx.modalities) < 2:
        raise StudyError("the imputation study needs at least two modalities")
    params = {**method_params("omnifuse", cfg.method_overrides), "imp_fw": True}
    record = study_record("imputation", cache, ctx, cfg, method_params=params)
    write_config(out, record)
    spec = RunSpec(label="omnifuse", method="omnifuse", params=freeze_params(params), fold=fold)
    stats = run_study(ctx, [spec], cfg, probe=functools.partial(ImputationProbe, max_rows=cfg.max_rows))
    folder = stats.folders[spec]
    run = json.loads((folder / "run.json").read_text())
    recs = run["imputation"]
    with np.load(folder / "embeddings.npz") as z:
        emb = {k: z[k][: cfg.tsne_rows] for k in z.files}
    val = [h.get("val_auroc") for h in run["history"]]
    val = [np.nan if v is None else v for v in val]
    figs = [
        figures.imputation_curve(
            out / "imputation.png",
            recs,
            ctx.modalities,
            val,
            title="Imputed vs true embeddings across epochs (figure 7)",
        )
    ]
    maps = tsne_maps(emb, ctx.modalities, cfg.seed)
    figs.append(figures.tsne_figure(out / "tsne.png", maps, title="t-SNE of real and imputed embeddings (figure 8)"))
    summary, table = [], []
    for r in recs:
        for m in ctx.modalities:
            if m in r["cos"]:
                summary.append(
                    {
                        "epoch": r["epoch"],
                        "modality": m,
                        "n": r["n"][m],
                        "cos_imputed": r["cos"][m],
                        "cos_missing_placeholder": r["cos_miss"][m],
                    }
                )
    last = recs[-1]
    first = recs[0]
    for m in ctx.modalities:
        if m in last["cos"]:
            table.append([m, str(last["n"][m]), fnum(first["cos"][m]), fnum(last["cos"][m]), fnum(last["cos_miss"][m])])
    sections = [
        Section(
            f"Cosine similarity of imputed to true embeddings (fold {fold} test rows holding the modality and another)",
            ["modality", "rows", "before training", f"after epoch {last['epoch']}", "placeholder v^miss"],
            table,
        )
    ]
    return finish_study(
        "imputation",
        cfg,
        record,
        stats,
        t0,
        (
            summary,
            [{"epoch": h["epoch"], "val_auroc": h.get("val_auroc"), "loss": h.get("loss")} for h in run["history"]],
            sections,
            figs,
        ),
        extra={"imputation": recs},
    )
