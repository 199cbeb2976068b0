"""The cache specification: what a modality, a task and a store may declare, and its JSON round trip."""

from __future__ import annotations

import json

import pytest

from omnifuse.cache import CacheError, CacheSpec, ModalitySpec, TaskSpec
from tests.helpers import toy_cache_spec


def test_modality_declarations_are_checked():
    assert ModalitySpec("rep", "sequence", [5, 4]).shape == (5, 4)  # lists become tuples
    assert ModalitySpec("rep", "sequence", (5, 4)).has_tokens_mask
    assert not ModalitySpec("img", "vector", (8,)).has_tokens_mask
    for kwargs, message in (
        ({"name": "img", "kind": "image", "shape": (8,)}, "modality 'img': kind 'image' is not one of"),
        ({"name": "labels", "kind": "vector", "shape": (8,)}, "modality name 'labels' is empty, contains '/'"),
        ({"name": "a/b", "kind": "vector", "shape": (8,)}, "modality name 'a/b' is empty"),
        ({"name": "rep", "kind": "sequence", "shape": (8,)}, r"sequence modality 'rep' needs shape \(L, D\)"),
        ({"name": "img", "kind": "vector", "shape": (8,), "dtype": "int8"}, "dtype must be float16 or float32"),
        ({"name": "ehr", "kind": "tabular", "shape": (3,), "feature_names": ["a"]}, "1 feature names for 3"),
    ):
        with pytest.raises(CacheError, match=message):
            ModalitySpec(**kwargs)


def test_task_declarations_and_outputs():
    assert TaskSpec("mort", "binary", ["died"]).num_outputs == 1
    assert TaskSpec("stage", "multiclass", ["I", "II", "III"]).num_outputs == 3
    for args, message in (
        (("mort", "survival", ["died"]), "task 'mort': kind 'survival' is not one of"),
        (("mort", "binary", ["died", "alive"]), "binary task 'mort' needs exactly one"),
        (("stage", "multiclass", ["I"]), "multiclass task 'stage' needs at least two classes"),
        (("pheno", "multilabel", []), "multilabel task 'pheno' needs class names"),
    ):
        with pytest.raises(CacheError, match=message):
            TaskSpec(*args)


def test_spec_lookups_duplicates_and_json_round_trip():
    spec = toy_cache_spec()
    assert (
        spec.modality("rep").provenance_codes == ["findings", "impression"] and spec.task("stage").kind == "multiclass"
    )
    with pytest.raises(KeyError, match=r"no modality 'ct' in cache; it has \['img', 'rep', 'ehr'\]"):
        spec.modality("ct")
    with pytest.raises(KeyError, match=r"no task 'los' in cache; it has \['mort', 'pheno', 'stage'\]"):
        spec.task("los")
    with pytest.raises(CacheError, match="duplicate modality names"):
        CacheSpec("toy", "1", [spec.modalities[0], spec.modalities[0]])
    with pytest.raises(CacheError, match="duplicate task names"):
        CacheSpec("toy", "1", spec.modalities, [spec.tasks[0], spec.tasks[0]])
    doc = json.loads(json.dumps(spec.to_json()))  # through the JSON the store holds
    assert doc["modalities"][1]["shape"] == [5, 4]
    assert CacheSpec.from_json(doc) == spec
