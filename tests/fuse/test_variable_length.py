"""Variable-length time series in stage two (schema version 3: a step mask [N, T] beside the series, MIMIC's
whole-stay EHR ``ehr_stay``): padding changes nothing.

- the time-series encoders (GRU, LSTM: packed) and the sequence pooling give the same output for a row padded
  to T or T + 20, whatever the padding holds, and each row's output is the encoder run on its valid steps
  alone; no gradient reaches the padding; a row with no valid step is ``v^miss`` (the empty series, LN(h_0));
- the normaliser's statistics and the reference learners' per-channel summaries use the valid steps only
  (checked against numpy on the valid steps);
- ``load_fuse_data`` carries the step mask; the task keys of a modality (``input_for``, ``default_for``) choose
  the default modalities and refuse a modality that would leak a later window into another task;
- a stage-two train on a small written cache with variable lengths: the same predictions, bit for bit,
  whether the cache pads to T or T + 20, and the signal of the valid steps is learnt.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from omnifuse.cache.reader import CacheData, ModalityData, load_cache
from omnifuse.cache.schema import CacheError, ModalitySpec, check_task_inputs, min_schema_version, task_inputs
from omnifuse.fuse.base import ModalityInfo
from omnifuse.fuse.data import DataError, Normalizer, load_fuse_data
from omnifuse.fuse.encoders import build_encoder
from omnifuse.fuse.reference import reference_features
from omnifuse.fuse.train import train
from tests.helpers import synthetic_cache_data, write_cache_data

F = 4
T = 12


def _padded(x: torch.Tensor, lengths: torch.Tensor, width: int, fill: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` [B, >=max(lengths), F] cut to each row's length and padded to ``width`` steps with ``fill``
    ("garbage": large random values and NaN; "zeros"); returns (x [B, width, F], step mask [B, width])."""
    g = torch.Generator().manual_seed(width)
    steps = torch.arange(width)[None, :] < lengths[:, None]
    out = (
        torch.randn(x.shape[0], width, x.shape[2], generator=g) * 1e3
        if fill == "garbage"
        else torch.zeros(x.shape[0], width, x.shape[2])
    )
    if fill == "garbage":
        out[:, ::3] = float("nan")
    n = min(width, x.shape[1])
    out[:, :n] = torch.where(steps[:, :n, None], x[:, :n], out[:, :n])
    return out, steps


@pytest.mark.parametrize("rnn", ["gru", "lstm"])
def test_recurrent_encoder_output_is_the_same_padded_to_T_or_T_plus_20(rnn):
    torch.manual_seed(0)
    enc = build_encoder(ModalityInfo("ehr", "timeseries", (T, F)), 8, rnn=rnn).eval()
    x = torch.randn(5, T, F)
    lengths = torch.tensor([T, 5, 1, 9, 2])
    a, ma = _padded(x, lengths, T, "garbage")
    b, mb = _padded(x, lengths, T + 20, "garbage")
    with torch.no_grad():
        out_a, out_b = enc(a, ma), enc(b, mb)
        assert torch.isfinite(out_a).all()
        assert torch.equal(out_a, out_b)  # the same bits: the padding is never read
        for i, n in enumerate(lengths.tolist()):  # each row: the encoder over its valid steps alone, no mask
            torch.testing.assert_close(out_a[i], enc(x[i : i + 1, :n], None)[0], rtol=0, atol=1e-5)
        # a full-length row with a mask equals the fixed-length encoder (no mask) on it
        torch.testing.assert_close(out_a[0], enc(x[:1], None)[0], rtol=0, atol=1e-5)
        # the mask matters: the same row read over all T steps is another output
        assert not torch.allclose(enc(a[1:2].nan_to_num(), None), out_a[1:2], atol=1e-3)


@pytest.mark.parametrize("rnn", ["gru", "lstm"])
def test_no_gradient_reaches_the_padding_and_a_row_without_steps_is_v_miss(rnn):
    torch.manual_seed(1)
    enc = build_encoder(ModalityInfo("ehr", "timeseries", (T, F)), 8, rnn=rnn)
    lengths = torch.tensor([3, T, 7])
    x, steps = _padded(torch.randn(3, T, F), lengths, T, "zeros")
    x.requires_grad_(True)
    enc(x, steps).pow(2).sum().backward()
    assert x.grad is not None and (x.grad[~steps] == 0).all() and (x.grad[steps].abs().sum(-1) > 0).all()
    enc.eval()
    with torch.no_grad():
        miss = enc(torch.randn(2, T, F), torch.zeros(2, T, dtype=torch.bool))  # what the rows hold is never read
        empty = enc.norm(torch.zeros(1, 8))  # v^miss as OmniFuse computes it: LN(h_0), the empty series
        zero_input = enc(torch.zeros(1, T, F), None)  # the zero input over T steps: not the empty series
    assert torch.isfinite(miss).all()
    torch.testing.assert_close(miss, empty.expand(2, -1), rtol=0, atol=0)
    assert not torch.allclose(miss[:1], zero_input)


def test_a_step_mask_with_a_gap_is_refused():
    enc = build_encoder(ModalityInfo("ehr", "timeseries", (T, F)), 8).eval()
    steps = torch.ones(1, T, dtype=torch.bool)
    steps[0, 3] = False
    with pytest.raises(ValueError, match="first steps only"):
        enc(torch.randn(1, T, F), steps)


@pytest.mark.parametrize("pool", ["attention", "mean"])
def test_sequence_pooling_is_the_same_padded_to_L_or_L_plus_20(pool):
    torch.manual_seed(2)
    enc = build_encoder(ModalityInfo("rep", "sequence", (T, 6)), 8, pool=pool).eval()
    x = torch.randn(4, T, 6)
    lengths = torch.tensor([T, 4, 1, 8])
    a, ma = _padded(x, lengths, T, "zeros")
    b, mb = _padded(x, lengths, T + 20, "zeros")
    b[:, T:] = 50.0  # what the padding holds is never read
    with torch.no_grad():
        torch.testing.assert_close(enc(a, ma), enc(b, mb), rtol=0, atol=1e-6)
        for i, n in enumerate(lengths.tolist()):
            torch.testing.assert_close(enc(a, ma)[i], enc(x[i : i + 1, :n], None)[0], rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------- data and caches
def varlen_cache_data(n: int = 160, steps: int = T, seed: int = 0, with_img: bool = True) -> CacheData:
    """:func:`synthetic_cache_data` rows (tasks, patients, an ``img`` vector) with a variable-length ``ehr``
    series [n, steps, 4] whose first ``length`` steps (1..T, the same whatever ``steps``) carry the mortality
    label in channel 0's mean (channel 3 holds 10 % NaN, not observed); zero padding up to ``steps``."""
    cd = synthetic_cache_data(n=n, seed=seed, kinds={"img": ("vector", (6,))})
    rng = np.random.default_rng(seed + 100)
    lengths = rng.integers(1, T + 1, size=n)
    y = cd.labels["mortality"].y[:, 0]
    x = rng.normal(size=(n, T, F)) * 2.0 + 5.0
    x[:, :, 0] += 2.0 * y[:, None]
    x[:, :, 3] = np.where(rng.random((n, T)) < 0.1, np.nan, x[:, :, 3])
    valid = np.arange(steps)[None, :] < lengths[:, None]
    full = np.zeros((n, steps, F), dtype=np.float32)
    full[:, :T] = x
    full = np.where(valid[..., None], full, 0.0).astype(np.float32)
    mask = np.ones(n, dtype=bool) if not with_img else rng.random(n) < 0.85
    prep = {"continuous": [0, 1, 2, 3], "variable_length": True}
    ehr = ModalityData("ehr", "timeseries", full, mask, tokens_mask=valid & mask[:, None], preprocessing=prep)
    spec_ehr = ModalitySpec("ehr", "timeseries", (steps, F), dtype="float32", preprocessing=prep)
    assert spec_ehr.has_tokens_mask and spec_ehr.variable_length
    mods = {"ehr": ehr, **({"img": cd.modalities["img"]} if with_img else {})}
    cd.modalities = mods
    cd.spec.modalities = [spec_ehr] + ([cd.spec.modality("img")] if with_img else [])
    if with_img:
        cd.modalities["img"].mask = cd.modalities["img"].mask | ~mask  # every row keeps a modality
    return cd


def _valid_steps(cd: CacheData, name: str = "ehr") -> list[np.ndarray]:
    md = cd.modalities[name]
    assert md.tokens_mask is not None
    return [md.x[i][md.tokens_mask[i]] for i in range(len(md.x))]


def test_written_cache_keeps_the_step_mask_and_zero_padding(tmp_path):
    cd = varlen_cache_data(n=40)
    write_cache_data(tmp_path / "v.zarr", cd)
    got = load_cache(tmp_path / "v.zarr")
    assert got.attrs["schema_version"] == 3 and got.spec.modality("ehr").variable_length
    md = got.modalities["ehr"]
    assert md.tokens_mask is not None
    np.testing.assert_array_equal(md.tokens_mask, cd.modalities["ehr"].tokens_mask)
    assert (md.x[~md.tokens_mask] == 0).all()
    assert min_schema_version(got.spec.modality("ehr")) == 3 and min_schema_version(got.spec.modality("img")) == 2


def test_normaliser_and_reference_summaries_use_the_valid_steps_only():
    cd = varlen_cache_data(n=80)
    d = load_fuse_data(cd, "mortality", device="cpu")
    assert d.tokens_mask["ehr"].shape == (80, T)
    rows = np.arange(80)
    norm = Normalizer.fit(d, rows)
    present = cd.modalities["ehr"].mask
    valid = np.concatenate([v for v, p in zip(_valid_steps(cd), present, strict=True) if p])
    st = norm.stats["ehr"]
    v0 = np.clip(valid[:, 0].astype(np.float64), st["low"][0], st["high"][0])  # the 0.1 % / 99.9 % clip first
    v1 = np.clip(valid[:, 1].astype(np.float64), st["low"][1], st["high"][1])
    np.testing.assert_allclose(st["mean"][0], v0.mean(), rtol=1e-6)
    np.testing.assert_allclose(st["std"][1], v1.std(), rtol=1e-6)
    assert st["indicators"] == [3]  # only the column with NaN among its valid steps
    # garbage (NaN, 1e6) in the padding changes no statistic, no indicator, no reference feature
    dirty = copy.deepcopy(cd)
    md = dirty.modalities["ehr"]
    md.x = np.where(md.tokens_mask[..., None], md.x, np.float32(1e6)).astype(np.float32)
    md.x[:, -1, :] = np.where(md.tokens_mask[:, -1:], md.x[:, -1, :], np.nan)
    d2 = load_fuse_data(dirty, "mortality", device="cpu")
    norm2 = Normalizer.fit(d2, rows)
    assert json.dumps(norm2.stats, sort_keys=True) == json.dumps(norm.stats, sort_keys=True)
    f, f2 = reference_features(d, rows, norm), reference_features(d2, rows, norm2)
    np.testing.assert_array_equal(f, f2)
    # the summaries by hand: last observed, mean, min, max, count of each channel over the valid steps
    ehr = f[:, : 5 * F]
    for i, steps in enumerate(_valid_steps(cd)):
        if not present[i]:
            assert np.isnan(ehr[i]).all()
            continue
        v = np.clip(steps, [st["low"][c] for c in range(F)], [st["high"][c] for c in range(F)])
        last = [v[np.flatnonzero(np.isfinite(v[:, c]))[-1], c] for c in range(F)]
        want = np.concatenate([last, np.nanmean(v, 0), np.nanmin(v, 0), np.nanmax(v, 0), np.isfinite(v).sum(0)])
        np.testing.assert_allclose(ehr[i], want, rtol=1e-5)


def test_task_keys_choose_the_defaults_and_refuse_a_leaking_modality():
    cd = varlen_cache_data(n=60)
    stay = cd.spec.modality("ehr")
    stay.preprocessing = {**stay.preprocessing, "input_for": ["pheno"], "window": "the whole stay"}
    img = cd.spec.modality("img")
    img.preprocessing = {**img.preprocessing, "default_for": ["mortality"]}
    assert task_inputs(cd.spec, "pheno") == ["ehr"]  # img: a default of mortality only
    assert task_inputs(cd.spec, "mortality") == ["img"]  # ehr: an input of pheno only
    assert task_inputs(cd.spec, "subtype") == []
    assert load_fuse_data(cd, "pheno", device="cpu").modalities == ["ehr"]
    assert load_fuse_data(cd, "mortality", device="cpu").modalities == ["img"]
    assert load_fuse_data(cd, "pheno", ["ehr", "img"], device="cpu").modalities == ["ehr", "img"]  # img may be named
    with pytest.raises(DataError, match=r"modality 'ehr' is an input of 'pheno' only \(the whole stay\)"):
        load_fuse_data(cd, "mortality", ["img", "ehr"], device="cpu")
    with pytest.raises(CacheError, match="after its prediction time"):
        check_task_inputs(cd.spec, "subtype", ["ehr"])
    with pytest.raises(CacheError, match="must be a list of task names"):
        ModalitySpec("e", "timeseries", (3, 2), preprocessing={"input_for": "pheno"})


def test_a_version_2_cache_reads_as_full_length(tmp_path):
    """A store written before version 3 (no step mask, no task keys) reads as it always did."""
    cd = synthetic_cache_data(n=30, seed=5)
    path = write_cache_data(tmp_path / "old.zarr", cd)
    doc = json.loads((path / "zarr.json").read_text())
    doc["attributes"]["omnifuse"]["schema_version"] = 2
    (path / "zarr.json").write_text(json.dumps(doc))
    got = load_cache(path)
    assert got.attrs["schema_version"] == 2 and not got.spec.modality("ehr").variable_length
    d = load_fuse_data(path, "mortality", device="cpu")
    assert d.modalities == ["img", "rep", "ehr"] and "ehr" not in d.tokens_mask


def test_stage_two_train_is_the_same_whether_the_cache_pads_to_T_or_T_plus_20(tmp_path, fast):
    """One modality (M = 1: no drop, no missing row), the variable-length ``ehr`` written to two caches padded to
    T and T + 20: the same folds, losses and predictions, bit for bit, for Concat and the reference learner.
    (OmniFuse's ``v^miss`` of a step-masked series is the empty series, LN(h_0), so it does not depend on the
    cap either: ``tests/fuse/methods/test_omnifuse.py``.)"""
    a = write_cache_data(tmp_path / "a.zarr", varlen_cache_data(n=80, steps=T, seed=3, with_img=False))
    b = write_cache_data(tmp_path / "b.zarr", varlen_cache_data(n=80, steps=T + 20, seed=3, with_img=False))
    assert load_cache(b).modalities["ehr"].x.shape == (80, T + 20, F)
    fast = {**fast, "epochs": 2, "n_boot": 5, "method_params": {"d": 16}}
    for method in ("concat", "logreg"):
        opts = fast if method == "concat" else {k: v for k, v in fast.items() if k != "method_params"}
        ra = train(a, "mortality", method, folds=2, seed=1, **opts)
        rb = train(b, "mortality", method, folds=2, seed=1, **opts)
        for fa, fb in zip(ra.folds, rb.folds, strict=True):
            np.testing.assert_array_equal(fa.probs, fb.probs)
            drop_time = [[{k: v for k, v in e.items() if k != "seconds"} for e in f.history] for f in (fa, fb)]
            assert drop_time[0] == drop_time[1]  # the same losses and validation scores, epoch by epoch
        assert ra.metrics["folds"] == rb.metrics["folds"]


def test_stage_two_train_learns_the_valid_steps_with_missing_rows(tmp_path, fast):
    """Two modalities, the variable-length one missing in some rows and dropped in training (OmniFuse: ``v^miss``,
    the CRA, TLA over the combinations): the run is finite; the label carried by the valid steps is learnt."""
    path = write_cache_data(tmp_path / "v.zarr", varlen_cache_data(n=120, seed=7))
    r = train(path, "mortality", "omnifuse", folds=2, seed=0, **{**fast, "epochs": 3, "n_boot": 5})
    assert np.isfinite(np.concatenate([f.probs[:, 0] for f in r.folds])).all()
    assert all({"ehr", "img", "ehr+img"} <= set(f["by_combination"]) for f in r.metrics["folds"])
    plain = {k: v for k, v in fast.items() if k != "method_params"}
    ref = train(path, "mortality", "logreg", folds=2, seed=0, **{**plain, "n_boot": 5})
    assert ref.metrics["mean"]["auroc"] > 0.85  # channel 0's mean over the valid steps carries the label
