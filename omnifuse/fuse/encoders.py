"""Per-modality encoders (eq. 1): cached features of one modality to a common size ``d``.

``v_m = e_m(x_m)``. Every encoder maps ``x`` [B, *shape] (and, for sequences, ``tokens_mask`` [B, L]) to
[B, d] and is finite for an explicit all-zero input and an all-false token mask: that output is the
``v_m^miss`` of eq. 2-3 (the missing modality's embedding).

- ``vector`` [D] and ``tabular`` [F]: a two-layer MLP.
- ``sequence`` [L, D]: a linear projection then masked attention pooling (``pool="attention"``) or masked
  mean pooling (``pool="mean"``); a row with no valid token pools to zeros before the output layer.
- ``timeseries`` [T, F]: a GRU (``rnn="gru"``) or LSTM (``rnn="lstm"``) over time, last hidden state.

**The shared backbone.** Every fusion method builds its modality encoders from :data:`BACKBONE` (width ``d``
and the options of :func:`build_encoder`) through :class:`EncoderBank`, so by default only the fusion module
and its losses differ between methods (OmniFuse's table 3). A method gets other encoders only through its
documented parameters ``d`` and ``encoder`` (options on top of the backbone's).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from omnifuse.fuse.base import Batch, ModalityInfo, ModelInfo

ENCODER_KINDS = ("vector", "tabular", "sequence", "timeseries")


@dataclass(frozen=True)
class Backbone:
    """The modality encoders every method uses by default: width ``d`` of each ``v_m``, dropout, the MLP width
    of vector/tabular encoders (``hidden``; None: ``max(d, min(2 d, input width))``), the sequence pooling
    (``pool``: "attention" or "mean") and the time-series RNN (``rnn``: "gru" or "lstm")."""

    d: int = 64
    dropout: float = 0.1
    hidden: int | None = None
    pool: str = "attention"
    rnn: str = "gru"

    def options(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The encoder options (``dropout``, ``hidden``, ``pool``, ``rnn``) with ``overrides`` on top; an unknown
        key raises ``TypeError`` naming it."""
        base = {k: v for k, v in asdict(self).items() if k != "d"}
        unknown = sorted(set(overrides or {}) - set(base))
        if unknown:
            raise TypeError(f"unknown encoder option(s) {unknown}; the options are {sorted(base)}")
        return {**base, **dict(overrides or {})}


BACKBONE = Backbone()
"""The shared backbone (d = 64, dropout 0.1, attention pooling, GRU): every registered method's default."""


class MLPEncoder(nn.Module):
    """[B, D] -> [B, d]: Linear, GELU, dropout, Linear, LayerNorm."""

    def __init__(self, in_dim: int, d: int, hidden: int | None = None, dropout: float = 0.1) -> None:
        super().__init__()
        hidden = hidden or max(d, min(2 * d, in_dim))
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d), nn.LayerNorm(d)
        )

    def forward(self, x: torch.Tensor, tokens_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x.reshape(x.shape[0], -1).float())


class SequenceEncoder(nn.Module):
    """[B, L, D] with ``tokens_mask`` [B, L] -> [B, d] by masked attention or mean pooling.

    Tokens outside the mask get no weight; a row with no valid token (missing modality) pools to the zero
    vector, so the output is the bias path of the output layer: finite, never NaN.
    """

    def __init__(self, in_dim: int, d: int, pool: str = "attention", dropout: float = 0.1) -> None:
        super().__init__()
        if pool not in ("attention", "mean"):
            raise ValueError(f"sequence pooling must be 'attention' or 'mean', got {pool!r}")
        self.pool = pool
        self.proj = nn.Sequential(nn.Linear(in_dim, d), nn.GELU(), nn.Dropout(dropout))
        self.score = nn.Linear(d, 1) if pool == "attention" else None
        self.out = nn.Sequential(nn.Linear(d, d), nn.LayerNorm(d))

    def forward(self, x: torch.Tensor, tokens_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.proj(x.float())  # [B, L, d]
        if tokens_mask is None:
            tokens_mask = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
        valid = tokens_mask.to(torch.bool)
        any_valid = valid.any(dim=1, keepdim=True)  # [B, 1]
        if self.score is not None:
            s = self.score(h).squeeze(-1).masked_fill(~valid, float("-inf"))  # [B, L]
            # rows without any valid token: uniform logits, then zeroed weights (no NaN from softmax)
            s = torch.where(any_valid, s, torch.zeros_like(s))
            a = torch.softmax(s, dim=1) * valid.to(h.dtype)
        else:
            a = valid.to(h.dtype) / valid.sum(dim=1, keepdim=True).clamp(min=1).to(h.dtype)
        pooled = torch.einsum("bl,bld->bd", a, h)
        return self.out(pooled)


class RecurrentEncoder(nn.Module):
    """[B, T, F] -> [B, d]: input projection, GRU or LSTM over time, the last hidden state, LayerNorm."""

    def __init__(self, in_dim: int, d: int, rnn: str = "gru", dropout: float = 0.1) -> None:
        super().__init__()
        if rnn not in ("gru", "lstm"):
            raise ValueError(f"time-series encoder must be 'gru' or 'lstm', got {rnn!r}")
        self.inp = nn.Sequential(nn.Linear(in_dim, d), nn.GELU(), nn.Dropout(dropout))
        self.rnn = (nn.GRU if rnn == "gru" else nn.LSTM)(d, d, batch_first=True)
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, tokens_mask: torch.Tensor | None = None) -> torch.Tensor:
        _, h = self.rnn(self.inp(x.float()))
        if isinstance(h, tuple):  # LSTM: (h, c)
            h = h[0]
        return self.norm(h[-1])


def build_encoder(info: ModalityInfo, d: int = BACKBONE.d, **kw: Any) -> nn.Module:
    """The encoder ``e_m`` of eq. 1 for one modality: forward ``(x [B, *shape], tokens_mask [B, L] | None)``
    -> [B, d].

    Keyword options (defaults: :data:`BACKBONE`'s): ``dropout`` (all), ``hidden`` (vector/tabular MLP width),
    ``pool`` ("attention" or "mean", sequences), ``rnn`` ("gru" or "lstm", time series). Unknown options
    raise ``TypeError``.
    """
    try:
        opts = BACKBONE.options(kw)
    except TypeError as e:
        raise TypeError(f"modality {info.name!r}: {e}") from None
    dropout, hidden, pool, rnn = float(opts["dropout"]), opts["hidden"], opts["pool"], opts["rnn"]
    shape = tuple(int(s) for s in info.shape)
    if info.kind in ("vector", "tabular"):
        if len(shape) != 1:
            raise ValueError(f"modality {info.name!r} of kind {info.kind} needs a 1-d shape, got {shape}")
        return MLPEncoder(shape[0], d, hidden=hidden, dropout=dropout)
    if info.kind == "sequence":
        if len(shape) != 2:
            raise ValueError(f"sequence modality {info.name!r} needs shape (L, D), got {shape}")
        return SequenceEncoder(shape[1], d, pool=pool, dropout=dropout)
    if info.kind == "timeseries":
        if len(shape) != 2:
            raise ValueError(f"time-series modality {info.name!r} needs shape (T, F), got {shape}")
        return RecurrentEncoder(shape[1], d, rnn=rnn, dropout=dropout)
    raise ValueError(f"modality {info.name!r}: unknown kind {info.kind!r}; expected one of {ENCODER_KINDS}")


class EncoderBank(nn.Module):
    """One encoder per modality (eq. 1 of OmniFuse: ``v_m = e_m(x_m)``), in the order of ``info.modalities``:
    the shared backbone (:data:`BACKBONE`, width ``d``, ``encoder`` options on top of the backbone's).

    ``forward(batch)`` -> ``E`` [B, M, d], the raw encoder outputs (a missing row gives the encoder's output for
    its zero input, ``v^miss``; each method decides what its fusion sees there).
    """

    def __init__(self, info: ModelInfo, d: int = BACKBONE.d, encoder: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.names = list(info.names)
        self.d = int(d)
        self.encoders = nn.ModuleList([build_encoder(mi, self.d, **dict(encoder or {})) for mi in info.modalities])

    def encode(self, batch: Batch, m: int) -> torch.Tensor:
        """[B, d] embedding of modality ``m``."""
        name = self.names[m]
        return self.encoders[m](batch.x[name], batch.tokens_mask.get(name))

    def forward(self, batch: Batch) -> torch.Tensor:
        return torch.stack([self.encode(batch, m) for m in range(len(self.names))], dim=1)
