"""Numeric checks of array inputs (tabular, time series, vectors) before they are stored.

For a raw ``tabular`` or ``timeseries`` modality (NaN = "not observed") each cell is checked and a bad one
becomes NaN, counted by reason:

- ``infinite``: +inf or -inf in the input;
- ``too large for float32`` (or ``float16``): finite, but beyond what the store's dtype holds (1e39 in
  float32), which would be stored as inf;
- ``outside the plausible range``: below or above the feature's range (``preprocessing["ranges"]``,
  ``{feature: [low, high]}``, either bound ``null`` for none; bounds included). Values and bounds are
  compared as the store holds them (rounded to float32), so a value written as a bound's own literal, such
  as an FiO2 of 0.21 against a low bound of 0.21, is inside.

NaN stays NaN and is not counted (not observed). An item left with no finite value is skipped ("no finite
value"): the modality is missing for the row. A ``vector`` input (one embedding per row) cannot hold a gap:
any bad value skips the row.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from omnifuse.cache import ModalitySpec

INFINITE = "infinite"
OUTSIDE_RANGE = "outside the plausible range"
NO_FINITE_VALUE = "no finite value"


def too_large(dtype: str) -> str:
    """The reason for a finite value beyond what ``dtype`` holds."""
    return f"too large for {dtype}"


def check_ranges(ranges: dict[str, Any], feature_names: list[str] | None, where: str) -> None:
    """``ValueError`` naming ``where`` unless ``ranges`` maps feature names of the modality to ``[low, high]``
    (numbers or ``None``, low <= high)."""
    if not ranges:
        return
    if feature_names is None:
        raise ValueError(f"{where}: ranges need feature names (the modality has none)")
    unknown = sorted(set(ranges) - set(feature_names))
    if unknown:
        raise ValueError(f"{where}: ranges name features the modality does not have: {unknown}")
    for name, bounds in ranges.items():
        ok = isinstance(bounds, (list, tuple)) and len(bounds) == 2
        ok = ok and all(b is None or (isinstance(b, (int, float)) and not isinstance(b, bool)) for b in bounds)
        if not ok or (bounds[0] is not None and bounds[1] is not None and bounds[0] > bounds[1]):
            raise ValueError(f"{where}: range of {name!r} must be [low, high] with low <= high, got {bounds!r}")


@dataclass
class Checked:
    """One array item after :meth:`ValueGuard.check`: float64 values (bad cells NaN), masked cells counted by
    reason and by feature, and a skip reason when the item cannot be stored."""

    values: np.ndarray
    masked: Counter[str] = field(default_factory=Counter)
    features: Counter[str] = field(default_factory=Counter)
    skip: str | None = None


class ValueGuard:
    """The checks of one array modality, from its :class:`ModalitySpec` (kind, dtype, feature names, ranges)."""

    def __init__(self, spec: ModalitySpec) -> None:
        self.kind = spec.kind
        self.dtype = spec.dtype
        self.np_dtype = np.dtype(spec.dtype)
        self.limit = float(np.finfo(self.np_dtype).max)
        n_features = spec.shape[-1]
        self.names = spec.feature_names or [str(j) for j in range(n_features)]
        ranges = spec.preprocessing.get("ranges") or {}
        check_ranges(ranges, spec.feature_names, f"modality {spec.name!r}")
        self.lo = np.full(n_features, -np.inf)
        self.hi = np.full(n_features, np.inf)
        for j, name in enumerate(self.names):
            low, high = ranges.get(name, (None, None))
            self.lo[j] = -np.inf if low is None else float(low)
            self.hi[j] = np.inf if high is None else float(high)
        self.lo, self.hi = self.lo.astype(self.np_dtype), self.hi.astype(self.np_dtype)  # as stored

    def check(self, values: np.ndarray) -> Checked:
        """``values`` float64 [*shape] (features last) -> :class:`Checked`."""
        x = np.array(values, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):  # what is too large is counted below
            stored = x.astype(self.np_dtype)
        reasons = [
            (INFINITE, np.isinf(x)),
            (too_large(self.dtype), np.isfinite(x) & (np.abs(x) > self.limit)),
            (OUTSIDE_RANGE, (stored < self.lo) | (stored > self.hi)),
        ]
        out = Checked(x)
        bad = np.zeros(x.shape, dtype=bool)
        for reason, where in reasons:
            where = where & ~bad  # each cell counted once, under its first reason
            n = int(where.sum())
            if n:
                out.masked[reason] += n
                per_feature = where.reshape(-1, x.shape[-1]).sum(axis=0)
                out.features.update({self.names[j]: int(c) for j, c in enumerate(per_feature) if c})
                bad |= where
        if self.kind == "vector":
            if np.isnan(x).any() or (bad & ~reasons[2][1]).any():
                out.skip = "non-finite values in a vector input"
            elif bad.any():
                out.skip = "values outside the plausible range in a vector input"
            return out
        x[bad] = np.nan
        if not np.isfinite(x).any():
            out.skip = NO_FINITE_VALUE
        return out
