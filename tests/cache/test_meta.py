"""The store's ``omnifuse`` attributes: what a new store records, and what reading them refuses."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import zarr

from omnifuse.cache import (
    SCHEMA_VERSION,
    CacheError,
    CacheSpec,
    CacheWriter,
    ModalitySpec,
    SchemaMismatchError,
    open_cache,
)
from omnifuse.cache.meta import (
    adding,
    additions,
    check_schema,
    drop_addition,
    finish_addition,
    group_meta,
    new_meta,
    read_meta,
    renamed_additions,
    reopen_addition,
    start_addition,
)
from tests.helpers import write_toy_cache


def _spec() -> CacheSpec:
    return CacheSpec("toy", "1", [ModalitySpec("img", "vector", (4,))], references=["apache"])


def _create(path: Path) -> CacheWriter:
    return CacheWriter.create(path, _spec(), np.arange(5), np.array([f"p{i}" for i in range(5)]))


def _set_schema_version(path: Path, version: int) -> None:
    doc = json.loads((path / "zarr.json").read_text())
    doc["attributes"]["omnifuse"]["schema_version"] = version
    (path / "zarr.json").write_text(json.dumps(doc))


def test_new_meta_records_spec_rows_and_software():
    meta = new_meta(_spec(), 5)
    assert meta["schema_version"] == SCHEMA_VERSION and meta["n_rows"] == 5 and meta["finalized"] is False
    assert CacheSpec.from_json(meta["spec"]) == _spec()
    assert "python" in meta["software"] and "numpy" in meta["software"]
    assert meta["created"].endswith("+00:00")  # UTC, ISO 8601


def test_read_meta_is_what_the_writer_recorded(tmp_path):
    path = tmp_path / "c.zarr"
    w = _create(path)
    meta = read_meta(path)
    assert meta == group_meta(w.group)
    assert meta["n_rows"] == 5 and CacheSpec.from_json(meta["spec"]) == _spec()


def test_check_schema_refuses_other_versions(tmp_path):
    check_schema({"schema_version": SCHEMA_VERSION}, tmp_path)
    with pytest.raises(SchemaMismatchError, match=re.escape(f"{tmp_path} was written with cache schema version None")):
        check_schema({}, tmp_path)


def test_writer_refuses_to_resume_a_store_of_another_schema_version(tmp_path):
    path = tmp_path / "c.zarr"
    _create(path)
    _set_schema_version(path, SCHEMA_VERSION + 1)
    with pytest.raises(SchemaMismatchError, match=f"schema version {SCHEMA_VERSION + 1}"):
        CacheWriter.open(path)
    with pytest.raises(SchemaMismatchError, match=f"schema version {SCHEMA_VERSION + 1}"):
        _create(path)  # resuming goes through the same check


def test_read_meta_refuses_what_is_not_a_cache(tmp_path):
    with pytest.raises(CacheError, match="no cache at"):
        read_meta(tmp_path / "absent.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(SchemaMismatchError, match="no zarr.json"):
        read_meta(tmp_path / "plain")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "zarr.json").write_text("{not json")
    with pytest.raises(SchemaMismatchError, match="broken/zarr.json cannot be read"):
        read_meta(tmp_path / "broken")
    zarr.open_group(str(tmp_path / "v2.zarr"), mode="w", zarr_format=2)
    with pytest.raises(SchemaMismatchError, match="no zarr.json"):
        read_meta(tmp_path / "v2.zarr")


def test_attributes_describe_the_cache(tmp_path):
    path = tmp_path / "c.zarr"
    write_toy_cache(path)
    c = open_cache(path)
    assert c.meta["schema_version"] == SCHEMA_VERSION == 3 and c.meta["finalized"] is True
    assert c.spec.modality("img").encoder == "resnet34" and c.spec.modality("img").encoder_hash == "abc"
    assert {"python", "zarr", "numpy"} <= set(c.meta["software"])
    assert c.meta["created"] and c.spec.license == "ODbL"


def test_addition_records_start_finish_reopen_and_drop():
    meta: dict = {}
    assert additions(meta) == {} and adding(meta) == set() and renamed_additions(meta) == {}
    start_addition(meta, "report", "report")
    start_addition(meta, "report_bert", "report")
    assert adding(meta) == {"report", "report_bert"} and renamed_additions(meta) == {"report_bert": "report"}
    finish_addition(meta, "report", {"text_encoder": "minilm"})
    assert adding(meta) == {"report_bert"} and meta["additions"]["report"]["config"] == {"text_encoder": "minilm"}
    assert meta["additions"]["report"]["finished"] >= meta["additions"]["report"]["started"]
    reopen_addition(meta, "report")
    assert adding(meta) == {"report", "report_bert"}
    drop_addition(meta, "report_bert")
    assert set(meta["additions"]) == {"report"} and renamed_additions(meta) == {}
    copy = additions(meta)
    copy["report"]["source"] = "changed"
    assert meta["additions"]["report"]["source"] == "report"  # a copy: the attributes change only on purpose
