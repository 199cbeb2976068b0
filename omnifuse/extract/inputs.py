"""Input fingerprints: one 64-bit hash per row and modality, stored with the row (``<m>/input_hash``).

A resumed extraction hashes the inputs the adapter gives now and compares them with the stored ones; a block
holding a row whose hash differs is encoded again (``stale_blocks``), so a store never mixes embeddings of
old inputs with new labels or new rows. What is hashed, by input kind:

- ``image``, ``volume``: the path as given, and the file's size and modification time in nanoseconds (for a
  folder such as a DICOM series, the relative name, size and modification time of every file under it);
  the pixels are not read, so hashing a CXR folder costs one ``stat`` per image;
- ``text``: the UTF-8 bytes of the text;
- ``array``: the shape and the float64 values (NaN in any bit pattern hashes alike);
- a missing input (``None``): one constant; an input the adapter skips: a constant per reason.

The item's ``provenance`` code is hashed with its value. ``blake2b`` with an 8-byte digest; 0 is reserved
for "not recorded" (``omnifuse.cache.store.HASH_NOT_RECORDED``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from omnifuse.cache import CacheWriter
from omnifuse.cache.store import HASH_NOT_RECORDED
from omnifuse.extract.datasets.base import Item, Skip


def _digest(*parts: bytes) -> int:
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    value = int.from_bytes(h.digest(), "little")
    return value if value != HASH_NOT_RECORDED else 1


def _file_state(path: Path) -> bytes:
    """Size and modification time of a file, or of every file under a folder (sorted by relative name)."""
    try:
        st = path.stat()
    except OSError as e:
        return f"unavailable {type(e).__name__}".encode()
    if not path.is_dir():
        return f"{st.st_size} {st.st_mtime_ns}".encode()
    entries = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            p = Path(root) / name
            try:
                s = p.stat()
            except OSError:
                continue
            entries.append(f"{p.relative_to(path).as_posix()} {s.st_size} {s.st_mtime_ns}")
    return "\n".join(entries).encode("utf-8", "surrogatepass")


def _value_bytes(kind: str, value: object) -> bytes:
    if kind in ("image", "volume") and isinstance(value, (str, os.PathLike)):
        p = Path(value)
        return b"file\0" + os.fsencode(p) + b"\0" + _file_state(p)
    if kind == "text" and isinstance(value, str):
        return b"text\0" + value.encode("utf-8", "surrogatepass")
    if kind == "array":
        try:
            arr = np.asarray(value, dtype=np.float64)
        except Exception:  # noqa: BLE001 - whatever the value does, the pipeline masks the row as not numeric
            return f"not numeric {type(value).__name__}".encode()
        arr = np.where(np.isnan(arr), np.nan, arr)  # one NaN bit pattern
        return b"array\0" + str(arr.shape).encode() + b"\0" + np.ascontiguousarray(arr, dtype="<f8").tobytes()
    return f"{kind} {type(value).__name__}\0{value!r}".encode("utf-8", "surrogatepass")


def input_hash(kind: str, entry: Item | Skip | None) -> int:
    """The fingerprint of one row's input of a modality whose adapter input kind is ``kind``
    (``image``, ``volume``, ``text`` or ``array``)."""
    if entry is None:
        return _digest(b"missing")
    if isinstance(entry, Skip):
        return _digest(b"skip", entry.reason.encode())
    provenance = b"" if entry.provenance is None else str(entry.provenance).encode()
    return _digest(_value_bytes(kind, entry.value), provenance)


def input_hashes(kind: str, entries: Sequence[Item | Skip | None]) -> np.ndarray:
    """uint64 [len(entries)]: :func:`input_hash` of each entry."""
    return np.fromiter((input_hash(kind, e) for e in entries), dtype=np.uint64, count=len(entries))


def stale_blocks(
    writer: CacheWriter,
    modality: str,
    kind: str,
    inputs: Callable[[int, int], Sequence[Item | Skip | None]],
) -> tuple[list[int], int]:
    """The done blocks of ``modality`` holding a row whose input changed since it was written.

    ``inputs(start, stop)`` gives the rows' current inputs (the adapter's). Returns the start row of each such
    block and the number of rows that changed.
    """
    stored = writer.input_hashes(modality)
    done = writer.done_blocks(modality)
    starts: list[int] = []
    changed = 0
    for k, (start, stop) in enumerate(writer.iter_blocks(modality)):
        if not done[k]:
            continue
        n = int((input_hashes(kind, inputs(start, stop)) != stored[start:stop]).sum())
        if n:
            starts.append(start)
            changed += n
    return starts, changed
