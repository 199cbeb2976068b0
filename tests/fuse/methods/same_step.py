"""Helpers of the equivalence tests of the faster method implementations (``test_*_equivalence.py``): a
small problem with every encoder kind, a batch with natural gaps and a trainer-style drop, and one training
step whose outputs, loss, loss terms and gradients are compared between two implementations run from the
same seed (the same initial weights and dropout draws)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from omnifuse.fuse.base import Batch, DroppedBatch, FusionMethod, ModalityInfo, ModelInfo
from omnifuse.fuse.layers import drop_modalities

MIXED = [
    ModalityInfo("ts", "timeseries", (5, 3)),
    ModalityInfo("vec", "vector", (7,)),
    ModalityInfo("tab", "tabular", (4,)),
    ModalityInfo("seq", "sequence", (3, 5)),
]
"""Four modalities of every encoder kind (time series, vector, tabular, sequence)."""


def mixed_info(kind: str = "binary", outputs: int = 1) -> ModelInfo:
    return ModelInfo(MIXED, kind, outputs)


def mixed_batch(kind: str = "binary", outputs: int = 1, n: int = 24, seed: int = 0, drop: bool = True) -> Batch:
    """``n`` rows of :data:`MIXED`: natural gaps (one row with nothing present, rows with one modality), labels
    of ``kind`` (two unlabelled rows) and, with ``drop``, the trainer's row drop on top (a ``DroppedBatch``)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n, len(MIXED), generator=g) < 0.75
    mask[0] = False  # nothing present
    mask[1] = torch.tensor([True, False, False, False])
    mask[2] = torch.tensor([False, False, True, False])
    mask[3] = True
    x, tm = {}, {}
    for j, m in enumerate(MIXED):
        keep = mask[:, j].to(torch.float32).view(-1, *([1] * len(m.shape)))
        x[m.name] = torch.randn(n, *m.shape, generator=g) * keep
        if m.kind == "sequence":
            valid = torch.rand(n, m.shape[0], generator=g) < 0.7
            valid[:, 0] = True
            tm[m.name] = valid & mask[:, j : j + 1]
    if kind == "multiclass":
        y = torch.randint(0, outputs, (n,), generator=g)
    else:
        y = (torch.rand(n, outputs, generator=g) < 0.4).to(torch.float32)
    y_mask = torch.ones(n, dtype=torch.bool)
    y_mask[4:6] = False
    batch = Batch(x=x, mask=mask, y=y, y_mask=y_mask, index=torch.arange(100, 100 + n), tokens_mask=tm,
                  natural_mask=mask.clone())
    if not drop:
        return batch
    return DroppedBatch.drop(batch, drop_modalities(mask, 0.5, torch.Generator().manual_seed(seed + 1), unit="row"))


def training_step(
    build: Callable[[], FusionMethod], batch: Batch, seed: int = 0, before: Callable[[FusionMethod], Any] | None = None
) -> dict[str, Any]:
    """Build a model with torch seeded by ``seed``, call ``before(model)`` (hooks, patches), then one training
    step's forward, loss, backward and ``after_backward`` (dropout draws seeded the same way): ``{"out":
    MethodOutput, "loss", "terms", "grads": {name: grad}, "model"}``."""
    torch.manual_seed(seed)
    model = build()
    model.train()
    if before is not None:
        before(model)
    torch.manual_seed(seed + 1)
    out = model(batch)
    loss, terms = model.loss(batch, out)
    loss.backward()
    model.after_backward(batch, out)  # as the trainer does (OGM-GE modulates the gradients here)
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return {"out": out, "loss": loss.detach(), "terms": terms, "grads": grads, "model": model}


def assert_same_step(new: dict[str, Any], old: dict[str, Any], rtol: float = 1e-5, atol: float = 1e-6,
                     exact_logits: bool = False) -> None:
    """The two steps give the same logits (bit for bit with ``exact_logits``), per-modality logits, loss,
    loss terms and gradients (the same parameters get one), within ``rtol``/``atol``."""
    if exact_logits:
        assert torch.equal(new["out"].logits, old["out"].logits)
    torch.testing.assert_close(new["out"].logits, old["out"].logits, rtol=rtol, atol=atol)
    pn, po = new["out"].per_modality_logits, old["out"].per_modality_logits
    assert (pn is None) == (po is None)
    if pn is not None:
        assert list(pn) == list(po)
        for k in pn:
            torch.testing.assert_close(pn[k], po[k], rtol=rtol, atol=atol)
    torch.testing.assert_close(new["loss"], old["loss"], rtol=rtol, atol=atol)
    assert set(new["terms"]) == set(old["terms"])
    for k, v in new["terms"].items():
        assert abs(v - old["terms"][k]) <= atol + rtol * abs(old["terms"][k]), (k, v, old["terms"][k])
    assert set(new["grads"]) == set(old["grads"])
    for k, g in new["grads"].items():
        torch.testing.assert_close(g, old["grads"][k], rtol=rtol, atol=atol, msg=lambda m, k=k: f"{k}: {m}")
