"""Per-modality encoders (eq. 1): cached features of one modality to a common size ``d``.

``v_m = e_m(x_m)``. Every encoder maps ``x`` [B, *shape] (and, for sequences, ``tokens_mask`` [B, L]) to
[B, d] and is finite for an explicit all-zero input and an all-false token mask: that output is the
``v_m^miss`` of eq. 2-3 (the missing modality's embedding).

- ``vector`` [D] and ``tabular`` [F]: a two-layer MLP. A tabular modality whose :class:`ModalityInfo` carries
  column kinds (a version-3 normaliser) is read by :class:`TabularEncoder`: each categorical column through its
  own ``nn.Embedding``, numeric columns as they are (``numeric="linear"``), piecewise-linear encoded
  (``"ple"``) or periodic (``"periodic"``), all concatenated into the MLP.
- ``sequence`` [L, D]: a linear projection then masked attention pooling (``pool="attention"``) or masked
  mean pooling (``pool="mean"``); a row with no valid token pools to zeros before the output layer.
- ``timeseries`` [T, F]: a GRU (``rnn="gru"``) or LSTM (``rnn="lstm"``) over time, last hidden state; a
  variable-length series (a step mask [B, T] passed as ``tokens_mask``, schema version 3) is read up to each
  row's last valid step, so its padding changes nothing (:class:`RecurrentEncoder`).

**The shared backbone.** Every fusion method builds its modality encoders from :data:`BACKBONE` (width ``d``
and the options of :func:`build_encoder`) through :class:`EncoderBank`, so by default only the fusion module
and its losses differ between methods (OmniFuse's table 3). A method gets other encoders only through its
documented parameters ``d`` and ``encoder`` (options on top of the backbone's).
"""

from __future__ import annotations

import math
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
    (``pool``: "attention" or "mean"), the time-series RNN (``rnn``: "gru" or "lstm") and the encoding of
    numeric tabular columns (``numeric``: "linear", the value itself; "ple", piecewise-linear; "periodic")."""

    d: int = 64
    dropout: float = 0.1
    hidden: int | None = None
    pool: str = "attention"
    rnn: str = "gru"
    numeric: str = "linear"

    def options(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The encoder options (``dropout``, ``hidden``, ``pool``, ``rnn``, ``numeric``) with ``overrides`` on
        top; an unknown key raises ``TypeError`` naming it."""
        base = {k: v for k, v in asdict(self).items() if k != "d"}
        unknown = sorted(set(overrides or {}) - set(base))
        if unknown:
            raise TypeError(f"unknown encoder option(s) {unknown}; the options are {sorted(base)}")
        return {**base, **dict(overrides or {})}


BACKBONE = Backbone()
"""The shared backbone (d = 64, dropout 0.1, attention pooling, GRU, numeric columns read linearly): every
registered method's default."""

NUMERIC_ENCODINGS = ("linear", "ple", "periodic")

NUMERIC_EMBED_DIM = 8
"""Width of the per-column embedding of a numeric column under ``numeric="ple"`` or ``"periodic"``."""

PERIODIC_FREQUENCIES = 8
PERIODIC_SIGMA = 0.1
"""Periodic embeddings: this many trainable frequencies per column, initialised from N(0, sigma^2) (inputs are
robust-scaled, so most lie within a few units of 0)."""


def embedding_dim(n: int) -> int:
    """Width of the embedding of a categorical column with ``n`` categories (``n + 1`` rows with the missing
    index): ``min(16, round(1.6 (n + 1)^0.56))`` (fast.ai's rule of thumb, capped at 16 for small cohorts)."""
    return int(min(16, round(1.6 * (n + 1) ** 0.56)))


class PiecewiseLinearEmbedding(nn.Module):
    """Piecewise-linear encoding then a per-column linear layer and ReLU (Gorishniy et al., NeurIPS 2022,
    "On Embeddings for Numerical Features in Tabular Deep Learning", eq. 1 and the "Q-LR" embedding).

    For a column with bin edges ``b_0 < ... < b_T`` (training quantiles, fitted by the normaliser), a value ``x``
    is encoded as ``e in R^T`` with ``e_t = (x - b_{t-1}) / (b_t - b_{t-1})`` clipped to ``>= 0`` for ``t > 1``
    and to ``<= 1`` for ``t < T`` (the first and last bins extrapolate): 1 for every bin below ``x``, the
    fraction inside its bin, 0 above. Columns with fewer bins are padded with zero components.
    ``[B, F] -> [B, F, k]`` with ``k`` = :data:`NUMERIC_EMBED_DIM`: ``ReLU(e W_f + c_f)`` per column ``f``.
    """

    left: torch.Tensor
    width: torch.Tensor
    first: torch.Tensor
    last: torch.Tensor
    valid: torch.Tensor

    def __init__(self, edges: list[tuple[float, ...]], k: int = NUMERIC_EMBED_DIM) -> None:
        super().__init__()
        t_max = max(len(e) - 1 for e in edges)
        left = torch.zeros(len(edges), t_max)
        width = torch.ones(len(edges), t_max)
        nbins = torch.tensor([len(e) - 1 for e in edges])
        for f, e in enumerate(edges):
            et = torch.tensor(e, dtype=torch.float32)
            left[f, : len(e) - 1] = et[:-1]
            width[f, : len(e) - 1] = (et[1:] - et[:-1]).clamp(min=1e-6)
        t = torch.arange(t_max)
        self.register_buffer("left", left, persistent=False)
        self.register_buffer("width", width, persistent=False)
        self.register_buffer("first", (t == 0).expand(len(edges), -1).clone(), persistent=False)
        self.register_buffer("last", t[None, :] == (nbins[:, None] - 1), persistent=False)
        self.register_buffer("valid", t[None, :] < nbins[:, None], persistent=False)
        self.weight = nn.Parameter(torch.randn(len(edges), t_max, k) / math.sqrt(t_max))
        self.bias = nn.Parameter(torch.zeros(len(edges), k))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[B, F] -> [B, F, T_max], the piecewise-linear vector of every column (padded bins 0)."""
        e = (x[..., None] - self.left) / self.width
        e = torch.where(self.first, e, e.clamp(min=0))
        e = torch.where(self.last, e, e.clamp(max=1))
        return e * self.valid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(torch.einsum("bft,ftk->bfk", self.encode(x), self.weight) + self.bias)


class PeriodicEmbedding(nn.Module):
    """Periodic embedding then a per-column linear layer and ReLU (Gorishniy et al. 2022, "PLR"): with
    trainable frequencies ``c_f`` [K], ``v = [sin(2 pi c_f x), cos(2 pi c_f x)]`` [2K], then ``ReLU(v W_f + b_f)``.
    ``[B, F] -> [B, F, k]``."""

    def __init__(self, n: int, k: int = NUMERIC_EMBED_DIM, frequencies: int = PERIODIC_FREQUENCIES) -> None:
        super().__init__()
        self.freq = nn.Parameter(torch.randn(n, frequencies) * PERIODIC_SIGMA)
        self.weight = nn.Parameter(torch.randn(n, 2 * frequencies, k) / math.sqrt(2 * frequencies))
        self.bias = nn.Parameter(torch.zeros(n, k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = 2 * math.pi * self.freq * x[..., None]  # [B, F, K]
        v = torch.cat([torch.sin(a), torch.cos(a)], dim=-1)
        return torch.relu(torch.einsum("bfj,fjk->bfk", v, self.weight) + self.bias)


class TabularEncoder(nn.Module):
    """[B, F] -> [B, d] for a tabular modality with column kinds (:attr:`ModalityInfo.feature_kinds`).

    Categorical columns (``categorical:<n>``, an index 0..n with 0 missing) each through an ``nn.Embedding(n + 1,
    embedding_dim(n))``; numeric columns as they are (``numeric="linear"``) or through a
    :class:`PiecewiseLinearEmbedding` (``"ple"``, bin edges from ``info.bin_edges``) or :class:`PeriodicEmbedding`
    (``"periodic"``); binary columns as they are. The parts are concatenated (numeric/binary values in column
    order, then the numeric embeddings flattened, then the categorical embeddings) and read by the MLP of
    :class:`MLPEncoder` (Linear, GELU, dropout, Linear, LayerNorm).
    """

    plain: torch.Tensor
    num: torch.Tensor
    cat: torch.Tensor

    def __init__(
        self, info: ModalityInfo, d: int, hidden: int | None = None, dropout: float = 0.1, numeric: str = "linear"
    ) -> None:
        super().__init__()
        kinds = list(info.feature_kinds or [])
        if len(kinds) != info.shape[-1]:
            raise ValueError(f"modality {info.name!r}: {len(kinds)} column kinds for {info.shape[-1]} columns")
        cat = [(j, int(k.split(":")[1])) for j, k in enumerate(kinds) if k.startswith("categorical:")]
        num = [j for j, k in enumerate(kinds) if k == "numeric"]
        edges = list(info.bin_edges or [None] * len(kinds))
        if numeric == "ple" and any(edges[j] is None or len(edges[j] or ()) < 2 for j in num):
            raise ValueError(f"modality {info.name!r}: numeric='ple' needs bin edges for every numeric column")
        self.numeric = numeric if num else "linear"
        plain = [j for j in range(len(kinds)) if j not in dict(cat) and (self.numeric == "linear" or j not in num)]
        self.register_buffer("plain", torch.tensor(plain, dtype=torch.long), persistent=False)
        self.register_buffer("num", torch.tensor(num, dtype=torch.long), persistent=False)
        self.register_buffer("cat", torch.tensor([j for j, _ in cat], dtype=torch.long), persistent=False)
        self.sizes = [n + 1 for _, n in cat]
        self.embeddings = nn.ModuleList([nn.Embedding(n + 1, embedding_dim(n)) for _, n in cat])
        self.num_embedding: nn.Module | None = None
        if self.numeric == "ple":
            self.num_embedding = PiecewiseLinearEmbedding([tuple(edges[j] or ()) for j in num])
        elif self.numeric == "periodic":
            self.num_embedding = PeriodicEmbedding(len(num))
        width = len(plain) + sum(embedding_dim(n) for _, n in cat)
        width += 0 if self.num_embedding is None else len(num) * NUMERIC_EMBED_DIM
        self.mlp = MLPEncoder(width, d, hidden=hidden, dropout=dropout)

    def forward(self, x: torch.Tensor, tokens_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1).float()
        parts = [x.index_select(1, self.plain)]
        if self.num_embedding is not None:
            parts.append(self.num_embedding(x.index_select(1, self.num)).flatten(1))
        if len(self.embeddings):
            codes = x.index_select(1, self.cat).round().long()
            parts += [emb(codes[:, i].clamp(0, self.sizes[i] - 1)) for i, emb in enumerate(self.embeddings)]
        return self.mlp(torch.cat(parts, dim=1))


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
    """[B, T, F] (and a step mask [B, T]) -> [B, d]: input projection, GRU or LSTM over time, the last hidden
    state, LayerNorm.

    Without a step mask every row has T steps (fixed-length series: the 48 h EHR, every version-2 cache).
    With one (``tokens_mask`` [B, T] bool, a variable-length series: True for a row's first ``length`` steps,
    its valid ones), the batch is cut to its longest valid length, run over time, and each row's output is the
    hidden state after its own last valid step (the RNN is causal: a later step never changes an earlier state),
    as MedFuse packs its LSTM's input (``pack_padded_sequence`` with ``seq_lengths``) and the benchmark's Keras
    models skip all-zero steps (``Masking``). Padding past a row's length never reaches its output: a row padded
    to T or to T + 20, whatever the padding holds, gives the same bits (eval mode), and no gradient reaches the
    padding. (Running the batch to its longest length and gathering was faster on the CPU than packing: on
    1,120 stays of up to 168 steps, batches of 256, d = 64, one thread, 3.3-4.1 s against 5.1 s an epoch forward
    and backward, on a shared 2-core machine; the 48 h EHR, 24 steps: 0.4-0.6 s.)
    A row with no valid step (a missing modality) is the empty series: the RNN's initial state h_0 = 0 through
    the LayerNorm, the same at every cap T, which is OmniFuse's ``v^miss`` of eq. 2-3 for a step-masked series
    (``OmniFuse.missing_embeddings``); no RNN step runs for it, so no dropout draw depends on T either. (Without
    a mask, a fixed-length series' zero input runs over its T steps, as it always did.) A mask that is not a
    prefix raises ``ValueError``.
    """

    def __init__(self, in_dim: int, d: int, rnn: str = "gru", dropout: float = 0.1) -> None:
        super().__init__()
        if rnn not in ("gru", "lstm"):
            raise ValueError(f"time-series encoder must be 'gru' or 'lstm', got {rnn!r}")
        self.inp = nn.Sequential(nn.Linear(in_dim, d), nn.GELU(), nn.Dropout(dropout))
        self.rnn = (nn.GRU if rnn == "gru" else nn.LSTM)(d, d, batch_first=True)
        self.norm = nn.LayerNorm(d)

    def _last(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, F] -> [B, d]: the hidden state after the last step."""
        _, h = self.rnn(self.inp(x))
        if isinstance(h, tuple):  # LSTM: (h, c)
            h = h[0]
        return h[-1]

    def forward(self, x: torch.Tensor, tokens_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x.float()
        if tokens_mask is None:
            return self.norm(self._last(x))
        valid = tokens_mask.to(torch.bool)
        lengths = valid.sum(dim=1)  # [B]
        steps = torch.arange(valid.shape[1], device=valid.device)
        if not torch.equal(valid, steps[None, :] < lengths[:, None]):
            raise ValueError("the step mask of a time series must be True for a row's first steps only")
        present = lengths > 0
        h = x.new_zeros(x.shape[0], self.norm.normalized_shape[0])
        if bool(present.any()):
            n = int(lengths.max())
            out, _ = self.rnn(self.inp(x[present, :n]))  # [b, n, d]: the hidden state after every step
            last = (lengths[present] - 1).view(-1, 1, 1).expand(-1, 1, out.shape[-1])
            h = h.index_put((present.nonzero().squeeze(1),), out.gather(1, last).squeeze(1))
        return self.norm(h)  # a row with no valid step keeps h_0 = 0: the empty series, LN(0) (v^miss)


def build_encoder(info: ModalityInfo, d: int = BACKBONE.d, **kw: Any) -> nn.Module:
    """The encoder ``e_m`` of eq. 1 for one modality: forward ``(x [B, *shape], tokens_mask [B, L] | None)``
    -> [B, d].

    Keyword options (defaults: :data:`BACKBONE`'s): ``dropout`` (all), ``hidden`` (vector/tabular MLP width),
    ``pool`` ("attention" or "mean", sequences), ``rnn`` ("gru" or "lstm", time series), ``numeric``
    ("linear", "ple" or "periodic", numeric columns of tabular modalities with column kinds). Unknown options
    raise ``TypeError``. A tabular modality with column kinds is read by :class:`TabularEncoder` unless it
    has no categorical column and ``numeric="linear"`` (then the plain MLP, the same network as before kinds).
    """
    try:
        opts = BACKBONE.options(kw)
    except TypeError as e:
        raise TypeError(f"modality {info.name!r}: {e}") from None
    dropout, hidden, pool, rnn = float(opts["dropout"]), opts["hidden"], opts["pool"], opts["rnn"]
    numeric = opts["numeric"]
    if numeric not in NUMERIC_ENCODINGS:
        raise ValueError(
            f"modality {info.name!r}: numeric encoding must be one of {NUMERIC_ENCODINGS}, got {numeric!r}"
        )
    shape = tuple(int(s) for s in info.shape)
    if info.kind in ("vector", "tabular"):
        if len(shape) != 1:
            raise ValueError(f"modality {info.name!r} of kind {info.kind} needs a 1-d shape, got {shape}")
        kinds = info.feature_kinds if info.kind == "tabular" else None
        if kinds is not None and (numeric != "linear" or any(k.startswith("categorical:") for k in kinds)):
            return TabularEncoder(info, d, hidden=hidden, dropout=dropout, numeric=numeric)
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
