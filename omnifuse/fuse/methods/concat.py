"""Concatenation fusion (the "Concatenate" baseline of OmniFuse's table 3; early/intermediate fusion as in
Baltrušaitis et al., "Multimodal machine learning: a survey and taxonomy", TPAMI 2019).

Each modality's embedding ``v_m`` [B, d], missing slots zero-filled (``missing="zero"``) or a learned
per-modality token (``missing="token"``); the M slots are concatenated to [B, M*d] and a head gives the
logits. Any M >= 1: the concatenation grows with M. Defaults: :data:`~omnifuse.fuse.methods.common.POOLING_DEFAULTS`.
"""

from __future__ import annotations

import torch

from omnifuse.fuse.methods.common import POOLING_DEFAULTS, PoolingFusion
from omnifuse.fuse.registry import register_method


@register_method(
    "concat",
    description="concatenate the modality embeddings, then a classifier head",
    paper="Concatenation baseline (OmniFuse table 3; Baltrusaitis et al., TPAMI 2019)",
    defaults=POOLING_DEFAULTS,
)
class ConcatFusion(PoolingFusion):
    """``logits = head(concat_m u_m)``, ``u_m`` = ``v_m`` if present else 0 or the learned token."""

    def fused_dim(self) -> int:
        return self.info.num_modalities * self.d

    def fuse(self, E: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, M, d] -> [B, M*d]."""
        return E.reshape(E.shape[0], -1)
