"""Adding modalities to a finished cache (``extract(..., add_modalities=...)``, ``--add-modality``): only the
new modality is encoded, the others stay byte for byte, the store and its fingerprint become those of a full
extraction; the same input under another name and encoder; every refusal in one line naming what differs;
a plain rerun after an addition; the eICU demo with one section added under another pooling; two torchrun
ranks adding the store one process adds."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from omnifuse.cache import IncompleteCacheError, cache_fingerprint, load_cache, open_cache
from omnifuse.cli import app
from omnifuse.extract.addition import AdditionError, merged_spec, modality_differences
from omnifuse.extract.datasets.manifest import ManifestAdapter
from omnifuse.extract.datasets.registry import get_dataset
from omnifuse.extract.encoders import build_text_encoder
from omnifuse.extract.pipeline import extract
from tests.helpers import assert_same_cache, minilm_dir

RUN = dict(rows_per_block=4, batch_size=4, progress=False)
N = 10
HEAD = 'name = "ward"\n'
LABS = '[modalities.labs]\ninput = "tabular"\ncolumns = ["age", "sbp"]\n'
REPORT = '[modalities.report]\ninput = "text"\ncolumn = "report"\n'
TASK = '[tasks.died]\nkind = "binary"\ncolumn = "died"\n'
runner = CliRunner()


@pytest.fixture(scope="module")
def encoders():
    mean = build_text_encoder("minilm", pooling="mean", max_words=20, max_tokens=32, device="cpu", precision="fp32")
    cls = build_text_encoder("minilm", pooling="cls", max_words=20, max_tokens=32, device="cpu", precision="fp32")
    return mean, cls


def _dataset(root: Path) -> dict[str, Path]:
    """Ten stays: age and sbp, a report (row 3 empty: skipped), a label; ``labs.toml`` (labs only) and
    ``full.toml`` (the report, then labs)."""
    root.mkdir(parents=True, exist_ok=True)
    reports = [f"Report {i}: lungs clear, heart size {['normal', 'enlarged'][i % 2]}, effusion {i}." for i in range(N)]
    reports[3] = ""
    pl.DataFrame(
        {
            "stay_id": [str(100 + i) for i in range(N)],
            "subject_id": [f"p{i // 2}" for i in range(N)],
            "age": [str(40 + i) for i in range(N)],
            "sbp": [str(100 + 2 * i) for i in range(N)],
            "report": reports,
            "died": [str(i % 2) for i in range(N)],
        }
    ).write_csv(root / "m.csv")
    (root / "labs.toml").write_text(HEAD + LABS + TASK)
    (root / "full.toml").write_text(HEAD + REPORT + LABS + TASK)
    return {"root": root, "manifest": root / "m.csv", "labs": root / "labs.toml", "full": root / "full.toml"}


def _run(ds, spec: str, out: Path, **kw):
    return extract(ManifestAdapter(ds["manifest"], ds[spec]), out, **{**RUN, **kw})


def _files(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (a modality's arrays), by relative path."""
    return {
        str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest() for f in folder.rglob("*") if f.is_file()
    }


def _edit(ds, column: str, row: int, value: str) -> None:
    df = pl.read_csv(ds["manifest"], infer_schema=False)
    df.with_columns(df[column].scatter(row, value)).write_csv(ds["manifest"])


@pytest.fixture()
def base(tmp_path):
    """A finished cache of the labs only."""
    ds = _dataset(tmp_path / "data")
    out = tmp_path / "c.zarr"
    assert _run(ds, "labs", out).finalized
    return ds, out


def test_adding_a_modality_encodes_it_only_and_gives_the_store_of_a_full_extraction(base, encoders, tmp_path):
    ds, out = base
    mean, _ = encoders
    labs = _files(out / "labs")
    before = cache_fingerprint(out)
    items = mean.items
    s = _run(ds, "full", out, add_modalities=["report"], text_encoder=mean)
    assert s.added == ["report"] and list(s.modalities) == ["report"] and s.finalized
    assert mean.items - items == 9 and s.modalities["report"].present == 9  # the report only; row 3 is empty
    assert s.modalities["report"].skipped == {"empty report": 1}
    assert _files(out / "labs") == labs  # the other modality's arrays, byte for byte
    c = open_cache(out)
    assert [m.name for m in c.spec.modalities] == ["report", "labs"]  # where the dataset lists it
    record = c.meta["additions"]["report"]
    assert record["source"] == "report" and record["finished"] >= record["started"]
    assert record["config"]["add_modalities"] == ["report"]
    assert c.meta["summary"]["extract"]["modalities"]["report"]["present"] == 9
    after = cache_fingerprint(out)
    assert after["digest"] != before["digest"] and after["encoders_digest"] != before["encoders_digest"]
    assert after["rows"] == before["rows"] and after["labels"] == before["labels"]

    fresh = tmp_path / "fresh.zarr"
    _run(ds, "full", fresh, text_encoder=mean)
    assert_same_cache(out, fresh)
    assert after == cache_fingerprint(fresh)  # the same store as extracting everything at once
    np.testing.assert_array_equal(load_cache(out).modalities["report"].x, load_cache(fresh).modalities["report"].x)

    # the same addition again writes nothing; so does a plain rerun of the full spec
    attrs = (out / "zarr.json").read_bytes()
    again = _run(ds, "full", out, add_modalities=["report"], text_encoder=mean)
    assert again.modalities["report"].blocks_written == 0 and (out / "zarr.json").read_bytes() == attrs
    plain = _run(ds, "full", out, text_encoder=mean)
    assert all(m.blocks_written == 0 for m in plain.modalities.values()) and (out / "zarr.json").read_bytes() == attrs


def test_the_same_input_under_another_name_and_pooling(base, encoders):
    ds, out = base
    mean, cls = encoders
    _run(ds, "full", out, add_modalities=["report"], text_encoder=mean)
    report, before = _files(out / "report"), cache_fingerprint(out)
    s = _run(ds, "full", out, add_modalities=["report"], modality_name="report_cls", text_encoder=cls)
    assert s.added == ["report_cls"] and s.modalities["report_cls"].present == 9
    assert _files(out / "report") == report
    c = load_cache(out)
    assert [m.name for m in c.spec.modalities] == ["report", "labs", "report_cls"]  # another name goes last
    assert c.spec.modality("report_cls").preprocessing["pooling"] == "cls"
    assert c.attrs["additions"]["report_cls"]["source"] == "report"
    text = mean.prepare(pl.read_csv(ds["manifest"])["report"][0])
    np.testing.assert_allclose(
        c.modalities["report_cls"].x[0].astype(np.float32), cls.encode([text])[0][0].numpy(), rtol=2e-3, atol=2e-3
    )
    np.testing.assert_array_equal(c.modalities["report_cls"].mask, c.modalities["report"].mask)
    assert cache_fingerprint(out)["encoders_digest"] != before["encoders_digest"]

    # a plain run of the dataset's own modalities resumes the store without knowing report_cls
    attrs = (out / "zarr.json").read_bytes()
    plain = _run(ds, "full", out, text_encoder=mean)
    assert sum(m.blocks_written for m in plain.modalities.values()) == 0 and (out / "zarr.json").read_bytes() == attrs

    # an edited report: the plain run re-encodes its block of report; report_cls's block is marked not written
    _edit(ds, "report", 5, "Large right pneumothorax.")
    plain = _run(ds, "full", out, text_encoder=mean)
    assert plain.finalized and plain.modalities["report"].blocks_reencoded == 1
    with pytest.raises(IncompleteCacheError, match=r"'report_cls' has 4 rows not yet written"):
        load_cache(out)
    assert load_cache(out, modalities=["report", "labs"]).modalities["report"].mask.sum() == 9  # the others read
    s = _run(ds, "full", out, add_modalities=["report"], modality_name="report_cls", text_encoder=cls)
    assert (s.modalities["report_cls"].blocks_written, s.modalities["report_cls"].items_encoded) == (1, 4)
    assert load_cache(out).n == N and "finished" in open_cache(out).meta["additions"]["report_cls"]
    text = cls.prepare("Large right pneumothorax.")
    np.testing.assert_allclose(
        load_cache(out).modalities["report_cls"].x[5].astype(np.float32),
        cls.encode([text])[0][0].numpy(),
        rtol=2e-3,
        atol=2e-3,
    )


def test_other_stays_are_refused_naming_the_first_that_differs(base, encoders):
    ds, out = base
    mean, _ = encoders
    _edit(ds, "stay_id", 3, "999")
    with pytest.raises(AdditionError) as e:
        _run(ds, "full", out, add_modalities=["report"], text_encoder=mean)
    assert str(e.value) == (
        f"{out}: row 4 is stay_id 999 in the dataset but stay_id 103 in the cache; --add-modality needs the "
        "cache's stays in the cache's order"
    )
    _edit(ds, "stay_id", 3, "103")
    df = pl.read_csv(ds["manifest"], infer_schema=False)
    extra = df.head(1).with_columns(pl.lit("110").alias("stay_id"))
    pl.concat([df, extra]).write_csv(ds["manifest"])
    with pytest.raises(AdditionError, match=r"the dataset has 11 stays, the cache 10: stay_id 110 \(row 11\) is not "):
        _run(ds, "full", out, add_modalities=["report"], text_encoder=mean)
    df.head(9).write_csv(ds["manifest"])
    with pytest.raises(AdditionError, match=r"the cache 10: stay_id 109 \(row 10\) is not in the dataset"):
        _run(ds, "full", out, add_modalities=["report"], text_encoder=mean)
    assert not (out / "report").exists() and "additions" not in open_cache(out).meta  # nothing was written


def test_an_existing_name_is_refused_unless_it_resumes_the_same_addition(base, encoders):
    ds, out = base
    mean, cls = encoders
    with pytest.raises(
        AdditionError,
        match=r"already has modality 'labs' \(encoder passthrough\), from its "
        r"extraction; .*--modality-name labs_2.*--overwrite",
    ):
        _run(ds, "full", out, add_modalities=["labs"])
    _run(ds, "full", out, add_modalities=["report"], text_encoder=mean)
    with pytest.raises(AdditionError, match=r"'report' was added with another preprocessing.pooling; run the same"):
        _run(ds, "full", out, add_modalities=["report"], text_encoder=cls)
    labs = _files(out / "labs")
    s = _run(ds, "full", out, add_modalities=["report"], text_encoder=cls, overwrite=True)  # that modality only
    assert s.modalities["report"].blocks_written == 3 and _files(out / "labs") == labs
    assert load_cache(out).spec.modality("report").preprocessing["pooling"] == "cls"
    assert [m.name for m in open_cache(out).spec.modalities] == ["report", "labs"]


def test_the_dataset_must_still_give_the_caches_modalities_unchanged(base, encoders, tmp_path):
    ds, out = base
    mean, _ = encoders
    only = ds["root"] / "only.toml"
    only.write_text(HEAD + REPORT + TASK)
    with pytest.raises(
        AdditionError,
        match=r"holds modality 'labs', which the dataset as configured now does not "
        r"give; .*its spec with the new modality added",
    ):
        extract(ManifestAdapter(ds["manifest"], only), out, add_modalities=["report"], text_encoder=mean, **RUN)
    ranged = ds["root"] / "ranged.toml"
    ranged.write_text(HEAD + REPORT + LABS + "ranges = { age = [0, 120] }\n" + TASK)
    with pytest.raises(AdditionError, match=r"now defines modality 'labs' with another preprocessing.ranges"):
        extract(ManifestAdapter(ds["manifest"], ranged), out, add_modalities=["report"], text_encoder=mean, **RUN)
    _edit(ds, "age", 6, "77")
    with pytest.raises(
        AdditionError,
        match=r"the inputs of modality 'labs' changed since it was encoded \(1 rows, "
        r"first stay_id 106\); rerun the extraction",
    ):
        _run(ds, "full", out, add_modalities=["report"], text_encoder=mean)
    (ds["root"] / "tasks.toml").write_text(HEAD + REPORT + LABS)
    with pytest.raises(AdditionError, match=r"the dataset's tasks \[\] are not the cache's"):
        extract(
            ManifestAdapter(ds["manifest"], ds["root"] / "tasks.toml"),
            out,
            add_modalities=["report"],
            text_encoder=mean,
            **RUN,
        )
    with pytest.raises(AdditionError, match=r"the dataset has no modality 'notes' to add; it has report, labs"):
        _run(ds, "full", out, add_modalities=["notes"], text_encoder=mean)
    with pytest.raises(AdditionError, match=r"no cache at .*missing.zarr: --add-modality adds to an existing cache"):
        _run(ds, "full", tmp_path / "missing.zarr", add_modalities=["report"], text_encoder=mean)


def test_an_unfinished_extraction_is_not_added_to(tmp_path, encoders):
    ds = _dataset(tmp_path / "data")
    two = ds["root"] / "two.toml"
    two.write_text(HEAD + REPORT + LABS + '[modalities.bp]\ninput = "tabular"\ncolumns = ["sbp"]\n' + TASK)
    partial = tmp_path / "p.zarr"
    spec = ds["root"] / "lb.toml"
    spec.write_text(HEAD + LABS + '[modalities.bp]\ninput = "tabular"\ncolumns = ["sbp"]\n' + TASK)
    assert not extract(ManifestAdapter(ds["manifest"], spec), partial, modalities=["labs"], **RUN).finalized
    with pytest.raises(AdditionError, match=r"modality 'bp' has blocks not written \(its extraction did not finish"):
        extract(
            ManifestAdapter(ds["manifest"], two), partial, add_modalities=["report"], text_encoder=encoders[0], **RUN
        )


def test_a_cache_made_with_limit_is_added_to_on_its_stays(tmp_path, encoders):
    ds = _dataset(tmp_path / "data")
    out = tmp_path / "c.zarr"
    _run(ds, "labs", out, limit=6)
    mean, _ = encoders
    items = mean.items
    s = _run(ds, "full", out, add_modalities=["report"], text_encoder=mean)  # the cache's --limit 6
    assert s.rows == 6 and mean.items - items == 5 and load_cache(out).n == 6


def test_merged_spec_places_a_modality_where_the_dataset_lists_it():
    from omnifuse.cache import CacheSpec, ModalitySpec

    def spec(*names):
        return CacheSpec("d", "1", [ModalitySpec(n, "vector", (2,)) for n in names])

    new = {n: ModalitySpec(n, "vector", (2,)) for n in ("a", "c", "e", "c2")}
    order = ["a", "b", "c", "d", "e"]
    got = merged_spec(spec("b", "d"), new, {"a": "a", "c": "c", "e": "e", "c2": "c"}, order, {"x": 1})
    assert [m.name for m in got.modalities] == ["a", "b", "c", "d", "e", "c2"] and got.adapter_options == {"x": 1}
    absent = spec("b")
    absent.extra = {"absent_modalities": {"a": "no table", "z": "no table"}, "limit": 5}
    got = merged_spec(absent, {"a": new["a"]}, {"a": "a"}, order, {})
    assert got.extra == {"absent_modalities": {"z": "no table"}, "limit": 5}  # a has a source now
    assert merged_spec(got, {"z": ModalitySpec("z", "vector", (2,))}, {"z": "z"}, order, {}).extra == {"limit": 5}
    assert modality_differences(ModalitySpec("a", "vector", (2,), encoder="x"), ModalitySpec("a", "vector", (3,))) == [
        "encoder",
        "shape",
    ]


def test_the_command_line_adds_and_refuses_in_one_line(base):
    ds, out = base
    args = [
        "extract",
        "--dataset",
        "manifest",
        "--manifest",
        str(ds["manifest"]),
        "--spec",
        str(ds["full"]),
        "--out",
        str(out),
        "--text-encoder",
        minilm_dir(),
        "--text-pooling",
        "mean",
        "--max-tokens",
        "32",
        "--no-progress",
    ]
    r = runner.invoke(app, [*args, "--add-modality", "report"])
    assert r.exit_code == 0, r.output
    assert "added report (10 rows) to" in r.output.replace("\n", " ")
    assert load_cache(out).modalities["report"].mask.sum() == 9
    for extra, fragment in (
        (["--add-modality", "notes"], "the dataset has no modality 'notes' to add"),
        (["--add-modality", "labs"], "already has modality 'labs'"),
        (["--modality-name", "x"], "--modality-name names the one modality added"),
        (["--add-modality", "report", "--modality", "labs"], "--modality and --add-modality cannot be combined"),
    ):
        r = runner.invoke(app, [*args, *extra])
        lines = r.output.strip().splitlines()
        assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.output
        assert fragment in lines[0], lines[0]
    saved = json.loads((out / "zarr.json").read_text())["attributes"]["omnifuse"]["additions"]["report"]["config"]
    assert saved["text_pooling"] == "mean" and saved["dataset_options"]["spec"] == str(ds["full"])


def test_eicu_demo_one_section_under_another_pooling_runs_only_that_pass(tmp_path, encoders):
    mean, cls = encoders
    adapter = get_dataset("eicu-demo").build_adapter({})
    out = tmp_path / "demo.zarr"
    opts = dict(limit=10, progress=False, device="cpu")
    extract(adapter, out, text_encoder=mean, **opts)
    others = {m: _files(out / m) for m in ("vitals", "apache", "history", "diagnosis", "exam")}
    texts = mean.items
    s = extract(adapter, out, text_encoder=cls, add_modalities=["history"], modality_name="history_cls", **opts)
    assert s.added == ["history_cls"] and list(s.modalities) == ["history_cls"]
    c = load_cache(out)
    hist = c.modalities["history"]
    assert s.modalities["history_cls"].items_encoded == int(hist.mask.sum()) > 0  # one pass, that section's texts
    assert mean.items == texts  # no other section was encoded
    np.testing.assert_array_equal(c.modalities["history_cls"].mask, hist.mask)
    assert c.spec.modality("history_cls").preprocessing["pooling"] == "cls"
    assert {m: _files(out / m) for m in others} == others


RANK_SCRIPT = """
import json, os, sys
import torch
from omnifuse.cache.writer import CacheWriter
from omnifuse.extract import encoders as E
from omnifuse.extract.datasets.manifest import ManifestAdapter
from omnifuse.extract.pipeline import extract

manifest, spec, out, log_dir = sys.argv[1:5]
blocks = []
orig = CacheWriter.write_block
def write_block(self, modality, start, stop, **k):
    blocks.append([modality, start])
    return orig(self, modality, start, stop, **k)
CacheWriter.write_block = write_block
torch.set_num_threads(1)  # two ranks share the machine's cores
te = E.build_text_encoder("minilm", pooling="mean", max_words=20, max_tokens=32, device="cpu", precision="fp32")
s = extract(ManifestAdapter(manifest, spec), out, text_encoder=te, add_modalities=["report"], rows_per_block=2,
            batch_size=4, progress=False)
with open(os.path.join(log_dir, f"rank{os.environ['RANK']}.json"), "w") as f:
    json.dump({"blocks": blocks, "world": s.world_size, "added": s.added, "finalized": s.finalized}, f)
"""


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_add_the_store_one_process_adds(base, encoders, tmp_path):
    ds, out = base
    one = tmp_path / "one.zarr"
    shutil.copytree(out, one)
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc_per_node=2",
        f"--master_port={port}",
        str(script),
        str(ds["manifest"]),
        str(ds["full"]),
        str(out),
        str(tmp_path),
    ]
    res = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    logs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(lg["world"] == 2 and lg["added"] == ["report"] and lg["finalized"] for lg in logs)
    b0, b1 = ({tuple(b) for b in lg["blocks"]} for lg in logs)
    assert b0 == {("report", 0), ("report", 4), ("report", 8)} and b1 == {("report", 2), ("report", 6)}
    _run(ds, "full", one, add_modalities=["report"], text_encoder=encoders[0], rows_per_block=2)
    assert_same_cache(out, one)
    assert cache_fingerprint(out) == cache_fingerprint(one)
    assert "finished" in open_cache(out).meta["additions"]["report"]
