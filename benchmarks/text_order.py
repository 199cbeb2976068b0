"""Text batching on the eICU demo: the pipeline's order before (each block's texts by characters, every text
encoded) against now (``pipeline.text_batches``: each distinct text once, by token length), in one run.

    python benchmarks/text_order.py [--modalities history diagnosis exam] [--batch-size 32] [--device cpu]

The texts are the bundled eICU demo's, prepared as ``omnifuse extract --dataset eicu-demo`` prepares them
(MiniLM, mean pooling, 150 words, 256 tokens), in the store's blocks (2,048 rows for a pooled modality). For
each modality the two orders run one after the other on the same encoder; the table gives texts per second
(rows with a text, over the encoding's seconds, tokenising included), the share of the batches' tokens that
are text rather than padding, and the largest difference between the two embeddings of a row.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from omnifuse.cache.store import block_rows
from omnifuse.extract.datasets.base import Item
from omnifuse.extract.datasets.registry import build_adapter
from omnifuse.extract.encoders import TextEncoder, build_text_encoder
from omnifuse.extract.pipeline import text_batches, text_lengths


def by_characters(enc: TextEncoder, texts: list[str], batch: int) -> tuple[torch.Tensor, float]:
    """The order before: by characters, every text encoded; embeddings in input order, real-token share."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    lengths = text_lengths(enc, texts)
    out = torch.zeros(len(texts), enc.dim)
    real = padded = 0
    for a in range(0, len(order), batch):
        part = order[a : a + batch]
        x, _ = enc.encode([texts[i] for i in part])
        out[part] = x
        ls = [lengths[i] for i in part]
        real, padded = real + sum(ls), padded + max(ls) * len(ls)
    return out, real / padded


def by_tokens(enc: TextEncoder, texts: list[str], batch: int) -> tuple[torch.Tensor, float]:
    """The order now (``text_batches``)."""
    lengths = text_lengths(enc, texts)
    out = torch.zeros(len(texts), enc.dim)
    real = padded = 0
    for rows, x, _ in text_batches(enc, texts, batch):
        ls = [lengths[g[0]] for g in rows]
        real, padded = real + sum(ls), padded + max(ls) * len(ls)
        for j, group in enumerate(rows):
            out[group] = x[j]
    return out, real / padded


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--modalities", nargs="+", default=["history", "diagnosis", "exam"])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    adapter = build_adapter("eicu-demo")
    n = len(adapter.cohort())
    enc = build_text_encoder("minilm", pooling="mean", max_words=150, max_tokens=256, device=a.device)
    block = block_rows(enc.shape, "float16", n)
    print(f"{n} stays, blocks of {block} rows; MiniLM mean pooling, {enc.precision}, batch {a.batch_size}")
    head = f"{'modality':<10} {'texts':>6} {'distinct':>8} {'before/s':>9} {'now/s':>7} {'speed-up':>8}"
    print(head + f" {'text share before':>17} {'now':>5} {'max |diff|':>10}")
    for m in a.modalities:
        blocks = []
        for start in range(0, n, block):
            got = adapter.inputs(m, np.arange(start, min(start + block, n)))
            blocks.append([enc.prepare(it.value) for it in got if isinstance(it, Item)])
        texts = sum(len(b) for b in blocks)
        distinct = sum(len(set(b)) for b in blocks)
        rates, shares, outs = [], [], []
        for fn in (by_characters, by_tokens):
            t = time.perf_counter()
            res = [fn(enc, b, a.batch_size) for b in blocks if b]
            rates.append(texts / (time.perf_counter() - t))
            shares.append(float(np.mean([s for _, s in res])))
            outs.append(torch.cat([x for x, _ in res]))
        diff = float((outs[0] - outs[1]).abs().max())
        print(
            f"{m:<10} {texts:>6} {distinct:>8} {rates[0]:>9.1f} {rates[1]:>7.1f} {rates[1] / rates[0]:>8.2f} "
            f"{shares[0]:>17.3f} {shares[1]:>5.3f} {diff:>10.1e}",
            flush=True,
        )


if __name__ == "__main__":
    main()
