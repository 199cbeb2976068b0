"""Reading the feature cache into numpy (or torch) with schema validation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

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
    ) -> CacheData:
        """Load the chosen modalities (default all) and rows (default all) into numpy arrays.

        Raises :class:`IncompleteCacheError` when a chosen modality has rows not yet written, or when the
        store is not finalized (every block written but the extraction did not finish, or it is being
        updated), unless ``allow_incomplete``: then rows not written are reported missing (mask False).
        """
        names = [m.name for m in self.spec.modalities] if modalities is None else list(modalities)
        for name in names:
            self.spec.modality(name)  # KeyError with the list of names
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
            x = take(store.array(g, "x"))
            tm = take(store.array(g, "tokens_mask")).astype(bool) & mask[:, None] if ms.has_tokens_mask else None
            prov = take(store.array(g, "provenance")) if ms.provenance_codes else None
            if incomplete.any():
                x[incomplete] = 0
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
