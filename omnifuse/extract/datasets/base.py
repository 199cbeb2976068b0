"""The adapter protocol: what a dataset gives the extraction pipeline (docs/internals.md, section 2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from omnifuse.cache.schema import TaskSpec

InputKind = Literal["image", "text", "volume", "array"]


@dataclass
class RawModality:
    """One modality as the adapter provides it, before encoding.

    ``input`` says which encoder family handles it; ``array`` inputs pass through unchanged and then need
    ``shape`` (per row, without N) and ``kind`` (``tabular``, ``timeseries`` or ``vector``). ``ranges``
    (array inputs with ``feature_names``): the plausible range ``(low, high)`` of features by name, either
    bound ``None`` for none; the pipeline masks a value outside it (NaN, counted) and records the ranges in
    the modality's ``preprocessing["ranges"]``.
    """

    name: str
    input: InputKind
    shape: tuple[int, ...] | None = None
    kind: str | None = None
    feature_names: list[str] | None = None
    preprocessing: dict = field(default_factory=dict)
    provenance_codes: list[str] | None = None
    dtype: str | None = None  # "float32" for raw arrays by default, "float16" for embeddings
    available: bool = True  # False when the dataset's source for this modality is absent altogether
    absent_reason: str = ""  # why, said once by the pipeline and kept in the cache attributes
    ranges: dict[str, tuple[float | None, float | None]] | None = None  # feature name -> (low, high)


@dataclass
class Item:
    """A present input: a path (image, volume), a string (text) or an array."""

    value: object
    provenance: int | None = None


@dataclass
class Skip:
    """An input that exists but cannot be used: the modality is masked for the row and the reason counted.

    ``reason`` is short and never contains report text.
    """

    reason: str


@dataclass
class Cohort:
    """The rows of a dataset: keys, patient groups, labels and what is not an input."""

    stay_id: np.ndarray  # int64 [N], unique
    subject_id: np.ndarray  # str [N]
    tasks: list[TaskSpec] = field(default_factory=list)
    labels: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # task -> (y, mask)
    references: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    splits: dict[str, np.ndarray] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(len(self.stay_id))


@runtime_checkable
class Adapter(Protocol):
    name: str
    version: str

    def options(self) -> dict: ...

    def cohort(self) -> Cohort: ...

    def modalities(self) -> list[RawModality]: ...

    def inputs(self, modality: str, rows: np.ndarray) -> list[Item | Skip | None]:
        """Raw inputs for ``rows`` (positions into ``cohort().stay_id``); ``None`` means missing."""
        ...
