"""Distributed extraction: without torchrun one process is rank 0 of 1; torchrun with two CPU processes (gloo)
writes the same store as one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from omnifuse.cache import open_cache
from omnifuse.extract.datasets.manifest import ManifestAdapter
from omnifuse.extract.distributed import DistContext, init_distributed
from omnifuse.extract.pipeline import extract
from tests.helpers import IMAGE_SIZE, MAX_SLICES, MAX_TOKENS, assert_same_cache, minilm_dir

RANK_SCRIPT = """
import json, os, sys
import torch.distributed as dist
from omnifuse.cache.writer import CacheWriter
from omnifuse.extract import encoders as E
from omnifuse.extract.datasets.manifest import ManifestAdapter
from omnifuse.extract.pipeline import extract

manifest, spec, out, minilm, log_dir = sys.argv[1:6]
rank = int(os.environ["RANK"])
blocks = []
orig = CacheWriter.write_block
def write_block(self, modality, start, stop, **k):
    blocks.append([modality, start])
    return orig(self, modality, start, stop, **k)
CacheWriter.write_block = write_block
ie = E.build_image_encoder("random:resnet34", device="cpu", precision="fp32", size=%(size)d)
te = E.build_text_encoder(minilm, max_words=20, max_tokens=%(tokens)d, device="cpu", precision="fp32")
import torch
torch.set_num_threads(1)  # two ranks share the machine's cores
s = extract(ManifestAdapter(manifest, spec), out, image_encoder=ie, text_encoder=te, max_slices=%(slices)d,
            batch_size=2, rows_per_block=2, progress=False, num_workers=0)
with open(os.path.join(log_dir, f"rank{rank}.json"), "w") as f:
    json.dump({"blocks": blocks, "world": s.world_size, "finalized": s.finalized,
               "skipped": s.skipped, "dist_alive": dist.is_initialized()}, f)
"""


def test_without_torchrun_one_process_is_rank_0_of_1(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed(torch.device("cpu"))
    assert ctx == DistContext() and not ctx.active and ctx.is_main
    assert ctx.broadcast({"a": 1}) == {"a": 1} and ctx.gather(3) == [3]
    ctx.barrier()
    ctx.close()  # nothing to close: no group was started
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RuntimeError, match="WORLD_SIZE is 2 but RANK is not set: start .* with torchrun"):
        init_distributed(torch.device("cpu"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_cpu_ranks_equal_one_process(toy, image_encoder, text_encoder, tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(textwrap.dedent(RANK_SCRIPT % dict(size=IMAGE_SIZE, tokens=MAX_TOKENS, slices=MAX_SLICES)))
    out2 = tmp_path / "two.zarr"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
        str(script),
        str(toy["manifest"]),
        str(toy["spec"]),
        str(out2),
        minilm_dir(),
        str(tmp_path),
    ]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    logs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(lg["world"] == 2 and not lg["dist_alive"] for lg in logs)
    assert logs[0]["finalized"] and logs[1]["finalized"]  # rank 0 finalized the store; both report its state
    # the ranks wrote disjoint blocks (round robin over each modality's 4 blocks) and together all of them
    b0 = {tuple(b) for b in logs[0]["blocks"]}
    b1 = {tuple(b) for b in logs[1]["blocks"]}
    assert not b0 & b1 and len(b0) == len(b1) == 10
    assert {s for m, s in b0 if m == "cxr"} == {0, 4} and {s for m, s in b1 if m == "cxr"} == {2, 6}
    # every rank's summary counts the skips of both ranks (the whole store's, recorded with each block)
    for lg in logs:
        assert lg["skipped"]["cxr"]["file not found"] == 1 and lg["skipped"]["report"] == {"empty report": 1}
    assert open_cache(out2).attrs["finalized"] is True

    out1 = tmp_path / "one.zarr"
    extract(
        ManifestAdapter(toy["manifest"], toy["spec"]),
        out1,
        image_encoder=image_encoder,
        text_encoder=text_encoder,
        max_slices=MAX_SLICES,
        batch_size=2,
        rows_per_block=2,
        progress=False,
        num_workers=0,
    )
    assert_same_cache(out1, out2)
    one = open_cache(out1)
    g1, g2 = one.group, open_cache(out2).group
    for m in (ms.name for ms in one.spec.modalities):  # the same input fingerprints, whichever rank wrote the block
        np.testing.assert_array_equal(np.asarray(g1[m]["input_hash"][:]), np.asarray(g2[m]["input_hash"][:]))
