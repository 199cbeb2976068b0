"""Contrastive multimodal fusion with improved modality dropout (seed 001: Gu, Saito, Ma, "Learning
contrastive multimodal fusion with improved modality dropout for disease detection and prediction",
MICCAI 2025), for any number of modalities. The defaults follow the authors' published model code
(github Kayaba-Akihiko/medical-modality-dropout, files ``networks/tnf.py`` and ``losses/contrastive_loss.py``;
``docs/methods.md`` cites the function behind each choice); their training script is not published.

Architecture (their model has two modalities; this one has M slots):
- the shared backbone (:class:`~omnifuse.fuse.encoders.EncoderBank`) gives ``v_m`` [B, d] per modality;
- the empty token: a missing slot holds it. ``token_space="input"`` (default): the token lives in the space
  of the cached features the encoders read (their ``EmptyToken`` has the fusion input's width and starts at
  zero), so a missing slot reads ``e_m(token_m)``; with the token at zero that is the encoder's output for a
  zero input. ``token_space="embedding"``: a [d] token per modality in the encoders' output space.
  ``empty="learnable"`` (default; the paper's learnable modality tokens) or ``"zero"`` (fixed at zero, their
  code's constructor default); ``token_on_present=True`` also adds the token to present slots (their
  ``use_token_addition``);
- the fusion over the M slots: ``fusion="mlp"`` (default, their ``FeatFusor``/``NeuralFusor``): a LayerNorm
  per modality, concatenation [B, M d], then LayerNorm, ReLU, dropout and a Linear to ``fusion_hidden``
  (default ``round(M d / 2)``, their width); ``fusion="transformer"``: a learned [CLS] token and the M slot
  tokens (with learned slot embeddings) through a small pre-norm transformer encoder, the [CLS] output
  (LayerNorm) is the representation [B, d];
- the head (their ``LinearClassifier``): LayerNorm, dropout, then a Linear classifier, or, in the
  contrastive stage, the projection (their ``to_contrastive``): ``proj_layers`` Linear layers without an
  activation between them (two by default), L2-normalised. The classifier replaces the projection; the
  LayerNorm and everything before it are kept;
- views of a patient: each single modality alone (the other slots empty) and the fused view (every present
  modality); the M + 1 views share the encoders and the fusion.

Training:
- contrastive stage: pairs of views of the same patient are positives, other patients in the batch
  negatives: unimodal-unimodal pairs (m, n) on rows where both are present and unimodal-fused pairs
  (m, fused) on rows with at least two modalities (with one modality the two views are the same input).
  ``loss="infonce"``: the cross-entropy of each anchor towards its own view's key, with a learnable logit
  scale (init ``1 / temperature``; 10 by default, their init; capped at 100), averaged over both directions;
  ``loss="sigmoid"``: the SigLIP loss, binary cross-entropy of ``t q.k + b`` against the positive mask averaged
  over all pairs, ``t = exp(t')`` with t' init log 10 and b init -10 (both learnable). ``label_aware=True``:
  rows with the same label vector are positives too; ``label_form="authors"`` divides each anchor's InfoNCE
  term by its number of positives (their form), ``"supcon"`` averages the log-probability over the positives
  (supervised-contrastive form); the SigLIP loss takes them as positive pairs. ``memory_bank=K > 0``: K
  projected keys per view, initialised with random vectors (their ``MemoryBank``) and replaced first in,
  first out by the detached keys of past batches; the same patient's stale key is left out. The pair losses
  are averaged over the pairs that have rows.
- supervised stage: the classifier is trained on the fused view plus each unimodal view (rows with at least
  two modalities, where that view differs from the fused one) - the "improved modality dropout" over views -
  with weight ``lambda_uni`` on the mean unimodal loss.
- modality drops: a :class:`~omnifuse.fuse.base.DroppedBatch` (the trainer's shared drop) is used as it is,
  its mask defines the views; with the shared drop off, ``train_drop`` drops present modalities with
  probability ``drop_prob`` in the supervised and joint stages (never all of a row's).
- ``mode="two_stage"`` (default): ``contrastive_epochs`` contrastive epochs, then supervised (switch in
  ``on_epoch_start``); ``mode="joint"``: ``supervised + lambda_con * contrastive`` from the start;
  ``mode="supervised"``: no contrastive term (an ablation). With M = 1 there are no pairs: supervised only.
  ``selection_start_epoch`` tells the trainer from which epoch the classifier is trained (model selection
  and early stopping start there).

The prediction is the classifier on the fused view; ``per_modality_logits`` are the classifier on each
unimodal view (meaningful where that modality is present). Defaults: :data:`DEFAULTS`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from omnifuse.fuse.base import Batch, DroppedBatch, FusionMethod, MethodOutput, ModelInfo, TrainerView
from omnifuse.fuse.encoders import BACKBONE, EncoderBank
from omnifuse.fuse.layers import drop_modalities, encode_present, row_loss, task_loss
from omnifuse.fuse.methods.common import check_batch, check_info
from omnifuse.fuse.registry import register_method

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "d": BACKBONE.d,
    "fusion": "mlp",
    "fusion_hidden": None,
    "heads": 4,
    "layers": 1,
    "ff": 128,
    "empty": "learnable",
    "token_space": "input",
    "token_on_present": False,
    "proj_dim": 64,
    "proj_layers": 2,
    "dropout": 0.1,
    "mode": "two_stage",
    "contrastive_epochs": 3,
    "loss": "infonce",
    "temperature": 0.1,
    "learn_scale": True,
    "pairs": "all",
    "label_aware": False,
    "label_form": "authors",
    "memory_bank": 0,
    "lambda_con": 1.0,
    "lambda_uni": 1.0,
    "drop_prob": 0.2,
    "encoder": {},
}

FUSIONS = ("mlp", "transformer")
MODES = ("two_stage", "joint", "supervised")
LOSSES = ("infonce", "sigmoid")
PAIRS = ("all", "uni_uni", "uni_fused")
LABEL_FORMS = ("authors", "supcon")
TOKEN_SPACES = ("input", "embedding")


# --------------------------------------------------------------------------------------------------------
# contrastive losses (pure functions; tested against hand-computed values)
# --------------------------------------------------------------------------------------------------------
def _diagonal(n: int, nk: int, device: torch.device) -> torch.Tensor:
    pos = torch.zeros(n, nk, dtype=torch.bool, device=device)
    pos[torch.arange(n), torch.arange(n)] = True
    return pos


def info_nce(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: torch.Tensor | float,
    pos: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    form: str = "authors",
) -> torch.Tensor:
    """One direction of InfoNCE: ``q`` [N, p] anchors, ``k`` [Nk, p] keys (the first N are the anchors' own
    views), logits ``scale * q k^T`` over the valid keys (``valid`` [N, Nk] bool, default all); ``pos``
    [N, Nk] bool positives (default: the diagonal; the diagonal always counts). Mean over anchors of:

    - ``form="authors"``: ``-log softmax(logits_i)_i / |P_i|``: the cross-entropy towards the anchor's own view,
      divided by its number of positives (their ``ContrastiveLoss``, criterion "ce");
    - ``form="supcon"``: ``-(1/|P_i|) sum_{j in P_i} log softmax(logits_i)_j``.
    """
    if form not in LABEL_FORMS:
        raise ValueError(f"info_nce form must be one of {LABEL_FORMS}, got {form!r}")
    n = q.shape[0]
    logits = scale * (q @ k.T)
    diag = _diagonal(n, k.shape[0], q.device)
    pos = diag if pos is None else pos | diag
    if valid is not None:
        logits = logits.masked_fill(~valid, float("-inf"))
        pos = pos & valid
    logp = torch.log_softmax(logits, dim=1)
    n_pos = pos.to(logp.dtype).sum(1).clamp(min=1)
    if form == "authors":
        own = logp[torch.arange(n), torch.arange(n)]  # each anchor's own view
        return (-own / n_pos).mean()
    per = -torch.where(pos, logp, torch.zeros_like(logp)).sum(1) / n_pos
    return per.mean()


def sigmoid_contrastive(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: torch.Tensor | float,
    bias: torch.Tensor | float,
    pos: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """SigLIP loss averaged over the valid pairs: ``mean_{i, j valid} -log sigmoid(l_ij (scale q_i.k_j + bias))``
    with ``l_ij = 1`` for positives (``pos`` [N, Nk]; default the diagonal) and -1 otherwise: the binary
    cross-entropy against the positive mask, averaged over all pairs (their ``ContrastiveLoss``, criterion
    "bce"); ``q`` [N, p], ``k`` [Nk, p]."""
    logits = scale * (q @ k.T) + bias
    pos = _diagonal(q.shape[0], k.shape[0], q.device) if pos is None else pos
    sign = pos.to(logits.dtype) * 2 - 1
    terms = -F.logsigmoid(sign * logits)
    if valid is None:
        return terms.mean()
    w = valid.to(terms.dtype)
    return (terms * w).sum() / w.sum().clamp(min=1)


def same_label(ya: torch.Tensor, ma: torch.Tensor, yb: torch.Tensor, mb: torch.Tensor) -> torch.Tensor:
    """[Na, Nb] bool: both rows labelled and their label vectors equal (``y`` [N] class or [N, C] 0/1)."""
    a = ya.view(ya.shape[0], -1).to(torch.float32)
    b = yb.view(yb.shape[0], -1).to(torch.float32)
    eq = (a[:, None, :] == b[None, :, :]).all(-1)
    return eq & ma.view(-1, 1).to(torch.bool) & mb.view(1, -1).to(torch.bool)


# --------------------------------------------------------------------------------------------------------
# parts
# --------------------------------------------------------------------------------------------------------
class MLPFusor(nn.Module):
    """Their ``NeuralFusor``: slots [N, M, d] -> [N, hidden]: a LayerNorm per modality, concatenation, then
    LayerNorm, ReLU, dropout, Linear."""

    def __init__(self, num_modalities: int, d: int, hidden: int, dropout: float) -> None:
        super().__init__()
        width = num_modalities * d
        self.norms = nn.ModuleList([nn.LayerNorm(d) for _ in range(num_modalities)])
        self.net = nn.Sequential(nn.LayerNorm(width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([norm(x[:, m]) for m, norm in enumerate(self.norms)], dim=-1))

    def forward_views(self, E: torch.Tensor, fill: torch.Tensor, shown: torch.Tensor) -> torch.Tensor:
        """``forward`` of every view at once: slot embeddings ``E`` [B, M, d], empty fill [M, d] and shown
        slots [V, B, M] -> [V * B, hidden], the same numbers as ``forward(where(shown, E, fill))`` on the
        [V * B, M, d] slots. The per-modality LayerNorm acts on each slot alone, so it is applied once to the
        B embeddings and the M fills, not to the V copies of each slot; the dropout then draws over the same
        [V * B, M d] tensor as ``forward`` (the same random numbers)."""
        v, b, m = shown.shape
        d = E.shape[-1]
        normed = torch.stack([norm(E[:, j]) for j, norm in enumerate(self.norms)], dim=1)  # [B, M, d]
        normed_fill = torch.stack([norm(fill[j]) for j, norm in enumerate(self.norms)])  # [M, d]
        x = torch.where(shown.unsqueeze(-1), normed.unsqueeze(0), normed_fill.view(1, 1, m, d))  # [V, B, M, d]
        return self.net(x.reshape(v * b, m * d))


class TransformerFusor(nn.Module):
    """Slots [N, M, d] -> [N, d]: a learned [CLS] token and the slots (plus learned slot embeddings) through a
    pre-norm transformer encoder; the [CLS] output, LayerNorm."""

    def __init__(self, num_modalities: int, d: int, heads: int, layers: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.slot_pos = nn.Parameter(torch.randn(num_modalities, d) * 0.02)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, heads, ff, dropout, activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out_norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        tokens = torch.cat([self.cls.expand(n, 1, -1), x + self.slot_pos.unsqueeze(0)], dim=1)
        return self.out_norm(self.encoder(tokens)[:, 0])


class EmptyTokens(nn.Module):
    """The empty token of each modality, zero-initialised (learnable or fixed at zero).

    ``space="input"``: in the cached-feature space the encoders read: shape ``info.shape`` for vector, tabular
    and time-series modalities, [D] for a sequence (one valid token at the first position);
    ``space="embedding"``: [d] per modality, in the encoders' output space."""

    def __init__(self, info: ModelInfo, d: int, space: str, learnable: bool) -> None:
        super().__init__()
        if space not in TOKEN_SPACES:
            raise ValueError(f"mdrop token_space must be one of {TOKEN_SPACES}, got {space!r}")
        self.space, self.info = space, info
        shapes: list[tuple[int, ...]]
        if space == "embedding":
            shapes = [(d,)] * info.num_modalities
        else:
            shapes = [(m.shape[-1],) if m.kind == "sequence" else tuple(m.shape) for m in info.modalities]
        self.tokens = nn.ParameterList([nn.Parameter(torch.zeros(*s), requires_grad=learnable) for s in shapes])

    def _token_batch(self, device: torch.device) -> Batch:
        """A batch of one row per modality slot holding only that modality's token (for the encoders)."""
        x, tm = {}, {}
        for j, m in enumerate(self.info.modalities):
            tok = self.tokens[j]
            if m.kind == "sequence":
                seq = torch.zeros(1, *m.shape, device=device, dtype=tok.dtype)
                x[m.name] = torch.cat([tok.view(1, 1, -1), seq[:, 1:]], dim=1)
                valid = torch.zeros(1, m.shape[0], dtype=torch.bool, device=device)
                valid[0, 0] = True
                tm[m.name] = valid
            else:
                x[m.name] = tok.unsqueeze(0)
        ones = torch.ones(1, self.info.num_modalities, dtype=torch.bool, device=device)
        return Batch(
            x=x,
            mask=ones,
            y=torch.zeros(1, 1, device=device),
            y_mask=ones[:, 0],
            index=ones[:, 0].long(),
            tokens_mask=tm,
        )

    def fill(self, enc: EncoderBank, device: torch.device) -> torch.Tensor:
        """[M, d]: what a missing slot holds (the encoded token, or the embedding-space token)."""
        if self.space == "embedding":
            return torch.stack(list(self.tokens))
        return enc(self._token_batch(device))[0]

    def add_to_inputs(self, batch: Batch) -> Batch:
        """``batch`` with each present modality's token added to its input (``space="input"``; a sequence gets
        it on every valid token)."""
        x = {}
        for j, m in enumerate(self.info.modalities):
            v, tok = batch.x[m.name], self.tokens[j]
            here = batch.mask[:, j].to(v.dtype).view(-1, *([1] * (v.dim() - 1)))
            if m.kind == "sequence":
                here = here * batch.tokens_mask[m.name].to(v.dtype).unsqueeze(-1)
            x[m.name] = v + here * tok
        return dataclasses.replace(batch, x=x)


# --------------------------------------------------------------------------------------------------------
# the method
# --------------------------------------------------------------------------------------------------------
@register_method(
    "mdrop",
    description="contrastive fusion with improved modality dropout (learnable empty modality "
    "tokens, unimodal and fused views)",
    paper="Gu, Saito, Ma. Learning contrastive multimodal fusion with improved modality dropout for "
    "disease detection and prediction. MICCAI 2025",
    defaults=DEFAULTS,
)
class ContrastiveModalityDropout(FusionMethod):
    """One fusion network over M modality slots (MLP by default), unimodal and fused views, a contrastive
    stage and a supervised stage with modality dropout over the views."""

    ignores_masked_inputs = True
    bank_z: torch.Tensor  # [V, K, p] projected keys of each view (buffers of the memory bank)
    bank_idx: torch.Tensor  # [V, K] their row index (-1: a random initial key, no patient)
    bank_y: torch.Tensor  # [V, K, C] their labels
    bank_ymask: torch.Tensor  # [V, K] whether they are labelled

    def __init__(
        self,
        info: ModelInfo,
        d: int = BACKBONE.d,
        fusion: str = "mlp",
        fusion_hidden: int | None = None,
        heads: int = 4,
        layers: int = 1,
        ff: int = 128,
        empty: str = "learnable",
        token_space: str = "input",
        token_on_present: bool = False,
        proj_dim: int = 64,
        proj_layers: int = 2,
        dropout: float = 0.1,
        mode: str = "two_stage",
        contrastive_epochs: int = 3,
        loss: str = "infonce",
        temperature: float = 0.1,
        learn_scale: bool = True,
        pairs: str = "all",
        label_aware: bool = False,
        label_form: str = "authors",
        memory_bank: int = 0,
        lambda_con: float = 1.0,
        lambda_uni: float = 1.0,
        drop_prob: float = 0.2,
        encoder: Mapping[str, Any] | None = None,
    ) -> None:
        check_info(info)
        super().__init__(info)
        if fusion not in FUSIONS:
            raise ValueError(f"mdrop fusion must be one of {FUSIONS}, got {fusion!r}")
        if fusion == "transformer" and d % heads != 0:
            raise ValueError(f"mdrop: d={d} must be divisible by heads={heads}")
        if empty not in ("learnable", "zero"):
            raise ValueError(f"mdrop empty must be 'learnable' or 'zero', got {empty!r}")
        if token_on_present and empty != "learnable":
            raise ValueError("mdrop token_on_present needs empty='learnable' (a zero token adds nothing)")
        if mode not in MODES:
            raise ValueError(f"mdrop mode must be one of {MODES}, got {mode!r}")
        if loss not in LOSSES:
            raise ValueError(f"mdrop loss must be one of {LOSSES}, got {loss!r}")
        if pairs not in PAIRS:
            raise ValueError(f"mdrop pairs must be one of {PAIRS}, got {pairs!r}")
        if label_form not in LABEL_FORMS:
            raise ValueError(f"mdrop label_form must be one of {LABEL_FORMS}, got {label_form!r}")
        if proj_layers not in (1, 2):
            raise ValueError(f"mdrop proj_layers must be 1 or 2, got {proj_layers}")
        if temperature <= 0:
            raise ValueError(f"mdrop temperature must be positive, got {temperature}")
        if memory_bank < 0 or contrastive_epochs < 0:
            raise ValueError("mdrop memory_bank and contrastive_epochs must be >= 0")
        if not 0.0 <= drop_prob <= 1.0:
            raise ValueError(f"mdrop drop_prob must be in [0, 1], got {drop_prob}")
        m, c = info.num_modalities, info.num_outputs
        self.d, self.mode, self.loss_form, self.pairs = int(d), mode, loss, pairs
        self.contrastive_epochs, self.label_form = int(contrastive_epochs), label_form
        self.label_aware = bool(label_aware)
        self.lambda_con, self.lambda_uni, self.drop_prob = float(lambda_con), float(lambda_uni), float(drop_prob)
        self.token_on_present = bool(token_on_present)

        self.enc = EncoderBank(info, self.d, encoder)
        self.empty = EmptyTokens(info, self.d, token_space, learnable=empty == "learnable")
        self.fusor: nn.Module
        if fusion == "mlp":
            width = int(fusion_hidden) if fusion_hidden else round(m * self.d / 2)
            self.fusor = MLPFusor(m, self.d, width, dropout)
        else:
            width = self.d
            self.fusor = TransformerFusor(m, self.d, heads, layers, ff, dropout)
        self.head_norm = nn.LayerNorm(width)
        self.head_drop = nn.Dropout(dropout)
        self.cls_head = nn.Linear(width, c)
        self.proj_head = (
            nn.Sequential(nn.Linear(width, width), nn.Linear(width, proj_dim))
            if proj_layers == 2
            else nn.Linear(width, proj_dim)
        )
        init_scale = math.log(1.0 / temperature) if loss == "infonce" else math.log(10.0)
        init_bias = 0.0 if loss == "infonce" else -10.0
        self.logit_scale = nn.Parameter(torch.tensor(init_scale), requires_grad=learn_scale)
        self.logit_bias = nn.Parameter(torch.tensor(init_bias), requires_grad=learn_scale and loss == "sigmoid")

        self.bank_size = int(memory_bank)
        v = m + 1
        self.register_buffer("bank_z", torch.randn(v, self.bank_size, proj_dim), persistent=False)
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
        """The trainer's shared drop (a :class:`DroppedBatch`) is used as it is; otherwise random modality
        dropout in the supervised and joint stages (never all of a row's modalities)."""
        if isinstance(batch, DroppedBatch) or self.stage == "contrastive" or self.drop_prob <= 0:
            return batch
        return DroppedBatch.drop(batch, drop_modalities(batch.mask, self.drop_prob, generator))

    # --- forward ----------------------------------------------------------------------------------------
    def view_masks(self, mask: torch.Tensor) -> torch.Tensor:
        """[B, M] presence -> [V, B, M] slots shown in each view: unimodal views 0..M-1, then the fused view."""
        m = mask.shape[1]
        eye = torch.eye(m, dtype=torch.bool, device=mask.device)
        uni = eye[:, None, :] & mask[None, :, :]  # [M, B, M]
        return torch.cat([uni, mask[None]], dim=0)

    def slots(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(``E`` [B, M, d] the present slots' embeddings, ``fill`` [M, d] what a missing slot holds)."""
        if self.empty.space == "input":
            E = encode_present(self.enc, self.empty.add_to_inputs(batch) if self.token_on_present else batch)
            return E, self.empty.fill(self.enc, batch.mask.device)
        fill = self.empty.fill(self.enc, batch.mask.device)
        E = encode_present(self.enc, batch)
        return (E + fill.unsqueeze(0) if self.token_on_present else E), fill

    def represent(self, E: torch.Tensor, fill: torch.Tensor, shown: torch.Tensor) -> torch.Tensor:
        """Slot embeddings ``E`` [B, M, d], empty fill [M, d] and shown slots [V, B, M] -> representations
        [V, B, width]."""
        v, b, m = shown.shape
        if isinstance(self.fusor, MLPFusor):
            return self.fusor.forward_views(E, fill, shown).view(v, b, -1)
        x = torch.where(shown.unsqueeze(-1), E.unsqueeze(0), fill.view(1, 1, m, self.d))
        return self.fusor(x.reshape(v * b, m, self.d)).view(v, b, -1)

    def forward(self, batch: Batch) -> MethodOutput:
        check_batch(self.info, batch)
        mask = batch.mask.to(torch.bool)
        E, fill = self.slots(batch)
        shown = self.view_masks(mask)
        R = self.represent(E, fill, shown)  # [V, B, width]
        H = self.head_drop(self.head_norm(R))
        logits_all = self.cls_head(H)  # [V, B, C]
        m = self.info.num_modalities
        per = {n: logits_all[i] for i, n in enumerate(self.info.names)}
        avail = shown.any(-1)  # [V, B]
        distinct = mask.sum(1) >= 2
        return MethodOutput(
            logits=logits_all[m],
            per_modality_logits=per,
            extra={"heads_in": H, "view_logits": logits_all, "avail": avail, "distinct": distinct},
        )

    def project(self, out: MethodOutput) -> torch.Tensor:
        """[V, B, proj_dim]: the L2-normalised projections of every view (the contrastive head)."""
        return F.normalize(self.proj_head(out.extra["heads_in"]), dim=-1)

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
        """Bank keys of ``view`` [K, p], valid [N, K] (not the anchor's own stale key), pos [N, K]."""
        if self.bank_size == 0:
            return None
        keys, bidx = self.bank_z[view], self.bank_idx[view]
        valid = bidx.view(1, -1) != idx.view(-1, 1)
        if self.label_aware:
            yb = self.bank_y[view]
            yb = yb.squeeze(-1) if self.info.task_kind == "multiclass" else yb
            pos = same_label(y, ym, yb, self.bank_ymask[view]) & valid
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
                losses.append(info_nce(q, keys, scale, p, valid, self.label_form))
            else:
                losses.append(sigmoid_contrastive(q, keys, scale, self.logit_bias, p, valid))
        return losses[0] if len(losses) == 1 else 0.5 * (losses[0] + losses[1])

    def contrastive_loss(self, batch: Batch, out: MethodOutput) -> torch.Tensor:
        """The mean of :meth:`pair_loss` over the pairs of views (:meth:`view_pairs`) that have rows; with a
        memory bank, the bank is then updated (training only). Each pair's rows are gathered at once for all
        pairs; without a bank each pair's loss is :meth:`pair_loss_no_bank` (the same numbers, fewer steps)."""
        avail, distinct = out.extra["avail"], out.extra["distinct"]
        Z = self.project(out)  # [V, B, p]
        y = batch.y if self.info.task_kind != "multiclass" else batch.y.view(-1)
        ym = batch.y_mask.to(torch.bool)
        pairs = self.view_pairs(avail, distinct)
        losses = []
        if pairs:
            rows = torch.stack([r for _, _, r in pairs])  # [P, B]
            counts = rows.sum(1).tolist()
            at = torch.nonzero(rows)  # [sum of counts, 2]: (pair, row), pairs in order, rows ascending
            views = torch.tensor([[a, b] for a, b, _ in pairs], device=Z.device)[at[:, 0]]  # [n, 2]
            za_all, zb_all = Z[views[:, 0], at[:, 1]], Z[views[:, 1], at[:, 1]]
            scale = self.logit_scale.clamp(max=math.log(100.0)).exp()
            # split, not slices: one backward step for all pairs instead of a full-size gradient per slice
            chunks = zip(pairs, za_all.split(counts), zb_all.split(counts), at[:, 1].split(counts), strict=True)
            for (a, b, _), za, zb, idx in chunks:
                if idx.numel() < 1:
                    continue
                if self.bank_size == 0:
                    losses.append(self.pair_loss_no_bank(za, zb, y[idx], ym[idx], scale))
                else:
                    losses.append(self.pair_loss(za, zb, batch.index[idx], y[idx], ym[idx], a, b))
        if self.training and torch.is_grad_enabled() and self.bank_size > 0:
            self._push_bank(Z.detach(), avail, batch.index, y, ym)
        if not losses:
            return Z.sum() * 0.0  # no pair of views: a zero that keeps the graph
        return torch.stack(losses).mean()

    def pair_loss_no_bank(
        self, za: torch.Tensor, zb: torch.Tensor, y: torch.Tensor, ym: torch.Tensor, scale: torch.Tensor
    ) -> torch.Tensor:
        """:meth:`pair_loss` without a memory bank (projections ``za``, ``zb`` [N, p] of the same N rows, the
        clamped logit ``scale``), in fewer steps: one product ``scale * za zb^T`` [N, N] whose transpose is the
        second InfoNCE direction's logits, and without labels (the diagonal the only positive) each direction
        is the cross-entropy towards the diagonal. The same numbers up to float rounding."""
        n = za.shape[0]
        logits = scale * (za @ zb.T)  # [N, N]: anchors of view a, keys of view b
        if self.loss_form == "sigmoid" or self.label_aware:
            pos = torch.eye(n, dtype=torch.bool, device=za.device)
            if self.label_aware:
                pos = pos | same_label(y, ym, y, ym)
        if self.loss_form == "sigmoid":
            sign = pos.to(logits.dtype) * 2 - 1
            return -F.logsigmoid(sign * (logits + self.logit_bias)).mean()
        if not self.label_aware:
            target = torch.arange(n, device=za.device)
            return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        n_pos = pos.to(logits.dtype).sum(1)  # >= 1 (the diagonal); pos is symmetric: the same both ways

        def direction(z: torch.Tensor) -> torch.Tensor:
            logp = torch.log_softmax(z, dim=1)
            if self.label_form == "authors":
                return (-torch.diagonal(logp) / n_pos).mean()
            return (-torch.where(pos, logp, torch.zeros_like(logp)).sum(1) / n_pos).mean()

        return 0.5 * (direction(logits) + direction(logits.T))

    @torch.no_grad()
    def _push_bank(
        self, Z: torch.Tensor, avail: torch.Tensor, idx: torch.Tensor, y: torch.Tensor, ym: torch.Tensor
    ) -> None:
        """First in, first out: each view's keys of this batch replace the oldest ones of its bank."""
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
        m = self.info.num_modalities
        # each unimodal view's task loss over the labelled rows holding its modality and another one (where
        # the view differs from the fused one), every view at once
        rows = (batch.mask.to(torch.bool) & (out.extra["distinct"] & batch.y_mask.to(torch.bool)).unsqueeze(1)).T
        logits = out.extra["view_logits"][:m]  # [M, B, C]
        y = batch.y.unsqueeze(0).expand(m, *batch.y.shape).reshape(m * batch.y.shape[0], *batch.y.shape[1:])
        per = row_loss(logits.reshape(-1, logits.shape[-1]), y, kind).view(m, -1)  # [M, B]
        w = rows.to(per.dtype)
        total = w.sum(1)
        has = torch.nonzero(total > 0).squeeze(1)
        if has.numel() == 0:
            return fused, None
        uni = (per * w).sum(1)[has] / total[has]
        return fused, uni.mean()

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
