"""HEALNet: hybrid early-fusion attention learning network (Hemker, Simidjievski, Jamnik, "HEALNet: multimodal
fusion for heterogeneous biomedical data", NeurIPS 2024), for any number of modalities, on the shared
backbone. The authors' code is github konst-int-i/healnet (``healnet/models/healnet.py``: ``HealNet``,
``Attention``, ``FeedForward``, ``PreNorm``; ``healnet/utils/train_utils.py``: ``calc_reg_loss``;
``config/best_hyperparams.yml``); the facts below are read from it, the code is ours.

Equation numbers: only eq. 3 (the hybrid early-fusion layer) could be read, in the caption of the paper's
Fig. 1; the rest of the paper's text could not be read here (``docs/methods.md``, "Equation numbers").

Notation: B rows, M modalities, d the backbone width, L latent channels of width ``latent_dim``, T context
tokens per modality.

- **Shared latent array** ``S`` [L, latent_dim] (their ``latents``, N(0, 1)), repeated per row: the fused state
  every modality writes into (the paper's Fig. 1A).
- **Hybrid early-fusion layer** (eq. 3, read in the caption of the paper's Fig. 1, which their repository
  reproduces as ``assets/healnet_overview_caption.png``; Fig. 1B): for each of ``depth`` layers and each
  modality m in order, a modality-specific pre-norm cross-attention of the latents on the modality's context
  tokens, then a pre-norm feed-forward, both residual: ``S <- S + A_m(LN(S), LN(c_m))``, ``S <- S + FF_m(LN(S))``
  (their ``HealNet.forward``). ``A_m`` is their ``Attention``: queries from S, keys and values from the
  context, softmax with temperature 0.5 (their ``temperature_softmax``), output Linear then LeakyReLU(0.01).
  Optionally ``self_per_cross_attn`` latent self-attention blocks after each modality's update (their
  default tuned configuration has none).
- **Missing modalities are skipped**: a row's update by modality m is applied only where m is present
  (``S <- S + p_bm A_m(...)``), per row; their ``forward`` skips a modality missing for the whole batch
  (``tensors[i] is None``). So a missing modality's values never reach the output.
- **Self-normalising regularisation**: the feed-forward blocks are self-normalising (``snn=True``: a SELU
  gate, their ``FeedForward(snn=True)`` with ``SELU``: ``Linear(w, 2 r w)``, ``x * selu(gate)``, ``Linear(r w,
  w)``, ``r = 4``), and an L1 penalty on the weights, ``l1 * sum |theta|`` (their ``calc_reg_loss``; tuned
  values 6.8e-6 to 3.2e-4 in ``config/best_hyperparams.yml``). Ours sums over the fusion parameters, the
  shared backbone's encoders left to the protocol's weight decay as in every other method (their sum runs
  over the whole model, which has no separate encoders).
- **Head**: mean over the latents, LayerNorm, Linear (their ``to_logits``).

Context tokens (the simplification on cached features): HEALNet cross-attends to a modality's raw tokens
(image patches, or one token of all features for a tabular modality: their example's ``tab_c = 1``). The
shared backbone pools every modality into one embedding ``v_m`` [d]; with ``tokens=1`` (default) that
embedding is the single context token, as HEALNet treats a tabular modality (the attention weights are then
1 and each layer adds the same value vector to every latent before the feed-forward). ``tokens=T > 1``
maps ``v_m`` with a learned per-modality Linear(d, T d) to T context tokens (more capacity, documented).
Their Fourier position encoding of the context is not used: one token has no position (and a learned
tokeniser needs none).

Computation (the same numbers, tested): a modality's update is computed on the rows holding it only, its dropout
masks drawn for the whole batch (:class:`FusionLayer`), so the random draws are those of updating every row.

Defaults follow their tuned configurations (``config/best_hyperparams.yml``: ``depth=2``,
``cross_heads=1``, ``self_per_cross_attn=0``, ``snn=True``), smaller for speed: ``latents=8`` (theirs
17-25 tuned, 4 in ``config/hyperparameters.yml``), ``latent_dim=32`` (theirs 119-126 tuned, 16 in
``hyperparameters.yml``; on the eICU demo, fold 0, 16 x 64 gave test AUROC 0.799 against 0.800 in three
times the time), ``cross_dim_head=32``, ``ff_dropout=0.3`` (theirs 0.36-0.47),
``attn_dropout=0.1``, ``l1=1e-5``. Generalisation to M: M cross-attention blocks per layer, in the fixed
modality order (theirs take any number of modalities).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from omnifuse.fuse.base import Batch, FusionMethod, MethodOutput, ModelInfo
from omnifuse.fuse.encoders import BACKBONE, EncoderBank
from omnifuse.fuse.layers import task_loss
from omnifuse.fuse.methods.common import check_batch, check_info
from omnifuse.fuse.registry import register_method

DEFAULTS: dict[str, Any] = {
    "d": BACKBONE.d,
    "depth": 2,
    "latents": 8,
    "latent_dim": 32,
    "cross_heads": 1,
    "cross_dim_head": 32,
    "latent_heads": 4,
    "latent_dim_head": 16,
    "self_per_cross_attn": 0,
    "tokens": 1,
    "snn": True,
    "attn_dropout": 0.1,
    "ff_dropout": 0.3,
    "temperature": 0.5,
    "l1": 1e-5,
    "encoder": {},
}


def _dropout_rows(drop: nn.Module, shape: tuple[int, ...], rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The multiplier ``drop`` applies to a tensor of ``shape`` (its scaled Bernoulli mask in training, ones in
    evaluation), at ``rows`` [R] of its first dimension: ``drop(ones)`` draws exactly the mask ``drop(x)`` would
    for an ``x`` of that shape (``x * drop(ones) == drop(x)``), so computing on the rows alone keeps the random
    draws of computing on all of them."""
    if not drop.training:
        return torch.ones((), dtype=like.dtype, device=like.device)
    return drop(torch.ones(shape, dtype=like.dtype, device=like.device))[rows]


class GatedFeedForward(nn.Module):
    """Their ``FeedForward``: ``Linear(w, 2 r w)``, split into (x, gate), ``x * act(gate)`` with SELU
    (``snn=True``, self-normalising) or GELU, ``Linear(r w, w)``, dropout. [..., w] -> [..., w]."""

    def __init__(self, width: int, mult: int = 4, dropout: float = 0.0, snn: bool = True) -> None:
        super().__init__()
        self.snn = snn
        self.inp = nn.Linear(width, width * mult * 2)
        self.out = nn.Linear(width * mult, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, rows: torch.Tensor | None = None, total: int | None = None) -> torch.Tensor:
        """``rows`` [R] (with ``total``): ``x`` holds only these rows of a ``total``-row batch; the dropout mask is
        drawn for the whole batch (the same random draws as on all rows) and its ``rows`` applied."""
        h, gate = self.inp(x).chunk(2, dim=-1)
        h = h * (F.selu(gate) if self.snn else F.gelu(gate))
        out = self.out(h)
        if rows is None or total is None:
            return self.drop(out)
        return out * _dropout_rows(self.drop, (total, *out.shape[1:]), rows, out)


class LatentAttention(nn.Module):
    """Their ``Attention`` behind ``PreNorm``: queries from the latents [B, L, w] (LayerNorm), keys and values
    from the context [B, T, c] (its own LayerNorm; the latents themselves for self-attention), softmax of the
    scaled scores divided by ``temperature``, then attention dropout, output ``LeakyReLU(0.01)(Linear(...))``
    [B, L, w]. ``single=True`` (one context token, T = 1): every softmax weight is 1, so the output is the
    (dropped-out) value for every latent and no query projection is built."""

    def __init__(
        self,
        width: int,
        context: int | None,
        heads: int,
        dim_head: int,
        dropout: float,
        temperature: float,
        single: bool = False,
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.scale, self.temperature = dim_head**-0.5, float(temperature)
        # one context token (``single``): the weights are 1 whatever the queries, so no query side is built
        self.single = single and context is not None
        self.norm: nn.Module | None = None if self.single else nn.LayerNorm(width)
        self.to_q: nn.Module | None = None if self.single else nn.Linear(width, inner, bias=False)
        self.norm_context = nn.LayerNorm(context) if context is not None else None
        self.to_kv = nn.Linear(context if context is not None else width, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, width)
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
        total: int | None = None,
    ) -> torch.Tensor:
        """Latents ``x`` [B, L, w], ``context`` [B, T, c] (None: self-attention) -> [B, L, w]. ``rows`` [R] (with
        ``total``): ``x`` and ``context`` hold only these rows of a ``total``-row batch; the attention dropout's
        mask is drawn for the whole batch (the same random draws as on all rows)."""
        b, n, _ = x.shape
        full = (total, self.heads, n) if rows is not None and total is not None else None
        if self.single:
            assert context is not None and self.norm_context is not None and context.shape[1] == 1
            v = self.to_kv(self.norm_context(context)).chunk(2, dim=-1)[1]  # [B, 1, H dh]
            v = v.view(b, 1, self.heads, self.dim_head).transpose(1, 2)  # [B, H, 1, dh]
            if full is None:
                w = self.drop(torch.ones(b, self.heads, n, 1, dtype=v.dtype, device=v.device))
            else:
                assert rows is not None
                w = _dropout_rows(self.drop, (*full, 1), rows, v).expand(b, self.heads, n, 1)
            out = (w * v).transpose(1, 2).reshape(b, n, self.heads * self.dim_head)
            return F.leaky_relu(self.to_out(out), negative_slope=0.01)
        assert self.norm is not None and self.to_q is not None
        h = self.norm(x)
        ctx = h if context is None or self.norm_context is None else self.norm_context(context)
        q = self.to_q(h).view(b, n, self.heads, self.dim_head).transpose(1, 2)  # [B, H, L, dh]
        k, v = self.to_kv(ctx).chunk(2, dim=-1)
        k = k.view(b, ctx.shape[1], self.heads, self.dim_head).transpose(1, 2)  # [B, H, T, dh]
        v = v.view(b, ctx.shape[1], self.heads, self.dim_head).transpose(1, 2)
        attn = torch.softmax((q @ k.transpose(-1, -2)) * self.scale / self.temperature, dim=-1)
        if full is None:
            attn = self.drop(attn)
        else:
            assert rows is not None
            attn = attn * _dropout_rows(self.drop, (*full, ctx.shape[1]), rows, attn)
        out = (attn @ v).transpose(1, 2).reshape(b, n, self.heads * self.dim_head)
        return F.leaky_relu(self.to_out(out), negative_slope=0.01)


class FusionLayer(nn.Module):
    """One hybrid early-fusion layer (eq. 3, read in the caption of the paper's Fig. 1; Fig. 1B): per modality m
    in order, ``S <- S + A_m(S, c_m)`` then
    ``S <- S + FF_m(LN(S))`` on the rows holding m (the others keep S), each followed by
    ``self_per_cross_attn`` latent self-attention blocks on every row (their ``HealNet.forward`` loop)."""

    def __init__(
        self,
        m: int,
        width: int,
        context: int,
        cross_heads: int,
        cross_dim_head: int,
        latent_heads: int,
        latent_dim_head: int,
        self_per_cross_attn: int,
        attn_dropout: float,
        ff_dropout: float,
        temperature: float,
        snn: bool,
        single: bool,
    ) -> None:
        super().__init__()

        def ff() -> nn.Module:
            return nn.Sequential(nn.LayerNorm(width), GatedFeedForward(width, 4, ff_dropout, snn))

        self.cross = nn.ModuleList(
            [
                LatentAttention(width, context, cross_heads, cross_dim_head, attn_dropout, temperature, single)
                for _ in range(m)
            ]
        )
        self.cross_ff = nn.ModuleList([ff() for _ in range(m)])
        self.self_attn = nn.ModuleList(
            [
                LatentAttention(width, None, latent_heads, latent_dim_head, attn_dropout, temperature)
                for _ in range(self_per_cross_attn)
            ]
        )
        self.self_ff = nn.ModuleList([ff() for _ in range(self_per_cross_attn)])

    def forward(self, x: torch.Tensor, contexts: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """Latents [B, L, w], context tokens per modality [B, T, c], presence [B, M] -> [B, L, w].

        Modality m's update is computed on the rows holding m only (the other rows' update would be discarded);
        its dropout masks are drawn for the whole batch, so the random draws, and hence the numbers, are those of
        computing it on every row and keeping it where m is present."""
        b = x.shape[0]
        for j, (ctx, att, ff) in enumerate(zip(contexts, self.cross, self.cross_ff, strict=True)):
            idx = mask[:, j].nonzero(as_tuple=True)[0]  # [R] the rows holding m
            xs = x[idx]
            upd = xs + att(xs, ctx[idx], rows=idx, total=b)
            assert isinstance(ff, nn.Sequential)
            norm, gated = ff[0], ff[1]
            upd = upd + gated(norm(upd), rows=idx, total=b)
            x = x.index_put((idx,), upd)
            for self_att, self_ff in zip(self.self_attn, self.self_ff, strict=True):
                x = x + self_att(x)
                x = x + self_ff(x)
        return x


@register_method(
    "healnet",
    description="hybrid early fusion: a shared latent array updated by each modality's cross-attention in "
    "turn, a missing modality's update skipped; self-normalising feed-forwards and L1 regularisation",
    paper="Hemker, Simidjievski, Jamnik. HEALNet: multimodal fusion for heterogeneous biomedical data. NeurIPS 2024",
    defaults=DEFAULTS,
)
class HEALNet(FusionMethod):
    """Shared latent array, per-modality cross-attention updates skipped where a modality is missing."""

    ignores_masked_inputs = True

    def __init__(
        self,
        info: ModelInfo,
        d: int = BACKBONE.d,
        depth: int = 2,
        latents: int = 8,
        latent_dim: int = 32,
        cross_heads: int = 1,
        cross_dim_head: int = 32,
        latent_heads: int = 4,
        latent_dim_head: int = 16,
        self_per_cross_attn: int = 0,
        tokens: int = 1,
        snn: bool = True,
        attn_dropout: float = 0.1,
        ff_dropout: float = 0.3,
        temperature: float = 0.5,
        l1: float = 1e-5,
        encoder: Mapping[str, Any] | None = None,
    ) -> None:
        check_info(info)
        super().__init__(info)
        if min(depth, latents, latent_dim, cross_heads, cross_dim_head, tokens) < 1:
            raise ValueError("healnet: depth, latents, latent_dim, cross_heads, cross_dim_head, tokens must be >= 1")
        if self_per_cross_attn < 0 or l1 < 0 or temperature <= 0:
            raise ValueError("healnet: self_per_cross_attn and l1 must be >= 0, temperature > 0")
        m = info.num_modalities
        self.d, self.tokens, self.l1 = int(d), int(tokens), float(l1)
        self.enc = EncoderBank(info, self.d, encoder)
        self.tokenizers = (
            nn.ModuleList([nn.Linear(self.d, self.tokens * self.d) for _ in range(m)]) if tokens > 1 else None
        )
        self.latents = nn.Parameter(torch.randn(latents, latent_dim))
        self.layers = nn.ModuleList(
            [
                FusionLayer(
                    m,
                    latent_dim,
                    self.d,
                    cross_heads,
                    cross_dim_head,
                    latent_heads,
                    latent_dim_head,
                    self_per_cross_attn,
                    attn_dropout,
                    ff_dropout,
                    temperature,
                    snn,
                    tokens == 1,
                )
                for _ in range(depth)
            ]
        )
        self.to_logits = nn.Sequential(nn.LayerNorm(latent_dim), nn.Linear(latent_dim, info.num_outputs))

    def contexts(self, batch: Batch) -> list[torch.Tensor]:
        """Each modality's context tokens [B, T, d] (T = ``tokens``; T = 1: the backbone embedding itself)."""
        E = self.enc(batch)  # [B, M, d]
        if self.tokenizers is None:
            return [E[:, j : j + 1] for j in range(E.shape[1])]
        b = E.shape[0]
        return [tok(E[:, j]).view(b, self.tokens, self.d) for j, tok in enumerate(self.tokenizers)]

    def fuse(self, contexts: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """Latent array after ``depth`` layers [B, L, latent_dim]; modality m updates row b only where
        ``mask[b, m]`` (a skipped update leaves the latents as they are)."""
        x = self.latents.unsqueeze(0).expand(mask.shape[0], -1, -1)
        for layer in self.layers:
            x = layer(x, contexts, mask)
        return x

    def forward(self, batch: Batch) -> MethodOutput:
        check_batch(self.info, batch)
        S = self.fuse(self.contexts(batch), batch.mask.to(torch.bool))
        return MethodOutput(logits=self.to_logits(S.mean(dim=1)), extra={"latents": S})

    def l1_penalty(self) -> torch.Tensor:
        """``sum |theta|`` over the fusion parameters (everything but the shared encoders)."""
        enc = {id(p) for p in self.enc.parameters()}
        return torch.stack([p.abs().sum() for p in self.parameters() if p.requires_grad and id(p) not in enc]).sum()

    def loss(self, batch: Batch, out: MethodOutput) -> tuple[torch.Tensor, dict[str, float]]:
        task = task_loss(out.logits, batch.y, self.info.task_kind, batch.y_mask)
        if self.l1 <= 0:
            return task, {"task": float(task.detach())}
        reg = self.l1_penalty()
        return task + self.l1 * reg, {"task": float(task.detach()), "l1": float(reg.detach())}
