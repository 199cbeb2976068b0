"""Summation fusion (the "Sum" baseline of OmniFuse's table 3).

``h = sum_m u_m`` [B, d] over the slot embeddings, then a head; with ``missing="zero"`` the sum runs over the
present modalities only, with ``missing="token"`` a missing slot adds its learned token. Any M >= 1 (the
sum does not grow with M). Defaults: :data:`~omnifuse.fuse.methods.common.POOLING_DEFAULTS`.
"""

from __future__ import annotations

import torch

from omnifuse.fuse.methods.common import POOLING_DEFAULTS, PoolingFusion
from omnifuse.fuse.registry import register_method


@register_method(
    "sum",
    description="sum the modality embeddings, then a classifier head",
    paper="Summation baseline (OmniFuse table 3)",
    defaults=POOLING_DEFAULTS,
)
class SumFusion(PoolingFusion):
    """``logits = head(sum_m u_m)``, ``u_m`` = ``v_m`` if present else 0 or the learned token."""

    def fused_dim(self) -> int:
        return self.d

    def fuse(self, E: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, M, d] -> [B, d]."""
        return E.sum(dim=1)
