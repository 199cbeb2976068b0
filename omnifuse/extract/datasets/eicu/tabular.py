"""Shared pieces of the eICU tabular modalities (``admission``, ``exam_values``, ``treatments``,
``care_limitation``): column declarations with their kind, unit and range, categorical codes, and the
per-stay matrix.

Every column declares its :class:`omnifuse.cache.schema.FeatureKind` (``numeric``, ``numeric:log``,
``binary`` or ``categorical:<n>``). A categorical column stores the code ``0 .. n-1`` of its value in the
column's fixed category list (NaN: empty or not in the list); the lists go into the modality's
``preprocessing["categories"]``, the kinds into ``preprocessing["feature_kinds"]``, and the numeric columns'
indices into ``preprocessing["continuous"]`` (what stage two standardises; 0/1 flags and codes pass as they are).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from omnifuse.cache.schema import FeatureKind
from omnifuse.extract.datasets.base import RawModality


@dataclass(frozen=True)
class Column:
    """One tabular column: name, kind (a ``FeatureKind`` string; categorical columns give ``categories``
    instead and get ``categorical:<n>``), unit, plausible range, and where it comes from."""

    name: str
    kind: str
    unit: str
    lo: float | None = None
    hi: float | None = None
    source: str = ""
    categories: tuple[str, ...] | None = None

    @property
    def feature_kind(self) -> FeatureKind:
        if self.categories is not None:
            return FeatureKind("categorical", n_categories=len(self.categories))
        return FeatureKind.parse(self.kind)

    @property
    def range(self) -> tuple[float | None, float | None]:
        k = self.feature_kind
        if k.type == "binary":
            return (0, 1)
        if k.type == "categorical":
            assert k.n_categories is not None
            return (0, k.n_categories - 1)
        return (self.lo, self.hi)


def binary(name: str, unit: str, source: str) -> Column:
    return Column(name, "binary", unit, source=source)


def categorical(name: str, categories: tuple[str, ...], source: str) -> Column:
    return Column(name, "categorical", "code (see categories)", source=source, categories=tuple(categories))


def code_of(expr: pl.Expr, categories: tuple[str, ...] | list[str]) -> pl.Expr:
    """The string ``expr`` (stripped) as its code in ``categories`` (Float64 0 .. n-1), null where empty or
    not listed."""
    return (
        expr.fill_null("")
        .str.strip_chars()
        .replace_strict(list(categories), list(range(len(categories))), default=None, return_dtype=pl.Float64)
    )


def in_range(expr: pl.Expr, lo: float | None, hi: float | None) -> pl.Expr:
    """``expr`` where within ``[lo, hi]`` (bounds included, ``None`` open), null elsewhere."""
    ok = pl.lit(True)
    if lo is not None:
        ok = ok & (expr >= lo)
    if hi is not None:
        ok = ok & (expr <= hi)
    return pl.when(ok).then(expr).otherwise(None)


def to_matrix(frame: pl.DataFrame, columns: list[Column], stay_index: pl.DataFrame) -> np.ndarray:
    """``frame`` (``stay`` and one column per ``Column``, any subset of the cohort's stays) -> float32
    [N, F] in cohort row order, NaN where the frame has no value or no row."""
    x = np.full((stay_index.height, len(columns)), np.nan, np.float32)
    joined = frame.join(stay_index, on="stay", how="inner")
    if joined.height:
        x[joined["row"].to_numpy()] = joined.select([c.name for c in columns]).to_numpy().astype(np.float32)
    return x


def tabular_modality(name: str, columns: list[Column], preprocessing: dict) -> RawModality:
    """The ``RawModality`` of a tabular ``[F]`` float32 modality with its kinds, categories, units, sources,
    continuous columns and ranges recorded."""
    kinds = [c.feature_kind for c in columns]
    pre = {
        **preprocessing,
        "feature_kinds": [str(k) for k in kinds],
        "categories": {c.name: list(c.categories) for c in columns if c.categories is not None},
        "continuous": [j for j, k in enumerate(kinds) if k.type == "numeric"],
        "units": {c.name: c.unit for c in columns},
        "sources": {c.name: c.source for c in columns},
        "missing": "NaN (not recorded, empty, not listed or out of range)",
    }
    return RawModality(
        name=name,
        input="array",
        kind="tabular",
        shape=(len(columns),),
        dtype="float32",
        feature_names=[c.name for c in columns],
        preprocessing=pre,
        ranges={c.name: c.range for c in columns},
    )
