"""Gradient-Blending (Wang, Tran, Feiszli, "What makes training multi-modal classification networks hard?",
CVPR 2020), online version, any number of modalities.

Model: one encoder per modality; a linear head per modality on its own embedding, and a fused head on the
concatenation of the (zero-filled) embeddings: K = M + 1 heads. The fused head's logits are the prediction.
Loss: ``L = sum_k w_k L_k`` with ``L_k`` the task loss of head k (a unimodal head only on rows where its
modality is present).

Weights (the paper's eq. 5-7 and its approximation ``w_k ∝ G_k / O_k^2``): a fixed fraction ``holdout`` of
the *training* rows (chosen by a hash of the row index, so the same rows every epoch) never enters the
training loss and serves as the held-out set V. At a checkpoint n the method knows each head's mean loss on
the training part ``L^T_n`` and on V ``L^V_n``; between two checkpoints n and n + Δ (every ``every`` epochs):
- generalisation ``G_k = L^V_n - L^V_{n+Δ}`` (how much the held-out loss fell),
- overfitting change ``O_k = (L^V_{n+Δ} - L^T_{n+Δ}) - (L^V_n - L^T_n)``,
- ``w_k = (max(G_k, 0) / (O_k^2 + eps)) / Z``, normalised to sum 1. A head whose held-out loss rose gets 0;
  if every head gets 0 the previous weights stay. Initial weights are uniform (1 / K).
Checkpoint losses: exact (eval mode, no drops) over **all** the fold's training rows
(``trainer.batches(trainer.train_rows)``): every held-out row gives ``L^V`` and every other training row
``L^T``, the first checkpoint being the untrained model at ``on_train_start``. When the trainer gives no
batches (no training rows), running means of the losses seen during the epoch's training batches (held-out
rows are forwarded in the same batches but carry no gradient), the first checkpoint being epoch 0's means.

Generalisation to M: one unimodal head per modality; nothing else changes.
Defaults: the backbone's d (64), holdout=0.2, every=1, eps=1e-4, fused head hidden=64, dropout=0.1, seed=0.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from omnifuse.fuse.base import Batch, FusionMethod, MethodOutput, ModelInfo, TrainerView
from omnifuse.fuse.encoders import BACKBONE, EncoderBank
from omnifuse.fuse.layers import encode_present, mlp_head, row_loss
from omnifuse.fuse.methods.common import batches_on, check_batch, check_info
from omnifuse.fuse.registry import register_method

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "d": BACKBONE.d,
    "holdout": 0.2,
    "every": 1,
    "eps": 1e-4,
    "hidden": 64,
    "dropout": 0.1,
    "seed": 0,
    "encoder": {},
}


def heldout_rows(index: torch.Tensor, frac: float, seed: int = 0) -> torch.Tensor:
    """[B] bool: whether each row (by its data index) belongs to the held-out part (Knuth's multiplicative
    hash of the index, so about ``frac`` of any set of rows, the same rows at every call)."""
    h = (index.to(torch.int64) * 2654435761 + int(seed) * 1013904223 + 12345) % (2**32)
    return (h.to(torch.float64) / 2**32) < frac


def gblend_weights(
    prev: torch.Tensor, now: torch.Tensor, eps: float = 1e-4
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Blending weights from two checkpoints' losses.

    ``prev``, ``now``: [2, K], row 0 the training-part loss L^T and row 1 the held-out loss L^V of each of
    the K heads (NaN where a head had no rows). Returns ``(w [K] summing to 1, or None when no head
    generalised, G [K], O [K])`` with ``G = L^V_prev - L^V_now``, ``O = (L^V_now - L^T_now) -
    (L^V_prev - L^T_prev)`` and ``w ∝ relu(G) / (O^2 + eps)``.
    """
    if prev.shape != now.shape or prev.dim() != 2 or prev.shape[0] != 2:
        raise ValueError(f"checkpoint losses must both be [2, K], got {tuple(prev.shape)} and {tuple(now.shape)}")
    prev, now = prev.to(torch.float64), now.to(torch.float64)
    G = prev[1] - now[1]
    O_ = (now[1] - now[0]) - (prev[1] - prev[0])  # the paper's O (renamed: a lone O reads as zero)
    raw = torch.relu(G) / (O_ * O_ + eps)
    raw = torch.nan_to_num(raw, nan=0.0, posinf=0.0)
    z = raw.sum()
    if float(z) <= 0:
        return None, G, O_
    return raw / z, G, O_


@register_method(
    "gblend",
    description="Gradient-Blending: unimodal and fused heads weighted by their "
    "overfitting-to-generalisation ratio on held-out training rows",
    paper="Wang, Tran, Feiszli. What makes training multi-modal classification networks hard? CVPR 2020",
    defaults=DEFAULTS,
)
class GradientBlending(FusionMethod):
    """Unimodal heads and a fused head, loss weights re-estimated from the overfitting-to-generalisation
    ratio on held-out training rows."""

    ignores_masked_inputs = True
    weights: torch.Tensor  # [K] blending weights (a buffer)

    def __init__(
        self,
        info: ModelInfo,
        d: int = BACKBONE.d,
        holdout: float = 0.2,
        every: int = 1,
        eps: float = 1e-4,
        hidden: int | None = 64,
        dropout: float = 0.1,
        seed: int = 0,
        encoder: dict[str, Any] | None = None,
    ) -> None:
        check_info(info)
        super().__init__(info)
        if not 0.0 < holdout < 1.0:
            raise ValueError(f"gblend holdout must be in (0, 1), got {holdout}")
        if every < 1:
            raise ValueError(f"gblend every must be >= 1, got {every}")
        self.d, self.holdout, self.every = int(d), float(holdout), int(every)
        self.eps, self.seed = float(eps), int(seed)
        m, c = info.num_modalities, info.num_outputs
        self.enc = EncoderBank(info, self.d, encoder)
        self.drop = nn.Dropout(dropout)
        self.uni_heads = nn.ModuleList([nn.Linear(self.d, c) for _ in range(m)])
        self.fused_head = mlp_head(m * self.d, c, hidden, dropout)
        self.register_buffer("weights", torch.full((m + 1,), 1.0 / (m + 1)))
        self.head_names = [*info.names, "fused"]
        self._prev: torch.Tensor | None = None
        self._reset_running()
        self.history: list[dict[str, Any]] = []

    # ---------------------------------------------------------------------------------------------------
    def _reset_running(self) -> None:
        k = self.info.num_modalities + 1
        self._run = torch.zeros(2, k, dtype=torch.float64)  # loss sums: train part, held-out part
        self._cnt = torch.zeros(2, k, dtype=torch.float64)

    def forward(self, batch: Batch) -> MethodOutput:
        check_batch(self.info, batch)
        U = self.drop(encode_present(self.enc, batch))  # [B, M, d], missing slots zero
        per = {n: self.uni_heads[i](U[:, i]) for i, n in enumerate(self.info.names)}
        logits = self.fused_head(U.reshape(U.shape[0], -1))
        return MethodOutput(logits=logits, per_modality_logits=per)

    def head_row_losses(self, batch: Batch, out: MethodOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row loss of each head [K, B] and where it counts [K, B] (labelled; modality present)."""
        assert out.per_modality_logits is not None
        kind = self.info.task_kind
        losses = [row_loss(out.per_modality_logits[n], batch.y, kind) for n in self.info.names]
        losses.append(row_loss(out.logits, batch.y, kind))
        lab = batch.y_mask.to(torch.bool)
        where = [lab & batch.mask[:, i].to(torch.bool) for i in range(self.info.num_modalities)] + [lab]
        return torch.stack(losses), torch.stack(where)

    def loss(self, batch: Batch, out: MethodOutput) -> tuple[torch.Tensor, dict[str, float]]:
        L, where = self.head_row_losses(batch, out)  # [K, B]
        held = (
            heldout_rows(batch.index, self.holdout, self.seed).to(L.device)
            if self.training
            else torch.zeros_like(where[0])
        )
        fit = where & ~held.unsqueeze(0)
        w = fit.to(L.dtype)
        per_head = (L * w).sum(dim=1) / w.sum(dim=1).clamp(min=1)  # [K]; 0 where a head has no rows
        total = (self.weights.to(L.dtype) * per_head).sum()
        if self.training and torch.is_grad_enabled():
            with torch.no_grad():
                hv = where & held.unsqueeze(0)
                for r, sel in enumerate((fit, hv)):
                    s = sel.to(torch.float64)
                    self._run[r] += (L.detach().to(torch.float64).cpu() * s.cpu()).sum(dim=1)
                    self._cnt[r] += s.sum(dim=1).cpu()
        terms = {f"loss_{n}": float(per_head[i].detach()) for i, n in enumerate(self.head_names)}
        terms.update({f"w_{n}": float(self.weights[i]) for i, n in enumerate(self.head_names)})
        return total, terms

    # ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def checkpoint_losses(self, trainer: TrainerView) -> torch.Tensor | None:
        """[2, K] mean losses of each head on the training part and the held-out part (NaN where a head has
        no rows), evaluated in eval mode over all the fold's training rows (``trainer.batches``); None when
        there are none."""
        batches = trainer.batches(trainer.train_rows)
        if not batches:
            return None
        k = self.info.num_modalities + 1
        tot, cnt = torch.zeros(2, k, dtype=torch.float64), torch.zeros(2, k, dtype=torch.float64)
        with self.evaluating():
            for b in batches_on(batches, trainer.device):
                out = self(b)
                L, where = self.head_row_losses(b, out)
                held = heldout_rows(b.index, self.holdout, self.seed).to(L.device)
                for r, sel in enumerate((where & ~held.unsqueeze(0), where & held.unsqueeze(0))):
                    s = sel.to(torch.float64)
                    tot[r] += (L.to(torch.float64) * s).sum(dim=1).cpu()
                    cnt[r] += s.sum(dim=1).cpu()
        return torch.where(cnt > 0, tot / cnt.clamp(min=1), torch.full_like(tot, float("nan")))

    def running_losses(self) -> torch.Tensor:
        return torch.where(self._cnt > 0, self._run / self._cnt.clamp(min=1), torch.full_like(self._run, float("nan")))

    def on_train_start(self, trainer: TrainerView) -> None:
        self._reset_running()
        self._prev = self.checkpoint_losses(trainer)

    def on_epoch_start(self, trainer: TrainerView, epoch: int) -> None:
        self._reset_running()

    def on_epoch_end(self, trainer: TrainerView, epoch: int) -> None:
        if (int(epoch) + 1) % self.every != 0:
            return
        now = self.checkpoint_losses(trainer)
        source = "exact"
        if now is None:
            now, source = self.running_losses(), "running"
        if self._prev is not None:
            w, G, O_ = gblend_weights(self._prev, now, self.eps)
            if w is not None:
                self.weights.copy_(w.to(self.weights))
            else:
                log.info("gblend epoch %d: no head's held-out loss fell; weights kept", epoch)
            self.history.append(
                {
                    "epoch": int(epoch),
                    "source": source,
                    "G": G.tolist(),
                    "O": O_.tolist(),
                    "weights": self.weights.tolist(),
                }
            )
            log.info(
                "gblend epoch %d weights %s",
                epoch,
                {n: round(float(x), 4) for n, x in zip(self.head_names, self.weights, strict=True)},
            )
        self._prev = now
