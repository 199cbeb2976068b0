"""The store layout: chunk and block sizes, block bounds, strings read back, per-block counts summed."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from omnifuse.cache import CacheError
from omnifuse.cache.store import (
    array,
    as_str_array,
    block_bounds,
    block_rows,
    modality_block_rows,
    n_blocks,
    subgroup,
    total_counts,
    x_chunk_rows,
)


def test_default_chunks_are_about_megabytes():
    for shape, dtype in [((512,), "float16"), ((150, 768), "float16"), ((24, 76), "float32")]:
        r = x_chunk_rows(shape, dtype)
        nbytes = r * np.prod(shape) * (2 if dtype == "float16" else 4)
        assert 1 << 20 <= nbytes <= 4 << 20 or r == 4096, (shape, r, nbytes)
        assert block_rows(shape, dtype, 20000) % r == 0


def test_blocks_cover_the_rows_once():
    assert x_chunk_rows((512,), "float16") == 2048  # 2 MB / 1 kB per row
    assert block_rows((512,), "float16", 300) == 512  # at most the rows rounded up to a power of two
    assert block_rows((512,), "float16", 20000, override=8) == 8
    with pytest.raises(ValueError, match="rows per block must be a power of two, got 6"):
        block_rows((512,), "float16", 20000, override=6)
    assert n_blocks(37, 8) == 5 and n_blocks(0, 8) == 1
    assert [block_bounds(k, 8, 37) for k in range(5)] == [(0, 8), (8, 16), (16, 24), (24, 32), (32, 37)]


def test_strings_groups_and_counts(tmp_path):
    assert as_str_array(np.array(["a", "bc"], dtype=object)).dtype.kind == "U"
    assert as_str_array(np.array([], dtype=object)).shape == (0,)
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=3)
    g.create_group("img").attrs["block_rows"] = "8"
    g.create_array("stay_id", shape=(2,), dtype="int64")
    with pytest.raises(CacheError, match="'stay_id' is an array where the cache layout has a group"):
        subgroup(g, "stay_id")
    with pytest.raises(CacheError, match="'img' is a group where the cache layout has an array"):
        array(g, "img")
    with pytest.raises(CacheError, match="img/block_rows is '8', not an integer"):
        modality_block_rows(g, "img")
    blocks = [{"skipped": {"file not found": 2}}, {}, {"skipped": {"file not found": 1, "empty report": 1}}]
    assert total_counts(blocks) == {"skipped": {"empty report": 1, "file not found": 3}}
