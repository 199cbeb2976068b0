"""`omnifuse demo` on the bundled real eICU-CRD demo: end to end (short training: 2 folds, 2 epochs), and its
cache: the seven :data:`omnifuse.demo.DEMO_MODALITIES` (the exam text left out, said in one line), the full
cache with --all-modalities, and a cache with other modalities refused, never reused."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from omnifuse import demo
from omnifuse.cache import cache_info, load_cache
from omnifuse.cli import app
from tests.helpers import write_synthetic_cache

ROWS = 24  # the first stays of the demo: a few seconds of MiniLM


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    """(the demo's cache, the full cache) of the first ROWS stays: the eICU demo adapter restricted to the demo's
    modalities as ``extract_demo`` restricts it, and not restricted; one adapter and a short MiniLM for both
    (``test_demo_end_to_end`` runs ``extract_demo`` itself)."""
    from omnifuse.extract.datasets.registry import get_dataset
    from omnifuse.extract.encoders.text import build_text_encoder
    from omnifuse.extract.pipeline import extract

    root = tmp_path_factory.mktemp("demo_caches")
    short, full = root / "short.zarr", root / "full.zarr"
    adapter = get_dataset(demo.DEMO_DATASET).build_adapter({})
    text = build_text_encoder("minilm", pooling="mean", max_words=20, max_tokens=32, device="cpu", precision="fp32")
    opts = {"limit": ROWS, "progress": False, "text_encoder": text, "device": "cpu"}
    extract(demo.ModalitySubset(adapter, demo.DEMO_MODALITIES), short, **opts)
    extract(adapter, full, **opts)
    return short, full


def test_the_demo_modalities_are_the_full_extractions_but_the_exam_text(caches):
    short, full = caches
    assert set(demo.DEMO_LEFT_OUT) == {"exam"}
    assert tuple(m for m in demo.EICU_DEMO_MODALITIES if m not in demo.DEMO_LEFT_OUT) == demo.DEMO_MODALITIES
    s, f = cache_info(short), cache_info(full)
    assert [m["name"] for m in f["modalities"]] == list(demo.EICU_DEMO_MODALITIES)  # the adapter's order
    assert [m["name"] for m in s["modalities"]] == list(demo.DEMO_MODALITIES)
    assert s["finalized"] and f["finalized"] and s["rows"] == f["rows"] == ROWS
    # the same stays, labels, reference and features as the full extraction, exam aside
    a, b = load_cache(short), load_cache(full)
    assert np.array_equal(a.stay_id, b.stay_id) and s["references"] == f["references"]
    for name in demo.DEMO_MODALITIES:
        assert np.array_equal(a.modalities[name].mask, b.modalities[name].mask), name
        assert np.array_equal(a.modalities[name].x, b.modalities[name].x, equal_nan=True), name


def test_the_demo_says_what_it_leaves_out_and_trains_on_its_modalities(caches, monkeypatch, tmp_path, capsys):
    import omnifuse.experiments.compare as compare_module

    short, full = caches
    calls: list[dict] = []
    monkeypatch.setattr(compare_module, "compare", lambda *a, **k: calls.append({"args": a, **k}))
    monkeypatch.setattr(demo, "extract_demo", lambda *a, **k: pytest.fail("a finished cache is re-extracted"))
    demo.run_demo(short, tmp_path / "out", progress=False, n_jobs=1)
    record = json.loads((tmp_path / "out" / "demo.json").read_text())
    assert record["modalities"] == list(demo.DEMO_MODALITIES) and set(record["left_out"]) == {"exam"}
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("demo:")]
    assert len(lines) == 1
    assert "7 of the eICU demo's 8 modalities" in lines[0] and "left out: `exam`" in lines[0]
    assert "`omnifuse extract --dataset eicu-demo`" in lines[0] and "--all-modalities" in lines[0]
    demo.run_demo(full, tmp_path / "out", progress=False, n_jobs=1, all_modalities=True)
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("demo:")]
    assert line == f"demo: all eight modalities of the eICU demo (cache {full})"
    record = json.loads((tmp_path / "out" / "demo.json").read_text())  # the last run's: all eight
    assert record["modalities"] == list(demo.EICU_DEMO_MODALITIES) and record["left_out"] == {}
    short_call, full_call = calls
    assert short_call["args"][0] == short and short_call["modalities"] == list(demo.DEMO_MODALITIES)
    assert full_call["args"][0] == full and full_call["modalities"] is None


def test_the_default_caches(monkeypatch, tmp_path):
    """Without --cache the demo builds its own cache, and --all-modalities uses omnifuse extract's."""
    import omnifuse.experiments.compare as compare_module

    monkeypatch.chdir(tmp_path)
    made: list[tuple] = []
    monkeypatch.setattr(demo, "extract_demo", lambda cache, mods, **k: made.append((cache, mods)) or _Summary())
    monkeypatch.setattr(compare_module, "compare", lambda *a, **k: None)
    demo.run_demo(out=tmp_path / "o", progress=False, n_jobs=1)
    demo.run_demo(out=tmp_path / "o", progress=False, n_jobs=1, all_modalities=True)
    assert made == [(demo.DEMO_CACHE, list(demo.DEMO_MODALITIES)), (demo.FULL_CACHE, None)]
    assert demo.FULL_CACHE.as_posix() == "cache/eicu-demo.zarr" != demo.DEMO_CACHE.as_posix()


class _Summary:
    def render(self) -> str:
        return ""


@pytest.mark.parametrize(("which", "all_modalities", "says"), [
    ("full", False, "extra: exam"), ("short", True, "lacking: exam"), ("synthetic", False, "dataset 'synthetic'")])
def test_a_cache_with_other_modalities_is_refused(caches, monkeypatch, tmp_path, which, all_modalities, says):
    import omnifuse.experiments.compare as compare_module

    short, full = caches
    path = {"short": short, "full": full}.get(which) or write_synthetic_cache(tmp_path / "syn.zarr", n=40)
    monkeypatch.setattr(compare_module, "compare", lambda *a, **k: pytest.fail("a mismatched cache was used"))
    monkeypatch.setattr(demo, "extract_demo", lambda *a, **k: pytest.fail("a mismatched cache was extracted into"))
    with pytest.raises(demo.DemoCacheError, match=says):
        demo.run_demo(path, tmp_path / "out", progress=False, n_jobs=1, all_modalities=all_modalities)
    args = ["demo", "--cache", str(path), "--out", str(tmp_path / "o2"), "--jobs", "1"]
    r = CliRunner().invoke(app, [*args, "--all-modalities"] if all_modalities else args)
    assert r.exit_code == 2
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and says in errors[0] and str(path) in errors[0]


def test_demo_end_to_end(tmp_path):
    cache, out = tmp_path / "eicu-demo.zarr", tmp_path / "demo"
    r = CliRunner().invoke(app, ["demo", "--cache", str(cache), "--out", str(out), "--folds", "2",
                                 "--repeats", "1", "--epochs", "2", "--jobs", "1"])
    assert r.exit_code == 0, r.output
    assert sum(line.startswith("demo: 7 of the eICU demo's 8 modalities") for line in r.output.splitlines()) == 1
    info = cache_info(cache)
    assert info["rows"] == 2520 and info["subjects"] == 1841 and info["finalized"]
    assert {m["name"]: m["present"] for m in info["modalities"]} == {
        "vitals": 2433, "apache": 2205, "history": 2236, "diagnosis": 1159, "admission": 2520,
        "exam_values": 2044, "treatments": 1981}
    text = next(m for m in info["modalities"] if m["name"] == "history")
    assert text["encoder"] == "sentence-transformers/all-MiniLM-L6-v2" and text["shape"] == [384]
    assert info["references"] == {"apache_iva": 1683}
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"omnifuse", "concat"} <= {r.get("method") for r in rows}
    res = json.loads((out / "results.json").read_text())
    assert res and (out / "results.md").read_text().count("apache_iva") >= 1
    assert (out / "reliability.png").stat().st_size > 0
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["modalities"] == config["modalities"] == list(demo.DEMO_MODALITIES)
    assert json.loads((out / "demo.json").read_text())["left_out"] == demo.DEMO_LEFT_OUT
    # rerunning reuses the cache and the finished runs: no extraction, no training
    r2 = CliRunner().invoke(app, ["demo", "--cache", str(cache), "--out", str(out), "--folds", "2",
                                  "--repeats", "1", "--epochs", "2", "--jobs", "1"])
    assert r2.exit_code == 0, r2.output
