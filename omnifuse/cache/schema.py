"""The cache schema (Zarr v3): names, specs, and the attributes that make a store self-describing."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 3
"""Bumped whenever array names, shapes or attribute meanings change; readers refuse versions outside
:data:`READABLE_SCHEMA_VERSIONS`. Version 2 added, per modality, ``input_hash`` (each row's input fingerprint)
and ``counts`` (each block's skips and masked values). Version 3 added variable-length time series (a
``timeseries`` modality whose ``preprocessing["variable_length"]`` is true holds a per-step mask
``tokens_mask`` [N, T]: rows shorter than T are zero-padded) and the task keys of a modality's
``preprocessing`` (``input_for``, ``default_for``: :func:`task_inputs`); a reader that ignores either would
read padding as data or feed a task a window it must not see, so older readers must refuse these stores."""

READABLE_SCHEMA_VERSIONS = (2, 3)
"""The versions this omnifuse reads: a version-2 store has neither step masks nor task keys (every time
series full length, every modality an input of every task), so it reads as it always did."""

MODALITY_KINDS = ("vector", "sequence", "timeseries", "tabular")
TASK_KINDS = ("binary", "multilabel", "multiclass")
FEATURE_KIND_TYPES = ("numeric", "binary", "categorical")


class CacheError(Exception):
    """A cache cannot be written or read as asked."""


class SchemaMismatchError(CacheError):
    """The store was written with another schema version, or is not an omnifuse cache."""


class IncompleteCacheError(CacheError):
    """Some rows of a modality have not been written yet, or the store was never finalized (an extraction
    still running, killed, or run for some modalities only)."""


@dataclass(frozen=True)
class FeatureKind:
    """What one column of a raw (tabular or time-series) modality holds, as recorded in the cache.

    Written per column in ``preprocessing["feature_kinds"]`` as a string (``str(kind)``):

    - ``"numeric"``: a measurement or count; ``"numeric:log"`` adds a hint that the column is non-negative
      and right-skewed (lengths of stay, counts, lab values spanning decades), so ``log(1 + x)`` suits it;
    - ``"binary"``: 0 or 1 (NaN missing);
    - ``"categorical:<n>"``: an integer code 0 .. n-1 (NaN missing); the code -> category mapping is
      ``preprocessing["categories"][feature_name]``, a list of n names (code ``i`` is the i-th name).

    A modality without ``feature_kinds`` (every cache written before they existed) reads as all numeric.
    """

    type: str
    n_categories: int | None = None
    log: bool = False

    def __post_init__(self) -> None:
        if self.type not in FEATURE_KIND_TYPES:
            raise CacheError(f"feature kind {self.type!r} is not one of {FEATURE_KIND_TYPES}")
        if (self.type == "categorical") != (self.n_categories is not None):
            raise CacheError("a categorical feature kind, and only it, has a number of categories")
        if self.n_categories is not None and self.n_categories < 1:
            raise CacheError(f"a categorical feature needs at least one category, got {self.n_categories}")
        if self.log and self.type != "numeric":
            raise CacheError("only a numeric feature kind takes the log hint")

    @classmethod
    def parse(cls, text: str) -> FeatureKind:
        """``"numeric"``, ``"numeric:log"``, ``"binary"`` or ``"categorical:<n>"`` -> ``FeatureKind``."""
        head, _, tail = str(text).partition(":")
        if head == "numeric" and tail in ("", "log"):
            return cls("numeric", log=tail == "log")
        if head == "binary" and not tail:
            return cls("binary")
        if head == "categorical" and tail.isdigit():
            return cls("categorical", n_categories=int(tail))
        raise CacheError(f"feature kind {text!r} is not numeric, numeric:log, binary or categorical:<n>")

    def __str__(self) -> str:
        if self.type == "categorical":
            return f"categorical:{self.n_categories}"
        return "numeric:log" if self.log else self.type


def feature_kinds_of(preprocessing: dict[str, Any] | None, n_features: int) -> list[FeatureKind]:
    """The parsed kinds of a modality's ``n_features`` columns from its ``preprocessing`` (a
    :class:`ModalitySpec`'s, or a loaded ``ModalityData``'s): all numeric when none are recorded."""
    kinds = (preprocessing or {}).get("feature_kinds")
    if kinds is None:
        return [FeatureKind("numeric")] * n_features
    return [FeatureKind.parse(k) for k in kinds]


def check_feature_kinds(
    preprocessing: dict[str, Any], n_features: int, feature_names: list[str] | None, where: str
) -> None:
    """``CacheError`` (naming ``where``) unless ``preprocessing["feature_kinds"]``, when given, has one valid
    kind per column and every categorical column has its ``n`` category names in
    ``preprocessing["categories"]``."""
    kinds = preprocessing.get("feature_kinds")
    cats = preprocessing.get("categories") or {}
    if kinds is None:
        if cats:
            raise CacheError(f"{where}: categories are recorded without feature_kinds")
        return
    if len(kinds) != n_features:
        raise CacheError(f"{where}: {len(kinds)} feature kinds for {n_features} features")
    try:
        parsed = [FeatureKind.parse(k) for k in kinds]
    except CacheError as e:
        raise CacheError(f"{where}: {e}") from None
    categorical = [j for j, k in enumerate(parsed) if k.type == "categorical"]
    if categorical and feature_names is None:
        raise CacheError(f"{where}: categorical features need feature_names (their categories are keyed by name)")
    for j in categorical:
        name = feature_names[j] if feature_names is not None else str(j)
        names = cats.get(name)
        if names is None or len(names) != parsed[j].n_categories:
            got = "none" if names is None else len(names)
            raise CacheError(f"{where}: feature {name!r} is {kinds[j]} but has {got} category names")
    extra = sorted(set(cats) - {feature_names[j] for j in categorical if feature_names is not None})
    if extra:
        raise CacheError(f"{where}: categories given for features that are not categorical: {extra}")


@dataclass
class ModalitySpec:
    """One cached modality. ``shape`` is the per-row shape without N, e.g. ``(512,)`` or ``(150, 768)``.

    A raw modality may record its columns' kinds in ``preprocessing["feature_kinds"]`` (one string per
    column, see :class:`FeatureKind`) and, for categorical columns, ``preprocessing["categories"]`` (feature
    name -> category names); they are checked here and read through :attr:`feature_kinds` and
    :attr:`categories`. Being part of ``preprocessing``, they are stored in the spec and covered by the
    fingerprint with no change of schema version."""

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
        if self.kind == "timeseries" and self.preprocessing.get("variable_length"):
            if len(self.shape) != 2:
                raise CacheError(f"time-series modality {self.name!r} needs shape (T, F), got {self.shape}")
            self.has_tokens_mask = True  # the per-step mask: True for a row's first (length) steps
        for key in TASK_KEYS:
            tasks = self.preprocessing.get(key)
            if tasks is not None and (not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks)):
                raise CacheError(f"modality {self.name!r}: preprocessing[{key!r}] must be a list of task names")
        if self.dtype not in ("float16", "float32"):
            raise CacheError(f"modality {self.name!r}: dtype must be float16 or float32, got {self.dtype!r}")
        if self.feature_names is not None and len(self.feature_names) != self.shape[-1]:
            raise CacheError(
                f"modality {self.name!r}: {len(self.feature_names)} feature names for {self.shape[-1]} features"
            )
        check_feature_kinds(self.preprocessing, self.shape[-1], self.feature_names, f"modality {self.name!r}")

    @property
    def variable_length(self) -> bool:
        """A time series whose rows hold their first ``length`` of ``shape[0]`` steps, the rest zero padding;
        the per-step mask is ``tokens_mask`` (schema version 3). False for every other modality and for every
        time series of a version-2 store (full length)."""
        return self.kind == "timeseries" and self.has_tokens_mask

    @property
    def feature_kinds(self) -> list[str]:
        """One kind per column (``FeatureKind`` strings: ``numeric``, ``numeric:log``, ``binary``,
        ``categorical:<n>``), recorded in ``preprocessing["feature_kinds"]``; all ``numeric`` when the store
        records none (caches written before kinds existed)."""
        return [str(k) for k in feature_kinds_of(self.preprocessing, self.shape[-1])]

    @property
    def categories(self) -> dict[str, list[str]]:
        """Categorical feature name -> its category names (code ``i`` is the i-th), from
        ``preprocessing["categories"]``; empty when none are recorded."""
        return {k: list(v) for k, v in (self.preprocessing.get("categories") or {}).items()}


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

TASK_KEYS = ("input_for", "default_for")
"""Keys of a modality's ``preprocessing`` that tie it to tasks (schema version 3; absent: every task):

- ``input_for``: the only tasks the modality may be an input of. A modality holding data past another task's
  prediction time (MIMIC's whole-stay EHR, ``ehr_stay``, runs past the 48 h of in-hospital mortality) names
  the tasks it serves; stage two refuses it for the others (:func:`check_task_inputs`).
- ``default_for``: the tasks for which stage two chooses it when no modalities are named (the 48 h ``ehr``
  beside ``ehr_stay`` is a default of mortality only, yet may be named for phenotyping)."""


def min_schema_version(m: ModalitySpec) -> int:
    """The oldest schema version that can describe ``m``: 3 for a variable-length time series or a modality
    tied to tasks, else 2."""
    return 3 if m.variable_length or any(k in m.preprocessing for k in TASK_KEYS) else 2


def _tasks_of(m: ModalitySpec, key: str) -> list[str] | None:
    v = m.preprocessing.get(key)
    return None if v is None else [str(t) for t in v]


def task_inputs(spec: CacheSpec, task: str, available: list[str] | None = None) -> list[str]:
    """The modalities stage two uses for ``task`` when none are named: of ``available`` (default: the spec's
    modalities, in order), those that may be inputs of ``task`` (``input_for``) and are among its defaults
    (``default_for``); a modality with neither key (every modality of a version-2 store), or not in ``spec``,
    is an input of every task."""
    by_name = {m.name: m for m in spec.modalities}
    out = []
    for name in [m.name for m in spec.modalities] if available is None else available:
        m = by_name.get(name)
        allowed = None if m is None else _tasks_of(m, "input_for")
        default = None if m is None else _tasks_of(m, "default_for")
        if (allowed is None or task in allowed) and (default is None or task in default):
            out.append(name)
    return out


def check_task_inputs(spec: CacheSpec, task: str, names: list[str]) -> None:
    """``CacheError`` naming the modality when one of ``names`` may not be an input of ``task`` (its
    ``input_for`` does not list the task: it holds data from after the task's prediction time)."""
    by_name = {m.name: m for m in spec.modalities}
    for n in names:
        m = by_name.get(n)
        allowed = None if m is None else _tasks_of(m, "input_for")
        if allowed is not None and task not in allowed:
            window = m.preprocessing.get("window") if m is not None else None
            why = f" ({window})" if window else ""
            raise CacheError(
                f"modality {n!r} is an input of {', '.join(map(repr, allowed))} only{why}: it would show task "
                f"{task!r} data from after its prediction time; leave it out of --modality"
            )
