"""SE-Gate: squeeze-and-excitation gating over the modality embeddings (Hu, Shen, Sun, "Squeeze-and-
excitation networks", CVPR 2018; the "SE-Gate" baseline of OmniFuse's table 3: an attention mechanism that
recalibrates the importance of each modality).

The stacked embeddings ``U`` [B, M, d] (missing slots zero or a learned token) play the role of M channels:
- squeeze: each modality is summarised by a learned linear map to ``squeeze`` numbers (a per-channel 1x1
  projection; the plain mean over d is not used because the encoders end in LayerNorm, which makes that mean
  nearly constant), giving z [B, M*squeeze]; the presence mask [B, M] is appended so the gate sees which
  modalities are there;
- excitation: ``g = sigmoid(W2 relu(W1 [z; mask]))`` [B, M], one gate per modality (hidden width
  ``max(4, M * squeeze // reduction)``);
- recalibration: ``u_m <- g_m * u_m``; the gated slots are concatenated to [B, M*d] for the head.
Generalisation to M: the gate is over M channels; nothing in it assumes two modalities.

Defaults: d=64, squeeze=4, reduction=2, missing="zero", head hidden=64, dropout=0.1.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from omnifuse.fuse.base import ModelInfo
from omnifuse.fuse.encoders import BACKBONE
from omnifuse.fuse.methods.common import SupervisedFusion
from omnifuse.fuse.registry import register_method

DEFAULTS: dict[str, Any] = {
    "d": BACKBONE.d,
    "squeeze": 4,
    "reduction": 2,
    "missing": "zero",
    "hidden": 64,
    "dropout": 0.1,
    "encoder": {},
}


@register_method(
    "se_gate",
    description="squeeze-and-excitation gates over the modality embeddings",
    paper="Hu, Shen, Sun. Squeeze-and-excitation networks. CVPR 2018",
    defaults=DEFAULTS,
)
class SEGateFusion(SupervisedFusion):
    """Per-modality sigmoid gates from a squeeze-excitation block, then concatenation and a head."""

    def __init__(
        self,
        info: ModelInfo,
        d: int = BACKBONE.d,
        squeeze: int = 4,
        reduction: int = 2,
        missing: str = "zero",
        hidden: int | None = 64,
        dropout: float = 0.1,
        encoder: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(info, d, missing, dropout, encoder)
        if squeeze < 1 or reduction < 1:
            raise ValueError(f"squeeze and reduction must be >= 1, got {squeeze}, {reduction}")
        m = info.num_modalities
        # one squeeze projection per modality: weights [M, d, s]
        self.sq_weight = nn.Parameter(torch.randn(m, self.d, squeeze) / self.d**0.5)
        self.sq_bias = nn.Parameter(torch.zeros(m, squeeze))
        width = max(4, (m * squeeze) // reduction)
        self.excite = nn.Sequential(nn.Linear(m * squeeze + m, width), nn.ReLU(), nn.Linear(width, m))
        self._build_head(m * self.d, hidden, dropout)

    def gates(self, E: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, M, d], [B, M] -> gates [B, M] in (0, 1)."""
        z = torch.einsum("bmd,mds->bms", E, self.sq_weight) + self.sq_bias  # [B, M, s]
        z = torch.cat([z.reshape(E.shape[0], -1), mask.to(E.dtype)], dim=1)
        return torch.sigmoid(self.excite(z))

    def fuse(self, E: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, M, d] -> [B, M*d] (gated slots, concatenated)."""
        g = self.gates(E, mask)
        return (E * g.unsqueeze(-1)).reshape(E.shape[0], -1)
