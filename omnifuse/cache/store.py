"""Layout of the Zarr v3 store: array names, chunking and the per-block done markers.

Chunking rule (so that no two writers ever touch the same chunk): every modality ``m`` has a block size
``B_m`` (rows). ``m/x`` is chunked by ``r_m`` rows, a power of two that divides ``B_m`` and keeps one chunk
near :data:`TARGET_CHUNK_BYTES`; ``m/mask``, ``m/tokens_mask``, ``m/provenance`` and ``m/input_hash`` are
chunked by exactly ``B_m`` rows. Writers write whole blocks ``[k B_m, (k+1) B_m)``, so every chunk of a
modality's arrays lies inside one block, and each block belongs to one writer (a rank, or the single process).
Arrays shared by all modalities (``stay_id``, ``subject_id``, labels, references, splits) are written once, by
the creator, before any block. ``m/done`` [n_blocks] uint8, one uncompressed chunk per block, is set after the
block's data: a block whose marker is 0 is "not written", whatever its data chunks hold.

``m/input_hash`` [N] uint64 is each row's input fingerprint (a file's path, size and modification time, a
text's or an array's content, or the reason it is missing; 0 = not recorded), written with the block: a
resumed extraction compares it with the inputs it sees now. ``m/counts`` [n_blocks] (JSON strings, one
chunk per block) holds each block's skips and masked values by reason, so the whole store's counts survive a
killed and resumed run.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

import numpy as np
import zarr

from omnifuse.cache.schema import CacheError

TARGET_CHUNK_BYTES = 2 * 1024 * 1024
MIN_BLOCK_ROWS = 256
MAX_BLOCK_ROWS = 4096
ZSTD_LEVEL = 3

ATTR_KEY = "omnifuse"
HASH_NOT_RECORDED = 0
"""``m/input_hash`` of a row written without an input fingerprint (a block written outside ``extract``)."""


def _pow2_floor(v: float) -> int:
    return 1 << max(0, int(math.floor(math.log2(max(v, 1.0)))))


def _pow2_ceil(v: int) -> int:
    return 1 << max(0, int(math.ceil(math.log2(max(v, 1)))))


def row_bytes(shape: tuple[int, ...], dtype: str) -> int:
    itemsize = 2 if dtype == "float16" else 4
    return max(1, math.prod(shape) * itemsize)


def x_chunk_rows(shape: tuple[int, ...], dtype: str) -> int:
    """Rows per chunk of ``m/x``: a power of two giving chunks of about 2 MB (uncompressed)."""
    return min(MAX_BLOCK_ROWS, _pow2_floor(TARGET_CHUNK_BYTES / row_bytes(shape, dtype)))


def block_rows(shape: tuple[int, ...], dtype: str, n_rows: int, override: int | None = None) -> int:
    """Rows per write block of a modality: a power-of-two multiple of the x chunk rows."""
    if override is not None:
        if override < 1 or override & (override - 1):
            raise ValueError(f"rows per block must be a power of two, got {override}")
        return override
    b = max(x_chunk_rows(shape, dtype), MIN_BLOCK_ROWS)
    return max(1, min(b, _pow2_ceil(n_rows)))


def n_blocks(n_rows: int, block: int) -> int:
    return max(1, -(-n_rows // block))


def block_bounds(k: int, block: int, n_rows: int) -> tuple[int, int]:
    return k * block, min((k + 1) * block, n_rows)


def as_str_array(values: object) -> np.ndarray:
    """Strings read from a Zarr vlen-utf8 array (numpy ``StringDType``) as a plain unicode array [N]."""
    v = np.asarray(values)
    if v.dtype.kind == "U":
        return v
    return np.array(v.tolist(), dtype=str) if v.size else np.array([], dtype=str)


def array(group: zarr.Group, path: str) -> zarr.Array:
    """The array at ``path`` under ``group`` (``"stay_id"``, ``"img/x"``, ``"labels/mort"``)."""
    node = group[path]
    if not isinstance(node, zarr.Array):
        raise CacheError(f"{group.store_path}: {path!r} is a group where the cache layout has an array")
    return node


def subgroup(group: zarr.Group, path: str) -> zarr.Group:
    """The group at ``path`` under ``group`` (a modality, ``"labels"``, ``"reference"``, ``"splits"``)."""
    node = group[path]
    if not isinstance(node, zarr.Group):
        raise CacheError(f"{group.store_path}: {path!r} is an array where the cache layout has a group")
    return node


def modality_block_rows(group: zarr.Group, modality: str) -> int:
    """The block size (rows) recorded on the group of ``modality``."""
    value = subgroup(group, modality).attrs["block_rows"]
    if not isinstance(value, int):
        raise CacheError(f"{group.store_path}: {modality}/block_rows is {value!r}, not an integer")
    return value


def block_counts(group: zarr.Group, modality: str) -> list[dict[str, Any]]:
    """The counts recorded with each block of ``modality`` (``m/counts``); ``{}`` for a block not done."""
    done = np.asarray(array(group, f"{modality}/done")[:]).astype(bool)
    raw = as_str_array(array(group, f"{modality}/counts")[:])
    return [json.loads(text) if ok and text else {} for text, ok in zip(raw.tolist(), done.tolist(), strict=True)]


def total_counts(blocks: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Blocks' counts (``{"skipped": {reason: n}, "values_masked": {reason: n}, ...}``) summed per key."""
    total: dict[str, Counter[str]] = {}
    for counts in blocks:
        for key, tally in counts.items():
            total.setdefault(key, Counter()).update(tally)
    return {key: dict(sorted(tally.items())) for key, tally in sorted(total.items())}
