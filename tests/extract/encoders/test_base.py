"""What every frozen encoder shares: the weights hash, the precision choice, seeded random weights."""

from __future__ import annotations

import pytest
import torch

from omnifuse.extract.encoders import (
    build_image_encoder,
    cpu_has_native_bf16,
    random_resnet34,
    resolve_device,
    resolve_precision,
    weights_hash,
)
from omnifuse.extract.encoders.base import check_pooling, pooled_shape, seeded
from tests.helpers import IMAGE_SIZE


def test_weights_hash_is_stable_and_tracks_weights():
    a, b, c = random_resnet34(0), random_resnet34(0), random_resnet34(1)
    assert weights_hash(a) == weights_hash(b)
    assert weights_hash(a) != weights_hash(c)
    with torch.no_grad():
        next(b.parameters()).view(-1)[0] += 1e-3
    assert weights_hash(a) != weights_hash(b)


def test_auto_precision_is_bf16_only_where_the_cpu_computes_it(monkeypatch):
    cpu = torch.device("cpu")
    for caps, want in (
        ({"avx512_bf16": False, "amx_bf16": False}, "fp32"),
        ({"avx512_bf16": True}, "bf16"),
        ({"amx_bf16": True, "avx512_bf16": False}, "bf16"),
        ({}, "fp32"),
    ):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda caps=caps: dict(caps))
        assert cpu_has_native_bf16() is (want == "bf16")
        assert resolve_precision("auto", cpu) == want
        assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    enc = build_image_encoder("random:resnet34", device="cpu", precision="auto", size=IMAGE_SIZE)
    assert enc.precision == "fp32" and enc.preprocessing()["precision"] == "fp32"
    with pytest.raises(ValueError, match="precision must be"):
        resolve_precision("fp16", cpu)


def test_seeded_weights_leave_the_callers_random_state_and_poolings_are_named():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = seeded(7, lambda: torch.nn.Linear(4, 2))
    assert torch.equal(torch.rand(3), expected_next)  # the caller's generator did not move
    b = seeded(7, lambda: torch.nn.Linear(4, 2))
    assert weights_hash(a) == weights_hash(b) != weights_hash(seeded(8, lambda: torch.nn.Linear(4, 2)))
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(torch.device("meta")).type == "meta"
    assert pooled_shape("tokens", "tokens", 32, 384) == (32, 384) and pooled_shape("mean", "tokens", 32, 384) == (384,)
    check_pooling("text", "cls", ("tokens", "mean", "cls"))
    with pytest.raises(ValueError, match=r"volume pooling must be one of \('slices', 'mean'\), got 'max'"):
        check_pooling("volume", "max", ("slices", "mean"))
