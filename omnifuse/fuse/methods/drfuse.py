"""DrFuse: disentangled shared and distinct representations with disease-aware attention (Yao, Yin, Cheung,
Liu, Qin, "DrFuse: learning disentangled representation for clinical multi-modal fusion with missing modality
and modal inconsistency", AAAI 2024), on cached features, for any number of modalities M >= 1.

The authors' code is github dorothy-yao/drfuse: the model ``models/drfuse.py`` (``DrFuseModel.forward``), the
losses ``models/drfuse_trainer.py`` (``JSD``, ``DrFuseTrainer._disentangle_loss_jsd``,
``_compute_prediction_losses``, ``_compute_and_log_loss``) and the defaults ``main.py``. Their model has two
modalities (EHR, always present; CXR, sometimes missing); ours has M slots behind the shared backbone.

Equation numbers: none. The paper's text could not be read here (``docs/methods.md``, "Equation numbers"), so
the parts carry the paper's names and their code's definitions, and no equation number is cited.

Architecture (shapes: B rows, M modalities, d the backbone's width, C outputs):

- the shared backbone (:class:`~omnifuse.fuse.encoders.EncoderBank`) gives ``v_m`` [B, d] (their feature stems
  ``EHRTransformer.model_feat`` and ``cxr_model_feat``); a missing slot is set to zero and never read;
- per modality a shared branch and a distinct branch (their ``model_shared`` / ``model_distinct`` for the EHR,
  ``cxr_model_shared`` / ``cxr_model_spec`` for the CXR): here each a Linear-ReLU-Dropout-Linear on ``v_m``;
  the shared branches end in one projection common to all modalities (their ``shared_project``:
  Linear(d, 2d)-ReLU-Linear(2d, d)-ReLU-Linear(d, d)): ``s_m`` [B, d] (shared) and ``t_m`` [B, d] (distinct);
- **logit pooling** of the shared representations (:func:`logit_pool`): ``s = logit(mean_{m present}
  sigmoid(s_m))`` [B, d], computed stably as ``logsumexp_m log sigmoid(s_m) - logsumexp_m log sigmoid(-s_m)``.
  For two modalities this is exactly their ``logsumexp([h1+h2, h1+h2, h1, h2]) - logsumexp([0, 0, h1, h2])``;
  with one present modality it is ``s_m`` itself (their ``feat_avg_shared`` of an unpaired stay);
- heads: one per modality on ``t_m`` (their ``fc_distinct`` and ``cxr_model_linear``), one on ``s`` (their
  ``fuse_model_shared``);
- **disease-aware attention**: the M + 1 tokens ``[t_1 .. t_M, s]`` [B, M+1, d] are projected to a query, a value
  and one key per output class (their ``attn_proj``, width (2 + C) d); the query is the mean of the available
  tokens' queries (a missing modality's token is not available; the shared token always is), the attention of
  class c over the tokens is ``softmax_t(q . k_{c,t} / sqrt(d))`` over the available tokens [B, C, M+1], the class
  representation is the attention-weighted sum of the values [B, C, d], and class c's logit is
  ``w_c . r_c + b_c`` (their ``final_pred_fc`` followed by ``torch.diagonal``). This is the prediction.

Losses (:meth:`DrFuse.loss`; the weights are their ``main.py`` defaults, all 1):

- task loss of the final prediction, of the shared head and of each distinct head (a distinct head only on rows
  where its modality is present: their ``pairs`` mask of the CXR head), summed over modalities as theirs;
- **disentanglement** (:func:`jsd_loss`, :func:`distinct_loss`): the Jensen-Shannon divergence between the
  shared representations' sigmoids (the generalised JSD of the M present ones: the mean KL of each to their
  mixture, which is the pooled ``sigmoid(s)``), on rows with at least two modalities; plus, per modality, the
  mean absolute cosine similarity between ``s_m`` and ``t_m`` on the rows holding it;
- **attention ranking** (:func:`attention_rank_loss`): for every pair of available tokens, a margin ranking
  loss (margin 0) asking the token whose own head has the lower (detached) per-class loss to get the higher
  attention for that class.

Generalisation to M and our choices (each named in ``docs/methods.md``): M distinct tokens plus the pooled
shared one; the JSD over all present modalities; the ranking over all pairs of available tokens on every row
where both are available (their code ranks their three pairs on paired rows only, where every token is
available); a multiclass task ranks with the per-class binary cross-entropy of each head's softmax; their JSD
sums over every row, an unpaired stay's zero image included, ours over the rows with two or more modalities.
Their ``domain_classifier`` and ``grl_lambda`` are unused in their forward pass and not built here.

Defaults: :data:`DEFAULTS`.
"""

from __future__ import annotations

import math
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
    "dropout": 0.1,
    "jsd": "authors",
    "lambda_pred_shared": 1.0,
    "lambda_pred_distinct": 1.0,
    "lambda_shared": 1.0,
    "lambda_distinct": 1.0,
    "lambda_attn": 1.0,
    "encoder": {},
}
"""``lambda_*``: their ``main.py`` arguments ``lambda_pred_shared``, ``lambda_pred_ehr``/``_cxr``,
``lambda_disentangle_shared``, ``lambda_disentangle_ehr``/``_cxr`` and ``lambda_attn_aux`` (all 1)."""

JSD_FORMS = ("authors", "bernoulli")


# --------------------------------------------------------------------------------------------------------
# pure functions (tested against hand computations)
# --------------------------------------------------------------------------------------------------------
def _masked_logsumexp(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``logsumexp`` over dim 1 of ``x`` [B, M, d] restricted to ``mask`` [B, M]; 0 for a row without any."""
    none = ~mask.any(1)  # [B]
    keep = mask.clone()
    keep[none, 0] = True  # a placeholder entry, so no row is all -inf (no NaN gradient); its result is zeroed
    vals = torch.where(keep.unsqueeze(-1), x, torch.full_like(x, -math.inf))
    out = torch.logsumexp(vals, dim=1)
    return torch.where(none.view(-1, 1), torch.zeros_like(out), out)


def logit_pool(s: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logit pooling: ``logit(mean_{m present} sigmoid(s_m))`` per feature, ``s`` [B, M, d], ``mask`` [B, M] ->
    [B, d]; zeros for a row with no modality present."""
    mask = mask.to(torch.bool)
    pos = _masked_logsumexp(F.logsigmoid(s), mask)
    neg = _masked_logsumexp(F.logsigmoid(-s), mask)
    return pos - neg


def jsd_loss(s: torch.Tensor, mask: torch.Tensor, form: str = "authors") -> torch.Tensor:
    """Jensen-Shannon divergence of the shared representations ``s`` [B, M, d] (presence ``mask`` [B, M]), the
    mean over the rows holding two or more modalities of ``(1/n) sum_{m present} sum_i KL_i(p_m || p)``, with
    ``p_m = sigmoid(s_m)`` and ``p`` their mean over the present modalities.

    ``form="authors"``: ``KL_i = p_mi log(p_mi / p_i)`` (their ``JSD.forward``: ``KLDivLoss`` on the sigmoids,
    summed over features); ``"bernoulli"``: the KL of Bernoulli variables, ``+ (1 - p_mi) log((1 - p_mi) / (1 -
    p_i))``. A zero that keeps the graph when no row holds two modalities."""
    if form not in JSD_FORMS:
        raise ValueError(f"drfuse jsd must be one of {JSD_FORMS}, got {form!r}")
    mask = mask.to(torch.bool)
    n = mask.sum(1)  # [B]
    rows = n >= 2
    if not bool(rows.any()):
        return s.sum() * 0.0
    s, mask, n = s[rows], mask[rows], n[rows].to(s.dtype)
    log_n = torch.log(n).view(-1, 1)
    log_p = F.logsigmoid(s)  # [R, M, d]
    log_mix = _masked_logsumexp(log_p, mask) - log_n  # [R, d]
    kl = log_p.exp() * (log_p - log_mix.unsqueeze(1))
    if form == "bernoulli":
        log_q = F.logsigmoid(-s)
        log_mix_q = _masked_logsumexp(log_q, mask) - log_n
        kl = kl + log_q.exp() * (log_q - log_mix_q.unsqueeze(1))
    per_row = (kl.sum(-1) * mask.to(kl.dtype)).sum(1) / n  # [R]
    return per_row.mean()


def distinct_loss(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum_m mean_{rows with m} |cos(s_m, t_m)|`` for shared ``s`` and distinct ``t`` [B, M, d] (their
    ``_masked_abs_cos_sim``, one term per modality); a modality on no row adds nothing."""
    cos = F.cosine_similarity(s, t, dim=-1).abs()  # [B, M]
    w = mask.to(cos.dtype)
    per = (cos * w).sum(0) / w.sum(0).clamp(min=1)
    return per.sum()


def per_class_loss(logits: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-row, per-class loss [B, C]: binary cross-entropy per label (binary, multilabel); for multiclass the
    binary cross-entropy of each class's softmax probability against the one-hot label."""
    if kind == "multiclass":
        logp = torch.log_softmax(logits, dim=-1)
        log1mp = torch.log1p(-logp.exp().clamp(max=1 - 1e-7))
        onehot = F.one_hot(y.long().clamp(min=0), logits.shape[-1]).to(logits.dtype)
        return -(onehot * logp + (1 - onehot) * log1mp)
    return F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype), reduction="none")


def attention_rank_loss(attn: torch.Tensor, token_loss: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The attention ranking loss: ``attn`` [B, C, T] attention of each class over T tokens, ``token_loss``
    [B, C, T] each token's own head's per-class loss (detached), ``rows`` [B, T] where each token may be
    ranked (available and labelled).

    For every pair of tokens (a, b): ``r = +1`` where ``loss_a < loss_b`` else -1, the margin ranking loss
    ``max(0, -r (attn_a - attn_b))`` on the rows where both are rankable, summed and divided by the number of
    positive terms (their ``loss_attn.sum() / max(1e-6, loss_attn[loss_attn > 0].numel())``); the mean over the
    T (T - 1) / 2 pairs (their ``(loss_attn1 + loss_attn2 + loss_attn3) / 3``)."""
    token_loss = token_loss.detach()
    t = attn.shape[-1]
    if t < 2:
        return attn.sum() * 0.0
    # every pair (a, b), a < b, at once, in the order of itertools.combinations: [B, C, P] with P = T (T - 1) / 2
    ia, ib = torch.triu_indices(t, t, offset=1, device=attn.device)
    r = torch.where(token_loss[..., ia] < token_loss[..., ib], 1.0, -1.0).to(attn.dtype)
    both = (rows[:, ia] & rows[:, ib]).to(attn.dtype).unsqueeze(1)  # [B, 1, P]
    loss = both * F.margin_ranking_loss(attn[..., ia], attn[..., ib], r, margin=0.0, reduction="none")
    per_pair = loss.sum((0, 1)) / (loss > 0).sum((0, 1)).clamp(min=1).to(attn.dtype)  # [P]
    return per_pair.mean()


# --------------------------------------------------------------------------------------------------------
# the method
# --------------------------------------------------------------------------------------------------------
def _branch(d: int, dropout: float) -> nn.Module:
    return nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d, d))


@register_method(
    "drfuse",
    description="disentangled shared (logit-pooled, JSD-aligned) and distinct (orthogonal) representations, "
    "disease-aware attention over the modalities with a ranking loss",
    paper="Yao, Yin, Cheung, Liu, Qin. DrFuse: learning disentangled representation for clinical multi-modal "
    "fusion with missing modality and modal inconsistency. AAAI 2024",
    defaults=DEFAULTS,
)
class DrFuse(FusionMethod):
    """DrFuse on the shared backbone (module docstring). ``forward`` returns the attention prediction as
    ``logits`` [B, C], the distinct heads as ``per_modality_logits`` and in ``extra``: ``shared`` and
    ``distinct`` [B, M, d], ``pooled`` [B, d], ``shared_logits`` [B, C], ``distinct_logits`` [B, M, C],
    ``attention`` [B, C, M+1] (tokens: the M distinct ones, then the shared one), ``available`` [B, M+1]."""

    ignores_masked_inputs = True

    def __init__(
        self,
        info: ModelInfo,
        d: int = BACKBONE.d,
        dropout: float = 0.1,
        jsd: str = "authors",
        lambda_pred_shared: float = 1.0,
        lambda_pred_distinct: float = 1.0,
        lambda_shared: float = 1.0,
        lambda_distinct: float = 1.0,
        lambda_attn: float = 1.0,
        encoder: Mapping[str, Any] | None = None,
    ) -> None:
        check_info(info)
        super().__init__(info)
        if jsd not in JSD_FORMS:
            raise ValueError(f"drfuse jsd must be one of {JSD_FORMS}, got {jsd!r}")
        m, c = info.num_modalities, info.num_outputs
        self.d, self.jsd_form = int(d), jsd
        self.lambda_pred_shared, self.lambda_pred_distinct = float(lambda_pred_shared), float(lambda_pred_distinct)
        self.lambda_shared, self.lambda_distinct = float(lambda_shared), float(lambda_distinct)
        self.lambda_attn = float(lambda_attn)
        d = self.d
        self.enc = EncoderBank(info, d, encoder)
        self.shared_branch = nn.ModuleList([_branch(d, dropout) for _ in range(m)])
        self.distinct_branch = nn.ModuleList([_branch(d, dropout) for _ in range(m)])
        self.shared_project = nn.Sequential(
            nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, d), nn.ReLU(), nn.Linear(d, d)
        )
        self.distinct_heads = nn.ModuleList([nn.Linear(d, c) for _ in range(m)])
        self.shared_head = nn.Linear(d, c)
        self.attn_proj = nn.Linear(d, (2 + c) * d)
        self.final = nn.Linear(d, c)

    def forward(self, batch: Batch) -> MethodOutput:
        check_batch(self.info, batch)
        mask = batch.mask.to(torch.bool)
        b, m, c, d = mask.shape[0], self.info.num_modalities, self.info.num_outputs, self.d
        E = self.enc(batch)
        E = torch.where(mask.unsqueeze(-1), E, torch.zeros_like(E))  # a missing slot is never read
        # the branches in the same order as one loop per modality would call them (the same dropout draws); the
        # common projection once on [B, M, d]
        s = self.shared_project(torch.stack([self.shared_branch[j](E[:, j]) for j in range(m)], dim=1))
        t = torch.stack([self.distinct_branch[j](E[:, j]) for j in range(m)], dim=1)
        pooled = logit_pool(s, mask)  # [B, d]
        shared_logits = self.shared_head(pooled)
        distinct_logits = torch.stack([self.distinct_heads[j](t[:, j]) for j in range(m)], dim=1)  # [B, M, C]

        tokens = torch.cat([t, pooled.unsqueeze(1)], dim=1)  # [B, M+1, d]
        avail = torch.cat([mask, torch.ones(b, 1, dtype=torch.bool, device=mask.device)], dim=1)
        q, v, k = self.attn_proj(tokens).split([d, d, c * d], dim=-1)
        k = k.reshape(b, m + 1, c, d)
        w_av = avail.to(q.dtype).unsqueeze(-1)
        q_mean = (q * w_av).sum(1) / w_av.sum(1)  # [B, d]
        scores = torch.einsum("bd,btcd->bct", q_mean, k) / math.sqrt(d)
        scores = scores.masked_fill(~avail.unsqueeze(1), -math.inf)
        attn = torch.softmax(scores, dim=-1)  # [B, C, M+1]
        rep = torch.einsum("bct,btd->bcd", attn, v)  # [B, C, d]
        logits = (rep * self.final.weight.unsqueeze(0)).sum(-1) + self.final.bias
        per = {n: distinct_logits[:, j] for j, n in enumerate(self.info.names)}
        return MethodOutput(
            logits=logits,
            per_modality_logits=per,
            extra={
                "shared": s,
                "distinct": t,
                "pooled": pooled,
                "shared_logits": shared_logits,
                "distinct_logits": distinct_logits,
                "attention": attn,
                "available": avail,
            },
        )

    def loss(self, batch: Batch, out: MethodOutput) -> tuple[torch.Tensor, dict[str, float]]:
        kind, y, ym = self.info.task_kind, batch.y, batch.y_mask
        mask = batch.mask.to(torch.bool)
        ex = out.extra
        final = task_loss(out.logits, y, kind, ym)
        shared = task_loss(ex["shared_logits"], y, kind, ym)
        dl = ex["distinct_logits"]
        distinct = sum(
            (task_loss(dl[:, j], y, kind, ym, rows=mask[:, j]) for j in range(self.info.num_modalities)),
            start=out.logits.sum() * 0.0,
        )
        jsd = jsd_loss(ex["shared"], mask, self.jsd_form)
        ortho = distinct_loss(ex["shared"], ex["distinct"], mask)
        token_logits = torch.cat([dl, ex["shared_logits"].unsqueeze(1)], dim=1)  # [B, M+1, C]
        b, t, c = token_logits.shape
        tl = (
            per_class_loss(token_logits.reshape(b * t, c), y.repeat_interleave(t, dim=0), kind)
            .view(b, t, c)
            .transpose(1, 2)
        )  # [B, C, M+1]: each token's own head's per-class loss (elementwise, so one call for all tokens)
        rankable = ex["available"] & ym.to(torch.bool).unsqueeze(1)
        rank = attention_rank_loss(ex["attention"], tl, rankable)
        total = (
            final
            + self.lambda_pred_shared * shared
            + self.lambda_pred_distinct * distinct
            + self.lambda_shared * jsd
            + self.lambda_distinct * ortho
            + self.lambda_attn * rank
        )
        terms = {
            "final": final,
            "shared": shared,
            "distinct": distinct,
            "jsd": jsd,
            "orthogonal": ortho,
            "rank": rank,
        }
        return total, {k: float(v.detach()) for k, v in terms.items()}
