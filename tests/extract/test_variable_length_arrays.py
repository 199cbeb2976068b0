"""The extraction pipeline on a variable-length time series (schema version 3: ``preprocessing["variable_length"]``):
items [t, F] with 1 <= t <= T are checked on their own t steps, zero-padded to T and stored with their step mask;
an item of another shape is a counted skip; ranges never see the padding."""

from __future__ import annotations

import numpy as np

from omnifuse.cache.reader import load_cache
from omnifuse.cache.schema import TaskSpec
from omnifuse.extract.datasets.base import Cohort, Item, RawModality, Skip
from omnifuse.extract.pipeline import extract

T, F = 6, 3


class SeriesAdapter:
    """Five stays: series of 1, 6, 3 steps, one too long (7 steps), one missing; feature ``b`` must lie in
    [1, 2] (the padding, 0, would be outside)."""

    name = "series"
    version = "1"
    license = "test data"

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.items = [
            np.column_stack([rng.normal(size=1), [1.5], rng.normal(size=1)]),
            np.column_stack([rng.normal(size=6), np.linspace(1, 2, 6), rng.normal(size=6)]),
            np.column_stack([rng.normal(size=3), [1.0, 5.0, 2.0], rng.normal(size=3)]),  # one value out of range
            np.ones((7, F)),
            None,
        ]

    def options(self) -> dict:
        return {}

    def cohort(self) -> Cohort:
        y = np.array([[0.0], [1.0], [0.0], [1.0], [0.0]], dtype=np.float32)
        return Cohort(
            stay_id=np.arange(10, 15, dtype=np.int64),
            subject_id=np.array(["a", "b", "c", "d", "e"]),
            tasks=[TaskSpec("t", "binary", ["yes"])],
            labels={"t": (y, np.ones(5, dtype=bool))},
        )

    def modalities(self) -> list[RawModality]:
        return [
            RawModality(
                name="series",
                input="array",
                kind="timeseries",
                shape=(T, F),
                feature_names=["a", "b", "c"],
                dtype="float32",
                preprocessing={"variable_length": True},
                ranges={"b": (1.0, 2.0)},
            )
        ]

    def inputs(self, modality: str, rows: np.ndarray) -> list[Item | Skip | None]:
        return [None if self.items[r] is None else Item(self.items[r]) for r in rows]


def test_variable_length_items_are_padded_with_their_step_mask(tmp_path):
    ad = SeriesAdapter()
    summary = extract(ad, tmp_path / "s.zarr", progress=False)
    cd = load_cache(tmp_path / "s.zarr")
    md = cd.modalities["series"]
    assert cd.attrs["schema_version"] == 3 and cd.spec.modality("series").variable_length
    assert md.mask.tolist() == [True, True, True, False, False]
    assert md.tokens_mask is not None
    assert md.tokens_mask.sum(1).tolist() == [1, 6, 3, 0, 0]
    assert np.array_equal(md.tokens_mask, np.arange(T)[None, :] < np.array([1, 6, 3, 0, 0])[:, None])
    for r in range(3):
        n = ad.items[r].shape[0]
        want = ad.items[r].astype(np.float32)
        if r == 2:
            want[1, 1] = np.nan  # outside [1, 2]: masked and counted
        np.testing.assert_array_equal(md.x[r, :n], want)
        assert (md.x[r, n:] == 0).all()  # zero padding, never checked against the range
    assert (md.x[3:] == 0).all()
    rep = summary.modalities["series"]
    assert rep.values_masked == {"outside the plausible range": 1} and rep.masked_features == {"b": 1}
    assert rep.skipped == {f"array shape (7, {F}) is not (1..{T}, {F})": 1}
