"""Summation fusion (the "Sum" baseline of OmniFuse's table 3).

Each modality's embedding ``v_m`` [B, d], missing slots zero-filled (``missing="zero"``: the sum runs over
the present modalities only) or a learned per-modality token (``missing="token"``); ``h = sum_m u_m``
[B, d], then a head. Any M >= 1 (the sum does not grow with M).

Defaults: d=64, missing="zero", head hidden=64, dropout=0.1.
"""

from __future__ import annotations

from typing import Any

import torch

from omnifuse.fuse.base import ModelInfo, register_method
from omnifuse.fuse.methods.common import SupervisedFusion

DEFAULTS: dict[str, Any] = {"d": 64, "missing": "zero", "hidden": 64, "dropout": 0.1, "encoder": {}}


class SumFusion(SupervisedFusion):
    """``logits = head(sum_m u_m)``, ``u_m`` = ``v_m`` if present else 0 or the learned token."""

    def __init__(self, info: ModelInfo, d: int = 64, missing: str = "zero", hidden: int | None = 64,
                 dropout: float = 0.1, encoder: dict[str, Any] | None = None) -> None:
        super().__init__(info, d, missing, dropout, encoder)
        self._build_head(self.d, hidden, dropout)

    def fuse(self, E: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, M, d] -> [B, d]."""
        return E.sum(dim=1)


@register_method("sum", description="sum the modality embeddings, then a classifier head",
                 paper="Summation baseline (OmniFuse table 3)", defaults=DEFAULTS)
def sum_fusion(info: ModelInfo, **cfg: Any) -> SumFusion:
    return SumFusion(info, **cfg)
