"""Fault suite, scoring: what `omnifuse predict` does with damaged run folders and caches it did not train on.
Each case asserts the exit code, the one-line message naming the file, and that nothing wrong is written."""

import json

import numpy as np
import pytest

from omnifuse.fuse.predict import predict
from tests.cli_errors import cli_error
from tests.helpers import synthetic_cache_data


@pytest.fixture(scope="module")
def run(omnifuse_run):
    """A trained two-fold OmniFuse run and the cache it was trained on (tests/conftest.py); copied before damage."""
    return omnifuse_run


def _copy_run(run_dir, tmp_path):
    import shutil

    dst = tmp_path / "run"
    shutil.copytree(run_dir, dst)
    return dst


def test_model_json_that_is_not_json_is_named(run, tmp_path):
    src, cache = run
    dst = _copy_run(src, tmp_path)
    (dst / "fold0" / "model.json").write_text("{oops")
    cli_error(
        ["predict", "-r", str(dst), "-c", str(cache), "-o", str(tmp_path / "s.csv")],
        f"{dst / 'fold0' / 'model.json'} is not valid JSON",
    )
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_damaged_checkpoint_is_named(run, tmp_path, damage):
    src, cache = run
    dst = _copy_run(src, tmp_path)
    w = dst / "fold1" / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 100)
    cli_error(
        ["predict", "-r", str(dst), "-c", str(cache), "-o", str(tmp_path / "s.csv")],
        f"{w} is not a checkpoint of this run's model",
    )


def test_a_model_json_asking_for_a_huge_network_is_refused_without_allocating(run, tmp_path):
    src, cache = run
    dst = _copy_run(src, tmp_path)
    p = dst / "fold0" / "model.json"
    meta = json.loads(p.read_text())
    meta["method_params"]["K"] = 1_000_000_000
    p.write_text(json.dumps(meta))
    cli_error(
        ["predict", "-r", str(dst), "-c", str(cache), "-o", str(tmp_path / "s.csv")],
        f"{p}: method parameter(s) K out of bounds",
    )
    meta["method_params"]["K"] = 5
    meta["method_params"]["cra_hidden"] = 200_000  # within the per-value bound, but 10^10 parameters
    p.write_text(json.dumps(meta))
    cli_error(["predict", "-r", str(dst), "-c", str(cache)], f"{p} asks for", "parameters (at most 200,000,000)")
    meta["num_outputs"] = 1e9
    p.write_text(json.dumps(meta))
    cli_error(["predict", "-r", str(dst), "-c", str(cache)], "sizes must be whole numbers")


def test_a_normaliser_with_sd_zero_is_refused(run, tmp_path):
    src, cache = run
    dst = _copy_run(src, tmp_path)
    p = dst / "fold0" / "normalizer.json"
    js = json.loads(p.read_text())
    name = next(iter(js["modalities"]))
    js["modalities"][name]["std"][0] = 0.0
    p.write_text(json.dumps(js))
    cli_error(["predict", "-r", str(dst), "-c", str(cache)], f"{p}: modality {name!r} has a standard deviation <= 0")


def test_a_cache_without_labels_is_scored(run, tmp_path):
    """New stays without the task (any adapter; a manifest without [tasks] too) are scored."""
    src, _ = run
    cd = synthetic_cache_data(n=40, seed=9)
    cd.labels = {}
    cd.spec.tasks = []
    res = predict(src, cd, tmp_path / "s.csv")
    assert res["score"].shape == (40, 1) and np.isfinite(res["score"]).all()
    assert (tmp_path / "s.csv").read_text().splitlines()[0].startswith("stay_id,score")


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "npz"])
def test_a_damaged_train_stays_file_is_named_and_never_a_fallback(run, tmp_path, damage):
    """A damaged record of a fold's training stays stops predict with one line naming the file (a silent fallback
    to predictions.csv or to "new stays" could score a stay with a model that trained on it)."""
    src, cache = run
    dst = _copy_run(src, tmp_path)
    p = dst / "fold1" / "train_stays.npy"
    data = p.read_bytes()
    if damage == "empty":
        p.write_bytes(b"")
    elif damage == "truncated":
        p.write_bytes(data[: len(data) - 16])
    elif damage == "garbage":
        p.write_bytes(b"\x93NUMPY garbage" * 10)
    else:
        with open(p, "wb") as f:
            np.savez(f, ids=np.arange(3))
    cli_error(
        ["predict", "-r", str(dst), "-c", str(cache), "-o", str(tmp_path / "s.csv"), "--no-shap"],
        f"{p} is not a .npy array of stay ids",
    )
    assert not (tmp_path / "s.csv").exists()
