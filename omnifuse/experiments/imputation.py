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

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as Fn

from omnifuse.experiments import figures as F
from omnifuse.experiments.compare import study_config, train_options
from omnifuse.experiments.report import Section, StudyResult, fnum, write_config, write_study
from omnifuse.experiments.runner import RunSpec, StudyError, build_context, freeze_params, resolve_method, run_all
from omnifuse.fuse.data import FuseData, Normalizer


def _probe_rows(data: FuseData, rows: np.ndarray, j: int, max_rows: int) -> np.ndarray:
    have = data.mask[torch.as_tensor(rows, device=data.device)].cpu().numpy()
    ok = have[:, j] & (np.delete(have, j, axis=1).any(axis=1) if have.shape[1] > 1 else False)
    return rows[ok][:max_rows]


@torch.no_grad()
def _pairs(model: Any, data: FuseData, rows: np.ndarray, norm: Normalizer, j: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(true v_m [n, d], imputed v'_m [n, d]) of modality j on ``rows`` (model in eval mode)."""
    full = data.batch(rows, norm)
    v_true = model.encode(full)[:, j]
    mask = full.mask.clone()
    mask[:, j] = False
    out = model(full.with_mask(mask))
    return v_true, out.extra["v_prime"][:, j]


def measure_imputation(model: Any, data: FuseData, rows: np.ndarray, norm: Normalizer, max_rows: int = 512,
                       ) -> dict[str, dict[str, float]]:
    """``{"cos": {m: mean cos(v'_m, v_m)}, "cos_miss": {m: mean cos(v^miss_m, v_m)}, "n": {m: rows}}``."""
    if getattr(model, "cra_fw", None) is None:
        raise StudyError("the imputation study needs OmniFuse with forward imputation (imp_fw=True)")
    was = model.training
    model.eval()
    res: dict[str, dict[str, float]] = {"cos": {}, "cos_miss": {}, "n": {}}
    try:
        with torch.no_grad():
            miss = model.missing_embeddings(data.device)
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


def attach_imputation_probe(model: Any, data: FuseData, rows: np.ndarray, norm: Normalizer,
                            records: list[dict[str, Any]], max_rows: int = 512) -> None:
    """Make ``model`` append :func:`measure_imputation` of ``rows`` to ``records`` before training (epoch -1)
    and after every epoch (wrapping its ``on_train_start`` / ``on_epoch_end`` hooks on this instance)."""
    start, end = model.on_train_start, model.on_epoch_end

    def on_train_start(trainer: Any) -> None:
        start(trainer)
        records.append({"epoch": -1, **measure_imputation(model, data, rows, norm, max_rows)})

    def on_epoch_end(trainer: Any, epoch: int) -> None:
        end(trainer, epoch)
        records.append({"epoch": epoch, **measure_imputation(model, data, rows, norm, max_rows)})

    model.on_train_start = on_train_start
    model.on_epoch_end = on_epoch_end


def final_embeddings(model: Any, data: FuseData, rows: np.ndarray, norm: Normalizer, max_rows: int = 400,
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


def tsne_maps(emb: dict[str, np.ndarray], modalities: list[str], seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
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
        z = TSNE(n_components=2, perplexity=float(min(30, max(2, (2 * n - 1) // 3))), init="pca", random_state=seed,
                 ).fit_transform(np.concatenate([a, b]).astype(np.float64))
        maps[m] = (z[:n], z[n:])
    return maps


def imputation(
    cache: Any,
    task: str,
    folds: int = 5,
    fold: int = 0,
    seed: int = 0,
    out: str | Path = "experiments/imputation",
    epochs: int | None = None,
    progress: bool = True,
    method_overrides: dict[str, dict[str, Any]] | None = None,
    *,
    modalities: list[str] | None = None,
    max_rows: int = 512,
    tsne_rows: int = 300,
    options: dict[str, Any] | None = None,
    threads: int | None = None,
    print_table: bool = True,
) -> StudyResult:
    """Train OmniFuse on fold ``fold`` of ``folds`` and follow its imputation of every modality across epochs
    (figure 7: imputation.png) and map real against imputed embeddings (figure 8: tsne.png, t-SNE of at
    most ``tsne_rows`` test rows per modality). ``epochs`` run in full (early stopping off: patience =
    epochs) so the curve covers them all. Writes config.json, results.csv/json/md; prints the table.

    ``threads``: torch threads of the run (None: torch's setting).

    Measured on the eICU demo cache on 2 CPU cores shared with other jobs, 1 thread, 30 epochs: 9.7 min wall
    (112 CPU s).
    """
    t0 = time.perf_counter()
    out = Path(out)
    opts = train_options(epochs, options)
    opts.setdefault("patience", opts.get("epochs", 30))
    ctx = build_context(cache, task, modalities=modalities, folds=folds, seed=seed, combinations="full", out=out,
                        train_options=opts)
    if not 0 <= fold < folds:
        raise StudyError(f"fold must be in 0..{folds - 1}, got {fold}")
    if len(ctx.modalities) < 2:
        raise StudyError("the imputation study needs at least two modalities")
    base, params = resolve_method("omnifuse", method_overrides)
    params.update({"imp_fw": True})
    config = study_config("imputation", cache, task, ctx, fold=fold, method_params=params, max_rows=max_rows,
                          tsne_rows=tsne_rows)
    write_config(out, config)
    spec = RunSpec(label="omnifuse", method=base, params=freeze_params(params), fold=fold, record_imputation=True)
    stats = run_all(ctx, [spec], out, threads=threads, progress=progress)
    folder = stats.folders[spec]
    import json

    run = json.loads((folder / "run.json").read_text())
    recs = run["imputation"]
    with np.load(folder / "embeddings.npz") as z:
        emb = {k: z[k][:tsne_rows] for k in z.files}
    val = [h.get("val_auroc") for h in run["history"]]
    val = [np.nan if v is None else v for v in val]
    figs = [F.imputation_curve(out / "imputation.png", recs, ctx.modalities, val,
                               title="Imputed vs true embeddings across epochs (figure 7)")]
    maps = tsne_maps(emb, ctx.modalities, seed)
    figs.append(F.tsne_figure(out / "tsne.png", maps, title="t-SNE of real and imputed embeddings (figure 8)"))
    summary, table = [], []
    for r in recs:
        for m in ctx.modalities:
            if m in r["cos"]:
                summary.append({"epoch": r["epoch"], "modality": m, "n": r["n"][m], "cos_imputed": r["cos"][m],
                                "cos_missing_placeholder": r["cos_miss"][m]})
    last = recs[-1]
    first = recs[0]
    for m in ctx.modalities:
        if m in last["cos"]:
            table.append([m, str(last["n"][m]), fnum(first["cos"][m]), fnum(last["cos"][m]), fnum(last["cos_miss"][m])])
    sections = [Section(f"Cosine similarity of imputed to true embeddings (fold {fold} test rows holding the modality "
                        "and another)", ["modality", "rows", "before training", f"after epoch {last['epoch']}",
                                         "placeholder v^miss"], table)]
    res = StudyResult(out=out, config=config, summary=summary, folds=[{"epoch": h["epoch"], "val_auroc": h.get("val_auroc"),
                                                                     "loss": h.get("loss")} for h in run["history"]],
                      sections=sections, figures=figs, runs_trained=stats.trained, runs_reused=stats.reused,
                      seconds=time.perf_counter() - t0, extra={"imputation": recs})
    return write_study(res, print_table, title=f"imputation: {task}")
