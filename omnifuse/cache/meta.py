"""The store's ``omnifuse`` attributes: written once by the creator, read and checked by every opener.

The writer builds them with :func:`new_meta`; the reader and the writer (when it resumes) read them with
:func:`read_meta`, which refuses anything that is not an omnifuse cache of :data:`SCHEMA_VERSION`. Keeping
both sides here lets ``reader`` and ``writer`` depend on this module instead of on each other.
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

from omnifuse.cache.schema import SCHEMA_VERSION, CacheError, CacheSpec, SchemaMismatchError
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
    """Raise :class:`SchemaMismatchError` unless ``meta`` (the attributes of ``path``) has this schema version."""
    v = meta.get("schema_version")
    if v != SCHEMA_VERSION:
        raise SchemaMismatchError(
            f"{path} was written with cache schema version {v}, this omnifuse reads version {SCHEMA_VERSION}; "
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
