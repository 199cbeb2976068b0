"""Stage one: adapter rows -> frozen encoders -> the Zarr feature cache (docs/internals.md, section 2).

``extract`` builds the ``CacheSpec`` from the adapter (cohort, modalities) and the encoders (ids, weights
hashes, preprocessing), creates the store or resumes it, and for every modality encodes the blocks this rank
has not written yet. A block is written (then marked done) as soon as all its rows are resolved, so a killed
run loses at most the blocks in flight. Inputs that exist but cannot be used (unreadable image, empty report,
mixed DICOM series...) are masked, logged by stay_id and reason (never report text) and counted; any
exception while reading or decoding one item masks that item only (``docs/guarantees.md``).

Resuming a store checks that it still describes the inputs: every row's input fingerprint
(``omnifuse.extract.inputs``) is compared with the one stored with it, and each done block holding a changed
row is encoded again; labels, references and splits that changed are rewritten. Raw array inputs go through
``omnifuse.extract.values`` (infinite, too large or implausible values masked and counted).

``add_modalities`` (``omnifuse extract --add-modality``) encodes only the named modalities into an existing
store, checked and planned by ``omnifuse.extract.addition``; the other modalities are not written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from omnifuse.cache import CacheError, CacheSpec, CacheWriter, ModalitySpec, store
from omnifuse.cache.meta import additions, group_meta, read_meta, renamed_additions
from omnifuse.extract import addition
from omnifuse.extract.config import ExtractConfig
from omnifuse.extract.datasets.base import Adapter, Cohort, Item, RawModality, Skip
from omnifuse.extract.distributed import DistContext, init_distributed
from omnifuse.extract.encoders import (
    FrozenEncoder,
    ImageEncoder,
    TextEncoder,
    VolumeEncoder,
    build_image_encoder,
    build_text_encoder,
    build_volume_encoder,
    resolve_device,
)
from omnifuse.extract.images import (
    GPU_DECODED,
    NVJPEG_FAILED,
    GpuJpegDecoder,
    ImagePreprocess,
    InputError,
    JpegFile,
    gpu_jpeg_decoder,
    load_image,
    read_jpeg,
)
from omnifuse.extract.inputs import input_hashes, stale_blocks
from omnifuse.extract.values import Checked, ValueGuard, check_ranges
from omnifuse.extract.volumes import volume_slices
from omnifuse.options import resolve, to_json
from omnifuse.utils import make_progress

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_SKIP_LOGS = 20  # per modality and reason; the rest go to DEBUG (the counts are in the summary)


# ------------------------------------------------------------------------------------------- summary


@dataclass
class ModalityReport:
    """One modality after extraction.

    The whole store: ``present``/``missing`` rows, ``skipped`` inputs by reason, ``values_masked`` cells by
    reason and ``masked_features`` (cells masked per feature). This run: blocks written, items encoded,
    ``rows_changed`` (rows whose input changed since the store was written) and ``blocks_reencoded``.
    """

    name: str
    input: str
    kind: str
    shape: tuple[int, ...]
    present: int = 0
    missing: int = 0
    blocks_written: int = 0
    blocks_already_done: int = 0
    items_encoded: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    values_masked: dict[str, int] = field(default_factory=dict)
    masked_features: dict[str, int] = field(default_factory=dict)
    rows_changed: int = 0
    blocks_reencoded: int = 0
    seconds: float = 0.0

    @property
    def items_per_s(self) -> float:
        return self.items_encoded / self.seconds if self.seconds > 0 else 0.0


@dataclass
class ExtractSummary:
    """What ``extract`` did: rows, per-modality coverage, skipped inputs and masked values counted by reason.

    ``changed``: rows of labels, references and splits that differed from the resumed store's (rewritten);
    ``seconds``: wall time of this run; ``added``: the modalities this run added to an existing store
    (``--add-modality``; ``modalities`` then holds only them).
    """

    out: Path
    rows: int
    modalities: dict[str, ModalityReport]
    resumed: bool
    finalized: bool
    world_size: int = 1
    seconds: float = 0.0
    changed: dict[str, int] = field(default_factory=dict)
    added: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> dict[str, dict[str, int]]:
        return {m: dict(r.skipped) for m, r in self.modalities.items() if r.skipped}

    @property
    def values_masked(self) -> dict[str, dict[str, int]]:
        return {m: dict(r.values_masked) for m, r in self.modalities.items() if r.values_masked}

    def to_json(self) -> dict[str, Any]:
        out = {
            "rows": self.rows,
            "resumed": self.resumed,
            "world_size": self.world_size,
            "seconds": round(self.seconds, 3),
            "changed": dict(self.changed),
            "modalities": {
                m: {**asdict(r), "shape": list(r.shape), "items_per_s": round(r.items_per_s, 3)}
                for m, r in self.modalities.items()
            },
        }
        if self.added:
            out["added"] = list(self.added)
        return out

    def render(self) -> Any:
        """A rich table: modality, coverage, items encoded this run, items/s, skips and masked values."""
        from rich.table import Table

        title = f"extracted {self.rows} rows into {self.out} in {self.seconds:.1f} s"
        if self.added:
            title = f"added {', '.join(self.added)} ({self.rows} rows) to {self.out} in {self.seconds:.1f} s"
        elif self.resumed:
            changed = sum(r.rows_changed for r in self.modalities.values())
            title += f" (resumed; {changed} rows with changed inputs re-encoded)" if changed else " (resumed)"
        t = Table(title=title)
        cols = ("modality", "input", "shape", "present", "coverage", "encoded now", "items/s", "skipped", "masked")
        for col in cols:
            t.add_column(col, justify="left" if col in ("modality", "input", "skipped", "masked") else "right")
        for r in self.modalities.values():
            cov = f"{100.0 * r.present / self.rows:.1f}%" if self.rows else "-"
            skips = ", ".join(f"{k}: {v}" for k, v in sorted(r.skipped.items())) or "-"
            masked = ", ".join(f"{k}: {v} values" for k, v in sorted(r.values_masked.items())) or "-"
            t.add_row(
                r.name,
                r.input,
                "x".join(map(str, r.shape)),
                str(r.present),
                cov,
                str(r.items_encoded),
                f"{r.items_per_s:.1f}",
                skips,
                masked,
            )
        return t


# ------------------------------------------------------------------------------------- data loading


class _FileDataset(Dataset):
    """Decodes image files (``[3, S, S]``) or volumes (``[s, 3, S, S]``) in DataLoader workers.

    Returns ``(index, tensor)`` or ``(index, reason)`` for an unusable input. With ``jpeg_bytes`` (images
    decoded on the GPU) a JPEG nvJPEG can decode is only read: ``(index, JpegFile)``; any other image is
    decoded here, ``(index, _CpuDecoded)`` saying why.
    """

    def __init__(
        self, paths: list[Any], prep: ImagePreprocess, volume: VolumeEncoder | None, jpeg_bytes: bool = False
    ) -> None:
        self.paths = paths
        self.prep = prep
        self.max_slices = volume.max_slices if volume is not None else 0
        self.window = volume.window if volume is not None else None
        self.is_volume = volume is not None
        self.jpeg_bytes = jpeg_bytes and volume is None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        """One decoded input, or a short reason. Any exception (a decompression bomb, a decoder bug, memory)
        masks this item only: the reason names the exception's type, never its message."""
        try:
            if self.is_volume:
                return i, volume_slices(self.paths[i], self.prep, self.max_slices, self.window)
            if self.jpeg_bytes:
                got = read_jpeg(self.paths[i])
                if isinstance(got, JpegFile):
                    return i, got
                return i, _CpuDecoded(load_image(self.paths[i], self.prep), got)
            return i, load_image(self.paths[i], self.prep)
        except InputError as e:
            return i, str(e)
        except Exception as e:  # noqa: BLE001 - per-item isolation: one bad file never stops the extraction
            return i, f"unreadable {'volume' if self.is_volume else 'image'} ({type(e).__name__})"


def _collate_images(batch: list[tuple[int, torch.Tensor | str]]) -> tuple[list[int], torch.Tensor | None, list]:
    ok = [(i, t) for i, t in batch if isinstance(t, torch.Tensor)]
    bad = [(i, t) for i, t in batch if not isinstance(t, torch.Tensor)]
    x = torch.stack([t for _, t in ok], 0) if ok else None
    return [i for i, _ in ok], x, bad


@dataclass(frozen=True)
class _CpuDecoded:
    """An image decoded by PIL where the GPU decodes JPEGs, and why (``read_jpeg``'s reason)."""

    x: torch.Tensor
    why: str


@dataclass
class _JpegBatch:
    """A batch where the GPU decodes JPEGs: images decoded by PIL (``idx``, ``x`` [b, 3, S, S], ``why`` for
    each), JPEGs read but not decoded (``jpeg_idx``, ``jpegs``) and unusable inputs ``bad`` (index, reason)."""

    idx: list[int]
    x: torch.Tensor | None
    why: list[str]
    jpeg_idx: list[int]
    jpegs: list[JpegFile]
    bad: list[tuple[int, str]]

    def pin_memory(self) -> _JpegBatch:
        """The same batch in page-locked memory (the DataLoader's pinning thread calls this): the copies to
        the GPU (``non_blocking``) and nvJPEG's reads of the bytes then need no staging copy."""
        x = self.x.pin_memory() if self.x is not None else None
        jpegs = [JpegFile(f.data.pin_memory(), f.height, f.width) for f in self.jpegs]
        return _JpegBatch(self.idx, x, self.why, self.jpeg_idx, jpegs, self.bad)


def _collate_jpegs(batch: list[tuple[int, Any]]) -> _JpegBatch:
    cpu = [(i, t) for i, t in batch if isinstance(t, _CpuDecoded)]
    jpegs = [(i, t) for i, t in batch if isinstance(t, JpegFile)]
    bad = [(i, t) for i, t in batch if isinstance(t, str)]
    x = torch.stack([t.x for _, t in cpu], 0) if cpu else None
    return _JpegBatch(
        [i for i, _ in cpu], x, [t.why for _, t in cpu], [i for i, _ in jpegs], [t for _, t in jpegs], bad
    )


def _collate_volumes(batch: list[tuple[int, torch.Tensor | str]]) -> tuple[list[int], list[torch.Tensor], list]:
    ok = [(i, t) for i, t in batch if isinstance(t, torch.Tensor)]
    bad = [(i, t) for i, t in batch if not isinstance(t, torch.Tensor)]
    return [i for i, _ in ok], [t for _, t in ok], bad


def default_num_workers(device: torch.device) -> int:
    """Image-decoding DataLoader workers of this process.

    The cores are shared by the ranks torchrun starts on the node (``LOCAL_WORLD_SIZE``). On a GPU, decoding
    limits the rate (a 1.6 MB chest X-ray JPEG takes about 25 ms on one core, a ResNet34 forward a small
    fraction of that on the GPU), so all of this rank's cores but one decode, at most 16. On the CPU the
    encoder needs the cores: on 2 cores a worker process decoding beside the forward was no faster than
    decoding inline, so none (``_thread_batches`` decodes there instead); with more cores, at most half of
    those beyond the first two, at most 4.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        local_ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local_ranks = 1
    cpus = max(1, cpus // local_ranks)
    if device.type == "cuda":
        return max(1, min(16, cpus - 1))
    return max(0, min(4, (cpus - 2) // 2))


# background decoding threads when there are no worker processes: on 2 cores, 4 threads decoded no faster
# than 2, and 1 slower than decoding inline
DECODE_THREADS = 2


def _lowest_priority() -> None:
    """Run the calling thread at nice 19 (Linux sets niceness per thread; elsewhere this does nothing)."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


class _Items(Protocol):
    """What ``_thread_batches`` decodes from: ``len`` and items by index (``_FileDataset``)."""

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> Any: ...


def _thread_batches(ds: _Items, batch_size: int, collate: Any, threads: int, ahead: int = 2) -> Iterator[Any]:
    """Batches of ``ds`` in order, decoded by ``threads`` background threads at the lowest CPU priority.

    For the CPU encoder, which keeps every core busy: at nice 19 the decoding takes only the time the
    encoder's threads leave idle between and inside its operations, and while the encoder waits for a batch
    the threads decode at full speed on all cores. Measured on 2 cores with 1.6 MB chest X-ray JPEGs, a
    nice-19 decoding thread beside the ResNet34 forward decoded 7.7 images/s while the forward kept its
    15.1 images/s. Up to ``ahead`` batches are decoded beyond the one being encoded; ``_FileDataset`` returns
    every per-item error as a reason, an exception raised by ``ds`` itself surfaces here.
    """
    n = len(ds)
    starts = iter(range(0, n, batch_size))
    queue: deque[list[Future]] = deque()
    ex = ThreadPoolExecutor(threads, thread_name_prefix="omnifuse-decode", initializer=_lowest_priority)

    def submit() -> None:
        a = next(starts, None)
        if a is not None:
            queue.append([ex.submit(ds.__getitem__, i) for i in range(a, min(a + batch_size, n))])

    try:
        for _ in range(ahead + 1):
            submit()
        while queue:
            futures = queue.popleft()
            submit()
            yield collate([f.result() for f in futures])
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------------------- the blocks


class _Block:
    """Rows [start, stop) of one modality being filled, with each row's input fingerprint and the block's
    counts (skips and masked values by reason), which are stored with it."""

    def __init__(self, start: int, stop: int, spec: ModalitySpec) -> None:
        n = stop - start
        self.start, self.stop = start, stop
        # in the store's dtype (float16 embeddings): half the memory of a float32 block, and the writer's cast
        # becomes a plain copy; a value beyond float16's range becomes inf and the row is masked before writing
        dtype = np.dtype(spec.dtype)
        if spec.kind in ("tabular", "timeseries"):
            self.x = np.full((n, *spec.shape), np.nan, dtype=dtype)
        else:
            self.x = np.zeros((n, *spec.shape), dtype=dtype)
        self.mask = np.zeros(n, dtype=bool)
        self.tokens_mask = np.zeros((n, spec.shape[0]), dtype=bool) if spec.has_tokens_mask else None
        self.provenance = np.full(n, -1, dtype=np.int8) if spec.provenance_codes else None
        self.input_hash = np.zeros(n, dtype=np.uint64)
        self.counts: dict[str, Counter[str]] = {"skipped": Counter(), "values_masked": Counter()}
        self.remaining = n

    def resolve(self, offset: int) -> None:
        self.remaining -= 1


def _merge(into: dict[str, int], counts: Counter[str] | dict[str, int]) -> None:
    for k, v in counts.items():
        into[k] = into.get(k, 0) + int(v)


class _Run:
    """State shared by the modality passes of one extraction."""

    def __init__(self, writer: CacheWriter, stay_id: np.ndarray, progress: Any, show: bool) -> None:
        self.writer = writer
        self.stay_id = stay_id
        self.progress = progress
        self.show = show
        self.logged: Counter = Counter()

    def _log(self, name: str, key: str, row: int, message: str) -> None:
        """Log one masked input by stay id: the first ``MAX_SKIP_LOGS`` per modality and key as warnings."""
        self.logged[(name, key)] += 1
        count = self.logged[(name, key)]
        level = logging.WARNING if count <= MAX_SKIP_LOGS else logging.DEBUG
        log.log(level, "%s: stay_id %d %s", name, int(self.stay_id[row]), message)
        if count == MAX_SKIP_LOGS + 1:
            log.warning("%s: further %r messages are logged at DEBUG level only", name, key)

    def skip(self, report: ModalityReport, block: _Block, off: int, reason: str) -> None:
        """Row ``off`` of ``block`` is masked for ``reason`` (short, never report text)."""
        _merge(report.skipped, {reason: 1})
        block.counts["skipped"][reason] += 1
        self._log(report.name, reason, block.start + off, f"masked: {reason}")

    def masked(self, report: ModalityReport, block: _Block, off: int, checked: Checked) -> None:
        """Cells of row ``off`` set to NaN (or the row skipped) by the value checks, counted and logged."""
        if not checked.masked:
            return
        _merge(report.values_masked, checked.masked)
        _merge(report.masked_features, checked.features)
        block.counts["values_masked"].update(checked.masked)
        block.counts.setdefault("masked_features", Counter()).update(checked.features)
        reasons = "; ".join(f"{n} {r}" for r, n in sorted(checked.masked.items()))
        features = ", ".join(sorted(checked.features))
        self._log(report.name, "values masked", block.start + off, f"values masked: {reasons} ({features})")

    def add_total(self, task: Any, n: int) -> None:
        if self.show and n:
            t = self.progress.tasks[task]
            self.progress.update(task, total=(t.total or 0) + n)

    def flush(self, spec: ModalitySpec, blocks: dict[int, _Block], report: ModalityReport) -> None:
        """Write every block whose rows are all resolved (with its input fingerprints and counts). A present
        embedding with a non-finite value (an encoder overflow) is masked and counted first."""
        for k in [k for k, b in blocks.items() if b.remaining == 0]:
            b = blocks.pop(k)
            if spec.kind in ("vector", "sequence"):
                bad = b.mask & ~np.isfinite(b.x.reshape(len(b.mask), -1)).all(axis=1)
                for off in np.flatnonzero(bad).tolist():
                    b.mask[off] = False
                    self.skip(report, b, off, "non-finite embedding")
            counts = {key: dict(sorted(c.items())) for key, c in b.counts.items() if c}
            self.writer.write_block(
                spec.name,
                b.start,
                b.stop,
                x=b.x,
                mask=b.mask,
                tokens_mask=b.tokens_mask,
                provenance=b.provenance,
                input_hash=b.input_hash,
                counts=counts,
            )
            report.blocks_written += 1


def _inputs(adapter: Adapter, name: str, start: int, stop: int) -> list[Item | Skip | None]:
    rows = np.arange(start, stop, dtype=np.int64)
    got = adapter.inputs(name, rows)
    if len(got) != len(rows):
        raise RuntimeError(f"adapter {adapter.name!r} returned {len(got)} inputs of {name!r} for {len(rows)} rows")
    return got


@dataclass
class _Pass:
    """One modality's pass over its pending blocks: the run, the adapter, the modality (its spec and the
    adapter's input kind), its report, its progress task and ``source``, the adapter's name for the modality
    (the spec's, unless it was added under another name)."""

    run: _Run
    adapter: Adapter
    spec: ModalitySpec
    input: str
    report: ModalityReport
    task: Any
    source: str

    def prepare(self, pending: list[tuple[int, int]]) -> tuple[dict[int, _Block], list[tuple[int, int, Item]]]:
        """Blocks to fill and the present items ``(block, offset, item)``; missing and skipped rows resolved,
        every row's input fingerprint recorded."""
        blocks: dict[int, _Block] = {}
        work: list[tuple[int, int, Item]] = []
        for start, stop in pending:
            b = _Block(start, stop, self.spec)
            blocks[start] = b
            got = _inputs(self.adapter, self.source, start, stop)
            b.input_hash[:] = input_hashes(self.input, got)
            for off, it in enumerate(got):
                if it is None:
                    b.resolve(off)
                elif isinstance(it, Skip):
                    self.skip(b, off, it.reason)
                elif isinstance(it, Item):
                    work.append((start, off, it))
                else:
                    raise TypeError(
                        f"adapter returned {type(it).__name__} for {self.spec.name!r}; expected Item, Skip or None"
                    )
        self.run.add_total(self.task, len(work))
        return blocks, work

    def skip(self, b: _Block, off: int, reason: str) -> None:
        """Mask row ``off`` of ``b`` for ``reason`` and resolve it."""
        self.run.skip(self.report, b, off, reason)
        b.resolve(off)

    def store(self, b: _Block, off: int, it: Item, x: np.ndarray, tokens: np.ndarray | None = None) -> None:
        """Row ``off`` of ``b`` is present with features ``x`` (and ``tokens`` mask)."""
        b.x[off] = x
        if tokens is not None:
            assert b.tokens_mask is not None
            b.tokens_mask[off] = tokens
        b.mask[off] = True
        if b.provenance is not None and it.provenance is not None:
            if not 0 <= it.provenance < len(self.spec.provenance_codes or []):
                raise ValueError(f"provenance code {it.provenance} out of range for {self.spec.name!r}")
            b.provenance[off] = it.provenance
        b.resolve(off)

    def flush(self, blocks: dict[int, _Block]) -> None:
        self.run.flush(self.spec, blocks, self.report)

    def advance(self, n: int) -> None:
        if self.run.show and n:
            self.run.progress.advance(self.task, n)


def _run_arrays(p: _Pass, pending: list[tuple[int, int]]) -> None:
    """Array inputs pass through ``ValueGuard`` (masked and counted values) into the store unchanged.

    A variable-length time series (``ModalitySpec.variable_length``, shape (T, F)) takes items of shape (t, F),
    1 <= t <= T: the t steps are checked, zero-padded to T and stored with their step mask (t steps True)."""
    guard = ValueGuard(p.spec)
    T = p.spec.shape[0]
    for start, stop in pending:
        blocks, work = p.prepare([(start, stop)])
        b = blocks[start]
        for _, off, it in work:
            try:
                arr = np.asarray(it.value, dtype=np.float64)
            except Exception:  # noqa: BLE001 - per-item isolation: whatever the value is, only this row is masked
                p.skip(b, off, "array is not numeric")
                continue
            if p.spec.variable_length:
                if arr.ndim != 2 or arr.shape[1:] != p.spec.shape[1:] or not 1 <= arr.shape[0] <= T:
                    p.skip(b, off, f"array shape {arr.shape} is not (1..{T}, {p.spec.shape[1]})")
                    continue
            elif arr.shape != p.spec.shape:
                p.skip(b, off, f"array shape {arr.shape} != {p.spec.shape}")
                continue
            checked = guard.check(arr)
            p.run.masked(p.report, b, off, checked)
            if checked.skip is not None:
                p.skip(b, off, checked.skip)
                continue
            if p.spec.variable_length:
                values = np.zeros(p.spec.shape)
                values[: arr.shape[0]] = checked.values
                p.store(b, off, it, values, np.arange(T) < arr.shape[0])
            else:
                p.store(b, off, it, checked.values)
            p.report.items_encoded += 1
        p.flush(blocks)
        p.advance(len(work))


def text_lengths(enc: TextEncoder, texts: list[str]) -> list[int]:
    """Tokens of each prepared text as ``enc.encode`` gives them to the model (special tokens included, at most
    ``enc.max_tokens``): the padding of a batch is set by its longest. Characters where the tokenizer cannot
    say (a tokenizer without ``input_ids``)."""
    try:
        ids = enc.tokenizer(texts, truncation=True, max_length=enc.max_tokens)["input_ids"]  # type: ignore[operator]
        lengths = [len(t) for t in ids]
        if len(lengths) == len(texts):
            return lengths
    except Exception:  # noqa: BLE001 - the order only changes the speed, never the embeddings
        pass
    return [len(t) for t in texts]


def text_batches(
    enc: TextEncoder, texts: list[str], batch_size: int
) -> Iterator[tuple[list[list[int]], torch.Tensor, torch.Tensor | None]]:
    """Prepared ``texts`` encoded in batches of ``batch_size``: ``(rows, x, tokens_mask)`` per batch, ``x[j]``
    (and ``tokens_mask[j]``) being the embedding of every position in ``rows[j]``.

    Each distinct text is encoded once (eICU demo: 15 % of the ``history`` texts repeat another of their
    block), and the distinct texts go in order of their token length (``text_lengths``), so that a batch is
    padded to a length close to each of its texts'. Ordering all texts by characters, as before, left 13 % of
    the tokens of the eICU ``history`` batches padding, this 5 % (``benchmarks/text_order.py``). The
    embeddings are ``enc.encode``'s of each text:
    the attention mask keeps padding out of every valid position, so batch and order change them only by
    float rounding (tests/extract/test_text_order.py: below 1e-5).
    """
    first: dict[str, int] = {}
    rows: list[list[int]] = []
    for i, t in enumerate(texts):
        k = first.setdefault(t, len(first))
        if k == len(rows):
            rows.append([])
        rows[k].append(i)
    distinct = list(first)
    lengths = text_lengths(enc, distinct)
    order = sorted(range(len(distinct)), key=lambda k: lengths[k])  # stable: ties keep the block's order
    for a in range(0, len(order), batch_size):
        part = order[a : a + batch_size]
        x, tm = enc.encode([distinct[k] for k in part])
        yield [rows[k] for k in part], x, tm


def _run_text(p: _Pass, pending: list[tuple[int, int]], enc: TextEncoder, batch_size: int) -> None:
    """Texts of each block: prepared (an unusable one masked with its reason), encoded by ``text_batches``
    (each distinct text once, in order of token length), stored in the rows they came from."""
    for start, stop in pending:
        blocks, work = p.prepare([(start, stop)])
        b = blocks[start]
        ready: list[tuple[int, str, Item]] = []
        for _, off, it in work:
            try:
                ready.append((off, enc.prepare(it.value), it))
            except InputError as e:
                p.skip(b, off, str(e))
            except Exception as e:  # noqa: BLE001 - per-item isolation; the type only, never the text
                p.skip(b, off, f"text cannot be prepared ({type(e).__name__})")
        for groups, x, tm in text_batches(enc, [t for _, t, _ in ready], batch_size):
            done = 0
            for j, group in enumerate(groups):
                xj, tj = x[j].numpy(), None if tm is None else tm[j].numpy()
                for i in group:
                    off, _, it = ready[i]
                    p.store(b, off, it, xj, tj)
                done += len(group)
            p.report.items_encoded += done
            p.advance(done)
        p.advance(len(work) - len(ready))
        p.flush(blocks)


def _pinned(batches: Iterable[Any]) -> Iterator[Any]:
    """Batches (``_JpegBatch`` or ``(indices, x, bad)``) in page-locked memory, for non_blocking copies to a GPU
    where no DataLoader pins them."""
    for b in batches:
        if isinstance(b, _JpegBatch):
            yield b.pin_memory()
        else:
            idx, x, bad = b
            yield idx, (x.pin_memory() if isinstance(x, torch.Tensor) else x), bad


def _gpu_jpeg_batches(
    batches: Iterable[_JpegBatch], jpeg: GpuJpegDecoder, paths: list[Any], prep: ImagePreprocess
) -> Iterator[tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]]:
    """``_JpegBatch``es -> ``(indices, x [b, 3, S, S] on the decoder's device, bad)``: the JPEGs decoded by
    ``jpeg`` on its device, the images PIL decoded copied there (non_blocking), and each JPEG the GPU could not
    decode decoded by PIL here, or masked with PIL's reason. Why PIL decoded an image goes to ``jpeg.counts``."""
    dev = jpeg.device
    for b in batches:
        idx: list[int] = []
        parts: list[torch.Tensor] = []
        bad = list(b.bad)
        if b.x is not None:
            idx += b.idx
            parts.append(b.x.to(dev, non_blocking=True))
            jpeg.counts.update(b.why)
        outs = jpeg.decode(b.jpegs)
        ok = [(i, t) for i, t in zip(b.jpeg_idx, outs, strict=True) if t is not None]
        if ok:
            idx += [i for i, _ in ok]
            parts.append(torch.stack([t for _, t in ok]))
        again = []
        for i, t in zip(b.jpeg_idx, outs, strict=True):
            if t is not None:
                continue
            try:
                again.append((i, load_image(paths[i], prep)))
            except InputError as e:
                bad.append((i, str(e)))
            except Exception as e:  # noqa: BLE001 - per-item isolation, as in _FileDataset
                bad.append((i, f"unreadable image ({type(e).__name__})"))
        if again:
            idx += [i for i, _ in again]
            parts.append(torch.stack([t for _, t in again]).to(dev))
        yield idx, (torch.cat(parts) if parts else None), bad


def _prefetch(items: Iterator[T], ahead: int = 2) -> Iterator[T]:
    """``items`` produced by a background thread, at most ``ahead`` beyond the one the caller holds: the GPU's
    JPEG decoding of the next batches (nvJPEG's hardware engines, and the host work of torchvision's call)
    overlaps the forward of this one. An exception of ``items`` is raised here; when the caller stops early
    the thread stops after the item it is producing."""
    box: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=max(1, ahead))
    stop = threading.Event()

    def put(entry: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                box.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        end: tuple[bool, Any] = (False, None)
        try:
            for item in items:
                if not put((True, item)):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread, which raises it
            end = (False, e)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()
        put(end)

    thread = threading.Thread(target=work, name="omnifuse-gpu-decode", daemon=True)
    thread.start()
    try:
        while True:
            more, item = box.get()
            if not more:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        thread.join()


def decoded_batches(
    paths: list[Any],
    image: ImageEncoder,
    volume: VolumeEncoder | None,
    batch_size: int,
    num_workers: int,
    decode_threads: int,
    jpeg: GpuJpegDecoder | None = None,
) -> Iterator[tuple[list[int], Any, list[tuple[int, str]]]]:
    """``(indices, inputs, bad)`` batches of the files ``paths`` in order, as the encoder takes them: images
    [b, 3, S, S] (``batch_size`` at a time) or a list of one volume's slices [s, 3, S, S], and the unusable
    inputs as ``(index, reason)``.

    Decoded in DataLoader worker processes (``num_workers`` > 0), else in background threads of this process
    (``decode_threads`` > 0), else inline. With ``jpeg`` (a CUDA device where torchvision imports) image JPEGs
    are only read there and decoded on the GPU by batches (``_gpu_jpeg_batches``, up to two batches ahead in a
    thread), and the images come on the GPU. On a GPU the batches are in page-locked memory (the DataLoader's
    pinning, else ``_pinned``) for non_blocking copies. ``benchmarks/extract.py`` times this alone.
    """
    if volume is not None:
        jpeg = None
    ds = _FileDataset(paths, image.prep, volume, jpeg_bytes=jpeg is not None)
    per_batch = 1 if volume is not None else batch_size
    collate: Callable[[list[Any]], Any] = _collate_volumes if volume is not None else _collate_images
    if jpeg is not None:
        collate = _collate_jpegs
    cuda = image.device.type == "cuda"
    loader: Iterable[Any]
    if num_workers > 0:
        loader = DataLoader(
            ds,
            batch_size=per_batch,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=collate,
            pin_memory=cuda,
            # read JPEGs (1.6 MB for a chest X-ray) are 2.7 times the decoded 224-px input: fewer in flight
            prefetch_factor=2 if jpeg is not None else 4,
            persistent_workers=False,
        )
    else:
        if decode_threads > 0:
            loader = _thread_batches(ds, per_batch, collate, decode_threads)
        else:
            n = len(ds)
            loader = (collate([ds[i] for i in range(a, min(a + per_batch, n))]) for a in range(0, n, per_batch))
        if cuda and volume is None:
            loader = _pinned(loader)
    if jpeg is not None:
        return _prefetch(_gpu_jpeg_batches(loader, jpeg, paths, image.prep))
    return iter(loader)


def _run_files(
    p: _Pass,
    pending: list[tuple[int, int]],
    image: ImageEncoder,
    volume: VolumeEncoder | None,
    batch_size: int,
    num_workers: int,
    decode_threads: int,
    jpeg: GpuJpegDecoder | None = None,
) -> None:
    """Images or volumes, decoded by ``decoded_batches``, encoded in batches, blocks written in order; with
    ``jpeg`` (JPEGs decoded on the GPU) what PIL decoded instead is logged."""
    blocks, work = p.prepare(pending)
    p.flush(blocks)  # blocks with nothing to encode
    if not work:
        return
    if volume is not None:
        jpeg = None
    before = Counter(jpeg.counts) if jpeg is not None else Counter()
    paths = [it.value for _, _, it in work]
    loader = decoded_batches(paths, image, volume, batch_size, num_workers, decode_threads, jpeg)
    for idx, x, bad in loader:
        for i, reason in bad:
            start, off, _ = work[i]
            p.skip(blocks[start], off, reason)
        if volume is not None:
            outs = [volume.encode_volume(v, batch_size) for v in x]
        elif x is not None:
            y = image.encode(x)
            outs = [(y[j], None) for j in range(len(idx))]
        else:
            outs = []
        for i, (emb, smask) in zip(idx, outs, strict=True):
            start, off, it = work[i]
            p.store(blocks[start], off, it, emb.numpy(), None if smask is None else smask.numpy())
        p.report.items_encoded += len(idx)
        p.advance(len(idx) + len(bad))
        p.flush(blocks)
    if jpeg is not None:
        _log_jpeg_counts(p.spec.name, jpeg.counts - before)
    if blocks:
        raise RuntimeError(f"{p.spec.name}: blocks left unresolved: {sorted(blocks)}")


def _log_jpeg_counts(name: str, counts: Counter[str]) -> None:
    """One line per modality: JPEGs decoded on the GPU and images PIL decoded instead, by reason (a warning
    when nvJPEG failed on some: each costs a CPU decode in the main process)."""
    gpu = counts.pop(GPU_DECODED, 0)
    pil = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()) if v)
    level = logging.WARNING if counts.get(NVJPEG_FAILED) else logging.INFO
    log.log(
        level, "%s: %d JPEGs decoded on the GPU, %d images by PIL (%s)", name, gpu, sum(counts.values()), pil or "none"
    )


# ------------------------------------------------------------------------------------------- extract


def _limit_cohort(c: Cohort, n: int) -> Cohort:
    if n >= len(c):
        return c
    cut = lambda pair: (pair[0][:n], pair[1][:n])  # noqa: E731
    return Cohort(
        stay_id=c.stay_id[:n],
        subject_id=c.subject_id[:n],
        tasks=c.tasks,
        labels={k: cut(v) for k, v in c.labels.items()},
        references={k: cut(v) for k, v in c.references.items()},
        splits={k: v[:n] for k, v in c.splits.items()},
        extra={**c.extra, "limit": n},
    )


def _bound(value: float | None) -> float | None:
    """A range bound as JSON holds it: ``None`` for none (an infinite bound too)."""
    return None if value is None or not np.isfinite(value) else float(value)


def build_spec(
    adapter: Adapter,
    cohort: Cohort,
    raws: list[RawModality],
    encoders: dict[str, Any],
    image_preprocessing: dict[str, str] | None = None,
) -> CacheSpec:
    """The ``CacheSpec``: adapter identity and options, tasks, and per modality the encoder id, its weights
    hash, output shape and preprocessing (``encoders`` maps modality name -> encoder, absent for arrays;
    ``image_preprocessing`` is added to that of image inputs). An array modality's plausible ranges
    (``RawModality.ranges``) go into its ``preprocessing["ranges"]``."""
    mods = []
    for r in raws:
        enc = encoders.get(r.name)
        if r.input == "array":
            if r.shape is None or r.kind is None:
                raise ValueError(f"array modality {r.name!r} needs shape and kind from the adapter")
            pre = dict(r.preprocessing)
            if r.ranges:
                check_ranges(r.ranges, r.feature_names, f"adapter {adapter.name!r}, modality {r.name!r}")
                pre["ranges"] = {k: [_bound(lo), _bound(hi)] for k, (lo, hi) in r.ranges.items()}
            mods.append(
                ModalitySpec(
                    name=r.name,
                    kind=r.kind,
                    shape=tuple(r.shape),
                    dtype=r.dtype or "float32",
                    encoder="passthrough",
                    preprocessing=pre,
                    feature_names=r.feature_names,
                    provenance_codes=r.provenance_codes,
                )
            )
            continue
        if enc is None:
            raise ValueError(f"modality {r.name!r} ({r.input}) has no encoder")
        shape = tuple(enc.shape)
        mods.append(
            ModalitySpec(
                name=r.name,
                kind="sequence" if len(shape) == 2 else "vector",
                shape=shape,
                dtype=r.dtype or "float16",
                encoder=enc.name,
                encoder_hash=enc.weights_hash,
                preprocessing={
                    **enc.preprocessing(),
                    **((image_preprocessing or {}) if r.input == "image" else {}),
                    **dict(r.preprocessing),
                },
                provenance_codes=r.provenance_codes,
            )
        )
    return CacheSpec(
        dataset=adapter.name,
        dataset_version=str(adapter.version),
        modalities=mods,
        tasks=list(cohort.tasks),
        references=sorted(cohort.references),
        splits=sorted(cohort.splits),
        adapter_options=adapter.options(),
        license=str(getattr(adapter, "license", "") or ""),
        extra=dict(cohort.extra),
    )


def _write_cohort(writer: CacheWriter, cohort: Cohort, existed: bool) -> dict[str, int]:
    """Write labels, references and splits where they differ from the store's; when resuming, the rows that
    changed per array (logged: the store held other values, now rewritten)."""
    changed: dict[str, int] = {}
    for t in cohort.tasks:
        y, m = cohort.labels[t.name]
        changed[f"labels {t.name}"] = writer.write_labels(t.name, y, m)
    for r, (v, m) in cohort.references.items():
        changed[f"reference {r}"] = writer.write_reference(r, v, m)
    for s, v in cohort.splits.items():
        changed[f"split {s}"] = writer.write_split(s, v)
    if not existed:
        return {}
    changed = {k: n for k, n in changed.items() if n}
    for k, n in changed.items():
        log.warning("%s: %d rows differ from what the store held; rewritten", k, n)
    return changed


def _invalidate_changed(
    writer: CacheWriter, adapter: Adapter, raws: list[RawModality], sources: dict[str, str] | None = None
) -> dict[str, tuple[int, int]]:
    """Compare every done block's stored input fingerprints with the adapter's inputs now; mark the blocks
    holding a changed row not done, so this run encodes them again. ``raws`` are under their names in the
    cache; ``sources``: the adapter's name of those added under another name. ``{modality: (rows, blocks)}``."""
    out = {}
    for r in raws:
        source = (sources or {}).get(r.name, r.name)
        starts, rows = stale_blocks(writer, r.name, r.input, partial(_inputs, adapter, source))
        if starts:
            log.warning(
                "%s: inputs of %d rows changed since the store was written; encoding their %d blocks again",
                r.name,
                rows,
                len(starts),
            )
            writer.invalidate_blocks(r.name, starts)
            out[r.name] = (rows, len(starts))
    return out


def _invalidate_renamed(writer: CacheWriter, adapter: Adapter, selected: list[RawModality]) -> None:
    """A run of the dataset's own modalities cannot encode those added under another name (it has not their
    encoder), but their inputs are its modalities': the blocks of theirs holding a changed row are marked not
    written (that modality then reads as incomplete; the rest of the store stays finalized) and a warning
    says which command encodes them again."""
    by_name = {r.name: r for r in selected}
    for name, source in renamed_additions(group_meta(writer.group)).items():
        raw = by_name.get(source)
        if raw is None or name not in {m.name for m in writer.spec.modalities}:
            continue
        starts, rows = stale_blocks(writer, name, raw.input, partial(_inputs, adapter, source))
        if starts:
            log.warning(
                "%s: inputs of %d rows of %s changed; its %d blocks are marked not written: run the "
                "`--add-modality %s --modality-name %s` command that added it again to encode them",
                name,
                rows,
                source,
                len(starts),
                source,
                name,
            )
            writer.invalidate_blocks(name, starts)


@dataclass
class _Opened:
    """The store this rank writes, whether it existed, and what rank 0 found changed in it."""

    writer: CacheWriter
    existed: bool
    changed: dict[str, int] = field(default_factory=dict)
    inputs_changed: dict[str, tuple[int, int]] = field(default_factory=dict)


def _open_or_create(
    dist: DistContext,
    out: Path,
    spec: CacheSpec,
    cohort: Cohort,
    cfg: ExtractConfig,
    adapter: Adapter,
    selected: list[RawModality],
) -> _Opened:
    """Rank 0 creates (or resumes) the store, writes labels, references and splits, and when resuming marks
    the blocks of ``selected`` modalities whose inputs changed not done; the others wait, then open it."""
    existed = out.exists() and not cfg.overwrite
    err = None
    opened = None
    if dist.is_main:
        try:
            writer = CacheWriter.create(
                out,
                spec,
                cohort.stay_id,
                cohort.subject_id,
                overwrite=cfg.overwrite,
                rows_per_block=cfg.rows_per_block,
            )
            opened = _Opened(writer, existed, _write_cohort(writer, cohort, existed))
            if existed:
                opened.inputs_changed = _invalidate_changed(writer, adapter, selected)
                _invalidate_renamed(writer, adapter, selected)
        except Exception as e:  # tell the other ranks before raising here
            err = f"{type(e).__name__}: {e}"
            dist.broadcast(err)
            raise
    err = dist.broadcast(err)
    if err is not None:
        raise CacheError(f"rank 0 could not create {out}: {err}")
    if opened is None:
        writer = CacheWriter.open(out)
        if writer.spec_differences(spec):
            raise CacheError(f"rank {dist.rank}: the store at {out} has another specification than this rank's")
        opened = _Opened(writer, existed)
    return opened


def _resolve_config(
    adapter: Adapter, out: str | Path | None, config: ExtractConfig | None, overrides: dict[str, Any]
) -> tuple[ExtractConfig, dict[str, Any]]:
    """The configuration of one run and the built encoders among the overrides (recorded by name)."""
    built = {k: overrides[k] for k in ("image_encoder", "text_encoder") if isinstance(overrides.get(k), FrozenEncoder)}
    given = {**overrides, **{k: enc.name for k, enc in built.items()}}
    if config is None and "dataset" not in given:
        given["dataset"] = adapter.name  # recorded as the adapter's own name
    cfg = resolve(ExtractConfig, config, out=out, **given)
    if cfg.out is None:
        raise ValueError("no output path: give out (the cache to write)")
    return cfg, built


def _build_encoders(
    cfg: ExtractConfig, kinds: set[str], dev: torch.device, built: dict[str, Any]
) -> tuple[ImageEncoder | None, TextEncoder | None, VolumeEncoder | None]:
    """The encoders the modalities' ``kinds`` need: the built ones given, else built from the config."""
    img: ImageEncoder | None = built.get("image_encoder")
    txt: TextEncoder | None = built.get("text_encoder")
    if img is None and kinds & {"image", "volume"}:
        if cfg.image_encoder is None:
            raise ValueError("image_encoder is not set (extract_dataset takes the dataset's default)")
        img = build_image_encoder(cfg.image_encoder, device=dev, precision=cfg.precision, pooling=cfg.image_pooling)
    elif img is not None and cfg.image_pooling is not None:
        own = img.preprocessing().get("pooling", cfg.image_pooling)
        if own != cfg.image_pooling:
            raise ValueError(f"image_pooling {cfg.image_pooling!r} differs from the built image encoder's ({own!r})")
    if txt is None and "text" in kinds:
        if cfg.text_encoder is None or cfg.text_pooling is None:
            raise ValueError("text_encoder and text_pooling must be set (extract_dataset takes the dataset's)")
        txt = build_text_encoder(
            cfg.text_encoder,
            pooling=cfg.text_pooling,
            max_words=cfg.max_words,
            max_tokens=cfg.max_tokens,
            device=dev,
            precision=cfg.precision,
        )
    vol = None
    if img is not None and "volume" in kinds:
        vol = build_volume_encoder(img, max_slices=cfg.max_slices, pooling=cfg.volume_pooling, window=cfg.volume_window)
    return img, txt, vol


def _available(adapter: Adapter, dist: DistContext) -> tuple[list[RawModality], list[RawModality], dict[str, str]]:
    """All the adapter's modalities, those with a source, and why the others have none (said once)."""
    raws_all = adapter.modalities()
    absent = {r.name: r.absent_reason or "source not available" for r in raws_all if not r.available}
    raws = [r for r in raws_all if r.available]
    if not raws:
        raise ValueError(f"{adapter.name}: no modality has a source ({absent})")
    for name, why in absent.items():
        if dist.is_main:
            log.warning("%s: %s; missing for every stay, not stored in the cache", name, why)
    return raws_all, raws, absent


def extract(
    adapter: Adapter, out: str | Path | None = None, config: ExtractConfig | None = None, **overrides: Any
) -> ExtractSummary:
    """Encode every modality of ``adapter`` into the cache at ``out``; resumes a store with the same spec.

    ``config``: an ``ExtractConfig`` (``omnifuse.extract.config``); ``overrides`` are its fields (tests and
    benchmarks: ``extract(adapter, out, image_encoder=..., batch_size=2)``). ``image_encoder`` and
    ``text_encoder`` may also be built encoders (then ``device``, ``precision``, ``text_pooling``,
    ``max_words`` and ``max_tokens`` are the encoder's own; the configuration records their names).
    ``limit``: only the first ``limit`` rows. ``modalities``: encode only these (the store still has all; a
    later run without the option completes it). ``add_modalities``: add these of the adapter's modalities to
    the existing store at ``out`` instead, encoding only them (``modality_name``: the name of the one added;
    ``omnifuse.extract.addition`` says what is checked). Under torchrun each rank encodes its own blocks.
    ``num_workers``: image/volume decoding processes (default ``default_num_workers``: several on a GPU,
    none on a small CPU); with none, ``decode_threads`` background threads at the lowest priority decode
    ahead of the encoder (default ``DECODE_THREADS``; 0 decodes inline, between forwards). The resolved
    configuration is saved with the finished store (``summary.extract_config``).
    """
    t0 = time.perf_counter()
    cfg, built = _resolve_config(adapter, out, config, overrides)
    if cfg.add_modalities is not None:
        return _add(adapter, cfg, built, t0)
    dev = resolve_device(cfg.device)
    dist = init_distributed(dev)
    try:
        cohort = adapter.cohort()
        if cfg.limit is not None:
            cohort = _limit_cohort(cohort, cfg.limit)
        raws_all, raws, absent = _available(adapter, dist)
        encoders = _Encoders.build(cfg, {r.input for r in raws}, dev, built)
        spec = build_spec(adapter, cohort, raws, encoders.by_modality(raws), encoders.image_preprocessing())
        if absent:
            spec.extra["absent_modalities"] = absent
        assert cfg.out is not None
        if cfg.modalities is not None:
            unknown = set(cfg.modalities) - {r.name for r in raws_all}
            if unknown:
                raise ValueError(f"unknown modalities {sorted(unknown)}; the adapter has {[r.name for r in raws]}")
        selected = [r for r in raws if cfg.modalities is None or r.name in cfg.modalities]
        opened = _open_or_create(dist, Path(cfg.out), spec, cohort, cfg, adapter, selected)
        passes = [(spec.modality(r.name), r, r.name) for r in selected]
        reports = _encode_all(cfg, dist, adapter, cohort, opened, passes, encoders)
        return _finish(dist, opened, reports, cfg.modalities is None, to_json(cfg), t0)
    finally:
        dist.close()


def _on_main(dist: DistContext, out: Path, work: Callable[[], T]) -> T | None:
    """``work()`` on rank 0, its error told to the other ranks (which raise too); ``None`` on the others."""
    err = None
    result = None
    if dist.is_main:
        try:
            result = work()
        except Exception as e:  # tell the other ranks before raising here
            err = f"{type(e).__name__}: {e}"
            dist.broadcast(err)
            raise
    err = dist.broadcast(err)
    if err is not None:
        raise CacheError(f"rank 0 could not add to {out}: {err}")
    return result


def _check_addition(
    out: Path, adapter: Adapter, cohort: Cohort, raws: list[RawModality], reqs: list[addition.Request], overwrite: bool
) -> CacheWriter:
    """Rank 0, before any encoder is built: the store against the dataset (``addition``: dataset, stays,
    tasks, the other modalities' definitions, blocks and inputs; names the store has). Writes nothing."""
    writer = CacheWriter.open(out)
    addition.check_dataset(out, writer.spec, adapter)
    addition.check_rows(out, writer, cohort)
    addition.check_cohort(out, writer.spec, cohort)
    addition.plan(out, writer, reqs, None, overwrite)
    arrays = build_spec(adapter, cohort, [r for r in raws if r.input == "array"], {})
    addition.check_others(out, writer, raws, arrays, {q.name for q in reqs}, partial(_inputs, adapter))
    return writer


def _apply_addition(
    writer: CacheWriter,
    cfg: ExtractConfig,
    adapter: Adapter,
    cohort: Cohort,
    reqs: list[addition.Request],
    specs: dict[str, ModalitySpec],
) -> _Opened:
    """Rank 0, once the encoders are built: refuse an addition of a name the store has with another spec,
    remove the modalities to replace, rewrite labels that changed, create the new modalities and mark the
    blocks of a resumed addition whose inputs changed not done."""
    out = writer.path
    actions = addition.plan(out, writer, reqs, specs, cfg.overwrite)
    for name, action in actions.items():
        if action == "replace":
            log.warning("%s: replacing the cache's modality %r (--overwrite)", out, name)
            writer.remove_modality(name)
    changed = _write_cohort(writer, cohort, existed=True)
    new = {q.name: q.source for q in reqs if actions[q.name] != "resume"}
    if new:
        order = [r.name for r in adapter.modalities()]
        spec = addition.merged_spec(writer.spec, {n: specs[n] for n in new}, new, order, adapter.options())
        writer.add_modalities(spec, new, cfg.rows_per_block)
    resumed = [q for q in reqs if actions[q.name] == "resume"]
    opened = _Opened(writer, True, changed)
    opened.inputs_changed = _invalidate_changed(
        writer, adapter, [q.as_stored() for q in resumed], {q.name: q.source for q in resumed}
    )
    return opened


def _add(adapter: Adapter, cfg: ExtractConfig, built: dict[str, Any], t0: float) -> ExtractSummary:
    """``extract`` with ``add_modalities``: encode only those modalities into the existing store ``cfg.out``
    (see ``omnifuse.extract.addition``); the summary holds them only. The store is checked before any
    encoder is built, so a refused addition costs no model loading."""
    assert cfg.out is not None and cfg.add_modalities is not None
    out = Path(cfg.out)
    stored = CacheSpec.from_json(addition.read_store(out)["spec"])
    dev = resolve_device(cfg.device)
    dist = init_distributed(dev)
    try:
        cohort = adapter.cohort()
        limit = cfg.limit if cfg.limit is not None else addition.stored_limit(stored)
        if limit is not None:
            cohort = _limit_cohort(cohort, limit)
        raws_all = adapter.modalities()
        reqs = addition.requests(out, cfg.add_modalities, cfg.modality_name, raws_all)
        raws = [r for r in raws_all if r.available]
        writer = _on_main(dist, out, partial(_check_addition, out, adapter, cohort, raws, reqs, cfg.overwrite))
        encoders = _Encoders.build(cfg, {q.raw.input for q in reqs}, dev, built)
        added = [q.as_stored() for q in reqs]
        built_spec = build_spec(adapter, cohort, added, encoders.by_modality(added), encoders.image_preprocessing())
        specs = {m.name: m for m in built_spec.modalities}

        def apply() -> _Opened:
            assert writer is not None  # rank 0, which checked the store
            return _apply_addition(writer, cfg, adapter, cohort, reqs, specs)

        applied = _on_main(dist, out, apply)
        opened = applied if applied is not None else _Opened(CacheWriter.open(out), True)
        passes = [(opened.writer.spec.modality(q.name), q.as_stored(), q.source) for q in reqs]
        reports = _encode_all(cfg, dist, adapter, cohort, opened, passes, encoders)
        return _finish(dist, opened, reports, True, to_json(cfg), t0, added=[q.name for q in reqs])
    finally:
        dist.close()


@dataclass
class _Encoders:
    """What encoding a modality needs besides its blocks: the encoders and the batching and decoding
    (``jpeg``: the GPU's JPEG decoder, where the image encoder is on a CUDA device and torchvision imports)."""

    image: ImageEncoder | None
    text: TextEncoder | None
    volume: VolumeEncoder | None
    batch_size: int
    workers: int
    threads: int
    jpeg: GpuJpegDecoder | None = None

    @classmethod
    def build(cls, cfg: ExtractConfig, kinds: set[str], dev: torch.device, built: dict[str, Any]) -> _Encoders:
        """The encoders the input ``kinds`` need (``_build_encoders``), the batch size, the decoding workers
        (``default_num_workers`` of ``dev`` unless the configuration sets them) and threads, and for image
        inputs the GPU JPEG decoder when there is one (``images.gpu_jpeg_decoder``): the one set-up of an
        extraction and of an addition."""
        img, txt, vol = _build_encoders(cfg, kinds, dev, built)
        jpeg = gpu_jpeg_decoder(img.prep, img.device) if img is not None and "image" in kinds else None
        return cls(
            img,
            txt,
            vol,
            cfg.batch_size,
            default_num_workers(dev) if cfg.num_workers is None else cfg.num_workers,
            DECODE_THREADS if cfg.decode_threads is None else cfg.decode_threads,
            jpeg,
        )

    def by_modality(self, raws: list[RawModality]) -> dict[str, Any]:
        """Modality name -> its encoder (``None`` for array inputs), as ``build_spec`` takes them."""
        return {
            r.name: {"image": self.image, "text": self.text, "volume": self.volume, "array": None}[r.input]
            for r in raws
        }

    def image_preprocessing(self) -> dict[str, str]:
        """What image modalities record besides their encoder's preprocessing: how JPEGs are decoded when the
        GPU decodes them (the embeddings differ from PIL's by rounding; ``images.ImagePreprocess.from_uint8``)."""
        return {"jpeg_decoding": GPU_JPEG_DECODING} if self.jpeg is not None else {}


GPU_JPEG_DECODING = "nvJPEG on the GPU; box average by the PIL draft scale, antialiased bilinear in torch, 8-bit"


def _encode_all(
    cfg: ExtractConfig,
    dist: DistContext,
    adapter: Adapter,
    cohort: Cohort,
    opened: _Opened,
    passes: list[tuple[ModalitySpec, RawModality, str]],
    enc: _Encoders,
) -> dict[str, ModalityReport]:
    """Encode this rank's pending blocks of each ``(its spec, the modality under its name in the cache, the
    adapter's name for it)`` into ``opened``'s store, under one progress display; their reports, with the rows
    and blocks whose inputs changed since the store was written (the same for an extraction and an addition)."""
    show = cfg.progress and dist.is_main
    prog = make_progress(rate=True) if show else None
    run = _Run(opened.writer, cohort.stay_id, prog, show)
    with prog if prog is not None else contextlib.nullcontext():
        reports = {
            raw.name: _encode_modality(run, adapter, mspec, raw, enc, dist, source) for mspec, raw, source in passes
        }
    for name, (rows, blocks) in opened.inputs_changed.items():
        reports[name].rows_changed, reports[name].blocks_reencoded = rows, blocks
    return reports


def _encode_modality(
    run: _Run,
    adapter: Adapter,
    mspec: ModalitySpec,
    raw: RawModality,
    enc: _Encoders,
    dist: DistContext,
    source: str | None = None,
) -> ModalityReport:
    """Encode and write this rank's pending blocks of one modality (``raw`` under its name in the cache;
    ``source``: the adapter's name for it, default the same); its report for this run."""
    writer, prog = run.writer, run.progress
    rep = ModalityReport(name=raw.name, input=raw.input, kind=mspec.kind, shape=mspec.shape)
    nblocks = len(writer.done_blocks(raw.name))
    rep.blocks_already_done = int(writer.done_blocks(raw.name).sum())
    pending = writer.pending_blocks(raw.name, dist.rank, dist.world_size)
    task = prog.add_task(f"{raw.name} ({raw.input})", total=None) if run.show else None
    t1 = time.perf_counter()
    p = _Pass(run, adapter, mspec, raw.input, rep, task, source or raw.name)
    if pending:
        if raw.input == "array":
            _run_arrays(p, pending)
        elif raw.input == "text":
            assert enc.text is not None  # built for every text modality
            _run_text(p, pending, enc.text, enc.batch_size)
        else:
            assert enc.image is not None  # built for every image or volume modality
            volume = enc.volume if raw.input == "volume" else None
            _run_files(p, pending, enc.image, volume, enc.batch_size, enc.workers, enc.threads, enc.jpeg)
    rep.seconds = time.perf_counter() - t1
    if run.show:
        prog.update(task, total=prog.tasks[task].completed or 0)
    log.info("%s: %d of %d blocks written by rank %d", raw.name, rep.blocks_written, nblocks, dist.rank)
    return rep


def _finish(
    dist: DistContext,
    opened: _Opened,
    reports: dict[str, ModalityReport],
    complete: bool,
    config: dict[str, Any],
    t0: float,
    added: list[str] | None = None,
) -> ExtractSummary:
    """Gather the ranks' reports, count coverage, skips and masked values from the store, and finalise it
    (rank 0) with the run's summary and its configuration ``config`` (JSON) unless it is finalized already
    (a rerun that changed nothing leaves the store as it was). ``t0``: the run's start (``perf_counter``).
    Modalities being added whose blocks are now all done are recorded as finished (``added``: the modalities
    an addition run added; the store's first summary and configuration then stay as they are)."""
    writer = opened.writer
    dist.barrier()
    gathered = dist.gather(reports)
    merged: dict[str, ModalityReport] = {}
    for name, rep in reports.items():
        m = ModalityReport(
            name=rep.name, input=rep.input, kind=rep.kind, shape=rep.shape, blocks_already_done=rep.blocks_already_done
        )
        for g in gathered:
            o = g[name]
            m.blocks_written += o.blocks_written
            m.items_encoded += o.items_encoded
            m.rows_changed += o.rows_changed
            m.blocks_reencoded += o.blocks_reencoded
            m.seconds = max(m.seconds, o.seconds)
        totals = store.total_counts(writer.block_counts(name))
        m.skipped = totals.get("skipped", {})
        m.values_masked = totals.get("values_masked", {})
        m.masked_features = totals.get("masked_features", {})
        mask = np.asarray(store.array(writer.group, f"{name}/mask")[:]).astype(bool)
        done = writer.done_blocks(name)
        done_rows = np.zeros(writer.n, dtype=bool)
        for k, (a, b) in enumerate(writer.iter_blocks(name)):
            done_rows[a:b] = bool(done[k])
        m.present = int((mask & done_rows).sum())
        m.missing = int((~mask & done_rows).sum())
        merged[name] = m
    summary = ExtractSummary(
        writer.path,
        writer.n,
        merged,
        opened.existed,
        False,
        dist.world_size,
        changed=dict(opened.changed),
        added=list(added or []),
    )
    # modalities being added have their own done markers: they never hold the rest of the store back
    all_done = all(writer.done_blocks(ms.name).all() for ms in writer.spec.modalities if ms.name not in writer.adding)
    summary.seconds = time.perf_counter() - t0
    report_json = summary.to_json()["modalities"]
    if dist.is_main and complete and all_done and not writer.finalized:
        if added:  # an addition whose label rewrites unfinalized the store: the first run's summary stays
            writer.finalize()
        else:
            run = summary.to_json()
            recorded = additions(group_meta(writer.group))
            before = (group_meta(writer.group).get("summary") or {}).get("extract", {}).get("modalities", {})
            kept = {k: v for k, v in before.items() if k in recorded and k not in run["modalities"]}
            run["modalities"] = {**run["modalities"], **kept}
            writer.finalize(extra={"extract": run, "extract_config": config})
    if dist.is_main:
        writer.finish_additions(sorted(writer.adding & set(reports)), config, report_json)
    dist.barrier()
    summary.finalized = bool(read_meta(writer.path).get("finalized", False))
    return summary
