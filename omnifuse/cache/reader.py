"""Reading the feature cache into numpy (or torch) with schema validation.

Two ways to read a modality's features ``<m>/x``: whole, into memory (:meth:`Cache.load`), or on demand
(:class:`RowReader`, ``Cache.load(..., lazy=...)``): rows are read a chunk at a time when asked for, and
:func:`stream_rows` reads them in a known order in a background thread, decoding each chunk as few times as
its memory allows (stage two's streaming path, :mod:`omnifuse.fuse.data`, for caches larger than memory).
"""

from __future__ import annotations

import heapq
import os
import queue
import threading
from collections.abc import Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numcodecs import Zstd  # type: ignore[import-untyped]

from omnifuse.cache import store
from omnifuse.cache.meta import read_meta
from omnifuse.cache.schema import CacheError, CacheSpec, IncompleteCacheError

ALLOW_INCOMPLETE = "pass --allow-incomplete (allow_incomplete=True)"
"""How a user accepts a store that is not complete, on the command line and in Python."""


@dataclass
class ModalityData:
    """One modality in memory. ``x`` keeps the stored dtype (float16 embeddings stay float16)."""

    name: str
    kind: str
    x: np.ndarray  # [N, *shape]
    mask: np.ndarray  # bool [N]
    tokens_mask: np.ndarray | None = None  # bool [N, L] for sequences
    feature_names: list[str] | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)
    provenance: np.ndarray | None = None  # int8 [N], -1 where absent
    provenance_codes: list[str] | None = None
    encoder: str = ""
    reader: RowReader | None = None  # set when loaded lazily: ``x`` is then empty [0, *shape]; read rows here


@dataclass
class LabelData:
    """``y`` [N, C] float32 0/1 (binary, multilabel) or [N] int64 (multiclass); ``mask`` rows with a label."""

    name: str
    kind: str
    classes: list[str]
    y: np.ndarray
    mask: np.ndarray


@dataclass
class CacheData:
    stay_id: np.ndarray
    subject_id: np.ndarray
    modalities: dict[str, ModalityData]
    labels: dict[str, LabelData]
    references: dict[str, tuple[np.ndarray, np.ndarray]]
    splits: dict[str, np.ndarray]
    spec: CacheSpec
    attrs: dict[str, Any]
    path: Path | None = None  # the store it was loaded from (None for data built in memory)

    @property
    def n(self) -> int:
        return int(self.stay_id.size)


class Cache:
    """An opened cache. Use :meth:`load` to bring arrays into memory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.meta = read_meta(self.path)
        self.group = zarr.open_group(str(self.path), mode="r", zarr_format=3)
        self.spec = CacheSpec.from_json(self.meta["spec"])
        self.n = int(self.meta["n_rows"])

    @property
    def attrs(self) -> dict[str, Any]:
        return self.meta

    @property
    def stay_id(self) -> np.ndarray:
        return np.asarray(store.array(self.group, "stay_id")[:])

    @property
    def subject_id(self) -> np.ndarray:
        return store.as_str_array(store.array(self.group, "subject_id")[:])

    def block_rows(self, modality: str) -> int:
        return store.modality_block_rows(self.group, modality)

    def incomplete_rows(self, modality: str) -> np.ndarray:
        """bool [N]: rows of ``modality`` whose block is not marked done."""
        done = np.asarray(store.array(self.group, f"{modality}/done")[:]).astype(bool)
        b = self.block_rows(modality)
        return ~np.repeat(done, b)[: self.n]

    def completeness(self) -> dict[str, float]:
        return {m.name: float(1 - self.incomplete_rows(m.name).mean()) for m in self.spec.modalities}

    def _check_written(self, name: str, sel: np.ndarray | slice, allow_incomplete: bool) -> None:
        """Raise :class:`IncompleteCacheError` when rows ``sel`` of ``name`` are not all written."""
        missing = int(self.incomplete_rows(name)[sel].sum())
        if missing and not allow_incomplete:
            raise IncompleteCacheError(
                f"{self.path}: modality {name!r} has {missing} rows not yet written (an extraction still "
                "running or stopped); re-run `omnifuse extract` with the same options to finish it, or "
                f"{ALLOW_INCOMPLETE} to treat them as missing"
            )

    def load(
        self,
        modalities: list[str] | None = None,
        rows: np.ndarray | slice | None = None,
        allow_incomplete: bool = False,
        lazy: Collection[str] = (),
    ) -> CacheData:
        """Load the chosen modalities (default all) and rows (default all) into numpy arrays.

        Raises :class:`IncompleteCacheError` when a chosen modality has rows not yet written, or when the
        store is not finalized (every block written but the extraction did not finish, or it is being
        updated), unless ``allow_incomplete``: then rows not written are reported missing (mask False).
        ``lazy``: modalities whose features ``x`` are not read (every other array is): their
        :class:`ModalityData` has an empty ``x`` [0, *shape] and a :class:`RowReader` (``reader``) that reads
        rows on demand, rows not written as zeros; only with every row (``rows`` None). A chunk of ``x`` that
        cannot be decoded is a :class:`CacheError` naming the modality and the chunk.
        """
        names = [m.name for m in self.spec.modalities] if modalities is None else list(modalities)
        for name in names:
            self.spec.modality(name)  # KeyError with the list of names
        lazy = set(lazy)
        if lazy - set(names):
            raise CacheError(f"lazy modalities {sorted(lazy - set(names))} are not among those loaded {names}")
        if lazy and rows is not None:
            raise CacheError("a modality read lazily needs every row (rows=None)")
        sel = _normalise_rows(rows, self.n)
        for name in names:
            self._check_written(name, sel, allow_incomplete)
        if not allow_incomplete and not read_meta(self.path).get("finalized", False):  # now, not when opened
            raise IncompleteCacheError(
                f"{self.path} is not finalized: its extraction did not finish (killed, run with --modality, or "
                "being updated); re-run `omnifuse extract` with the same options to finish it, or "
                f"{ALLOW_INCOMPLETE} to use it as it is"
            )

        def take(arr: zarr.Array) -> np.ndarray:
            if isinstance(sel, slice):
                return np.asarray(arr[sel])
            return np.asarray(arr.get_orthogonal_selection((sel,) + (slice(None),) * (arr.ndim - 1)))

        mods: dict[str, ModalityData] = {}
        for name in names:
            ms = self.spec.modality(name)
            g = store.subgroup(self.group, name)
            incomplete = self.incomplete_rows(name)[sel]
            mask = take(store.array(g, "mask")).astype(bool) & ~incomplete
            reader = None
            if name in lazy:
                x = np.empty((0, *ms.shape), dtype=ms.dtype)
                zero = incomplete.copy() if incomplete.any() else None
                reader = RowReader(self.path, name, zero=zero, finite=ms.kind in ("vector", "sequence"))
            else:
                try:
                    x = take(store.array(g, "x"))
                except (MemoryError, CacheError):
                    raise
                except Exception as e:  # a damaged chunk: find it and name it in one line
                    raise RowReader(self.path, name).damaged(e) from e
                if incomplete.any():
                    x[incomplete] = 0
            tm = take(store.array(g, "tokens_mask")).astype(bool) & mask[:, None] if ms.has_tokens_mask else None
            prov = take(store.array(g, "provenance")) if ms.provenance_codes else None
            mods[name] = ModalityData(
                name=name,
                kind=ms.kind,
                x=x,
                mask=mask,
                tokens_mask=tm,
                feature_names=ms.feature_names,
                preprocessing=ms.preprocessing,
                provenance=prov,
                provenance_codes=ms.provenance_codes,
                encoder=ms.encoder,
                reader=reader,
            )
        labels = {}
        for t in self.spec.tasks:
            y = take(store.array(self.group, f"labels/{t.name}"))
            y = y.astype(np.int64) if t.kind == "multiclass" else y.astype(np.float32)
            labels[t.name] = LabelData(
                t.name, t.kind, list(t.classes), y, take(store.array(self.group, f"labels/{t.name}_mask")).astype(bool)
            )
        refs = {
            r: (
                take(store.array(self.group, f"reference/{r}")).astype(np.float32),
                take(store.array(self.group, f"reference/{r}_mask")).astype(bool),
            )
            for r in self.spec.references
        }
        splits = {}
        for s in self.spec.splits:
            if s in store.subgroup(self.group, "splits"):
                v = take(store.array(self.group, f"splits/{s}"))
                splits[s] = v if np.issubdtype(v.dtype, np.integer) else store.as_str_array(v)
        return CacheData(
            stay_id=take(store.array(self.group, "stay_id")).astype(np.int64),
            subject_id=store.as_str_array(take(store.array(self.group, "subject_id"))),
            modalities=mods,
            labels=labels,
            references=refs,
            splits=splits,
            spec=self.spec,
            attrs=self.meta,
            path=self.path,
        )


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


class RowReader:
    """Rows of one modality's features ``<m>/x`` [N, *shape] read from a stored cache on demand.

    A Zarr chunk (``chunk_rows`` consecutive rows compressed together) is the unit of reading: :meth:`read`
    decodes every chunk holding a row asked for, once per call, and returns the rows in the order asked;
    :func:`stream_rows` reads rows in an order known in advance, decoding as few chunks as its memory allows.
    Chunks in the layout the writer uses are decoded here from their files (:meth:`_chunk_folder`), any other
    layout through Zarr.

    ``zero`` bool [N]: rows read as zeros whatever the store holds (rows of blocks not written). ``finite``
    (embeddings): a row read that holds a non-finite value is a :class:`CacheError` naming it, since the
    writer never stores one (it refuses non-finite embeddings and zeroes missing rows and padding): such a
    store is damaged. A chunk that cannot be decoded is a one-line :class:`CacheError` naming the store, the
    modality, the chunk, its rows and its file. Reads may come from several threads; picklable (the Zarr
    handle is reopened). ``chunks_decoded`` counts the chunks decoded so far (benchmarks, tests).
    """

    def __init__(self, path: str | Path, modality: str, zero: np.ndarray | None = None, finite: bool = False) -> None:
        self.path = Path(path)
        self.modality = modality
        self.zero = zero
        self.finite = finite
        self._arr: zarr.Array | None = None
        self._folder: Path | None | bool = False  # a bool: not looked for yet (see _chunk_folder)
        self._lock = threading.Lock()
        self.chunks_decoded = 0
        arr = self._array()
        self.shape: tuple[int, ...] = tuple(int(v) for v in arr.shape)
        self.dtype = np.dtype(str(arr.dtype))
        self.chunk_rows = int(arr.chunks[0])
        if zero is not None and np.asarray(zero).shape != (self.n,):
            raise CacheError(
                f"{self.path}: zero rows of {modality!r} have shape {np.asarray(zero).shape}, not {(self.n,)}"
            )

    def _array(self) -> zarr.Array:
        if self._arr is None:
            group = zarr.open_group(str(self.path), mode="r", zarr_format=3)
            self._arr = store.array(group, f"{self.modality}/x")
        return self._arr

    def __getstate__(self) -> dict[str, Any]:
        st = dict(self.__dict__)
        st["_arr"], st["_lock"], st["_folder"] = None, None, False
        return st

    def __setstate__(self, st: dict[str, Any]) -> None:
        self.__dict__.update(st)
        self._lock = threading.Lock()

    @property
    def n(self) -> int:
        return self.shape[0]

    @property
    def row_shape(self) -> tuple[int, ...]:
        return self.shape[1:]

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.n * self.row_bytes

    def chunk_rows_of(self, c: int) -> tuple[int, int]:
        """Rows ``[a, b)`` of chunk ``c``."""
        return c * self.chunk_rows, min((c + 1) * self.chunk_rows, self.n)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (positions; any order, repeats allowed) as [len(rows), *shape] in the stored dtype."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size == 0:
            return np.zeros((0, *self.row_shape), dtype=self.dtype)
        if rows.min() < 0 or rows.max() >= self.n:
            raise CacheError(f"{self.path}: rows of {self.modality!r} outside 0..{self.n - 1}")
        if rows.size == 1 or bool((rows[1:] > rows[:-1]).all()):
            return self._get(rows)
        uniq, inv = np.unique(rows, return_inverse=True)
        return self._get(uniq)[inv]

    def _get(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (sorted, unique), each chunk holding one decoded once: directly from the chunk files
        where :meth:`_chunk_folder` allows it, else through Zarr."""
        chunk_of = rows // self.chunk_rows
        first = np.flatnonzero(np.r_[True, chunk_of[1:] != chunk_of[:-1]])
        folder = self._chunk_folder()
        if folder is not None:
            out = np.empty((rows.size, *self.row_shape), dtype=self.dtype)
            ends = np.r_[first[1:], rows.size]

            def fill(i: int) -> None:
                a, b = int(first[i]), int(ends[i])
                c = int(chunk_of[a])
                lo = int(rows[a]) - c * self.chunk_rows
                block = self._decode(folder, c)
                if int(rows[b - 1]) - int(rows[a]) == b - a - 1:  # consecutive rows: one slice
                    out[a:b] = block[lo : lo + b - a]
                else:
                    idx = rows[a:b] - c * self.chunk_rows
                    np.take(block, idx, axis=0, out=out[a:b], mode="clip")  # "clip": no buffered copy

            workers = _decode_workers()
            if workers > 1 and first.size > 1:
                list(_decode_pool(workers).map(fill, range(first.size)))
            else:
                for i in range(first.size):
                    fill(i)
        else:
            arr = self._array()
            try:
                if int(rows[-1]) + 1 - int(rows[0]) == rows.size:
                    out = np.asarray(arr[int(rows[0]) : int(rows[-1]) + 1])
                else:
                    out = np.asarray(arr.get_orthogonal_selection((rows,) + (slice(None),) * (len(self.shape) - 1)))
            except (MemoryError, CacheError):
                raise
            except Exception as e:  # a damaged chunk: find it and name it in one line
                raise self.damaged(e, np.unique(chunk_of)) from e
        with self._lock:
            self.chunks_decoded += int(first.size)
        if self.zero is not None:
            z = self.zero[rows]
            if z.any():
                out[z] = 0
        if self.finite and out.size:
            ok = ~nonfinite_rows(out)
            if not ok.all():
                r = int(rows[np.flatnonzero(~ok)[0]])
                raise CacheError(
                    f"{self.path}: modality {self.modality!r}: row {r} (chunk {r // self.chunk_rows}) holds a "
                    "non-finite embedding, which the writer never stores: the store is damaged: extract it again into "
                    "a new folder"
                )
        return out

    def _chunk_folder(self) -> Path | None:
        """The folder of the array's chunk files when this reader decodes them itself (found once): a local
        store, Zarr's default chunk keys, chunks of whole rows, the codecs ``bytes`` (little-endian) then
        ``zstd`` (what :class:`omnifuse.cache.CacheWriter` writes), fill value 0. None otherwise: every read
        goes through Zarr (three to four times the CPU time per chunk, measured on this project's machine)."""
        if not isinstance(self._folder, bool):
            return self._folder
        folder: Path | None = None
        try:
            from zarr.codecs import BytesCodec, ZstdCodec
            from zarr.core.chunk_key_encodings import DefaultChunkKeyEncoding
            from zarr.storage import LocalStore

            arr = self._array()
            md: Any = arr.metadata
            store_: Any = arr.store_path.store
            codecs = list(getattr(md, "codecs", ()))
            ok = (
                len(codecs) == 2
                and isinstance(codecs[0], BytesCodec)
                and getattr(codecs[0].endian, "value", codecs[0].endian) in (None, "little")
                and isinstance(codecs[1], ZstdCodec)
                and isinstance(md.chunk_key_encoding, DefaultChunkKeyEncoding)
                and md.chunk_key_encoding.separator == "/"
                and tuple(md.chunk_grid.chunk_shape[1:]) == self.row_shape
                and float(md.fill_value) == 0.0
                and isinstance(store_, LocalStore)
            )
            if ok:
                folder = Path(store_.root) / arr.store_path.path
        except Exception:  # noqa: BLE001 - any doubt: read through Zarr
            folder = None
        self._folder = folder
        return folder

    def _decode(self, folder: Path, c: int) -> np.ndarray:
        """Chunk ``c`` decoded from its file [chunk_rows, *shape] (read-only); a chunk never written is zeros
        (Zarr's fill value)."""
        key = self._array().metadata.encode_chunk_key((c,) + (0,) * (len(self.shape) - 1))
        try:
            raw = (folder / key).read_bytes()
        except FileNotFoundError:
            return np.zeros((self.chunk_rows, *self.row_shape), dtype=self.dtype)
        try:
            buf = _ZSTD.decode(raw)
            return np.frombuffer(buf, dtype=self.dtype.newbyteorder("<")).reshape(self.chunk_rows, *self.row_shape)
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - the damaged chunk, named
            raise self._damaged_chunk(c, e) from e

    def _damaged_chunk(self, c: int, e: BaseException) -> CacheError:
        a, b = self.chunk_rows_of(c)
        return CacheError(
            f"{self.path}: modality {self.modality!r}: chunk {c} (rows {a} to {b - 1}{self._chunk_file(c)}) "
            f"cannot be read ({_one_line(e)}); the store is damaged: extract it again into a new folder"
        )

    def _chunk_file(self, c: int) -> str:
        try:
            key = self._array().metadata.encode_chunk_key((c,) + (0,) * (len(self.shape) - 1))
        except Exception:  # noqa: BLE001 - only a hint in an error message
            return ""
        return f", file {self.modality}/x/{key}"

    def damaged(self, cause: BaseException, chunks: np.ndarray | None = None) -> CacheError:
        """The one-line :class:`CacheError` for a read that failed with ``cause``: the first of ``chunks``
        (default: every chunk) that cannot be decoded on its own, with its rows and file; ``cause`` as it is
        when each decodes on its own (a passing fault)."""
        arr = self._array()
        todo = range(-(-self.n // self.chunk_rows)) if chunks is None else (int(c) for c in chunks)
        for c in todo:
            a, b = self.chunk_rows_of(c)
            try:
                arr[a:b]
            except MemoryError:
                raise
            except Exception as e:  # noqa: BLE001 - this is the damaged chunk
                return self._damaged_chunk(c, e)
        return CacheError(f"{self.path}: modality {self.modality!r}: its features cannot be read ({_one_line(cause)})")


_ZSTD = Zstd()
_POOL: ThreadPoolExecutor | None = None


def _decode_workers() -> int:
    """Threads decoding the chunks of one read: a quarter of the cores, at most 4 (one on a 2-core machine,
    where stage two's own threads use the rest)."""
    return max(1, min(4, (os.cpu_count() or 2) // 4))


def _decode_pool(workers: int) -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="omnifuse-decode")
    return _POOL


def nonfinite_rows(block: np.ndarray) -> np.ndarray:
    """bool [len(block)]: rows holding a NaN or an infinite value, from the exponent bits of float16 and
    float32 (all ones), without a float copy."""
    if block.size == 0:
        return np.zeros(len(block), dtype=bool)
    flat = block.reshape(len(block), -1)
    if flat.dtype == np.float16:
        bits, exp = flat.view(np.uint16), 0x7C00
    elif flat.dtype == np.float32:
        bits, exp = flat.view(np.uint32), 0x7F800000
    else:
        return ~np.isfinite(flat).all(axis=1)
    out = np.zeros(len(flat), dtype=bool)
    step = max(1, (8 << 20) // max(1, bits[0].nbytes))  # blocks of about 8 MB: a small, reused buffer
    tmp = np.empty((min(step, len(bits)), bits.shape[1]), dtype=bits.dtype)
    for a in range(0, len(bits), step):
        part = bits[a : a + step]
        out[a : a + len(part)] = np.bitwise_and(part, exp, out=tmp[: len(part)]).max(axis=1) == exp
    return out


def _background(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """``items`` produced by a background thread at most ``depth`` ahead of the consumer. An exception in the
    producer is raised in the consumer when it reaches it; closing the consumer (or an exception in it) stops
    the producer."""
    q: queue.Queue[tuple[int, Any]] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item: tuple[int, Any]) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for it in items:
                if not put((0, it)):
                    return
            put((1, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put((2, e))

    def consume() -> Iterator[Any]:
        th = threading.Thread(target=run, name="omnifuse-read", daemon=True)
        th.start()
        try:
            while True:
                kind, v = q.get()
                if kind == 1:
                    return
                if kind == 2:
                    raise v
                yield v
        finally:
            stop.set()
            th.join(timeout=60)

    return consume()


class _KeptRows:
    """The rows of ``order`` of one reader, batch after batch (see :func:`stream_rows`): rows of decoded
    chunks that later batches need are kept, at most ``capacity`` rows, the row needed last dropped first."""

    def __init__(self, reader: RowReader, order: np.ndarray, capacity: int) -> None:
        self.reader, self.order, self.capacity = reader, order, max(0, int(capacity))
        if order.size and (order.min() < 0 or order.max() >= reader.n):
            raise CacheError(f"{reader.path}: rows of {reader.modality!r} outside 0..{reader.n - 1}")
        self.unique = np.unique(order).size == order.size
        self.pos = np.full(reader.n, -1, dtype=np.int64)
        if self.unique:
            self.pos[order] = np.arange(order.size)
        self.kept: dict[int, np.ndarray] = {}  # position in the order -> its row
        self.heap: list[int] = []  # -position of kept rows (entries of rows taken since are skipped)

    def _farthest(self) -> int | None:
        while self.heap and -self.heap[0] not in self.kept:
            heapq.heappop(self.heap)
        return -self.heap[0] if self.heap else None

    def _admit(self, candidates: np.ndarray) -> list[int]:
        """The positions of ``candidates`` (ascending) to keep, dropping farther kept rows when full."""
        out: list[int] = []
        for p in candidates.tolist():
            if p in self.kept:
                continue
            if len(self.kept) + len(out) >= self.capacity:
                far = self._farthest()
                if far is None or far <= p:
                    break  # every later candidate is farther still
                del self.kept[far]
                heapq.heappop(self.heap)
            out.append(p)
        return out

    def take(self, t0: int, t1: int) -> np.ndarray:
        rows = self.order[t0:t1]
        if not self.unique:
            return self.reader.read(rows)
        r = self.reader
        out = np.empty((t1 - t0, *r.row_shape), dtype=r.dtype)
        have = np.zeros(t1 - t0, dtype=bool)
        if self.kept:
            for p in range(t0, t1):
                v = self.kept.pop(p, None)
                if v is not None:
                    out[p - t0] = v
                    have[p - t0] = True
        need = np.flatnonzero(~have)
        if need.size:
            R = r.chunk_rows
            chunks = np.unique(rows[need] // R)
            siblings = (chunks[:, None] * R + np.arange(R)[None, :]).reshape(-1)
            sp = self.pos[siblings[siblings < r.n]]
            admit = self._admit(np.sort(sp[sp >= t1])) if self.capacity else []
            want = np.concatenate([rows[need], self.order[np.asarray(admit, dtype=np.int64)]])  # unique rows
            by_row = np.argsort(want, kind="stable")
            got = r._get(want[by_row])
            at = np.empty_like(by_row)
            at[by_row] = np.arange(want.size)  # want[i] is got[at[i]]
            k = need.size
            if k == t1 - t0:
                np.take(got, at[:k], axis=0, out=out, mode="clip")  # the indices are valid
            else:
                out[need] = got[at[:k]]
            for i, p in enumerate(admit):
                self.kept[p] = got[at[k + i]].copy()
                heapq.heappush(self.heap, -p)
        return out


def stream_rows(
    readers: Mapping[str, RowReader],
    order: np.ndarray,
    batch_size: int,
    cache_bytes: int = 0,
    depth: int = 2,
) -> Iterator[dict[str, np.ndarray]]:
    """The rows ``order`` (positions) of every reader, ``batch_size`` at a time and in that order: per batch
    ``{name: [b, *shape]}`` in the stored dtype, read in a background thread ``depth`` batches ahead.

    The order is known in advance, so a chunk holding rows of several batches need not be decoded for each:
    when a batch's chunks are decoded, the rows of those chunks that later batches need are kept, at most
    ``cache_bytes`` of them over all readers, and when that is full the rows needed last are dropped first
    (Belady's rule). What is kept changes how many chunks are decoded, never the rows returned. With a random
    order over every row, chunks of 8 rows and room for a fifth of the rows, each chunk is decoded about 1.8
    times per pass (a simulation of 47,000 rows; with room for none, up to 8 times); a sorted order decodes each
    chunk once whatever the room. An order with repeated rows is read batch by batch, nothing kept."""
    order = np.asarray(order, dtype=np.int64).reshape(-1)
    per_row = sum(r.row_bytes for r in readers.values())
    capacity = int(cache_bytes) // max(per_row, 1)
    plans = {name: _KeptRows(r, order, capacity) for name, r in readers.items()}

    def batches() -> Iterator[dict[str, np.ndarray]]:
        for t0 in range(0, order.size, batch_size):
            t1 = min(t0 + batch_size, order.size)
            yield {name: p.take(t0, t1) for name, p in plans.items()}

    return _background(batches(), depth)


def _normalise_rows(rows: np.ndarray | slice | None, n: int) -> np.ndarray | slice:
    if rows is None:
        return slice(0, n)
    if isinstance(rows, slice):
        return rows
    rows = np.asarray(rows)
    if rows.dtype == bool:
        if rows.shape != (n,):
            raise CacheError(f"boolean row selection has shape {rows.shape}, cache has {n} rows")
        return np.flatnonzero(rows)
    rows = rows.astype(np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise CacheError(f"row positions outside 0..{n - 1}")
    return rows


def open_cache(path: str | Path) -> Cache:
    """Open a cache, validating that it is an omnifuse store of this schema version."""
    return Cache(path)


def load_cache(
    path: str | Path,
    modalities: list[str] | None = None,
    rows: np.ndarray | slice | None = None,
    allow_incomplete: bool = False,
) -> CacheData:
    return open_cache(path).load(modalities=modalities, rows=rows, allow_incomplete=allow_incomplete)


def to_torch(data: CacheData, device: str = "cpu") -> dict[str, Any]:
    """Modality arrays as torch tensors (dtype kept), for quick use outside :mod:`omnifuse.fuse.data`."""
    import torch

    out: dict[str, Any] = {}
    for name, m in data.modalities.items():
        out[name] = {
            "x": torch.from_numpy(np.ascontiguousarray(m.x)).to(device),
            "mask": torch.from_numpy(m.mask).to(device),
        }
        if m.tokens_mask is not None:
            out[name]["tokens_mask"] = torch.from_numpy(m.tokens_mask).to(device)
    return out
