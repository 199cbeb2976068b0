"""``omnifuse info``'s numbers (rows, subjects, coverage, patterns, labels, references) and their rendering."""

from __future__ import annotations

import pytest

from omnifuse.cache import cache_info
from omnifuse.cache.info import format_info
from tests.helpers import write_toy_cache


def test_info_numbers(tmp_path):
    path = tmp_path / "c.zarr"
    spec, stay, subj, truth, (y, ym, yp, yc, ref, refm) = write_toy_cache(path)
    info = cache_info(path)
    assert info["rows"] == 37 and info["subjects"] == 19
    cov = {m["name"]: m["present"] for m in info["modalities"]}
    assert cov == {k: int(v[1].sum()) for k, v in truth.items()}
    assert sum(info["patterns"].values()) == 37
    allp = "img+rep+ehr"
    assert info["patterns"].get(allp, 0) == int((truth["img"][1] & truth["rep"][1] & truth["ehr"][1]).sum())
    mort = next(t for t in info["tasks"] if t["name"] == "mort")
    assert mort["labelled"] == int(ym.sum())
    assert mort["prevalence"]["died"] == pytest.approx(y[ym].mean())
    assert info["references"] == {"apache": int(refm.sum())}
    assert info["summary"]["cohort"] == {"too_short": 2}
    assert info["size_bytes"] > 0


def test_format_info_renders_the_numbers(tmp_path):
    path = tmp_path / "c.zarr"
    _, _, _, truth, (y, ym, *_rest) = write_toy_cache(path)
    info = cache_info(path)
    lines = format_info(info).splitlines()
    assert lines[0] == f"{path}: toy 1 (schema v3)"  # finalized: no warning
    img = next(line for line in lines if line.startswith("img "))
    assert img.split()[1:4] == ["vector", "8", "float16"] and img.split()[-1] == "resnet34"
    assert img.split()[4] == str(int(truth["img"][1].sum()))
    assert f"  mort (binary): {int(ym.sum())} labelled; died {y[ym].mean():.1%}" in lines
    assert "  too_short: 2" in lines and "licence: ODbL" in lines and "splits: official" in lines
    assert lines[-2] == f"fingerprint {info['fingerprint']['digest']}"
    info["finalized"] = False
    assert format_info(info).splitlines()[0].endswith(", NOT finalized: extraction incomplete)")
