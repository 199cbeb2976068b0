"""Chunk-aligned, resumable writer of the feature cache.

A run killed at any moment (even SIGKILL) leaves a readable store: the metadata of every array exists from
:meth:`CacheWriter.create` on, and each block of a modality is marked done only after its data is written.
Starting again with the same spec and stay ids resumes: :meth:`CacheWriter.pending_blocks` lists only the
blocks without a done marker, so nothing finished is recomputed or rewritten.

A finalized store is never changed in place while it still says so: any write (a block, labels that differ
from the stored ones, a block invalidated because its inputs changed) first marks it not finalized, so a
reader never takes a half-updated store for a finished one. The one exception is a modality being added
(:meth:`CacheWriter.add_modalities`, ``omnifuse extract --add-modality``): its arrays are new and its blocks'
done markers say which rows exist, so the store stays finalized and a reader refuses (or masks) the rows of
that modality not written yet, while the other modalities read as before. Its addition record
(``omnifuse.cache.meta.ADDITIONS_KEY``) says it is being added until :meth:`CacheWriter.finish_additions`.

A write that fails on the file system (disk full, read-only folder) raises :class:`CacheError` naming the
store; the blocks already marked done stay valid, so the same command resumes once the cause is fixed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from omnifuse.cache import store
from omnifuse.cache.meta import (
    adding,
    additions,
    drop_addition,
    finish_addition,
    group_meta,
    new_meta,
    read_meta,
    renamed_additions,
    reopen_addition,
    start_addition,
    utc_now,
)
from omnifuse.cache.schema import SCHEMA_VERSION, CacheError, CacheSpec, ModalitySpec, min_schema_version


def _check_ids(stay_ids: np.ndarray, subject_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    stay_ids = np.asarray(stay_ids)
    if stay_ids.ndim != 1 or stay_ids.size == 0:
        raise CacheError("stay_ids must be a non-empty 1-D array")
    if not np.issubdtype(stay_ids.dtype, np.integer):
        raise CacheError(f"stay_ids must be integers, got dtype {stay_ids.dtype}")
    stay_ids = stay_ids.astype(np.int64)
    uniq, counts = np.unique(stay_ids, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1]
        raise CacheError(f"duplicate stay_id values ({dup.size} ids, e.g. {dup[:5].tolist()}): stay_id must be unique")
    subject_ids = np.asarray(subject_ids).astype(str)
    if subject_ids.shape != stay_ids.shape:
        raise CacheError(f"subject_ids has shape {subject_ids.shape}, stay_ids {stay_ids.shape}")
    if (np.char.str_len(subject_ids) == 0).any():
        raise CacheError("empty subject_id: every row needs a patient id for patient-grouped splits")
    return stay_ids, subject_ids


def io_error_cause(e: OSError, folder: Path) -> str:
    """Why a write into ``folder`` failed and what to do, in a few words (no traceback)."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on device; free some space, then run the same command again: it resumes"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"the folder {folder} is read-only or not writable ({e.strerror}); choose another output folder"
    return f"{e.strerror or e or type(e).__name__}"


@contextlib.contextmanager
def _writing(path: Path, what: str) -> Iterator[None]:
    """Turn a file-system error while writing ``what`` into the store ``path`` into a one-line
    :class:`CacheError` naming the store."""
    try:
        yield
    except OSError as e:
        raise CacheError(f"{path}: cannot write {what}: {io_error_cause(e, path)}") from e


def _spec_json(spec: CacheSpec) -> str:
    return json.dumps(spec.to_json(), sort_keys=True, default=str)


def _modality_json(m: ModalitySpec) -> str:
    return json.dumps(CacheSpec("", "", [m]).to_json()["modalities"][0], sort_keys=True, default=str)


def _create_modality_arrays(g: zarr.Group, m: ModalitySpec, n: int, override: int | None) -> None:
    """The empty arrays of modality ``m`` (``n`` rows, blocks of ``override`` rows or the cache's choice) in
    the group ``g``: ``x``, ``mask``, ``tokens_mask`` (sequences), ``provenance`` (with codes),
    ``input_hash``, ``counts`` and ``done`` (no block done)."""
    zstd = [ZstdCodec(level=store.ZSTD_LEVEL)]
    b = store.block_rows(m.shape, m.dtype, n, override)
    xr = min(store.x_chunk_rows(m.shape, m.dtype), b)
    mg = g.create_group(m.name)
    mg.attrs["block_rows"] = b
    mg.create_array("x", shape=(n, *m.shape), dtype=m.dtype, chunks=(xr, *m.shape), compressors=zstd, fill_value=0)
    mg.create_array("mask", shape=(n,), dtype="bool", chunks=(b,), compressors=zstd, fill_value=False)
    if m.has_tokens_mask:
        mg.create_array(
            "tokens_mask",
            shape=(n, m.shape[0]),
            dtype="bool",
            chunks=(b, m.shape[0]),
            compressors=zstd,
            fill_value=False,
        )
    if m.provenance_codes:
        mg.create_array("provenance", shape=(n,), dtype="int8", chunks=(b,), compressors=zstd, fill_value=-1)
    mg.create_array(
        "input_hash", shape=(n,), dtype="uint64", chunks=(b,), compressors=zstd, fill_value=store.HASH_NOT_RECORDED
    )
    nb = store.n_blocks(n, b)
    mg.create_array("counts", shape=(nb,), dtype=str, chunks=(1,), compressors=None)
    mg.create_array("done", shape=(nb,), dtype="uint8", chunks=(1,), compressors=None, fill_value=0)


def _changed_rows(old_values: np.ndarray, old_mask: np.ndarray, values: np.ndarray, mask: np.ndarray) -> int:
    """Rows whose mask, or whose value where present, differs between the stored and the new arrays."""
    axes = tuple(range(1, values.ndim))
    differ = ~np.all(old_values == values, axis=axes) if axes else old_values != values
    return int(((old_mask != mask) | (mask & differ)).sum())


class CacheWriter:
    """Writes one store. Several writers (ranks) may hold the same store and write disjoint blocks."""

    def __init__(self, path: str | Path, group: zarr.Group, spec: CacheSpec, n: int) -> None:
        self.path = Path(path)
        self.group = group
        self.spec = spec
        self.n = n
        self._blocks = {m.name: store.modality_block_rows(group, m.name) for m in spec.modalities}
        meta = group_meta(group)
        self._finalized = bool(meta.get("finalized", False))
        self._added = set(additions(meta))  # modalities added to the finished store
        self._adding = adding(meta)  # those of them being added (not finished)

    @property
    def finalized(self) -> bool:
        """Whether the store is marked finalized (as this writer last saw or set it)."""
        return self._finalized

    @property
    def adding(self) -> set[str]:
        """The modalities being added to the store (their addition not finished), as this writer last saw or
        set them."""
        return set(self._adding)

    # ------------------------------------------------------------------ creation / resume
    @classmethod
    def create(
        cls,
        path: str | Path,
        spec: CacheSpec,
        stay_ids: np.ndarray,
        subject_ids: np.ndarray,
        *,
        overwrite: bool = False,
        rows_per_block: int | dict[str, int] | None = None,
    ) -> CacheWriter:
        """Create the store with every array (empty), or resume it when it holds the same spec and ids.

        ``rows_per_block`` overrides the block size (a power of two), for all modalities or per modality.
        Raises :class:`CacheError` when a store with another spec or other stay ids exists and
        ``overwrite`` is false.
        """
        path = Path(path)
        stay_ids, subject_ids = _check_ids(stay_ids, subject_ids)
        if path.exists() and not overwrite:
            w = cls.open(path)
            w._check_same(spec, stay_ids, subject_ids)
            return w
        tmp = path.with_name(path.name + ".creating")
        try:
            if path.exists():
                shutil.rmtree(path)
            cls._create(path, tmp, spec, stay_ids, subject_ids, rows_per_block)
        except OSError as e:
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp)
            raise CacheError(f"cannot create the cache {path}: {io_error_cause(e, path.parent)}") from e
        return cls(path, zarr.open_group(str(path), mode="r+", zarr_format=3), spec, int(stay_ids.size))

    @staticmethod
    def _create(
        path: Path,
        tmp: Path,
        spec: CacheSpec,
        stay_ids: np.ndarray,
        subject_ids: np.ndarray,
        rows_per_block: int | dict[str, int] | None,
    ) -> None:
        """Write every array (empty) under ``tmp``, then rename it to ``path``."""
        n = int(stay_ids.size)
        path.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        g = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        zstd = [ZstdCodec(level=store.ZSTD_LEVEL)]
        big = max(1, min(n, 1 << 17))
        g.create_array("stay_id", shape=(n,), dtype="int64", chunks=(big,), compressors=zstd)[:] = stay_ids
        g.create_array("subject_id", shape=(n,), dtype=str, chunks=(big,), compressors=zstd)[:] = subject_ids
        for m in spec.modalities:
            over = rows_per_block.get(m.name) if isinstance(rows_per_block, dict) else rows_per_block
            _create_modality_arrays(g, m, n, over)
        lg = g.create_group("labels")
        for t in spec.tasks:
            shape = (n,) if t.kind == "multiclass" else (n, len(t.classes))
            dtype = "int64" if t.kind == "multiclass" else "int8"
            a = lg.create_array(
                t.name, shape=shape, dtype=dtype, chunks=(big, *shape[1:]), compressors=zstd, fill_value=0
            )
            a.attrs.update({"kind": t.kind, "classes": list(t.classes)})
            lg.create_array(
                f"{t.name}_mask", shape=(n,), dtype="bool", chunks=(big,), compressors=zstd, fill_value=False
            )
        rg = g.create_group("reference")
        for r in spec.references:
            rg.create_array(r, shape=(n,), dtype="float32", chunks=(big,), compressors=zstd, fill_value=0)
            rg.create_array(f"{r}_mask", shape=(n,), dtype="bool", chunks=(big,), compressors=zstd, fill_value=False)
        g.create_group("splits")
        g.attrs[store.ATTR_KEY] = new_meta(spec, n)
        # The store appears under its final name only once all metadata exists: readable at every moment.
        tmp.rename(path)

    @classmethod
    def open(cls, path: str | Path) -> CacheWriter:
        """Reopen an existing store to resume writing (or to write more blocks from another rank)."""
        path = Path(path)
        meta = read_meta(path)
        g = zarr.open_group(str(path), mode="r+", zarr_format=3)
        return cls(path, g, CacheSpec.from_json(meta["spec"]), int(meta["n_rows"]))

    def spec_differences(self, spec: CacheSpec) -> list[str]:
        """The top-level keys of the spec (``modalities``, ``adapter_options``...) in which ``spec`` differs
        from the store's; empty when a run of ``spec`` resumes this store.

        Modalities added under a name of their own (the same input under another encoder,
        ``meta.renamed_additions``) are set aside when ``spec`` does not have them: a run of the dataset's own
        modalities resumes the store without knowing them."""
        mine = self.spec
        extra = set(renamed_additions(group_meta(self.group))) - {m.name for m in spec.modalities}
        if extra:
            mine = CacheSpec.from_json(self.spec.to_json())
            mine.modalities = [m for m in mine.modalities if m.name not in extra]
        if _spec_json(mine) == _spec_json(spec):
            return []
        a, b = mine.to_json(), spec.to_json()
        return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))

    def _check_same(self, spec: CacheSpec, stay_ids: np.ndarray, subject_ids: np.ndarray) -> None:
        diff = self.spec_differences(spec)
        if diff:
            raise CacheError(
                f"{self.path} exists with a different specification (differs in: {', '.join(diff)}); "
                "pass overwrite=True (--overwrite) to replace it, or choose another --out"
            )
        if self.n != stay_ids.size or not np.array_equal(np.asarray(store.array(self.group, "stay_id")[:]), stay_ids):
            raise CacheError(f"{self.path} exists with other stay ids; use --overwrite or another --out")
        if not np.array_equal(store.as_str_array(store.array(self.group, "subject_id")[:]), subject_ids):
            raise CacheError(f"{self.path} exists with other subject ids; use --overwrite or another --out")

    def _stay_id(self, row: int) -> int:
        """The stay id of ``row``, for error messages."""
        return int(np.asarray(store.array(self.group, "stay_id")[row]))

    # ------------------------------------------------------------------ finalized flag
    def _set_finalized(self, value: bool, extra: dict[str, Any] | None = None) -> None:
        meta = group_meta(self.group)
        meta["finalized"] = value
        if value:
            meta["finished"] = utc_now()
        else:
            meta.pop("finished", None)
        if extra:  # run summary (coverage, skips, cohort counts): kept apart from the spec, which resuming compares
            meta["summary"] = {**meta.get("summary", {}), **extra}
        with _writing(self.path, "the store's attributes"):
            self.group.attrs[store.ATTR_KEY] = meta
        self._finalized = value

    def _write_meta(self, meta: dict[str, Any], what: str) -> None:
        with _writing(self.path, what):
            self.group.attrs[store.ATTR_KEY] = meta

    def _before_change(self, modality: str | None = None) -> None:
        """Mark a finalized store not finalized before anything in it changes (a reader then refuses it).

        A change to a modality added to the finished store (``modality``) marks that addition as running
        instead (its record loses ``finished``): the store stays finalized, and the rows of that modality
        whose blocks are not done read as not written."""
        if modality is not None and modality in self._added:
            if modality not in self._adding:
                meta = group_meta(self.group)
                reopen_addition(meta, modality)
                self._write_meta(meta, "the store's attributes")
                self._adding.add(modality)
            return
        if self._finalized:
            self._set_finalized(False)

    # ------------------------------------------------------------------ shared arrays
    def write_labels(self, task: str, values: np.ndarray, mask: np.ndarray) -> int:
        """Labels of ``task``: [N, C] 0/1 (binary, multilabel) or [N] class index (multiclass).

        Returns the number of rows whose label (or whether it has one) differs from what the store held;
        nothing is written when none does.
        """
        t = self.spec.task(task)
        mask = np.asarray(mask, dtype=bool)
        values = np.asarray(values)
        if t.kind == "binary" and values.ndim == 1:
            values = values[:, None]
        expect = (self.n,) if t.kind == "multiclass" else (self.n, len(t.classes))
        if values.shape != expect or mask.shape != (self.n,):
            raise CacheError(
                f"labels {task!r}: expected {expect} and mask ({self.n},), got {values.shape} and {mask.shape}"
            )
        v = values[mask]
        if np.issubdtype(values.dtype, np.floating) and np.isnan(v).any():
            raise CacheError(f"labels {task!r}: NaN in rows marked labelled")
        if t.kind == "multiclass":
            bad = (v < 0) | (v >= len(t.classes))
            if bad.any():
                row = int(np.flatnonzero(mask)[np.flatnonzero(bad)[0]])
                raise CacheError(
                    f"labels {task!r}: row {row} (stay_id {self._stay_id(row)}) has "
                    f"class index {int(v[bad][0])} outside 0..{len(t.classes) - 1}"
                )
        elif not np.isin(v, (0, 1)).all():
            raise CacheError(f"labels {task!r}: {t.kind} labels must be 0/1")
        labels = store.array(self.group, f"labels/{task}")
        values = np.where(mask.reshape(-1, *([1] * (values.ndim - 1))), np.nan_to_num(values), 0).astype(labels.dtype)
        return self._replace(f"labels {task!r}", f"labels/{task}", values, mask)

    def _replace(self, what: str, path: str, values: np.ndarray, mask: np.ndarray) -> int:
        """Write ``values`` and ``mask`` to ``path`` and ``path_mask`` when they differ from the stored ones;
        the number of rows that differ."""
        arr, mask_arr = store.array(self.group, path), store.array(self.group, f"{path}_mask")
        changed = _changed_rows(np.asarray(arr[:]), np.asarray(mask_arr[:]).astype(bool), values, mask)
        if changed:
            self._before_change()
            with _writing(self.path, what):
                arr[:] = values
                mask_arr[:] = mask
        return changed

    def write_reference(self, name: str, values: np.ndarray, mask: np.ndarray) -> int:
        """A score that is not an input (e.g. APACHE IVa predicted mortality) with its validity mask.

        Returns the number of rows that differ from what the store held (nothing is written when none does).
        """
        if name not in self.spec.references:
            raise CacheError(f"reference {name!r} is not in the spec ({self.spec.references})")
        values = np.asarray(values, dtype=np.float32)
        mask = np.asarray(mask, dtype=bool) & np.isfinite(values)
        return self._replace(f"reference {name!r}", f"reference/{name}", np.where(mask, values, 0), mask)

    def write_split(self, name: str, values: np.ndarray) -> int:
        """An official split, [N] strings (``train``/``test``...) or integers.

        Returns the number of rows that differ from what the store held (all of them for a new split).
        """
        if name not in self.spec.splits:
            raise CacheError(f"split {name!r} is not in the spec ({self.spec.splits})")
        values = np.asarray(values)
        if values.shape != (self.n,):
            raise CacheError(f"split {name!r}: expected shape ({self.n},), got {values.shape}")
        sg = store.subgroup(self.group, "splits")
        integer = np.issubdtype(values.dtype, np.integer)
        values = values.astype(np.int64) if integer else values.astype(str)
        changed = self.n
        if name in sg:
            old = np.asarray(store.array(sg, name)[:])
            old = old if np.issubdtype(old.dtype, np.integer) else store.as_str_array(old)
            if old.dtype.kind == values.dtype.kind:
                changed = int((old != values).sum())
        if not changed:
            return 0
        self._before_change()
        big = max(1, min(self.n, 1 << 17))
        with _writing(self.path, f"split {name!r}"):
            a = sg.create_array(name, shape=(self.n,), dtype="int64" if integer else str, chunks=(big,), overwrite=True)
            a[:] = values
        return changed

    # ------------------------------------------------------------------ modality blocks
    def block_rows(self, modality: str) -> int:
        return self._blocks[modality]

    def done_blocks(self, modality: str) -> np.ndarray:
        """uint8 [n_blocks]: 1 where the block has been written completely."""
        return np.asarray(store.array(self.group, f"{modality}/done")[:])

    def pending_blocks(self, modality: str, rank: int = 0, world_size: int = 1) -> list[tuple[int, int]]:
        """(start, stop) of the blocks of ``modality`` not yet done that belong to ``rank`` (round robin)."""
        self.spec.modality(modality)
        b = self._blocks[modality]
        done = self.done_blocks(modality)
        return [store.block_bounds(k, b, self.n) for k in range(len(done)) if not done[k] and k % world_size == rank]

    def iter_blocks(self, modality: str) -> Iterator[tuple[int, int]]:
        b = self._blocks[modality]
        for k in range(store.n_blocks(self.n, b)):
            yield store.block_bounds(k, b, self.n)

    def input_hashes(self, modality: str) -> np.ndarray:
        """uint64 [N]: each row's recorded input fingerprint (0 where not recorded or not written yet)."""
        return np.asarray(store.array(self.group, f"{modality}/input_hash")[:])

    def block_counts(self, modality: str) -> list[dict[str, Any]]:
        """Per block of ``modality``: the counts recorded with it (skips and masked values by reason), ``{}``
        for a block not done."""
        return store.block_counts(self.group, modality)

    def invalidate_blocks(self, modality: str, starts: list[int]) -> None:
        """Mark the blocks starting at ``starts`` not done (their inputs changed): the next pass rewrites them.

        The store is marked not finalized first, so a run killed in between leaves a store the reader
        refuses, never a finalized one holding stale rows.
        """
        if not starts:
            return
        self._before_change(modality)
        b = self._blocks[modality]
        done = store.array(self.group, f"{modality}/done")
        with _writing(self.path, f"the done markers of {modality!r}"):
            for start in starts:
                if start % b:
                    raise CacheError(f"{modality}: row {start} does not start a block of {b} rows")
                done[start // b] = 0

    def write_block(
        self,
        modality: str,
        start: int,
        stop: int,
        x: np.ndarray,
        mask: np.ndarray,
        tokens_mask: np.ndarray | None = None,
        provenance: np.ndarray | None = None,
        input_hash: np.ndarray | None = None,
        counts: dict[str, Any] | None = None,
    ) -> None:
        """Write rows ``[start, stop)`` of a modality (one whole block), then mark the block done.

        ``x`` [stop-start, *shape]; rows with ``mask`` False are stored as zeros; ``tokens_mask``
        [rows, L] is required for sequence modalities and variable-length time series (their per-step mask;
        the steps outside it are stored as zeros); non-finite values in present rows of an embedding
        modality, and infinite values in a raw tabular/time-series one, are an error (raw modalities keep
        NaN as "not observed"). ``input_hash`` uint64 [rows]: each row's input fingerprint (default 0, not
        recorded); ``counts``: JSON-ready counts of the block (skips, masked values), summed over the store
        by ``extract``. A file-system error raises :class:`CacheError` naming the store; the block then stays
        not done.
        """
        m: ModalitySpec = self.spec.modality(modality)
        b = self._blocks[modality]
        if start % b or (stop != min(start + b, self.n)):
            raise CacheError(f"{modality}: rows [{start}, {stop}) are not one block of {b} rows")
        rows = stop - start
        x = np.asarray(x)
        mask = np.asarray(mask, dtype=bool)
        if x.shape != (rows, *m.shape) or mask.shape != (rows,):
            raise CacheError(
                f"{modality}: block [{start}, {stop}) expects x {(rows, *m.shape)} and mask "
                f"({rows},), got {x.shape} and {mask.shape}"
            )
        hashes = np.zeros(rows, np.uint64) if input_hash is None else np.asarray(input_hash, dtype=np.uint64)
        if hashes.shape != (rows,):
            raise CacheError(f"{modality}: block [{start}, {stop}) expects input_hash ({rows},), got {hashes.shape}")
        # one cast into a fresh array (the caller's buffer is never modified), then zeroing in place: the
        # block write stays a small fraction of the encoder's time even for per-token [rows, L, D] blocks
        xk = np.array(x, dtype=m.dtype)
        flat = xk.reshape(rows, -1)
        bad = mask & (~np.isfinite(flat) if m.kind in ("vector", "sequence") else np.isinf(flat)).any(axis=1)
        if bad.any():
            row = start + int(np.flatnonzero(bad)[0])
            what = "non-finite embedding" if m.kind in ("vector", "sequence") else "infinite value"
            raise CacheError(f"{modality}: {what} in present row {row} (stay_id {self._stay_id(row)})")
        xk[~mask] = 0
        mg = store.subgroup(self.group, modality)
        tm = None
        if m.has_tokens_mask:
            if tokens_mask is None:
                what = "variable-length time series" if m.variable_length else "sequence modality"
                raise CacheError(f"{modality}: {what} needs tokens_mask")
            tm = np.asarray(tokens_mask, dtype=bool) & mask[:, None]
            if tm.shape != (rows, m.shape[0]):
                raise CacheError(f"{modality}: tokens_mask shape {tm.shape} != {(rows, m.shape[0])}")
            xk[~tm] = 0  # zero the padding so it compresses and never leaks into a pooled mean
        self._before_change(modality)
        with _writing(self.path, f"block [{start}, {stop}) of {modality!r}"):
            if tm is not None:
                store.array(mg, "tokens_mask")[start:stop] = tm
            if m.provenance_codes:
                p = np.full(rows, -1, dtype=np.int8) if provenance is None else np.asarray(provenance, np.int8)
                store.array(mg, "provenance")[start:stop] = np.where(mask, p, -1)
            store.array(mg, "x")[start:stop] = xk
            store.array(mg, "mask")[start:stop] = mask
            store.array(mg, "input_hash")[start:stop] = hashes
            store.array(mg, "counts")[start // b] = json.dumps(counts or {}, sort_keys=True)
            store.array(mg, "done")[start // b] = 1

    def finalize(self, extra: dict[str, Any] | None = None) -> None:
        """Check every block of every modality is done and record the completion (and ``extra``). Modalities
        being added (:attr:`adding`) are exempt: their own done markers say which of their rows exist."""
        mods = [m.name for m in self.spec.modalities if m.name not in self._adding]
        missing = {name: int((self.done_blocks(name) == 0).sum()) for name in mods}
        missing = {k: v for k, v in missing.items() if v}
        if missing:
            raise CacheError(f"cannot finalize {self.path}: blocks not written: {missing}")
        self._set_finalized(True, extra)

    # ------------------------------------------------------------------ adding modalities to a finished store
    def add_modalities(
        self,
        spec: CacheSpec,
        new: dict[str, str],
        rows_per_block: int | dict[str, int] | None = None,
    ) -> None:
        """Extend the store to ``spec``, which is the store's spec plus the modalities ``new`` (``{name: the
        dataset's modality it encodes}``), perhaps in another order and with other ``adapter_options`` and
        ``extra``.

        The new modalities' arrays are created empty (no block done; a folder of that name that no spec names,
        left by a run killed here, is replaced), then the attributes take ``spec`` and record each as being
        added (``meta.start_addition``). Nothing else of the store is written, and the store keeps its
        finalized flag: readers see the new modalities' rows as not written until their blocks are done.
        ``CacheError`` when ``spec`` changes anything but those (a modality, a task, the dataset...) or names a
        modality the store has (remove it first with :meth:`remove_modality`).
        """
        mine = {m.name: m for m in self.spec.modalities}
        for name in new:
            if name in mine:
                raise CacheError(f"{self.path} already has modality {name!r}; remove it before adding it again")
        theirs = {m.name: m for m in spec.modalities}
        unknown = set(new) - set(theirs)
        if unknown:
            raise CacheError(f"modalities {sorted(unknown)} to add are not in the spec given")
        changed = sorted(
            n for n, m in mine.items() if n not in theirs or _modality_json(m) != _modality_json(theirs[n])
        )
        if changed:
            raise CacheError(f"{self.path}: adding modalities cannot change or remove the modalities {changed}")
        a, b = self.spec.to_json(), spec.to_json()
        free = ("modalities", "adapter_options", "extra")
        other = sorted(k for k in set(a) | set(b) if k not in free and a.get(k) != b.get(k))
        if other:
            raise CacheError(f"{self.path}: adding modalities cannot change the spec's {', '.join(other)}")
        with _writing(self.path, f"the arrays of {', '.join(map(repr, new))}"):
            for name in new:
                if (self.path / name).exists():  # left by a run killed before its attributes were written
                    shutil.rmtree(self.path / name)
                over = rows_per_block.get(name) if isinstance(rows_per_block, dict) else rows_per_block
                _create_modality_arrays(self.group, theirs[name], self.n, over)
        meta = group_meta(self.group)
        meta["spec"] = spec.to_json()
        # a version-2 store given a modality that only version 3 describes (a variable-length time series, a
        # modality tied to tasks) becomes version 3, so an omnifuse that cannot read it refuses it
        version = max([int(meta.get("schema_version", SCHEMA_VERSION))] + [min_schema_version(theirs[n]) for n in new])
        meta["schema_version"] = version
        for name, source in new.items():
            start_addition(meta, name, source)
        self._write_meta(meta, "the store's attributes")
        self.spec = CacheSpec.from_json(meta["spec"])
        for name in new:
            self._blocks[name] = store.modality_block_rows(self.group, name)
        self._added |= set(new)
        self._adding |= set(new)

    def remove_modality(self, name: str) -> None:
        """Remove modality ``name``: first from the attributes (its spec and addition record), then its arrays,
        so no reader ever sees a spec naming arrays half deleted. The finalized flag is kept: the store without
        it is as complete as it was."""
        self.spec.modality(name)  # KeyError naming the modalities
        meta = group_meta(self.group)
        spec = CacheSpec.from_json(meta["spec"])
        spec.modalities = [m for m in spec.modalities if m.name != name]
        meta["spec"] = spec.to_json()
        drop_addition(meta, name)
        self._write_meta(meta, "the store's attributes")
        with _writing(self.path, f"the arrays of {name!r}"):
            shutil.rmtree(self.path / name, ignore_errors=False)
        self.spec = spec
        self._blocks.pop(name, None)
        self._added.discard(name)
        self._adding.discard(name)

    def finish_additions(
        self, names: list[str], config: dict[str, Any] | None = None, summaries: dict[str, Any] | None = None
    ) -> list[str]:
        """Record as finished the additions among ``names`` that are being added and have every block done,
        with the run's configuration ``config`` and, per modality, its summary (``summaries[name]``, stored
        under ``summary.extract.modalities``). One write of the attributes, none when nothing finishes.
        Returns the modalities finished."""
        done = [n for n in names if n in self._adding and bool(self.done_blocks(n).all())]
        if not done:
            return []
        meta = group_meta(self.group)
        summary = dict(meta.get("summary") or {})
        extract = dict(summary.get("extract") or {})
        mods = dict(extract.get("modalities") or {})
        for name in done:
            finish_addition(meta, name, config)
            if summaries and name in summaries:
                mods[name] = summaries[name]
        if summaries:
            extract["modalities"] = mods
            summary["extract"] = extract
            meta["summary"] = summary
        self._write_meta(meta, "the store's attributes")
        self._adding -= set(done)
        return done
