"""Stage-two speed: seconds per epoch and per full OmniFuse run on a synthetic cache with the design's shapes.

Shapes (MIMIC, DESIGN.md): CXR image [512] float16, EHR [24, 76] float32 (48 h at 2 h bins, NaN gaps),
report either pooled [768] float16 ("pooled") or per token [150, 768] float16 with a token mask
("per-token", about 4.6 GB at 20,000 stays). A full run is one fold: normaliser, training for ``--epochs``
epochs (TLA mining after each, on ``mining_rows`` training rows, 7 combinations), validation each epoch, and
the test evaluation (overall, 7 combinations, bootstrap CIs). Prints a table.

    python benchmarks/train.py --n 20000 --epochs 10 --threads 2 [--per-token] [--device cuda]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from omnifuse.cache.reader import CacheData, LabelData, ModalityData
from omnifuse.cache.schema import CacheSpec, ModalitySpec, TaskSpec


def synthetic(n: int, per_token: bool, L: int = 150, seed: int = 0) -> CacheData:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 4)).astype(np.float32)
    y = (z[:, 0] + 0.5 * rng.normal(size=n) > 1.0).astype(np.float32)[:, None]

    def emb(dim: int) -> np.ndarray:
        return (z @ rng.normal(size=(4, dim)).astype(np.float32) + rng.normal(size=(n, dim)).astype(np.float32))

    mods, specs = {}, []
    m_img, m_rep = rng.random(n) < 0.6, rng.random(n) < 0.6
    img = np.where(m_img[:, None], emb(512), 0).astype(np.float16)
    mods["img"] = ModalityData("img", "vector", img, m_img)
    specs.append(ModalitySpec("img", "vector", (512,)))
    if per_token:
        rep = np.zeros((n, L, 768), dtype=np.float16)
        lengths = rng.integers(10, L + 1, n)
        tm = (np.arange(L)[None, :] < lengths[:, None]) & m_rep[:, None]
        base = emb(768).astype(np.float16)
        for s in range(0, n, 1000):
            blk = base[s:s + 1000, None, :] + rng.normal(size=(min(1000, n - s), L, 768)).astype(np.float16)
            rep[s:s + 1000] = np.where(tm[s:s + 1000, :, None], blk, 0)
        mods["rep"] = ModalityData("rep", "sequence", rep, m_rep, tokens_mask=tm)
        specs.append(ModalitySpec("rep", "sequence", (L, 768)))
    else:
        mods["rep"] = ModalityData("rep", "vector", np.where(m_rep[:, None], emb(768), 0).astype(np.float16), m_rep)
        specs.append(ModalitySpec("rep", "vector", (768,)))
    ehr = (emb(76)[:, None, :] + rng.normal(size=(n, 24, 76)).astype(np.float32)).astype(np.float32)
    ehr[rng.random(ehr.shape) < 0.3] = np.nan
    mods["ehr"] = ModalityData("ehr", "timeseries", ehr, np.ones(n, bool), preprocessing={"continuous": list(range(12))})
    specs.append(ModalitySpec("ehr", "timeseries", (24, 76), dtype="float32"))
    task = TaskSpec("mortality", "binary", ["died"])
    return CacheData(np.arange(n, dtype=np.int64), np.array([f"p{i // 2}" for i in range(n)]), mods,
                     {"mortality": LabelData("mortality", "binary", ["died"], y, np.ones(n, bool))}, {}, {},
                     CacheSpec("bench", "0", specs, [task]), {})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--per-token", action="store_true")
    ap.add_argument("--tokens", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--d", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from rich.console import Console
    from rich.table import Table

    from omnifuse.fuse.train import train

    t0 = time.perf_counter()
    cd = synthetic(args.n, args.per_token, args.tokens)
    t_data = time.perf_counter() - t0
    t1 = time.perf_counter()
    r = train(cd, "mortality", "omnifuse", folds=1, epochs=args.epochs, patience=args.epochs + 1, device=args.device,
              batch_size=args.batch_size, progress=False, n_boot=200, method_params={"d": args.d})
    t_run = time.perf_counter() - t1
    h = r.folds[0].history
    per_epoch = float(np.mean([e["seconds"] for e in h]))
    n_params = None
    t = Table(title=f"OmniFuse stage two, {args.n} stays, {'per-token' if args.per_token else 'pooled'} reports, "
                    f"{args.device}, {args.threads} threads")
    for c in ("epochs", "s / epoch (train + TLA mining)", "s full run (1 fold, incl. eval)", "s synthetic data",
              "test AUROC"):
        t.add_column(c)
    t.add_row(str(len(h)), f"{per_epoch:.1f}", f"{t_run:.1f}", f"{t_data:.1f}", f"{r.metrics['mean']['auroc']:.3f}")
    Console().print(t)
    del n_params


if __name__ == "__main__":
    main()
