"""The baselines encode only the present rows of each modality (omnifuse.fuse.layers.encode_present) and
compute what they computed with the whole-batch backbone (``enc(batch)``, missing slots then zeroed or
filled): the same training step (logits, per-modality logits, loss, loss terms, gradients after
``after_backward``) and the same evaluation outputs, from the same seed, up to float32 rounding (see
tests/fuse/test_encode_present.py for the tolerances)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from omnifuse.fuse.base import Batch
from omnifuse.fuse.methods import build_method, common, gblend, mdrop, ogm_ge, pmr
from tests.fuse.methods.same_step import assert_same_step, mixed_batch, mixed_info, training_step

MODULES = (common, gblend, ogm_ge, pmr, mdrop)


def whole_batch(bank: Any, batch: Batch) -> torch.Tensor:
    """The previous code: every encoder on the whole batch, missing slots zeroed by the mask."""
    return bank(batch) * batch.mask.unsqueeze(-1).to(torch.float32)


CASES = [
    ("concat", {}),
    ("concat", {"missing": "token"}),
    ("sum", {}),
    ("se_gate", {}),
    ("medfuse", {}),
    ("medfuse", {"missing": "skip"}),
    ("gblend", {}),
    ("ogm_ge", {}),
    ("pmr", {}),
    ("mdrop", {}),
    ("mdrop", {"mode": "joint", "token_space": "embedding", "token_on_present": True}),
    ("mdrop", {"mode": "supervised", "token_on_present": True}),
]


@pytest.mark.parametrize(("method", "params"), CASES)
@pytest.mark.parametrize(("kind", "outputs"), [("binary", 1), ("multiclass", 3)])
def test_present_rows_only_changes_nothing(method: str, params: dict, kind: str, outputs: int, monkeypatch) -> None:
    info = mixed_info(kind, outputs)
    batch = mixed_batch(kind, outputs, seed=1)

    def build() -> Any:
        model = build_method(method, info, d=8, dropout=0.3, **params)
        if method == "mdrop" and params.get("token_space") == "embedding":
            # a zero embedding-space token is a constant slot: its per-modality LayerNorm divides by sqrt(eps),
            # so its gradient is float32 noise (a 1e-7 change of the inputs changes it entirely); start the
            # tokens away from zero, where the gradient means something
            with torch.no_grad():
                for j, tok in enumerate(model.empty.tokens):
                    tok.copy_(torch.randn(tok.shape, generator=torch.Generator().manual_seed(j)))
        return model

    new = training_step(build, batch, seed=2)
    with monkeypatch.context() as mp:
        for mod in MODULES:
            mp.setattr(mod, "encode_present", whole_batch)
        old = training_step(build, batch, seed=2)
        # evaluation: the natural rows, and every row masked down to one modality (three encoders unused)
        single = batch.with_mask(batch.mask & torch.tensor([False, False, True, False]))
        with torch.no_grad():
            old["model"].eval()
            old_eval = [old["model"](b).logits for b in (batch, single)]
    with torch.no_grad():
        new["model"].eval()
        new_eval = [new["model"](b).logits for b in (batch, single)]
    assert_same_step(new, old, rtol=1e-4, atol=1e-5)
    for a, b in zip(new_eval, old_eval, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
