"""The manifest adapter: spec parsing (TOML, YAML), cohort, inputs, skips and the errors that stop a run."""

from __future__ import annotations

import textwrap

import numpy as np
import polars as pl
import pytest

from omnifuse.extract.datasets.base import Item, Skip
from omnifuse.extract.datasets.manifest import ManifestAdapter, ManifestError
from omnifuse.extract.datasets.registry import build_adapter, list_datasets


def test_registry_builds_manifest(toy):
    assert "manifest" in list_datasets()
    a = build_adapter("manifest", manifest=toy["manifest"], spec=toy["spec"])
    assert isinstance(a, ManifestAdapter) and a.name == "toy" and a.version == "0.1"
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        build_adapter("nope")


def test_cohort_keys_labels_references_splits(toy):
    c = ManifestAdapter(toy["manifest"], toy["spec"]).cohort()
    assert c.stay_id.tolist() == list(range(101, 109)) and c.stay_id.dtype == np.int64
    assert c.subject_id.tolist() == ["p1", "p1", "p2", "p3", "p4", "p5", "p6", "p6"]
    y, m = c.labels["died"]
    assert y[:, 0].tolist() == [1, 0, 0, 1, 0, 1, 0, 1] and m.tolist() == [1, 1, 0, 1, 1, 1, 1, 1]
    y, m = c.labels["severity"]
    assert y.tolist() == [0, 2, 1, 0, 0, 1, 2, 0] and m.tolist() == [1, 1, 1, 0, 1, 1, 1, 1]
    tasks = {t.name: t for t in c.tasks}
    assert tasks["died"].kind == "binary" and tasks["died"].classes == ["died"]
    assert tasks["severity"].classes == ["low", "mid", "high"]
    v, m = c.references["apache"]
    assert m.tolist() == [1, 0, 1, 1, 1, 1, 1, 1] and v[0] == pytest.approx(0.1)
    assert c.splits["official"].tolist()[:3] == ["train", "train", "test"]


def test_modalities_and_inputs(toy):
    a = ManifestAdapter(toy["manifest"], toy["spec"])
    mods = {m.name: m for m in a.modalities()}
    assert [mods[k].input for k in ("cxr", "report", "ct", "labs", "vitals")] == [
        "image",
        "text",
        "volume",
        "array",
        "array",
    ]
    assert mods["labs"].kind == "tabular" and mods["labs"].shape == (2,)
    assert mods["labs"].feature_names == ["age", "lactate"]
    assert mods["vitals"].kind == "timeseries" and mods["vitals"].shape == (4, 2)
    rows = np.arange(8)
    cxr = a.inputs("cxr", rows)
    assert isinstance(cxr[0], Item) and cxr[0].value.endswith("img/a.png")
    assert isinstance(cxr[3], Item)  # the corrupt file exists: the decoder skips it later
    assert cxr[4] is None  # empty cell: missing
    assert isinstance(cxr[5], Skip) and cxr[5].reason == "file not found"
    rep = a.inputs("report", rows)
    assert isinstance(rep[2], Skip) and rep[2].reason == "empty report"
    assert rep[4] is None and rep[0].value == toy["reports"][0]
    labs = a.inputs("labs", rows)
    assert labs[2] is None
    assert labs[1].value[0] == 70 and np.isnan(labs[1].value[1])
    vit = a.inputs("vitals", rows)
    v1 = vit[0].value  # csv with 3 steps, one empty cell: padded with NaN to 4 steps
    assert v1.shape == (4, 2) and v1[0].tolist() == [80, 120] and np.isnan(v1[1, 1]) and np.isnan(v1[3]).all()
    assert vit[1].value.shape == (4, 2)  # 5 steps truncated to the first 4
    assert np.allclose(vit[1].value, np.load(toy["root"] / "ts" / "v2.npy")[:4])
    assert isinstance(vit[5], Skip) and vit[5].reason == "file not found"
    # rows are positions: a subset gives the same answers
    assert a.inputs("cxr", np.array([5, 0]))[0].reason == "file not found"


def test_yaml_spec_and_parquet_manifest_match_toml(toy, tmp_path):
    import tomllib

    import yaml

    spec = tomllib.loads(toy["spec"].read_text())
    (toy["root"] / "spec_copy.yaml").write_text(yaml.safe_dump(spec))
    pq = toy["root"] / "manifest_copy.parquet"
    pl.read_csv(toy["manifest"], infer_schema=False).write_parquet(pq)
    try:
        a = ManifestAdapter(toy["manifest"], toy["spec"]).cohort()
        b = ManifestAdapter(pq, toy["root"] / "spec_copy.yaml").cohort()
    finally:
        pq.unlink()
        (toy["root"] / "spec_copy.yaml").unlink()
    assert np.array_equal(a.stay_id, b.stay_id)
    for t in a.labels:
        assert np.array_equal(a.labels[t][0], b.labels[t][0]) and np.array_equal(a.labels[t][1], b.labels[t][1])


def _write(tmp_path, csv: str, spec: str):
    (tmp_path / "m.csv").write_text(textwrap.dedent(csv).lstrip())
    (tmp_path / "s.toml").write_text(textwrap.dedent(spec))
    return tmp_path / "m.csv", tmp_path / "s.toml"


SPEC = """
[modalities.report]
input = "text"
column = "report"
[tasks.y]
kind = "multiclass"
column = "y"
classes = ["a", "b"]
"""


def test_duplicate_stay_id_names_the_rows(tmp_path):
    m, s = _write(tmp_path, "stay_id,subject_id,report,y\n1,p,x,a\n2,p,x,b\n1,q,x,a\n", SPEC)
    with pytest.raises(ManifestError, match=r"manifest row 4 \(stay_id 1\): duplicate stay_id 1 .*row 2"):
        ManifestAdapter(m, s)


def test_label_outside_classes_names_the_row(tmp_path):
    m, s = _write(tmp_path, "stay_id,subject_id,report,y\n1,p,x,a\n2,p,x,c\n", SPEC)
    with pytest.raises(ManifestError, match=r"manifest row 3 \(stay_id 2\): label 'y' value 'c' is not one of"):
        ManifestAdapter(m, s).cohort()


def test_binary_label_must_be_zero_one(tmp_path):
    spec = SPEC.replace('kind = "multiclass"', 'kind = "binary"').replace('classes = ["a", "b"]', "")
    m, s = _write(tmp_path, "stay_id,subject_id,report,y\n1,p,x,1\n2,p,x,2\n", spec)
    with pytest.raises(ManifestError, match=r"row 3 .*not 0/1"):
        ManifestAdapter(m, s).cohort()


def test_bad_keys_and_specs(tmp_path):
    m, s = _write(tmp_path, "stay_id,subject_id,report,y\nx1,p,x,a\n", SPEC)
    with pytest.raises(ManifestError, match=r"row 2 .*stay_id 'x1' is not an integer"):
        ManifestAdapter(m, s)
    m, s = _write(tmp_path, "stay_id,subject_id,report,y\n1,,x,a\n", SPEC)
    with pytest.raises(ManifestError, match="empty subject_id"):
        ManifestAdapter(m, s)
    m, s = _write(
        tmp_path, "stay_id,subject_id,report,y\n1,p,x,a\n", SPEC.replace('"report"\n[tasks', '"notes"\n[tasks')
    )
    with pytest.raises(ManifestError, match="column 'notes' is not in the manifest"):
        ManifestAdapter(m, s)
    m, s = _write(tmp_path, "stay_id,subject_id,report,y\n1,p,x,a\n", SPEC.replace('input = "text"', 'input = "audio"'))
    with pytest.raises(ManifestError, match="input must be one of"):
        ManifestAdapter(m, s)
    m, s = _write(tmp_path, "stay_id,subject_id,report,y\n1,p,x,a\n", "bogus = 1\n" + SPEC)
    with pytest.raises(ManifestError, match=r"spec: unknown keys \['bogus'\]"):
        ManifestAdapter(m, s)
    m, s = _write(tmp_path, "stay_id,subject_id,report,y\n1,p,x,a\n", SPEC + "\nbogus = 1\n")
    with pytest.raises(ManifestError, match=r"spec tasks.y: unknown keys \['bogus'\]"):
        ManifestAdapter(m, s)
    (tmp_path / "broken.toml").write_text("[modalities\n")
    with pytest.raises(ManifestError, match="cannot be parsed"):
        ManifestAdapter(m, tmp_path / "broken.toml")


def test_multilabel_by_columns_and_separator(tmp_path):
    spec = """
    [modalities.report]
    input = "text"
    column = "report"
    [tasks.pheno]
    kind = "multilabel"
    columns = ["chf", "copd"]
    [tasks.tags]
    kind = "multilabel"
    column = "tags"
    classes = ["x", "y", "z"]
    """
    m, s = _write(tmp_path, "stay_id,subject_id,report,chf,copd,tags\n1,p,r,1,0,x|z\n2,p,r,,,\n3,q,r,0,1,y\n", spec)
    c = ManifestAdapter(m, s).cohort()
    y, mk = c.labels["pheno"]
    assert y.tolist() == [[1, 0], [0, 0], [0, 1]] and mk.tolist() == [True, False, True]
    y, mk = c.labels["tags"]
    assert y.tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0]] and mk.tolist() == [True, False, True]
    m, s = _write(tmp_path, "stay_id,subject_id,report,chf,copd,tags\n1,p,r,1,,x|w\n", spec)
    with pytest.raises(ManifestError, match="empty in some of its columns"):
        ManifestAdapter(m, s).cohort()


def test_text_from_files_and_unreadable_arrays(tmp_path):
    (tmp_path / "r1.txt").write_text("Clear lungs.")
    (tmp_path / "r2.txt").write_text("  \n")
    np.save(tmp_path / "a.npy", np.arange(3, dtype=np.float32))
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    spec = """
    [modalities.report]
    input = "text"
    column = "rp"
    file = true
    [modalities.feat]
    input = "vector"
    column = "fp"
    """
    m, s = _write(tmp_path, "stay_id,subject_id,rp,fp\n1,p,r1.txt,a.npy\n2,p,r2.txt,bad.npy\n3,p,r3.txt,\n", spec)
    a = ManifestAdapter(m, s)
    assert {x.name: x.shape for x in a.modalities()}["feat"] == (3,)  # inferred from the first readable file
    rep = a.inputs("report", np.arange(3))
    assert rep[0].value == "Clear lungs." and rep[1].reason == "empty report" and rep[2].reason == "file not found"
    feat = a.inputs("feat", np.arange(3))
    assert feat[0].value.tolist() == [0, 1, 2] and feat[1].reason == "unreadable array file" and feat[2] is None
