"""The cache fingerprint: what a store was made from and what it holds, as short digests.

``cache_fingerprint(cache_or_path)`` returns a JSON-ready dict:

- ``schema``: the cache schema version;
- ``dataset``: ``{"name", "version"}`` of the adapter;
- ``adapter_options``: the adapter's options as recorded (root folder, window, task...);
- ``modalities``: ``{name: {"kind", "shape", "dtype", "encoder", "encoder_hash", "preprocessing",
  "feature_names"}}``; ``preprocessing`` holds the image size, normalisation, pooling, words and tokens,
  precision, plausible ranges, and the encoder's ``source`` and ``licence``;
- ``rows``: sha256 of the stay ids and subject ids, in row order;
- ``inputs``: sha256 of every modality's per-row input fingerprints (``<m>/input_hash``), masks and done
  markers: it changes when any row's input (a file's path, size or modification time, a text, an array) or
  its outcome changes;
- ``labels``: sha256 of the labels and their masks, the reference scores and the splits;
- ``encoders_digest``: sha256 of ``schema`` and ``modalities`` only (what the rows went through, whatever
  the rows are): what a trained model needs a cache it scores to match;
- ``digest``: sha256 of the canonical JSON of everything above but the two digests.

Only the attributes and the per-row arrays of one number each are read (ids, input fingerprints, masks,
labels), never the embeddings: milliseconds for tens of thousands of rows. ``fingerprint_differences``
names what differs between two fingerprints, for messages.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from omnifuse.cache import store
from omnifuse.cache.reader import Cache, CacheData, open_cache
from omnifuse.cache.schema import CacheError

MODALITY_KEYS = ("kind", "shape", "dtype", "encoder", "encoder_hash", "preprocessing", "feature_names")
"""The recorded properties of a modality that the fingerprint keeps (and ``encoders_digest`` covers)."""


def canonical_json(obj: object) -> bytes:
    """``obj`` as compact JSON with sorted keys (the bytes every digest here is taken of)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str).encode()


def _sha256(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))  # length-prefixed: parts cannot run into each other
        h.update(p)
    return h.hexdigest()


def _array_bytes(values: np.ndarray) -> bytes:
    """Bytes of an id, mask, label or split array, independent of how Zarr returned it."""
    v = np.asarray(values)
    if v.dtype.kind in "USTO":
        return "\x1f".join(store.as_str_array(v).tolist()).encode("utf-8", "surrogatepass")
    if v.dtype.kind == "b":
        return np.ascontiguousarray(v, dtype=np.uint8).tobytes()
    if v.dtype.kind in "iu":
        return np.ascontiguousarray(v, dtype="<i8" if v.dtype.kind == "i" else "<u8").tobytes()
    return np.ascontiguousarray(v, dtype="<f4").tobytes()


def _as_cache(cache: Cache | CacheData | str | Path) -> Cache:
    if isinstance(cache, Cache):
        return cache
    if isinstance(cache, CacheData):
        if cache.path is None:
            raise CacheError("cache_fingerprint needs a stored cache; this CacheData was built in memory")
        return open_cache(cache.path)
    return open_cache(cache)


def _read(c: Cache, path: str) -> np.ndarray:
    return np.asarray(store.array(c.group, path)[:])


def cache_fingerprint(cache: Cache | CacheData | str | Path) -> dict[str, Any]:
    """The fingerprint of a stored cache (a path, an opened :class:`Cache`, or :class:`CacheData` loaded
    from a store); see the module docstring for its keys."""
    c = _as_cache(cache)
    spec = c.meta["spec"]  # the JSON as stored: no tuple/list or default-value differences
    modalities = {m["name"]: {k: m.get(k) for k in MODALITY_KEYS} for m in spec["modalities"]}
    rows = _sha256([_array_bytes(_read(c, "stay_id")), _array_bytes(_read(c, "subject_id"))])
    inputs: list[bytes] = []
    for name in modalities:
        inputs += [name.encode()] + [_array_bytes(_read(c, f"{name}/{a}")) for a in ("input_hash", "mask", "done")]
    labels: list[bytes] = []
    for t in sorted(spec.get("tasks", []), key=lambda t: t["name"]):
        labels += [canonical_json(t), _array_bytes(_read(c, f"labels/{t['name']}"))]
        labels.append(_array_bytes(_read(c, f"labels/{t['name']}_mask")))
    for r in sorted(spec.get("references", [])):
        labels += [f"reference {r}".encode(), _array_bytes(_read(c, f"reference/{r}"))]
        labels.append(_array_bytes(_read(c, f"reference/{r}_mask")))
    splits = store.subgroup(c.group, "splits")
    for s in sorted(spec.get("splits", [])):
        labels += [f"split {s}".encode(), _array_bytes(_read(c, f"splits/{s}")) if s in splits else b"(absent)"]
    out: dict[str, Any] = {
        "schema": c.meta["schema_version"],
        "dataset": {"name": spec["dataset"], "version": spec["dataset_version"]},
        "adapter_options": spec.get("adapter_options", {}),
        "modalities": modalities,
        "rows": rows,
        "inputs": _sha256(inputs),
        "labels": _sha256(labels),
    }
    out["encoders_digest"] = hashlib.sha256(canonical_json([out["schema"], modalities])).hexdigest()
    out["digest"] = hashlib.sha256(canonical_json({k: v for k, v in out.items() if k != "encoders_digest"})).hexdigest()
    return out


def _short(value: object, width: int = 60) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, str) and len(value) == 64:  # a sha256: its start is enough to tell them apart
        return repr(value[:12] + "...")
    return text if len(text) <= width else text[: width - 3] + "..."


def _dict_differences(where: str, expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    out = []
    for k in sorted(set(expected) | set(actual)):
        if k not in actual:
            out.append(f"{where}.{k} is absent, expected {_short(expected[k])}")
        elif k not in expected:
            out.append(f"{where}.{k} is {_short(actual[k])}, expected none")
        elif canonical_json(expected[k]) != canonical_json(actual[k]):
            out.append(f"{where}.{k} is {_short(actual[k])}, expected {_short(expected[k])}")
    return out


def fingerprint_differences(
    expected: dict[str, Any],
    actual: dict[str, Any],
    *,
    encoders_only: bool = False,
    modalities: list[str] | None = None,
) -> list[str]:
    """What differs between two fingerprints, one short line each (empty when they agree).

    ``encoders_only``: compare only what ``encoders_digest`` covers (schema and, per modality, encoder,
    weights hash, preprocessing, kind, shape, dtype, feature names); ``modalities``: only these modalities.
    """
    out = []
    if expected.get("schema") != actual.get("schema"):
        out.append(f"cache schema is {actual.get('schema')}, expected {expected.get('schema')}")
    exp_m, act_m = expected.get("modalities", {}), actual.get("modalities", {})
    for name in modalities if modalities is not None else list(exp_m):
        if name not in act_m:
            out.append(f"modality {name!r} is not in the cache")
        elif name in exp_m:
            for k in MODALITY_KEYS:
                a, b = exp_m[name].get(k), act_m[name].get(k)
                if isinstance(a, dict) and isinstance(b, dict):
                    out += _dict_differences(f"modality {name!r}: {k}", a, b)
                elif canonical_json(a) != canonical_json(b):
                    out.append(f"modality {name!r}: {k} is {_short(b)}, expected {_short(a)}")
    if encoders_only:
        return out
    if expected.get("dataset") != actual.get("dataset"):
        out.append(f"dataset is {_short(actual.get('dataset'))}, expected {_short(expected.get('dataset'))}")
    out += _dict_differences("adapter_options", expected.get("adapter_options", {}), actual.get("adapter_options", {}))
    for key, what in (("rows", "stay or subject ids"), ("inputs", "inputs of some rows"), ("labels", "labels")):
        if expected.get(key) != actual.get(key):
            out.append(f"{what} differ ({key} digest {_short(actual.get(key))}, expected {_short(expected.get(key))})")
    return out
