"""Contrastive multimodal fusion with improved modality dropout (seed 001: Gu, Saito, Ma, "Learning
contrastive multimodal fusion with improved modality dropout for disease detection and prediction",
MICCAI 2025), for any number of modalities.

Architecture (the paper's model has two modalities; this one has M slots):
- one encoder per modality (``build_encoder``) gives ``v_m`` [B, d];
- one fusion network over all M modality slots: a learned [CLS] token followed by the M slot tokens, a
  small pre-norm transformer encoder, the [CLS] output (LayerNorm) is the representation r [B, d]. Every
  slot gets a learned position (slot identity) embedding. A missing slot holds the "empty" token:
  ``empty="learnable"`` (default; the paper's learnable modality tokens, one per modality) or ``"zero"``;
  ``token_on_present=True`` also adds the modality token to present slots;
- views of a patient: each single modality alone (the other slots empty) and the fused view (every
  present modality); the M + 1 views share the encoders and the fusion network.

Training:
- contrastive stage: a projection head (MLP, output L2-normalised) on each view's r. Pairs of views of the
  same patient are positives, other patients in the batch negatives: unimodal-unimodal pairs (m, n) on rows
  where both are present and unimodal-fused pairs (m, fused) on rows with at least two modalities (with one
  modality the two views are the same input). ``loss="infonce"``: symmetric InfoNCE (softmax over the
  batch, CLIP style) with a learnable logit scale (init 1 / temperature, capped at 100);
  ``loss="sigmoid"``: the SigLIP loss ``-(1/N) sum_ij log sigmoid(l_ij (t z_i . z_j + b))`` with
  ``l_ij = +1`` for positives and -1 otherwise, learnable ``t = exp(t')`` (t' init log 10) and b (init -10).
  ``label_aware=True``: rows with the same label vector are positives too (supervised-contrastive style;
  InfoNCE averages the log-probability over the positives). ``memory_bank=K > 0``: the last K projected
  keys of each view (detached) join as extra keys (the same patient's stale key is left out). The pair
  losses are averaged over the pairs that have rows.
- supervised stage: the classifier head replaces the projection head (all other weights kept) and is
  trained on the fused view plus each unimodal view (rows with at least two modalities, where that view
  differs from the fused one) - the "improved modality dropout" over views - with weight ``lambda_uni`` on
  the mean unimodal loss; in addition ``train_drop`` drops present modalities at random with probability
  ``drop_prob`` (never all of a row's modalities).
- ``mode="two_stage"`` (default): ``contrastive_epochs`` contrastive epochs, then supervised (switch in
  ``on_epoch_start``); ``mode="joint"``: ``supervised + lambda_con * contrastive`` from the start;
  ``mode="supervised"``: no contrastive term (an ablation). With M = 1 there are no pairs: supervised only.
  ``selection_start_epoch`` tells the trainer from which epoch the classifier is trained (model selection
  and early stopping should start there).

The prediction is the classifier on the fused view; ``per_modality_logits`` are the classifier on each
unimodal view (meaningful where that modality is present).

Defaults: d=64, heads=4, layers=1, ff=128, empty="learnable", token_on_present=False, proj_dim=64, hidden=64,
dropout=0.1, mode="two_stage", contrastive_epochs=3, loss="infonce", temperature=0.1, learn_scale=True,
pairs="all", label_aware=False, memory_bank=0, lambda_con=1.0, lambda_uni=1.0, drop_prob=0.2.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from omnifuse.fuse.base import Batch, FusionMethod, MethodOutput, ModelInfo, TrainerView
from omnifuse.fuse.layers import drop_modalities, mlp_head, task_loss
from omnifuse.fuse.methods.common import EncoderBank, check_batch, check_info
from omnifuse.fuse.registry import register_method

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "d": BACKBONE.d,
    "heads": 4,
    "layers": 1,
    "ff": 128,
    "empty": "learnable",
    "token_on_present": False,
    "proj_dim": 64,
    "hidden": 64,
    "dropout": 0.1,
    "mode": "two_stage",
    "contrastive_epochs": 3,
    "loss": "infonce",
    "temperature": 0.1,
    "learn_scale": True,
    "pairs": "all",
    "label_aware": False,
    "memory_bank": 0,
    "lambda_con": 1.0,
    "lambda_uni": 1.0,
    "drop_prob": 0.2,
    "encoder": {},
}

MODES = ("two_stage", "joint", "supervised")
LOSSES = ("infonce", "sigmoid")
PAIRS = ("all", "uni_uni", "uni_fused")


# --------------------------------------------------------------------------------------------------------
# contrastive losses (pure functions; tested against hand-computed values)
# --------------------------------------------------------------------------------------------------------
def info_nce(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: torch.Tensor | float,
    pos: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """One direction of InfoNCE: ``q`` [N, p] anchors, ``k`` [Nk, p] keys (the first N are the anchors'
    own views), logits ``scale * q k^T``; ``pos`` [N, Nk] bool positives (default: the diagonal),
    ``valid`` [N, Nk] bool keys that take part (default all). Loss = mean over anchors of
    ``-(1/|P_i|) sum_{j in P_i} log softmax_j(logits_i)`` (restricted to valid keys)."""
    n = q.shape[0]
    logits = scale * (q @ k.T)
    if pos is None:
        pos = torch.zeros(n, k.shape[0], dtype=torch.bool, device=q.device)
        pos[torch.arange(n), torch.arange(n)] = True
    if valid is not None:
        logits = logits.masked_fill(~valid, float("-inf"))
        pos = pos & valid
    logp = torch.log_softmax(logits, dim=1)
    posf = pos.to(logp.dtype)
    per = -(torch.where(pos, logp, torch.zeros_like(logp)) * posf).sum(1) / posf.sum(1).clamp(min=1)
    return per.mean()


def sigmoid_contrastive(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: torch.Tensor | float,
    bias: torch.Tensor | float,
    pos: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """SigLIP loss: ``-(1/N) sum_{i, j valid} log sigmoid(l_ij (scale q_i.k_j + bias))``, ``l_ij = 1`` for
    positives (default the diagonal) and -1 otherwise; ``q`` [N, p], ``k`` [Nk, p]."""
    n = q.shape[0]
    logits = scale * (q @ k.T) + bias
    if pos is None:
        pos = torch.zeros(n, k.shape[0], dtype=torch.bool, device=q.device)
        pos[torch.arange(n), torch.arange(n)] = True
    sign = pos.to(logits.dtype) * 2 - 1
    terms = -F.logsigmoid(sign * logits)
    if valid is not None:
        terms = terms * valid.to(terms.dtype)
    return terms.sum() / max(n, 1)


def same_label(ya: torch.Tensor, ma: torch.Tensor, yb: torch.Tensor, mb: torch.Tensor) -> torch.Tensor:
    """[Na, Nb] bool: both rows labelled and their label vectors equal (``y`` [N] class or [N, C] 0/1)."""
    a = ya.view(ya.shape[0], -1).to(torch.float32)
    b = yb.view(yb.shape[0], -1).to(torch.float32)
    eq = (a[:, None, :] == b[None, :, :]).all(-1)
    return eq & ma.view(-1, 1).to(torch.bool) & mb.view(1, -1).to(torch.bool)


# --------------------------------------------------------------------------------------------------------
# the method
# --------------------------------------------------------------------------------------------------------
@register_method(
    "mdrop",
    description="contrastive fusion with improved modality dropout (learnable modality "
    "tokens, unimodal and fused views)",
    paper="Gu, Saito, Ma. Learning contrastive multimodal fusion with improved modality dropout for "
    "disease detection and prediction. MICCAI 2025",
    defaults=DEFAULTS,
)
class ContrastiveModalityDropout(FusionMethod):
    """One fusion transformer over M modality slots, unimodal and fused views, a contrastive stage and a
    supervised stage with modality dropout over the views."""

    ignores_masked_inputs = True
    bank_z: torch.Tensor  # [V, K, p] projected keys of each view (buffers of the memory bank)
    bank_idx: torch.Tensor  # [V, K] their row index (-1: empty slot)
    bank_y: torch.Tensor  # [V, K, C] their labels
    bank_ymask: torch.Tensor  # [V, K] whether they are labelled

    def __init__(
        self,
        info: ModelInfo,
        d: int = BACKBONE.d,
        heads: int = 4,
        layers: int = 1,
        ff: int = 128,
        empty: str = "learnable",
        token_on_present: bool = False,
        proj_dim: int = 64,
        hidden: int | None = 64,
        dropout: float = 0.1,
        mode: str = "two_stage",
        contrastive_epochs: int = 3,
        loss: str = "infonce",
        temperature: float = 0.1,
        learn_scale: bool = True,
        pairs: str = "all",
        label_aware: bool = False,
        memory_bank: int = 0,
        lambda_con: float = 1.0,
        lambda_uni: float = 1.0,
        drop_prob: float = 0.2,
        encoder: dict[str, Any] | None = None,
    ) -> None:
        check_info(info)
        super().__init__(info)
        if d % heads != 0:
            raise ValueError(f"mdrop: d={d} must be divisible by heads={heads}")
        if empty not in ("learnable", "zero"):
            raise ValueError(f"mdrop empty must be 'learnable' or 'zero', got {empty!r}")
        if token_on_present and empty != "learnable":
            raise ValueError("mdrop token_on_present needs empty='learnable' (there is no token to add)")
        if mode not in MODES:
            raise ValueError(f"mdrop mode must be one of {MODES}, got {mode!r}")
        if loss not in LOSSES:
            raise ValueError(f"mdrop loss must be one of {LOSSES}, got {loss!r}")
        if pairs not in PAIRS:
            raise ValueError(f"mdrop pairs must be one of {PAIRS}, got {pairs!r}")
        if temperature <= 0:
            raise ValueError(f"mdrop temperature must be positive, got {temperature}")
        if memory_bank < 0 or contrastive_epochs < 0:
            raise ValueError("mdrop memory_bank and contrastive_epochs must be >= 0")
        if not 0.0 <= drop_prob <= 1.0:
            raise ValueError(f"mdrop drop_prob must be in [0, 1], got {drop_prob}")
        m, c = info.num_modalities, info.num_outputs
        self.d, self.mode, self.loss_form, self.pairs = int(d), mode, loss, pairs
        self.contrastive_epochs, self.label_aware = int(contrastive_epochs), bool(label_aware)
        self.lambda_con, self.lambda_uni, self.drop_prob = float(lambda_con), float(lambda_uni), float(drop_prob)
        self.token_on_present = bool(token_on_present)

        self.enc = EncoderBank(info, self.d, encoder)
        self.empty = nn.Parameter(torch.randn(m, self.d) * 0.02) if empty == "learnable" else None
        self.slot_pos = nn.Parameter(torch.randn(m, self.d) * 0.02)
        self.cls = nn.Parameter(torch.randn(1, 1, self.d) * 0.02)
        layer = nn.TransformerEncoderLayer(
            self.d, heads, ff, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.fusion = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out_norm = nn.LayerNorm(self.d)
        self.proj_head = nn.Sequential(nn.Linear(self.d, self.d), nn.GELU(), nn.Linear(self.d, proj_dim))
        self.cls_head = mlp_head(self.d, c, hidden, dropout)
        if loss == "infonce":
            init_scale, init_bias = math.log(1.0 / temperature), 0.0
        else:
            init_scale, init_bias = math.log(10.0), -10.0
        self.logit_scale = nn.Parameter(torch.tensor(init_scale), requires_grad=learn_scale)
        self.logit_bias = nn.Parameter(torch.tensor(init_bias), requires_grad=learn_scale and loss == "sigmoid")

        self.bank_size = int(memory_bank)
        v = m + 1
        self.register_buffer("bank_z", torch.zeros(v, self.bank_size, proj_dim), persistent=False)
        self.register_buffer("bank_idx", torch.full((v, self.bank_size), -1, dtype=torch.long), persistent=False)
        ylen = 1 if info.task_kind == "multiclass" else c
        self.register_buffer("bank_y", torch.zeros(v, self.bank_size, ylen), persistent=False)
        self.register_buffer("bank_ymask", torch.zeros(v, self.bank_size, dtype=torch.bool), persistent=False)
        self._bank_ptr = [0] * v

        self.contrastive_possible = m >= 2
        if not self.contrastive_possible and mode != "supervised":
            log.warning("mdrop with one modality has no pairs of views: trained supervised only")
        self.selection_start_epoch = self.contrastive_epochs if mode == "two_stage" and self.contrastive_possible else 0
        self.stage = self._stage_for(0)

    # --- stages ---------------------------------------------------------------------------------------
    def _stage_for(self, epoch: int) -> str:
        if not self.contrastive_possible or self.mode == "supervised":
            return "supervised"
        if self.mode == "joint":
            return "joint"
        return "contrastive" if epoch < self.contrastive_epochs else "supervised"

    def on_epoch_start(self, trainer: TrainerView, epoch: int) -> None:
        new = self._stage_for(int(epoch))
        if new != self.stage:
            log.info("mdrop: epoch %d enters the %s stage", epoch, new)
        self.stage = new

    def train_drop(self, batch: Batch, generator: torch.Generator | None = None) -> Batch:
        """Random modality dropout in the supervised and joint stages (never all of a row's modalities)."""
        if self.stage == "contrastive" or self.drop_prob <= 0:
            return batch
        return batch.with_mask(drop_modalities(batch.mask, self.drop_prob, generator))

    # --- forward ----------------------------------------------------------------------------------------
    def view_masks(self, mask: torch.Tensor) -> torch.Tensor:
        """[B, M] presence -> [V, B, M] slots shown in each view: unimodal views 0..M-1, then the fused view."""
        m = mask.shape[1]
        eye = torch.eye(m, dtype=torch.bool, device=mask.device)
        uni = eye[:, None, :] & mask[None, :, :]  # [M, B, M]
        return torch.cat([uni, mask[None]], dim=0)

    def represent(self, E: torch.Tensor, shown: torch.Tensor) -> torch.Tensor:
        """Slot embeddings ``E`` [B, M, d] and shown slots [V, B, M] -> representations [V, B, d]."""
        v, b, m = shown.shape
        x = E.unsqueeze(0).expand(v, b, m, self.d)
        if self.empty is not None:
            fill = self.empty.view(1, 1, m, self.d).expand_as(x)
            if self.token_on_present:
                x = x + fill
        else:
            fill = torch.zeros_like(x)
        x = torch.where(shown.unsqueeze(-1), x, fill) + self.slot_pos.view(1, 1, m, self.d)
        tokens = torch.cat([self.cls.expand(v * b, 1, self.d), x.reshape(v * b, m, self.d)], dim=1)
        h = self.fusion(tokens)[:, 0]
        return self.out_norm(h).view(v, b, self.d)

    def forward(self, batch: Batch) -> MethodOutput:
        check_batch(self.info, batch)
        mask = batch.mask.to(torch.bool)
        E = self.enc(batch)  # [B, M, d]; missing slots replaced in represent
        shown = self.view_masks(mask)
        R = self.represent(E, shown)  # [V, B, d]
        logits_all = self.cls_head(R)  # [V, B, C]
        m = self.info.num_modalities
        per = {n: logits_all[i] for i, n in enumerate(self.info.names)}
        avail = shown.any(-1)  # [V, B]
        distinct = mask.sum(1) >= 2
        return MethodOutput(
            logits=logits_all[m],
            per_modality_logits=per,
            extra={"reps": R, "view_logits": logits_all, "avail": avail, "distinct": distinct},
        )

    # --- losses -----------------------------------------------------------------------------------------
    def view_pairs(self, avail: torch.Tensor, distinct: torch.Tensor) -> list[tuple[int, int, torch.Tensor]]:
        """(view a, view b, rows [B] bool) for every contrastive pair of views."""
        m = self.info.num_modalities
        out = []
        if self.pairs in ("all", "uni_uni"):
            for a in range(m):
                for b in range(a + 1, m):
                    out.append((a, b, avail[a] & avail[b]))
        if self.pairs in ("all", "uni_fused"):
            for a in range(m):
                out.append((a, m, avail[a] & distinct))
        return out

    def _bank_keys(
        self, view: int, idx: torch.Tensor, y: torch.Tensor, ym: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """Bank keys of ``view`` [K, p], valid [N, K] (filled, not the anchor's own row), pos [N, K]."""
        if self.bank_size == 0:
            return None
        filled = self.bank_idx[view] >= 0
        if not bool(filled.any()):
            return None
        keys = self.bank_z[view][filled]
        bidx = self.bank_idx[view][filled]
        valid = bidx.view(1, -1) != idx.view(-1, 1)
        if self.label_aware:
            yb = self.bank_y[view][filled]
            yb = yb.squeeze(-1) if self.info.task_kind == "multiclass" else yb
            pos = same_label(y, ym, yb, self.bank_ymask[view][filled]) & valid
        else:
            pos = torch.zeros_like(valid)
        return keys, valid, pos

    def pair_loss(
        self, za: torch.Tensor, zb: torch.Tensor, idx: torch.Tensor, y: torch.Tensor, ym: torch.Tensor, a: int, b: int
    ) -> torch.Tensor:
        """Contrastive loss between views a and b of the same N rows (projections [N, p])."""
        n = za.shape[0]
        pos = torch.eye(n, dtype=torch.bool, device=za.device)
        if self.label_aware:
            pos = pos | same_label(y, ym, y, ym)
        scale = self.logit_scale.clamp(max=math.log(100.0)).exp()
        losses = []
        directions = [(za, zb, b), (zb, za, a)]
        if self.loss_form == "sigmoid" and self.bank_size == 0:
            directions = directions[:1]  # the SigLIP matrix is symmetric: one direction covers every pair once
        for q, k, other in directions:
            keys, valid, p = k, torch.ones(n, n, dtype=torch.bool, device=za.device), pos
            extra = self._bank_keys(other, idx, y, ym)
            if extra is not None:
                keys = torch.cat([k, extra[0]], dim=0)
                valid = torch.cat([valid, extra[1]], dim=1)
                p = torch.cat([pos, extra[2]], dim=1)
            if self.loss_form == "infonce":
                losses.append(info_nce(q, keys, scale, p, valid))
            else:
                losses.append(sigmoid_contrastive(q, keys, scale, self.logit_bias, p, valid))
        return losses[0] if len(losses) == 1 else 0.5 * (losses[0] + losses[1])

    def contrastive_loss(self, batch: Batch, out: MethodOutput) -> torch.Tensor:
        R, avail, distinct = out.extra["reps"], out.extra["avail"], out.extra["distinct"]
        Z = F.normalize(self.proj_head(R), dim=-1)  # [V, B, p]
        y = batch.y if self.info.task_kind != "multiclass" else batch.y.view(-1)
        ym = batch.y_mask.to(torch.bool)
        losses = []
        for a, b, rows in self.view_pairs(avail, distinct):
            if int(rows.sum()) < 1:
                continue
            losses.append(self.pair_loss(Z[a][rows], Z[b][rows], batch.index[rows], y[rows], ym[rows], a, b))
        if self.training and torch.is_grad_enabled() and self.bank_size > 0:
            self._push_bank(Z.detach(), avail, batch.index, y, ym)
        if not losses:
            return Z.sum() * 0.0  # no pair of views: a zero that keeps the graph
        return torch.stack(losses).mean()

    @torch.no_grad()
    def _push_bank(
        self, Z: torch.Tensor, avail: torch.Tensor, idx: torch.Tensor, y: torch.Tensor, ym: torch.Tensor
    ) -> None:
        yv = y.view(y.shape[0], -1).to(self.bank_y.dtype)
        for v in range(Z.shape[0]):
            rows = avail[v]
            z, i, yy, mm = Z[v][rows], idx[rows], yv[rows], ym[rows]
            n = z.shape[0]
            if n == 0:
                continue
            if n > self.bank_size:
                z, i, yy, mm = z[-self.bank_size :], i[-self.bank_size :], yy[-self.bank_size :], mm[-self.bank_size :]
                n = self.bank_size
            pos = (self._bank_ptr[v] + torch.arange(n, device=z.device)) % self.bank_size
            self.bank_z[v, pos] = z
            self.bank_idx[v, pos] = i.to(torch.long)
            self.bank_y[v, pos] = yy
            self.bank_ymask[v, pos] = mm
            self._bank_ptr[v] = int((self._bank_ptr[v] + n) % self.bank_size)

    def supervised_loss(self, batch: Batch, out: MethodOutput) -> tuple[torch.Tensor, torch.Tensor | None]:
        kind = self.info.task_kind
        fused = task_loss(out.logits, batch.y, kind, batch.y_mask)
        lab = batch.y_mask.to(torch.bool)
        distinct = out.extra["distinct"]
        uni = []
        for i in range(self.info.num_modalities):
            rows = batch.mask[:, i].to(torch.bool) & distinct & lab
            if bool(rows.any()):
                uni.append(task_loss(out.extra["view_logits"][i], batch.y, kind, batch.y_mask, rows=rows))
        uni_loss = torch.stack(uni).mean() if uni else None
        return fused, uni_loss

    def loss(self, batch: Batch, out: MethodOutput) -> tuple[torch.Tensor, dict[str, float]]:
        terms: dict[str, float] = {}
        total: torch.Tensor | None = None
        if self.stage in ("contrastive", "joint"):
            con = self.contrastive_loss(batch, out)
            terms["contrastive"] = float(con.detach())
            total = con if self.stage == "contrastive" else self.lambda_con * con
        if self.stage in ("supervised", "joint"):
            fused, uni = self.supervised_loss(batch, out)
            sup = fused if uni is None else fused + self.lambda_uni * uni
            terms["fused"] = float(fused.detach())
            if uni is not None:
                terms["unimodal"] = float(uni.detach())
            total = sup if total is None else total + sup
        assert total is not None
        return total, terms
