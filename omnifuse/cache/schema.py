"""The cache schema (Zarr v3): names, specs, and the attributes that make a store self-describing."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 2
"""Bumped whenever array names, shapes or attribute meanings change; readers refuse other versions.
Version 2 added, per modality, ``input_hash`` (each row's input fingerprint) and ``counts`` (each block's
skips and masked values)."""

MODALITY_KINDS = ("vector", "sequence", "timeseries", "tabular")
TASK_KINDS = ("binary", "multilabel", "multiclass")


class CacheError(Exception):
    """A cache cannot be written or read as asked."""


class SchemaMismatchError(CacheError):
    """The store was written with another schema version, or is not an omnifuse cache."""


class IncompleteCacheError(CacheError):
    """Some rows of a modality have not been written yet, or the store was never finalized (an extraction
    still running, killed, or run for some modalities only)."""


@dataclass
class ModalitySpec:
    """One cached modality. ``shape`` is the per-row shape without N, e.g. ``(512,)`` or ``(150, 768)``."""

    name: str
    kind: str
    shape: tuple[int, ...]
    dtype: str = "float16"
    encoder: str = ""
    encoder_hash: str = ""
    preprocessing: dict[str, Any] = field(default_factory=dict)
    feature_names: list[str] | None = None
    provenance_codes: list[str] | None = None
    has_tokens_mask: bool = False

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)
        if self.kind not in MODALITY_KINDS:
            raise CacheError(f"modality {self.name!r}: kind {self.kind!r} is not one of {MODALITY_KINDS}")
        if not self.name or "/" in self.name or self.name in _RESERVED:
            raise CacheError(f"modality name {self.name!r} is empty, contains '/' or is reserved")
        if self.kind == "sequence":
            if len(self.shape) != 2:
                raise CacheError(f"sequence modality {self.name!r} needs shape (L, D), got {self.shape}")
            self.has_tokens_mask = True
        if self.dtype not in ("float16", "float32"):
            raise CacheError(f"modality {self.name!r}: dtype must be float16 or float32, got {self.dtype!r}")
        if self.feature_names is not None and len(self.feature_names) != self.shape[-1]:
            raise CacheError(
                f"modality {self.name!r}: {len(self.feature_names)} feature names for {self.shape[-1]} features"
            )


@dataclass
class TaskSpec:
    """A prediction task. Binary: ``classes=[positive]``, labels [N, 1]; multilabel [N, C]; multiclass [N]."""

    name: str
    kind: str
    classes: list[str]

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise CacheError(f"task {self.name!r}: kind {self.kind!r} is not one of {TASK_KINDS}")
        if self.kind == "binary" and len(self.classes) != 1:
            raise CacheError(f"binary task {self.name!r} needs exactly one (positive) class name")
        if self.kind == "multiclass" and len(self.classes) < 2:
            raise CacheError(f"multiclass task {self.name!r} needs at least two classes")
        if self.kind == "multilabel" and len(self.classes) < 1:
            raise CacheError(f"multilabel task {self.name!r} needs class names")

    @property
    def num_outputs(self) -> int:
        return len(self.classes)


@dataclass
class CacheSpec:
    """Everything that defines a store before any row is written."""

    dataset: str
    dataset_version: str
    modalities: list[ModalitySpec]
    tasks: list[TaskSpec] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)
    adapter_options: dict[str, Any] = field(default_factory=dict)
    license: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [m.name for m in self.modalities]
        if len(set(names)) != len(names):
            raise CacheError(f"duplicate modality names: {names}")
        tnames = [t.name for t in self.tasks]
        if len(set(tnames)) != len(tnames):
            raise CacheError(f"duplicate task names: {tnames}")

    def modality(self, name: str) -> ModalitySpec:
        for m in self.modalities:
            if m.name == name:
                return m
        raise KeyError(f"no modality {name!r} in cache; it has {[m.name for m in self.modalities]}")

    def task(self, name: str) -> TaskSpec:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(f"no task {name!r} in cache; it has {[t.name for t in self.tasks]}")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for m in d["modalities"]:
            m["shape"] = list(m["shape"])
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CacheSpec:
        d = dict(d)
        d["modalities"] = [ModalitySpec(**{**m, "shape": tuple(m["shape"])}) for m in d["modalities"]]
        d["tasks"] = [TaskSpec(**t) for t in d.get("tasks", [])]
        return cls(**d)


_RESERVED = {"stay_id", "subject_id", "labels", "reference", "splits", "time"}
