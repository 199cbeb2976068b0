"""Stage-one throughput on the CPU or a GPU: decoding alone, the bare encoder forward and the whole ``extract``.

    python benchmarks/extract.py [--device auto|cpu|cuda] [--images 128] [--jpegs 64] [--texts 96]
                                 [--batch-size 32] [--repeats 1] [--precision auto] [--num-workers N]
                                 [--jpeg-decoding auto|pil|both] [--skip-bert-base] [--markdown FILE]
    torchrun --nproc-per-node N benchmarks/extract.py --device cuda ...      # every rank one GPU

Rows, each on files the script writes:

- image, PNG: 512x512 8-bit grey PNGs through a random-init ResNet34 (the real architecture);
- image, CXR JPEG: 2544x3056 8-bit grey JPEGs of about 1.6 MB, the size of a MIMIC-CXR-JPG image (its
  377,110 JPEGs average about 1.5 MB); 16 distinct files, the others hard links to them. On a GPU where
  torchvision imports they are decoded by nvJPEG (``--jpeg-decoding auto``), by PIL in the worker processes
  with ``pil``; ``both`` gives one row of each;
- text: the real all-MiniLM-L6-v2 and a random-init BERT-base (the paper's size) on 60-200-word reports.

Columns, the same on every device (``items/s``):

- ``decode``: images only, the pipeline's own decoding (``pipeline.decoded_batches``: its DataLoader worker
  processes, or its background threads on a small CPU, and nvJPEG on a GPU) until the inputs are ready on the
  encoder's device, without the forward;
- ``forward``: the encoder's ``encode`` on inputs prepared beforehand (decoded images on the device, cycled
  when there are more than 2,048; texts truncated and in length order, as the pipeline batches them);
- ``end to end``: ``extract`` of a dataset of those inputs (``ListAdapter``: the files or reports in a list,
  no manifest to read; decoding, batching, the forward, cache writes and finalising the store), the only
  column that times the whole stage;
- ``ratio`` = end to end / forward, the issue's target for text being at least 0.9.

With ``--repeats R`` the forward and end-to-end runs alternate R times and the medians are printed. Under
torchrun every rank decodes and encodes its share of the inputs at the same time (the rates are all ranks'
items over the slowest rank's seconds) and ``extract`` runs once on all ranks, each writing its own blocks.
``run_benchmark`` (tests/extract/test_benchmark_extract.py) and ``format_table`` are the script without the
command line; ``benchmarks/gpu_check.sh`` runs it on a GPU machine.

On this workplace's GPU machines (no package index, at most 64 MiB carried per call) the script itself needs
only what they have (torch, torchvision, numpy, PIL, transformers, typer, rich) and Zarr for the stores
(zarr, numcodecs, donfig, google-crc32c: 9.3 MB of wheels, carried); its inputs are lists, not manifests
(``ListAdapter``), so it reads no table. ``gpu_check.sh --check-imports`` runs it here with polars and
pydicom blocked and checks every other import against the machines' packages. It passes: the dataset
registry lists the datasets from its declarations (``omnifuse/extract/datasets/registry.py``, ``DECLARED``)
and imports an adapter, and with it polars, only when a dataset is opened, so the pipeline imports without
polars (whose wheels, 54 MB, would not fit beside the 16 MB working tree and Zarr in one call).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist
from PIL import Image

from omnifuse.extract import pipeline
from omnifuse.extract.datasets.base import Cohort, InputKind, Item, RawModality, Skip
from omnifuse.extract.encoders import (
    ImageEncoder,
    TextEncoder,
    build_image_encoder,
    build_text_encoder,
    cpu_has_native_bf16,
)
from omnifuse.extract.pipeline import DECODE_THREADS, decoded_batches, default_num_workers, extract

WORDS = (  # noqa: SIM905 - a sentence is easier to read than a list
    "heart size normal mediastinal contours stable no focal consolidation pleural effusion pneumothorax "
    "mild pulmonary edema bibasilar atelectasis endotracheal tube terminates above carina nasogastric "
    "catheter courses below diaphragm right internal jugular line tip cavoatrial junction unchanged "
    "compared prior study opacity lower lobe concerning pneumonia aspiration cardiomegaly vascular "
    "congestion interstitial markings osseous structures intact degenerative changes thoracic spine"
).split()
CXR_SIZE = (2544, 3056)  # width, height of a MIMIC-CXR-JPG image
FORWARD_CYCLE = 2048  # distinct prepared images in the forward timing; more are cycled
COLUMNS = ("items", "decode/s", "forward/s", "end to end/s", "ratio")


@dataclass
class Row:
    """One line of the table: items per second of each stage (``decode`` is ``None`` for texts)."""

    label: str
    items: int
    decode: float | None
    forward: float
    end_to_end: float

    @property
    def ratio(self) -> float:
        return self.end_to_end / self.forward if self.forward > 0 else float("nan")


@dataclass
class Setup:
    """What the table's header line says: device, precisions, batch, decoding, ranks."""

    device: str
    precision: str
    batch_size: int
    workers: int
    threads: int
    world_size: int
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------- ranks


class Ranks:
    """This process's place under torchrun (rank 0 of 1 without it), with the few collectives the timing needs."""

    def __init__(self, device: torch.device) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.owns = False
        if self.world > 1 and not tdist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.owns = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            tdist.barrier()

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        tdist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        if self.world == 1:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.owns:
            tdist.destroy_process_group()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(ranks: Ranks, device: torch.device, fn: Callable[[], int]) -> float:
    """All ranks run ``fn`` (returning its items) at once: all items over the slowest rank's seconds."""
    ranks.barrier()
    _sync(device)
    t = time.perf_counter()
    n = fn()
    _sync(device)
    got = ranks.gather((n, time.perf_counter() - t))
    return sum(k for k, _ in got) / max(s for _, s in got)


# ------------------------------------------------------------------------------------------- inputs


def write_pngs(folder: Path, n: int, size: int = 512) -> list[Path]:
    """``n`` ``size`` x ``size`` 8-bit grey PNGs of noise (a worst case for PNG decoding): 16 distinct files,
    the others hard links to them."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i}.png" for i in range(n)]
    for p in paths[:16]:
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8), mode="L").save(p)
    _link_copies(paths, 16)
    return paths


def _link_copies(paths: list[Path], distinct: int) -> None:
    """``paths[distinct:]`` become hard links to the first ``distinct`` files, cycled (copies where the file
    system has no hard links)."""
    for i in range(distinct, len(paths)):
        if paths[i].exists():
            paths[i].unlink()
        try:
            os.link(paths[i % distinct], paths[i])
        except OSError:
            paths[i].write_bytes(paths[i % distinct].read_bytes())


def write_cxr_jpegs(folder: Path, n: int, size: tuple[int, int] = CXR_SIZE) -> list[Path]:
    """``n`` grey JPEGs of ``size`` (width, height; quality 95, about 1.6 MB at the default): a smooth random
    field plus sensor-like noise (sigma 2 grey levels), close in size, and so in decoding cost, to MIMIC-CXR-JPG
    images. 16 distinct files; the others are hard links to them (no disk, same bytes to read)."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i}.jpg" for i in range(n)]
    distinct = min(n, 16)
    for i in range(distinct):
        base = rng.normal(size=(24, 20))
        base = ((base - base.min()) / np.ptp(base) * 200 + 20).astype(np.uint8)
        smooth = np.asarray(Image.fromarray(base).resize(size, Image.Resampling.BICUBIC), np.float32)
        img = np.clip(smooth + rng.normal(0, 2, smooth.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img, mode="L").save(paths[i], quality=95)
    _link_copies(paths, distinct)
    return paths


def write_reports(n: int, seed: int = 1) -> list[str]:
    """``n`` reports of 60 to 200 words drawn from radiology vocabulary."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(60, 200)))) for _ in range(n)]


@dataclass
class ListAdapter:
    """One modality of ``values`` (image paths or report texts) as a dataset of stays 0..N-1, one patient each
    and no labels: the pipeline's adapter protocol (``omnifuse.extract.datasets.base``) without a manifest file,
    so that the benchmark reads no table (polars, which the GPU machines do not have, stays unimported)."""

    modality: str
    input: InputKind
    values: list[str]
    name: str = "benchmark"
    version: str = "1"

    def options(self) -> dict:
        return {"inputs": len(self.values)}

    def cohort(self) -> Cohort:
        n = len(self.values)
        return Cohort(np.arange(n, dtype=np.int64), np.asarray([f"p{i}" for i in range(n)], dtype=str))

    def modalities(self) -> list[RawModality]:
        return [RawModality(self.modality, self.input)]

    def inputs(self, modality: str, rows: np.ndarray) -> list[Item | Skip | None]:
        if modality != self.modality:
            raise KeyError(f"no modality {modality!r}; the benchmark's is {self.modality!r}")
        return [Item(self.values[int(i)]) for i in rows]


def _own_folder(ranks: Ranks, work: Path, label: str) -> Path:
    """A new folder under ``work`` for one row's manifest and stores (named after its label), the same on
    every rank: a store of another row is never resumed instead of encoded."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-")
    return Path(ranks.broadcast(tempfile.mkdtemp(prefix=f"{slug}-", dir=work) if ranks.main else None))


def _rows_per_block(n: int, world: int) -> int:
    """A power of two giving every rank at least four blocks (256 rows at most)."""
    return max(1, min(256, 1 << max(0, int(math.log2(max(1, n // (4 * world)))))))


@contextlib.contextmanager
def _jpeg_decoding(mode: str) -> Iterator[None]:
    """``pil``: the pipeline's GPU JPEG decoder switched off (JPEGs decoded by PIL in the workers)."""
    if mode != "pil":
        yield
        return
    orig = pipeline.gpu_jpeg_decoder
    pipeline.gpu_jpeg_decoder = lambda prep, device: None  # type: ignore[assignment]
    try:
        yield
    finally:
        pipeline.gpu_jpeg_decoder = orig  # type: ignore[assignment]


# ------------------------------------------------------------------------------------------- rows


def bench_images(
    work: Path,
    tag: str,
    paths: list[Path],
    enc: ImageEncoder,
    setup: Setup,
    ranks: Ranks,
    repeats: int,
    jpeg_mode: str = "auto",
) -> Row:
    """Decode, forward and end-to-end rates of ``paths`` through ``enc``."""
    n = len(paths)
    work = _own_folder(ranks, work, tag)
    adapter = ListAdapter("cxr", "image", [str(p) for p in paths])
    mine = paths[ranks.rank :: ranks.world]
    with _jpeg_decoding(jpeg_mode):
        jpeg = pipeline.gpu_jpeg_decoder(enc.prep, enc.device)
        kept: list[torch.Tensor] = []

        def decode() -> int:
            k = 0
            for idx, x, _ in decoded_batches(mine, enc, None, setup.batch_size, setup.workers, setup.threads, jpeg):
                k += len(idx)
                if x is not None and sum(t.shape[0] for t in kept) < FORWARD_CYCLE:
                    kept.append(x)
            return k

        r_decode = _timed(ranks, enc.device, decode)
        prepared = torch.cat(kept)[:FORWARD_CYCLE].to(enc.device)
        enc.encode(prepared[: setup.batch_size])  # warm-up (cuDNN's algorithm choice, lazy initialisation)

        def forward() -> int:
            b, m = setup.batch_size, len(mine)
            for a in range(0, m, b):
                k = a % len(prepared)
                enc.encode(prepared[k : k + min(b, m - a)])
            return m

        def end_to_end(k: int) -> int:
            extract(
                adapter,
                work / f"{k}.zarr",
                image_encoder=enc,
                batch_size=setup.batch_size,
                num_workers=setup.workers,
                decode_threads=setup.threads,
                rows_per_block=_rows_per_block(n, ranks.world),
                progress=False,
            )
            return n if ranks.main else 0

        f, e = _alternate(ranks, enc.device, forward, end_to_end, repeats)
    if jpeg is not None and ranks.main:
        setup.notes.append(f"{tag}: {dict(jpeg.counts)}")
    return Row(tag, n, r_decode, f, e)


def bench_text(
    work: Path, enc: TextEncoder, tag: str, n: int, setup: Setup, ranks: Ranks, repeats: int, text_batch: int
) -> Row:
    """Forward and end-to-end rates of ``n`` reports through ``enc``."""
    reports = write_reports(n)
    work = _own_folder(ranks, work, tag)
    adapter = ListAdapter("report", "text", reports)
    mine = sorted((enc.prepare(r) for r in reports[ranks.rank :: ranks.world]), key=len)  # as the pipeline does
    enc.encode(mine[:text_batch])  # warm-up

    def forward() -> int:
        for a in range(0, len(mine), text_batch):
            enc.encode(mine[a : a + text_batch])
        return len(mine)

    def end_to_end(k: int) -> int:
        extract(
            adapter,
            work / f"{k}.zarr",
            text_encoder=enc,
            batch_size=text_batch,
            rows_per_block=_rows_per_block(n, ranks.world),
            progress=False,
        )
        return n if ranks.main else 0

    f, e = _alternate(ranks, enc.device, forward, end_to_end, repeats)
    return Row(tag, n, None, f, e)


def _alternate(
    ranks: Ranks, device: torch.device, forward: Callable[[], int], end_to_end: Callable[[int], int], repeats: int
) -> tuple[float, float]:
    """Median rates of ``forward`` and ``end_to_end`` run alternately ``repeats`` times (the latter gets the
    round, for a new store each time)."""
    f, e = [], []
    for k in range(max(1, repeats)):
        f.append(_timed(ranks, device, forward))
        e.append(_timed(ranks, device, lambda k=k: end_to_end(k)))
    return statistics.median(f), statistics.median(e)


# ------------------------------------------------------------------------------------------- the run


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return (
        f"{caps.get('cpu_name', 'cpu')}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, native bf16: "
        f"{cpu_has_native_bf16()} (torch {torch.__version__})"
    )


def run_benchmark(
    device: str = "auto",
    images: int = 128,
    jpegs: int = 64,
    texts: int = 96,
    batch_size: int = 32,
    text_batch_size: int | None = None,
    repeats: int = 1,
    precision: str = "auto",
    num_workers: int | None = None,
    jpeg_decoding: str = "auto",
    skip_bert_base: bool = False,
    image_size: int = 224,
    png_size: int = 512,
    jpeg_size: tuple[int, int] = CXR_SIZE,
    work: str | Path | None = None,
    random_text_weights: bool = False,
) -> tuple[Setup, list[Row]]:
    """The benchmark: the table's header and rows (on every rank; rank 0's are the ones to print). ``work``: a
    folder for the files and stores (default a temporary one; under torchrun rank 0's, which every rank
    sees on one machine; the files written there are reused by later runs). ``random_text_weights``: MiniLM's
    architecture with seeded random weights (``build_text_encoder("minilm", pretrained=False)``), for
    machines without the weights package: the same speed, other embeddings."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda" and world > 1:
        device = f"cuda:{local}"
    img = build_image_encoder("random:resnet34", device=device, precision=precision, size=image_size)
    dev = img.device
    ranks = Ranks(dev)
    workers = default_num_workers(dev) if num_workers is None else num_workers
    setup = Setup(_device_name(dev), f"image {img.precision}", batch_size, workers, DECODE_THREADS, ranks.world)
    rows: list[Row] = []
    own = None
    try:
        if work is None:
            own = tempfile.TemporaryDirectory(prefix="omnifuse-bench-") if ranks.main else None
            work = ranks.broadcast(own.name if own is not None else None)
        assert work is not None
        w = Path(work)
        # stores and manifests of this run (a store left by an earlier run would be resumed, not encoded)
        stores = Path(ranks.broadcast(tempfile.mkdtemp(prefix="stores-", dir=w) if ranks.main else None))
        if images:
            d = w / f"png{png_size}"
            pngs = _written(ranks, lambda: write_pngs(d, images, png_size), d, images, "png")
            label = f"image: ResNet34, PNG {png_size}x{png_size}"
            rows.append(bench_images(stores, label, pngs, img, setup, ranks, repeats))
        if jpegs:
            d = w / f"jpg{jpeg_size[0]}x{jpeg_size[1]}"
            cxr = _written(ranks, lambda: write_cxr_jpegs(d, jpegs, jpeg_size), d, jpegs, "jpg")
            gpu = jpeg_decoding != "pil" and pipeline.gpu_jpeg_decoder(img.prep, dev) is not None
            modes = ["auto", "pil"] if jpeg_decoding == "both" and gpu else [jpeg_decoding]
            for mode in modes:
                how = "nvJPEG" if gpu and mode != "pil" else "PIL"
                label = f"image: ResNet34, JPEG {jpeg_size[0]}x{jpeg_size[1]}, {how}"
                rows.append(bench_images(stores, label, cxr, img, setup, ranks, repeats, mode))
        tb = text_batch_size or batch_size
        rnd = " (random weights)" if random_text_weights else ""
        if texts:
            mini = build_text_encoder("minilm", device=dev, precision=precision, pretrained=not random_text_weights)
            setup.precision += f", text {mini.precision}"
            rows.append(
                bench_text(
                    stores, mini, f"text: MiniLM-L6{rnd}, {mini.max_tokens} tok", texts, setup, ranks, repeats, tb
                )
            )
            if not skip_bert_base:
                from transformers import BertConfig, BertModel

                torch.manual_seed(0)
                bert = TextEncoder(
                    BertModel(BertConfig(), add_pooling_layer=False),
                    mini.tokenizer,
                    "random:bert-base",
                    device=dev,
                    precision=precision,
                )
                n = max(8, texts // 3)
                rows.append(
                    bench_text(stores, bert, f"text: BERT-base, {bert.max_tokens} tok", n, setup, ranks, repeats, tb)
                )
        ranks.barrier()
        if ranks.main:
            shutil.rmtree(stores, ignore_errors=True)
    finally:
        if own is not None:
            own.cleanup()
        ranks.close()
    return setup, rows


def _written(ranks: Ranks, write: Callable[[], list[Path]], folder: Path, n: int, ext: str) -> list[Path]:
    """Rank 0 writes the files unless an earlier run in the same ``--work`` folder did (``.done-N`` marker),
    the others wait and list them."""
    marker = folder / f".done-{n}"
    if ranks.main and not marker.exists():
        write()
        marker.write_text("")
    ranks.barrier()
    return [folder / f"{i}.{ext}" for i in range(n)]


def format_table(setup: Setup, rows: list[Row], markdown: bool = False) -> str:
    """The table: one line per row, the columns ``COLUMNS``, the same on every device."""
    head = (
        f"device: {setup.device}; ranks {setup.world_size}; precision: {setup.precision}; batch {setup.batch_size}; "
        f"decoding workers per rank {setup.workers} (threads {setup.threads} when none)"
    )
    if markdown:
        lines = [head, "", "| inputs | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
        for r in rows:
            dec = f"{r.decode:.1f}" if r.decode is not None else "-"
            lines.append(f"| {r.label} | {r.items} | {dec} | {r.forward:.1f} | {r.end_to_end:.1f} | {r.ratio:.2f} |")
    else:
        lines = [
            head,
            f"{'inputs':<44} {COLUMNS[0]:>6} {COLUMNS[1]:>9} {COLUMNS[2]:>10} {COLUMNS[3]:>13} {COLUMNS[4]:>6}",
        ]
        for r in rows:
            dec = f"{r.decode:>9.1f}" if r.decode is not None else f"{'-':>9}"
            lines.append(f"{r.label:<44} {r.items:>6} {dec} {r.forward:>10.1f} {r.end_to_end:>13.1f} {r.ratio:>6.2f}")
    lines += [f"decoded: {note}" for note in setup.notes]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    ap.add_argument("--images", type=int, default=128, help="PNG images (0: skip the row)")
    ap.add_argument("--jpegs", type=int, default=64, help="CXR-sized JPEGs (0: skip the rows)")
    ap.add_argument("--texts", type=int, default=96, help="MiniLM reports; BERT-base gets a third of them")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--text-batch-size", type=int, default=None, help="default: --batch-size")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    ap.add_argument("--num-workers", type=int, default=None, help="default: the pipeline's default_num_workers")
    ap.add_argument("--jpeg-decoding", default="auto", choices=("auto", "pil", "both"))
    ap.add_argument("--skip-bert-base", action="store_true")
    ap.add_argument("--work", default=None, help="folder for the files and stores (default: a temporary one)")
    ap.add_argument("--markdown", default=None, help="also write the table as Markdown to this file")
    ap.add_argument("--random-text-weights", action="store_true", help="MiniLM's architecture, random weights")
    a = ap.parse_args()
    setup, rows = run_benchmark(
        a.device,
        a.images,
        a.jpegs,
        a.texts,
        a.batch_size,
        a.text_batch_size,
        a.repeats,
        a.precision,
        a.num_workers,
        a.jpeg_decoding,
        a.skip_bert_base,
        work=a.work,
        random_text_weights=a.random_text_weights,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print("\n" + format_table(setup, rows), flush=True)
        if a.markdown:
            Path(a.markdown).write_text(format_table(setup, rows, markdown=True) + "\n")


if __name__ == "__main__":
    main()
