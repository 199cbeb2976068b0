"""The events file written in blocks of stays and discretised one block at a time gives the same bytes as the
whole file discretised at once (the path before blocks), on the real demos and on two identifier-shifted copies
of the MIMIC-IV demo (``benchmarks/mimic_scale.py``) whose stays straddle the blocks."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from omnifuse.extract.datasets.mimic.cohort import base_stays
from omnifuse.extract.datasets.mimic.discretize import discretize, discretize_parquet, discretize_stays
from omnifuse.extract.datasets.mimic.events import BLOCK_KEY, collect_events
from omnifuse.extract.datasets.mimic.readers import MimicLayout
from omnifuse.extract.datasets.mimic.variables import VARIABLES, column_offsets
from tests.helpers import MIMIC_III_DEMO as D3
from tests.helpers import MIMIC_IV_DEMO as D4

pytestmark = pytest.mark.skipif(not (D3.is_dir() and D4.is_dir()), reason="MIMIC demos not present")
HR = VARIABLES.index("Heart Rate")
HR_COL = column_offsets()[HR]


def _whole(path: Path, rows: np.ndarray, los: np.ndarray) -> np.ndarray:
    """The path before blocks: read the whole file, map its rows to output rows, discretise at once."""
    ev = pl.read_parquet(path)
    remap = np.full(int(ev["row"].max()) + 1, -1, dtype=np.int64)
    keep = rows[rows < remap.size]
    remap[keep] = np.flatnonzero(rows < remap.size)
    ev = ev.with_columns(pl.Series("row", remap[ev["row"].to_numpy()])).filter(pl.col("row") >= 0)
    return discretize(ev, rows.size, 2.0, 48.0, end_hours=los)


def _row_group_rows(path: Path) -> list[tuple[int, int]]:
    md = pq.ParquetFile(path).metadata
    col = pq.ParquetFile(path).schema_arrow.get_field_index("row")
    return [
        (md.row_group(g).column(col).statistics.min, md.row_group(g).column(col).statistics.max)
        for g in range(md.num_row_groups)
    ]


@pytest.mark.parametrize("demo, block", [("m3", 7), ("m4", 1), ("m4", 50)])
def test_blocks_give_the_adapters_bytes(demo, block, request, tmp_path):
    a, c, x = request.getfixturevalue(demo)
    stays, _ = base_stays(a.layout)
    path = tmp_path / "events.parquet"
    got = collect_events(a.layout, stays, path, hours=48.0, block_stays=block)
    rows = np.flatnonzero(got["any_in_stay"])
    assert np.array_equal(stays["stay_id"].to_numpy()[rows], c.stay_id)  # the cohort's stays, in its order
    pf = pq.ParquetFile(path)
    assert pf.schema_arrow.metadata[BLOCK_KEY] == str(block).encode()
    ranges = _row_group_rows(path)
    assert all(lo // block == hi // block for lo, hi in ranges)  # one block per row group
    assert [lo // block for lo, _ in ranges] == sorted({lo // block for lo, _ in ranges})  # in block order
    los = a.stays()["los_h"].to_numpy()
    y = discretize_parquet(path, rows, 2.0, 48.0, end_hours=los)
    assert y.dtype == np.float32 and y.tobytes() == x.tobytes()
    assert y.tobytes() == _whole(path, rows, los).tobytes()


@pytest.mark.parametrize("demo, block", [("m3", 7), ("m4", 1), ("m4", 50)])
def test_whole_stay_blocks_give_the_adapters_bytes(demo, block, request, tmp_path):
    """The whole-stay EHR (cap 336 h) discretised block by block is the adapter's (blocks of 4,096 stays: one
    block on a demo), and each stay's bins are the first bins of the whole file discretised at once."""
    a, c, _ = request.getfixturevalue(demo)
    stays, _ = base_stays(a.layout)
    path = tmp_path / "events.parquet"
    rows = np.flatnonzero(collect_events(a.layout, stays, path, hours=336.0, block_stays=block)["any_in_stay"])
    los = a.stays()["los_h"].to_numpy()
    values, offsets = discretize_stays(path, rows, 2.0, 336.0, los)
    want_values, want_offsets = a.ehr_stay_arrays()
    assert offsets.tobytes() == want_offsets.tobytes() and values.tobytes() == want_values.tobytes()
    ev = pl.read_parquet(path)
    remap = np.full(int(ev["row"].max()) + 1, -1, dtype=np.int64)
    remap[rows[rows < remap.size]] = np.flatnonzero(rows < remap.size)
    ev = ev.with_columns(pl.Series("row", remap[ev["row"].to_numpy()])).filter(pl.col("row") >= 0)
    dense = discretize(ev, rows.size, 2.0, 336.0, end_hours=los)  # [N, 168, 76] at once
    for i in range(rows.size):
        n = offsets[i + 1] - offsets[i]
        assert values[offsets[i] : offsets[i + 1]].tobytes() == dense[i, :n].tobytes()


def test_a_subset_of_rows_is_those_rows_of_the_whole(m4, tmp_path):
    """Stays left out (here the last ten and every third, as the mortality task drops stays) lend no event to
    another stay: each output row is the stay's own discretisation."""
    a, c, x = m4
    stays, _ = base_stays(a.layout)
    path = tmp_path / "events.parquet"
    rows = np.flatnonzero(collect_events(a.layout, stays, path, hours=48.0, block_stays=16)["any_in_stay"])
    pick = np.array([i for i in range(rows.size - 10) if i % 3])
    los = a.stays()["los_h"].to_numpy()
    y = discretize_parquet(path, rows[pick], 2.0, 48.0, end_hours=los[pick])
    assert y.tobytes() == x[pick].tobytes()


def test_a_file_without_blocks_is_one_block_and_bad_files_are_refused(tmp_path):
    ev = pl.DataFrame(
        {"row": [0, 0, 2, 5], "hours": [1.0, 3.0, 0.5, 47.0], "var": [HR] * 4, "val": [70.0, 80.0, 90.0, 100.0]},
        schema={"row": pl.Int32, "hours": pl.Float64, "var": pl.Int8, "val": pl.Float64},
    ).with_columns(pl.col("val").cast(pl.Utf8).alias("key"))
    plain = tmp_path / "plain.parquet"
    ev.write_parquet(plain)
    rows = np.array([0, 2, 5])
    y = discretize_parquet(plain, rows, 2.0, 48.0)
    want = discretize(ev.with_columns(pl.Series("row", [0, 0, 1, 2])), 3, 2.0, 48.0)
    assert y.tobytes() == want.tobytes()
    assert y[0, 0, HR_COL] == 70.0 and y[0, 1, HR_COL] == 80.0 and y[1, 0, HR_COL] == 90.0  # hand values
    assert y[2, 23, HR_COL] == 100.0 and y[2, 22, HR_COL] == 86.0  # before the first value: the normal value
    with pytest.raises(ValueError, match="rows must be non-negative and strictly increasing"):
        discretize_parquet(plain, np.array([2, 0]), 2.0, 48.0)
    mixed = tmp_path / "mixed.parquet"
    table = ev.to_arrow()
    pq.write_table(table.replace_schema_metadata({BLOCK_KEY: b"2"}), mixed)  # rows 0..5 in one row group
    with pytest.raises(ValueError, match="row group 0 does not hold one block of 2 stays"):
        discretize_parquet(mixed, rows, 2.0, 48.0)


def _scale_module():
    path = Path(__file__).parents[4] / "benchmarks" / "mimic_scale.py"
    spec = importlib.util.spec_from_file_location("mimic_scale", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_identifier_shifted_copies_tile_the_demo(m4, tmp_path):
    """Two copies of the MIMIC-IV demo (benchmarks/mimic_scale.py): ids of copy 1 shifted by 10^8, every other
    field as in the demo; the cohort is the demo's twice and, with blocks of 50 stays straddling the copies,
    the EHR is the demo's EHR twice."""
    ms = _scale_module()
    root = ms.generate(tmp_path, 2)
    st = pl.read_csv(root / "icu/icustays.csv.gz", infer_schema=False)
    demo = pl.read_csv(D4 / "icu/icustays.csv.gz", infer_schema=False)
    assert st.height == 2 * demo.height and st.head(demo.height).equals(demo)
    second = st.tail(demo.height)
    for col in ("subject_id", "hadm_id", "stay_id"):
        assert (second[col].cast(pl.Int64) - demo[col].cast(pl.Int64)).unique().to_list() == [10**8]
    assert second.drop("subject_id", "hadm_id", "stay_id").equals(demo.drop("subject_id", "hadm_id", "stay_id"))
    assert (root / "LICENSE.txt").read_bytes() == (D4 / "LICENSE.txt").read_bytes()
    a, c, x = m4
    layout = MimicLayout.detect(root)
    stays, _ = base_stays(layout)
    path = tmp_path / "events.parquet"
    rows = np.flatnonzero(collect_events(layout, stays, path, hours=48.0, block_stays=50)["any_in_stay"])
    assert np.array_equal(stays["stay_id"].to_numpy()[rows], np.concatenate([c.stay_id, c.stay_id + 10**8]))
    los = stays["los_h"].to_numpy()[rows]
    y = discretize_parquet(path, rows, 2.0, 48.0, end_hours=los)
    assert y.tobytes() == np.concatenate([x, x]).tobytes()
