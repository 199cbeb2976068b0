"""benchmarks/extract.py's logic on the CPU with a handful of small files: the rows and columns it prints on
every device, rates that are what it timed, the nvJPEG row through the stand-in decoder, and reuse of the
files of an earlier run in the same folder (what benchmarks/gpu_check.sh relies on)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from omnifuse.extract import pipeline
from omnifuse.extract.images import GpuJpegDecoder
from tests.extract.test_images_gpu import FakeTorchvision

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_extract", ROOT / "benchmarks" / "extract.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_extract"] = mod
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("bench_extract", None)


SMALL = dict(device="cpu", precision="fp32", batch_size=2, image_size=32, png_size=40, jpeg_size=(120, 150))


def test_benchmark_rows_and_columns_on_the_cpu(bench, tmp_path, monkeypatch):
    timed: list[float] = []
    orig = bench._timed

    def spy(ranks, device, fn):
        rate = orig(ranks, device, fn)
        timed.append(rate)
        return rate

    monkeypatch.setattr(bench, "_timed", spy)
    setup, rows = bench.run_benchmark(
        images=3, jpegs=5, texts=4, skip_bert_base=True, num_workers=0, jpeg_decoding="both", work=tmp_path, **SMALL
    )
    assert [r.label for r in rows] == [
        "image: ResNet34, PNG 40x40",
        "image: ResNet34, JPEG 120x150, PIL",  # no GPU: one row, PIL, whatever --jpeg-decoding says
        "text: MiniLM-L6, 256 tok",
    ]
    assert [r.items for r in rows] == [3, 5, 4]
    assert rows[2].decode is None and all(r.decode and r.decode > 0 for r in rows[:2])
    # per image row: decode, forward, end to end; per text row: forward, end to end; the rates are those timed
    assert timed == [
        rows[0].decode,
        rows[0].forward,
        rows[0].end_to_end,
        rows[1].decode,
        rows[1].forward,
        rows[1].end_to_end,
        rows[2].forward,
        rows[2].end_to_end,
    ]
    for r in rows:
        assert r.ratio == pytest.approx(r.end_to_end / r.forward)
    assert setup.world_size == 1 and setup.workers == 0 and setup.batch_size == 2
    table = bench.format_table(setup, rows)
    lines = table.splitlines()
    assert lines[1].split() == ["inputs", "items", "decode/s", "forward/s", "end", "to", "end/s", "ratio"]
    assert len(lines) == 2 + len(rows) and lines[4].split()[-5:-3] == ["4", "-"]
    md = bench.format_table(setup, rows, markdown=True).splitlines()
    assert md[2] == "| inputs | items | decode/s | forward/s | end to end/s | ratio |" and len(md) == 4 + len(rows)
    # the stores of the run are removed, the input files kept for the next run in the same folder
    assert not list(tmp_path.glob("stores-*")) and (tmp_path / "jpg120x150" / ".done-5").exists()
    mtime = (tmp_path / "jpg120x150" / "0.jpg").stat().st_mtime_ns
    bench.run_benchmark(images=0, jpegs=5, texts=0, num_workers=0, work=tmp_path, **SMALL)
    assert (tmp_path / "jpg120x150" / "0.jpg").stat().st_mtime_ns == mtime


def test_benchmark_gpu_rows_through_the_stand_in_decoder(bench, tmp_path, monkeypatch):
    """``--jpeg-decoding both`` where a GPU decoder exists (the stand-in, on the CPU): an nvJPEG row and a PIL
    row, the first with every JPEG decoded by the stand-in (its counts in the notes), the second with none."""
    fake = FakeTorchvision()
    made: list[GpuJpegDecoder] = []

    def decoder(prep, device):
        made.append(GpuJpegDecoder(fake.decode_jpeg, "UNCHANGED", prep, torch.device("cpu")))
        return made[-1]

    monkeypatch.setattr(pipeline, "gpu_jpeg_decoder", decoder)
    setup, rows = bench.run_benchmark(
        images=0, jpegs=6, texts=0, num_workers=0, jpeg_decoding="both", work=tmp_path, **SMALL
    )
    assert [r.label for r in rows] == ["image: ResNet34, JPEG 120x150, nvJPEG", "image: ResNet34, JPEG 120x150, PIL"]
    assert setup.notes == ["image: ResNet34, JPEG 120x150, nvJPEG: {'GPU': 6}"]  # the decode-only pass
    assert pipeline.gpu_jpeg_decoder is decoder  # the PIL row's switch is undone
    assert sum(k for k, _, _ in fake.calls) == 6 + 6  # decode-only and extract; the PIL row never called it


def test_benchmark_imports_only_what_the_gpu_machines_have():
    """``gpu_check.sh --check-imports``: the benchmark on the CPU with polars and pydicom blocked, every package
    that omnifuse or the script imports checked against the GPU machines' list and the carried Zarr wheels."""
    r = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--check-imports", "--jpegs", "0"],
        cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "check-imports: ok" in r.stdout and "text: MiniLM-L6" in r.stdout
