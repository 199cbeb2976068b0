"""MedFuse's LSTM fusion (Hayat, Geras, Shamout, "MedFuse: multi-modal fusion with clinical time-series data
and chest X-ray images", MLHC 2022).

The modality embeddings (the shared backbone's, width d) form a sequence in the fixed modality order
(MedFuse: EHR first, then the image); an LSTM reads it and a linear classifier acts on its last hidden state
(the authors' ``models/fusion.py``, ``Fusion.forward_lstm_fused``: ``lstm_fusion_layer``, then
``lstm_fused_cls``). Missing modalities:
- ``missing="auto"`` (default): ``"skip"`` for M <= 2 (the authors' case), ``"token"`` for M > 2;
- ``missing="skip"`` (MedFuse's own handling of unpaired stays: the CXR features are zeroed, the sequence
  length set to 1 and the sequence packed, so the LSTM never reads the missing step): only the present
  embeddings, in order, form a variable-length packed sequence; a row with nothing present (impossible in
  the authors' data, where the EHR is always there) reads one learned "empty" token;
- ``missing="token"``: a learned vector per modality takes the slot, the sequence always has M steps (our
  choice beyond two modalities: which modality goes missing then changes the meaning of each step);
- ``missing="zero"``: the slot holds zeros.
Generalisation to M: the sequence has M steps instead of two.

Defaults: the backbone's d (64), lstm hidden=64 (one layer), missing="auto", head linear, dropout=0.1.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from omnifuse.fuse.base import ModelInfo
from omnifuse.fuse.encoders import BACKBONE
from omnifuse.fuse.methods.common import SupervisedFusion
from omnifuse.fuse.registry import register_method

DEFAULTS: dict[str, Any] = {
    "d": BACKBONE.d,
    "lstm_hidden": 64,
    "layers": 1,
    "missing": "auto",
    "hidden": None,
    "dropout": 0.1,
    "encoder": {},
}


@register_method(
    "medfuse",
    description="LSTM over the sequence of modality embeddings (a missing one skipped for M <= 2, a learned "
    "token for M > 2)",
    paper="Hayat, Geras, Shamout. MedFuse: multi-modal fusion with clinical time-series data and "
    "chest X-ray images. MLHC 2022",
    defaults=DEFAULTS,
)
class MedFuseLSTM(SupervisedFusion):
    """LSTM over the sequence of modality embeddings [B, M, d]; the head reads the last hidden state."""

    def __init__(
        self,
        info: ModelInfo,
        d: int = BACKBONE.d,
        lstm_hidden: int = 64,
        layers: int = 1,
        missing: str = "auto",
        hidden: int | None = None,
        dropout: float = 0.1,
        encoder: dict[str, Any] | None = None,
    ) -> None:
        if missing not in ("auto", "token", "skip", "zero"):
            raise ValueError(f"medfuse missing must be 'auto', 'token', 'skip' or 'zero', got {missing!r}")
        if missing == "auto":
            missing = "skip" if info.num_modalities <= 2 else "token"
        super().__init__(info, d, "zero" if missing in ("skip", "zero") else "token", dropout, encoder)
        self.missing = missing  # resolved: "skip", "token" or "zero"
        self.lstm = nn.LSTM(
            self.d, lstm_hidden, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0
        )
        # the "empty" token of missing="skip" (a row with nothing present); None otherwise
        self.empty = nn.Parameter(torch.randn(self.d) * 0.02) if missing == "skip" else None
        self._build_head(lstm_hidden, hidden, dropout)

    def fuse(self, E: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, M, d] -> last hidden state [B, lstm_hidden]."""
        if self.empty is None:  # missing="token" or "zero": M steps, missing slots filled
            _, (h, _) = self.lstm(E)
            return h[-1]
        b, m, d = E.shape
        # stable sort puts the present modalities first, in their order
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
        seq = E.gather(1, order.unsqueeze(-1).expand(b, m, d))
        lengths = mask.sum(dim=1)
        none = lengths == 0
        if bool(none.any()):
            first = torch.where(none.view(b, 1), self.empty.to(E.dtype).view(1, d).expand(b, d), seq[:, 0])
            seq = torch.cat([first.unsqueeze(1), seq[:, 1:]], dim=1)
            lengths = lengths.clamp(min=1)
        packed = pack_padded_sequence(seq, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)
        return h[-1]
