"""Store size and read/write time of a 20,000-row cache with the DESIGN.md shapes.

Shapes: image [512] float16 (ResNet34 pool), report pooled [768] float16 (BERT), EHR [24, 76] float32
(48 h at 2 h bins, raw discretised values plus masks). About 30 % of images and reports missing.
Prints a table. Usage: python benchmarks/cache_io.py [--rows 20000] [--out /tmp/bench_cache.zarr]
"""

from __future__ import annotations

import argparse
import os
import shutil
import time

import numpy as np

from omnifuse.cache import CacheSpec, CacheWriter, ModalitySpec, TaskSpec, load_cache
from omnifuse.cache.info import _dir_size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--out", default="/tmp/omnifuse_bench_cache.zarr")
    ap.add_argument("--per-token", action="store_true", help="store reports as [150, 768] tokens instead")
    args = ap.parse_args()
    n = args.rows
    rng = np.random.default_rng(0)
    report = (ModalitySpec("report", "sequence", (150, 768)) if args.per_token
              else ModalitySpec("report", "vector", (768,)))
    spec = CacheSpec("bench", "1", [ModalitySpec("cxr", "vector", (512,)), report,
                                    ModalitySpec("ehr", "timeseries", (24, 76), dtype="float32")],
                     tasks=[TaskSpec("mortality", "binary", ["died"])])
    if os.path.exists(args.out):
        shutil.rmtree(args.out)
    t0 = time.perf_counter()
    w = CacheWriter.create(args.out, spec, np.arange(n), np.array([str(i // 3) for i in range(n)]))
    for m in spec.modalities:
        for s, e in w.pending_blocks(m.name):
            r = e - s
            # ReLU-like embeddings (non-negative, as a ResNet pool is); EHR: values with many repeats
            x = np.abs(rng.normal(size=(r, *m.shape))).astype(np.float32)
            mask = rng.random(r) > (0.0 if m.name == "ehr" else 0.3)
            tm = None
            if m.kind == "sequence":
                lens = rng.integers(20, 150, r)
                tm = np.arange(150)[None, :] < lens[:, None]
            w.write_block(m.name, s, e, x, mask, tm)
    w.write_labels("mortality", rng.random(n) < 0.12, np.ones(n, bool))
    w.finalize()
    t_write = time.perf_counter() - t0
    size = _dir_size(args.out)
    reads = []
    for _ in range(3):
        t0 = time.perf_counter()
        d = load_cache(args.out)
        reads.append(time.perf_counter() - t0)
    nbytes = sum(m.x.nbytes for m in d.modalities.values())
    print(f"| rows | report | store on disk | in memory | write | full read (best of 3) |")
    print(f"|---|---|---|---|---|---|")
    print(f"| {n:,} | {'tokens 150x768' if args.per_token else 'pooled 768'} | {size / 1e6:.1f} MB | "
          f"{nbytes / 1e6:.1f} MB | {t_write:.2f} s | {min(reads):.2f} s |")


if __name__ == "__main__":
    main()
