"""Concatenation fusion (the "Concatenate" baseline of OmniFuse's table 3; early/intermediate fusion as in
Baltrušaitis et al., "Multimodal machine learning: a survey and taxonomy", TPAMI 2019).

Each modality's embedding ``v_m`` [B, d] (one encoder per modality), missing slots zero-filled
(``missing="zero"``) or a learned per-modality token (``missing="token"``); the M slots are concatenated to
[B, M*d] and a head gives the logits. Any M >= 1: the concatenation simply grows with M.

Defaults: d=64, missing="zero", head hidden=64, dropout=0.1.
"""

from __future__ import annotations

from typing import Any

import torch

from omnifuse.fuse.base import ModelInfo, register_method
from omnifuse.fuse.methods.common import SupervisedFusion

DEFAULTS: dict[str, Any] = {"d": 64, "missing": "zero", "hidden": 64, "dropout": 0.1, "encoder": {}}


class ConcatFusion(SupervisedFusion):
    """``logits = head(concat_m u_m)``, ``u_m`` = ``v_m`` if present else 0 or the learned token."""

    def __init__(self, info: ModelInfo, d: int = 64, missing: str = "zero", hidden: int | None = 64,
                 dropout: float = 0.1, encoder: dict[str, Any] | None = None) -> None:
        super().__init__(info, d, missing, dropout, encoder)
        self._build_head(info.num_modalities * self.d, hidden, dropout)

    def fuse(self, E: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, M, d] -> [B, M*d]."""
        return E.reshape(E.shape[0], -1)


@register_method("concat", description="concatenate the modality embeddings, then a classifier head",
                 paper="Concatenation baseline (OmniFuse table 3; Baltrusaitis et al., TPAMI 2019)",
                 defaults=DEFAULTS)
def concat(info: ModelInfo, **cfg: Any) -> ConcatFusion:
    return ConcatFusion(info, **cfg)
