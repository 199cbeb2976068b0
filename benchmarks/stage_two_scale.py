"""Stage two at MIMIC size: one epoch of a method on a synthetic cache of K stays, features in memory and
streamed from the cache, with the wall time and the peak resident memory of each.

The cache (written with the real :class:`omnifuse.cache.CacheWriter`, so its chunks are those of an extraction)
holds K stays of: ``report``, per-token text embeddings [150, 768] float16 (what the text encoders write; 80 %
of stays present, 100 to 150 valid tokens, the padding zero), ``ehr``, a time series [24, 76] float32 (about
20 % of its values NaN, not observed), and a binary label ``mortality`` that both modalities carry a weak
signal of. Token values are Gaussian noise plus that signal, cast to float16: about as incompressible as real
BERT outputs, so reading them costs what reading a real cache costs.

Each (K, path) runs in a fresh process: ``load_fuse_data(in_memory=...)``, then one fold (a 20 % grouped
hold-out) through :func:`omnifuse.fuse.fold.run_fold` with one epoch: the normaliser, the training epoch,
validation on the inner split, calibration and the test predictions. The table gives the load time, the
epoch (training and validation, the trainer's own timing), the whole fold, the validation and test AUROC
(the same on both paths: the batches are the same) and the peak RSS (``ru_maxrss``) of the process.

    python benchmarks/stage_two_scale.py --dir /work/tmp_scale --k 20000 73000 --stream-only-from 50000 \\
        --method concat --threads 2          # writes DIR/k<K>.zarr, removes it afterwards unless --keep
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TOKENS, DIM, STEPS, FEATURES = 150, 768, 24, 76


def generate(path: Path, k: int, seed: int = 0) -> float:
    """Write the synthetic cache of ``k`` stays to ``path``; returns the seconds it took."""
    from omnifuse.cache import CacheSpec, CacheWriter, ModalitySpec, TaskSpec

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    z = rng.normal(size=k).astype(np.float32)
    y = (z + rng.normal(size=k) > 1.2).astype(np.float32)[:, None]
    spec = CacheSpec(
        "scale-bench",
        "1",
        [
            ModalitySpec("report", "sequence", (TOKENS, DIM)),
            ModalitySpec("ehr", "timeseries", (STEPS, FEATURES), dtype="float32"),
        ],
        tasks=[TaskSpec("mortality", "binary", ["died"])],
    )
    subjects = np.array([str(i // 2) for i in range(k)])
    w = CacheWriter.create(path, spec, np.arange(k, dtype=np.int64), subjects, overwrite=True)
    w.write_labels("mortality", y, np.ones(k, dtype=bool))
    present = rng.random(k) < 0.8
    w_rep = rng.normal(size=DIM).astype(np.float32) * 0.3
    for a, b in w.pending_blocks("report"):
        n = b - a
        lengths = rng.integers(100, TOKENS + 1, n)
        tm = (np.arange(TOKENS)[None, :] < lengths[:, None]) & present[a:b, None]
        x = rng.standard_normal((n, TOKENS, DIM), dtype=np.float32)
        x += z[a:b, None, None] * w_rep[None, None, :]
        x *= tm[:, :, None]
        w.write_block("report", a, b, x=x.astype(np.float16), mask=present[a:b], tokens_mask=tm)
    w_ehr = rng.normal(size=FEATURES).astype(np.float32) * 0.3
    for a, b in w.pending_blocks("ehr"):
        n = b - a
        x = rng.standard_normal((n, STEPS, FEATURES), dtype=np.float32) + z[a:b, None, None] * w_ehr[None, None, :]
        x[rng.random(x.shape) < 0.2] = np.nan
        w.write_block("ehr", a, b, x=x, mask=np.ones(n, dtype=bool))
    w.finalize()
    return time.perf_counter() - t0


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_one(cache: Path, path: str, method: str, threads: int, batch_size: int) -> dict:
    """One fold, one epoch, in this process (see the module docstring)."""
    import torch

    from omnifuse.fuse.config import resolve_config
    from omnifuse.fuse.data import load_fuse_data, make_folds
    from omnifuse.fuse.fold import FoldPlan, run_fold, run_seed

    torch.set_num_threads(threads)
    c0, t0 = time.process_time(), time.perf_counter()
    data = load_fuse_data(cache, "mortality", device="cpu", in_memory="yes" if path == "memory" else "no")
    t_load = time.perf_counter() - t0
    cfg = resolve_config(
        None, task="mortality", method=method, epochs=1, folds=1, batch_size=batch_size, progress=False, device="cpu"
    )
    train_rows, test_rows = make_folds(data, 1, seed=0)[0]
    plan = FoldPlan(method, train_rows, test_rows, seed=run_seed(0), combos=())
    t1 = time.perf_counter()
    run = run_fold(data, plan, cfg)
    t_fold = time.perf_counter() - t1
    from omnifuse.fuse import metrics

    decoded = sum(data.x[n].reader.chunks_decoded for n in data.streamed)  # type: ignore[union-attr]
    return {
        "streamed": data.streamed,
        "load_s": t_load,
        "epoch_s": float(run.history[0]["seconds"]),
        "fold_s": t_fold,
        "cpu_s": time.process_time() - c0,  # every thread of the process: training and reading
        "val_auroc": float(run.best_val_auroc),
        "test_auroc": float(metrics.auroc(run.y, run.overall, data.task_kind)),
        "n_train": run.n_train,
        "chunks_decoded": decoded,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, help="folder for the synthetic caches")
    ap.add_argument("--k", type=int, nargs="+", default=[20000])
    ap.add_argument("--stream-only-from", type=int, default=50000, help="K from which only streaming runs")
    ap.add_argument("--method", default="concat")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--keep", action="store_true", help="keep the caches")
    ap.add_argument("--one", nargs=2, metavar=("CACHE", "PATH"), help=argparse.SUPPRESS)  # the child process
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(Path(args.one[0]), args.one[1], args.method, args.threads, args.batch_size)))
        return
    if args.dir is None:
        ap.error("--dir is required")
    args.dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for k in args.k:
        cache = args.dir / f"k{k}.zarr"
        t_gen = generate(cache, k) if not (cache / "zarr.json").exists() else float("nan")
        size = _dir_bytes(cache) / 1024**3
        print(f"K = {k}: cache {size:.1f} GiB on disk, written in {t_gen:.0f} s", flush=True)
        paths = ["streaming"] if k >= args.stream_only_from else ["memory", "streaming"]
        for path in paths:
            cmd = [sys.executable, __file__, "--one", str(cache), path, "--method", args.method]
            cmd += ["--threads", str(args.threads), "--batch-size", str(args.batch_size)]
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            if out.returncode != 0:
                print(out.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"K = {k}, {path}: the run failed")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append((k, path, size, r))
            print(f"  {path}: {r}", flush=True)
        if not args.keep:
            shutil.rmtree(cache)
    print()
    print(f"{args.method}, one epoch, batch {args.batch_size}, {args.threads} threads, CPU")
    print()
    print(
        "| K stays | path | cache on disk | load | epoch (train + val) | whole fold | CPU, all threads | "
        "val / test AUROC | peak RSS |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for k, path, size, r in rows:
        print(
            f"| {k:,} | {path} | {size:.1f} GiB | {r['load_s']:.0f} s | {r['epoch_s']:.0f} s | {r['fold_s']:.0f} s | "
            f"{r['cpu_s']:.0f} s | {r['val_auroc']:.4f} / {r['test_auroc']:.4f} | {r['peak_rss_gib']:.2f} GiB |"
        )


if __name__ == "__main__":
    main()
