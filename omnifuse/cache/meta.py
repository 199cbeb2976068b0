"""The store's ``omnifuse`` attributes: written once by the creator, read and checked by every opener.

The writer builds them with :func:`new_meta`; the reader and the writer (when it resumes) read them with
:func:`read_meta`, which refuses anything that is not an omnifuse cache of a readable schema version. Keeping
both sides here lets ``reader`` and ``writer`` depend on this module instead of on each other.

Modalities added to a finished store (``omnifuse extract --add-modality``) are recorded under
:data:`ADDITIONS_KEY`: ``{name: {"source": the dataset's modality it encodes, "started": time, "finished":
time or absent while the addition runs, "config": the resolved configuration of the run that finished it}}``.
A modality whose record has no ``finished`` is *being added*: its blocks are written while the store stays
finalized, and a reader sees its rows not written as incomplete for that modality only. The record lives
beside the spec, not in it, so it is not part of the fingerprint; the spec holds the added modality itself.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import zarr

from omnifuse.cache.schema import (
    READABLE_SCHEMA_VERSIONS,
    SCHEMA_VERSION,
    CacheError,
    CacheSpec,
    SchemaMismatchError,
)
from omnifuse.cache.store import ATTR_KEY


def software_versions() -> dict[str, str]:
    """Versions of Python and of the packages that shape a cache's contents (those installed)."""
    out = {"python": platform.python_version()}
    for pkg in ("omnifuse", "torch", "transformers", "zarr", "numpy", "polars"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def utc_now() -> str:
    """The current UTC time in ISO 8601, to the second."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def new_meta(spec: CacheSpec, n_rows: int) -> dict[str, Any]:
    """The attributes of a store just created for ``spec`` with ``n_rows`` rows (not finalized yet)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "spec": spec.to_json(),
        "n_rows": n_rows,
        "created": utc_now(),
        "software": software_versions(),
        "finalized": False,
    }


def check_schema(meta: dict[str, Any], path: Path) -> None:
    """Raise :class:`SchemaMismatchError` unless ``meta`` (the attributes of ``path``) has a schema version this
    omnifuse reads (:data:`~omnifuse.cache.schema.READABLE_SCHEMA_VERSIONS`: a version-2 store reads as before)."""
    v = meta.get("schema_version")
    if v not in READABLE_SCHEMA_VERSIONS:
        readable = " and ".join(str(r) for r in READABLE_SCHEMA_VERSIONS)
        raise SchemaMismatchError(
            f"{path} was written with cache schema version {v}, this omnifuse reads versions {readable}; "
            "re-run `omnifuse extract` with this version to rebuild it"
        )


def group_meta(group: zarr.Group) -> dict[str, Any]:
    """A copy of the ``omnifuse`` attributes of an opened store, as the Zarr group holds them."""
    meta = group.attrs[ATTR_KEY]
    if not isinstance(meta, dict):
        raise SchemaMismatchError(f"{group.store_path}: the '{ATTR_KEY}' attributes are not a JSON object")
    return dict(meta)


def read_meta(path: str | Path) -> dict[str, Any]:
    """The store's ``omnifuse`` attributes, after checking it is an omnifuse cache of this schema version.

    Reads ``zarr.json`` directly (no Zarr group is opened), so a store that is not a cache fails fast with
    :class:`SchemaMismatchError`; a path that does not exist raises :class:`CacheError`.
    """
    path = Path(path)
    if not path.exists():
        raise CacheError(f"no cache at {path}")
    meta_file = path / "zarr.json"
    if not meta_file.exists():
        raise SchemaMismatchError(f"{path} is not a Zarr v3 store (no zarr.json); is it an omnifuse cache?")
    try:
        doc = json.loads(meta_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SchemaMismatchError(f"{path}/zarr.json cannot be read: {e}") from e
    meta = doc.get("attributes", {}).get(ATTR_KEY)
    if doc.get("zarr_format") != 3 or meta is None:
        raise SchemaMismatchError(f"{path} is not an omnifuse cache (no '{ATTR_KEY}' attributes)")
    check_schema(meta, path)
    return dict(meta)


ADDITIONS_KEY = "additions"
"""The attribute recording modalities added to a finished store (see the module docstring)."""


def additions(meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The store's addition records, ``{modality: {"source", "started", "finished"?, "config"?}}`` (a copy;
    empty for a store to which nothing was added)."""
    return {name: dict(record) for name, record in (meta.get(ADDITIONS_KEY) or {}).items()}


def adding(meta: dict[str, Any]) -> set[str]:
    """The modalities being added: recorded, not finished (a run in progress, or killed)."""
    return {name for name, record in additions(meta).items() if not record.get("finished")}


def renamed_additions(meta: dict[str, Any]) -> dict[str, str]:
    """Modalities added under a name the dataset does not give them (the same input under another encoder):
    ``{cache name: the dataset's modality it encodes}``."""
    return {name: str(r["source"]) for name, r in additions(meta).items() if r.get("source", name) != name}


def start_addition(meta: dict[str, Any], name: str, source: str) -> None:
    """Record in ``meta`` that ``name`` (encoding the dataset's modality ``source``) is being added now."""
    meta[ADDITIONS_KEY] = {**additions(meta), name: {"source": source, "started": utc_now()}}


def finish_addition(meta: dict[str, Any], name: str, config: dict[str, Any] | None = None) -> None:
    """Record in ``meta`` that the addition of ``name`` finished now (every block written), with the resolved
    configuration ``config`` of the run that finished it."""
    records = additions(meta)
    record = records[name]
    record["finished"] = utc_now()
    if config is not None:
        record["config"] = config
    meta[ADDITIONS_KEY] = {**records, name: record}


def reopen_addition(meta: dict[str, Any], name: str) -> None:
    """Mark the finished addition ``name`` in ``meta`` as being added again (blocks of it are rewritten)."""
    records = additions(meta)
    records[name].pop("finished", None)
    meta[ADDITIONS_KEY] = records


def drop_addition(meta: dict[str, Any], name: str) -> None:
    """Forget the addition record of ``name`` in ``meta`` (the modality is removed or replaced)."""
    meta[ADDITIONS_KEY] = {k: v for k, v in additions(meta).items() if k != name}
