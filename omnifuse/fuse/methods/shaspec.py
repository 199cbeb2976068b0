"""ShaSpec: shared-specific feature modelling (Wang, Chen, Ma, Avery, Hull, Carneiro, "Multi-modal learning with
missing modality via shared-specific feature modelling", CVPR 2023), on cached features, for any M >= 1.

The authors' code is github billhhh/ShaSpec: the model ``DualNet_SS.py`` (``DualNet_SS.forward``,
``CompositionalLayer``), the losses and weights ``train_SS.py`` (``alpha = 0.1``, ``beta = 0.02``, ``term_shared``
with ``distribution_loss = nn.L1Loss()``, ``term_spec`` with ``loss_Dual.DomainClsLoss``). Their model segments
four MRI sequences; ours classifies from M slots behind the shared backbone.

Equation numbers: none. The paper's text could not be read here (``docs/methods.md``, "Equation numbers"), so
the parts carry the paper's names and their code's definitions, and no equation number is cited.

Architecture (B rows, M modalities, d the backbone's width, C outputs):

- the shared backbone (:class:`~omnifuse.fuse.encoders.EncoderBank`) gives ``v_m`` [B, d]; a missing slot is set
  to zero and never read;
- **one shared encoder** applied to every modality (their ``shared_enc``, run on every modality's image):
  ``r_m = f_sha(v_m)`` [B, d]; **one specific encoder per modality** (their ``flair_enc``, ``t1_enc``, ...):
  ``s_m = f_spe,m(v_m)`` [B, d]; each a Linear-ReLU-Dropout-Linear on the backbone's embedding;
- **residual fusion** of a present modality (their ``CompositionalLayer``: a bias-free convolution of the
  concatenated shared and specific features added to the shared one): ``f_m = r_m + W_proj [r_m; s_m]`` [B, d];
- **a missing modality's feature is generated from the shared features of the available ones**:
  ``fill="mean"`` (default): ``f_m = mean_{n present} r_n`` (the average of the available shared features, the
  alternative their ``DualNet_SS.forward`` keeps in a comment); ``fill="first"``: the shared feature of one
  available modality, as their active line ``general_shared_ft = shared_ft[mode_split[0]...]`` does: in training
  a uniformly drawn available one (their ``mode='random'`` shuffles ``mode_split``), in evaluation the first
  available in the modality order. A row with nothing present gets zeros;
- the decoder reads the M fused features side by side (their ``shared_dec`` on the concatenation ``out_ft``):
  here a head on the concatenation [B, M d].

Losses (:meth:`ShaSpec.loss`): ``L = L_task + alpha L_dao + beta L_dco``:

- distribution alignment (``L_dao``, their "SimShareAllPairs" ``term_shared``): the L1 distance (mean absolute
  difference) between the shared features of consecutive modalities in a cycle, ``sum_m L1(r_m, r_{m+1 mod M})``,
  each pair on the rows holding both (their code also aligns the features of a missing modality's zeroed image);
  with M = 2 the single pair (their cycle would count it twice), none with M = 1; ``dao="l2"`` uses the mean
  squared difference (their commented ``nn.MSELoss`` alternative);
- domain classification (``L_dco``, their ``term_spec``): a linear classifier (their ``dom_classifier``) must tell
  from ``s_m`` which modality it came from, cross-entropy averaged over the present (row, modality) slots.

Defaults: :data:`DEFAULTS` (alpha, beta: theirs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from omnifuse.fuse.base import Batch, FusionMethod, MethodOutput, ModelInfo
from omnifuse.fuse.encoders import BACKBONE, EncoderBank
from omnifuse.fuse.layers import mlp_head, task_loss
from omnifuse.fuse.methods.common import check_batch, check_info
from omnifuse.fuse.registry import register_method

DEFAULTS: dict[str, Any] = {
    "d": BACKBONE.d,
    "fill": "mean",
    "alpha": 0.1,
    "beta": 0.02,
    "dao": "l1",
    "hidden": 64,
    "dropout": 0.1,
    "encoder": {},
}
"""``alpha``, ``beta``: their ``train_SS.py`` weights of the alignment and domain losses; ``hidden``: the head's
width (a Linear-GELU-Dropout-Linear head on [B, M d], as concat's)."""

FILLS = ("mean", "first")
DAOS = ("l1", "l2")


# --------------------------------------------------------------------------------------------------------
# pure functions (tested against hand computations)
# --------------------------------------------------------------------------------------------------------
def generate_missing(
    r: torch.Tensor, fused: torch.Tensor, mask: torch.Tensor, fill: str, pick: torch.Tensor | None = None
) -> torch.Tensor:
    """The fused features with every missing slot generated from the shared features of the available ones.

    ``r`` [B, M, d] shared features, ``fused`` [B, M, d] the present slots' residual fusion, ``mask`` [B, M].
    ``fill="mean"``: a missing slot holds ``mean_{n present} r_n``; ``"first"``: ``r`` of the available modality
    chosen by ``pick`` [B] (a column index per row; default the first available). A row with nothing present
    holds zeros."""
    mask = mask.to(torch.bool)
    w = mask.to(r.dtype).unsqueeze(-1)  # [B, M, 1]
    if fill == "mean":
        gen = (r * w).sum(1) / w.sum(1).clamp(min=1)  # [B, d]
    elif fill == "first":
        if pick is None:
            pick = mask.to(torch.int8).argmax(dim=1)  # the first present column (0 when none)
        gen = r.gather(1, pick.view(-1, 1, 1).expand(-1, 1, r.shape[-1])).squeeze(1)
        gen = gen * mask.any(1, keepdim=True).to(r.dtype)
    else:
        raise ValueError(f"shaspec fill must be one of {FILLS}, got {fill!r}")
    return torch.where(mask.unsqueeze(-1), fused, gen.unsqueeze(1).expand_as(fused))


def alignment_loss(r: torch.Tensor, mask: torch.Tensor, dao: str = "l1") -> torch.Tensor:
    """``L_dao``: ``sum`` over the cycle's pairs (m, m+1 mod M) (one pair when M = 2, none when M = 1) of the mean
    absolute (``"l1"``) or squared (``"l2"``) difference of ``r_m`` and ``r_{m+1}`` [B, d] over the rows holding
    both; a pair on no row adds nothing."""
    m = r.shape[1]
    pairs = [(0, 1)] if m == 2 else [(j, (j + 1) % m) for j in range(m)] if m > 2 else []
    total = r.sum() * 0.0
    for a, b in pairs:
        rows = mask[:, a] & mask[:, b]
        if not bool(rows.any()):
            continue
        diff = r[rows, a] - r[rows, b]
        total = total + (diff.abs().mean() if dao == "l1" else diff.pow(2).mean())
    return total


def domain_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``L_dco``: cross-entropy of the domain classifier's ``logits`` [B, M, M] (for slot m, the scores of the M
    modalities) against the slot's own index, averaged over the present slots of ``mask`` [B, M]."""
    b, m, _ = logits.shape
    target = torch.arange(m, device=logits.device).expand(b, m)
    keep = mask.to(torch.bool)
    if not bool(keep.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[keep], target[keep])


# --------------------------------------------------------------------------------------------------------
# the method
# --------------------------------------------------------------------------------------------------------
def _encoder(d: int, dropout: float) -> nn.Module:
    return nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d, d))


@register_method(
    "shaspec",
    description="one shared and M specific encoders, residual shared-specific fusion, missing features "
    "generated from the available shared ones; distribution-alignment and domain-classification losses",
    paper="Wang, Chen, Ma, Avery, Hull, Carneiro. Multi-modal learning with missing modality via shared-specific "
    "feature modelling. CVPR 2023",
    defaults=DEFAULTS,
)
class ShaSpec(FusionMethod):
    """ShaSpec on the shared backbone (module docstring). ``forward`` returns ``logits`` [B, C] and in ``extra``:
    ``shared`` ``r`` [B, M, d], ``specific`` ``s`` [B, M, d], ``fused`` ``f`` [B, M, d] (missing slots generated),
    ``domain_logits`` [B, M, M]."""

    ignores_masked_inputs = True

    def __init__(
        self,
        info: ModelInfo,
        d: int = BACKBONE.d,
        fill: str = "mean",
        alpha: float = 0.1,
        beta: float = 0.02,
        dao: str = "l1",
        hidden: int | None = 64,
        dropout: float = 0.1,
        encoder: Mapping[str, Any] | None = None,
    ) -> None:
        check_info(info)
        super().__init__(info)
        if fill not in FILLS:
            raise ValueError(f"shaspec fill must be one of {FILLS}, got {fill!r}")
        if dao not in DAOS:
            raise ValueError(f"shaspec dao must be one of {DAOS}, got {dao!r}")
        m = info.num_modalities
        self.d, self.fill, self.dao = int(d), fill, dao
        self.alpha, self.beta = float(alpha), float(beta)
        self.enc = EncoderBank(info, self.d, encoder)
        self.shared = _encoder(self.d, dropout)
        self.specific = nn.ModuleList([_encoder(self.d, dropout) for _ in range(m)])
        self.proj = nn.Linear(2 * self.d, self.d, bias=False)
        self.domain = nn.Linear(self.d, m)
        self.drop = nn.Dropout(dropout)
        self.head = mlp_head(m * self.d, info.num_outputs, hidden, dropout)

    def _pick(self, mask: torch.Tensor) -> torch.Tensor | None:
        """``fill="first"`` in training: a uniformly drawn available modality per row; else None (the first)."""
        if self.fill != "first" or not self.training:
            return None
        r = torch.rand(mask.shape, device=mask.device)
        return torch.where(mask, r, torch.full_like(r, -1.0)).argmax(dim=1)

    def forward(self, batch: Batch) -> MethodOutput:
        check_batch(self.info, batch)
        mask = batch.mask.to(torch.bool)
        m = self.info.num_modalities
        E = self.enc(batch)
        E = torch.where(mask.unsqueeze(-1), E, torch.zeros_like(E))  # a missing slot is never read
        r = self.shared(E)  # [B, M, d]: one encoder for every modality
        s = torch.stack([self.specific[j](E[:, j]) for j in range(m)], dim=1)
        fused = r + self.proj(torch.cat([r, s], dim=-1))
        f = generate_missing(r, fused, mask, self.fill, self._pick(mask))
        logits = self.head(self.drop(f.reshape(f.shape[0], -1)))
        return MethodOutput(
            logits=logits, extra={"shared": r, "specific": s, "fused": f, "domain_logits": self.domain(s)}
        )

    def loss(self, batch: Batch, out: MethodOutput) -> tuple[torch.Tensor, dict[str, float]]:
        mask = batch.mask.to(torch.bool)
        task = task_loss(out.logits, batch.y, self.info.task_kind, batch.y_mask)
        dao = alignment_loss(out.extra["shared"], mask, self.dao)
        dco = domain_loss(out.extra["domain_logits"], mask)
        total = task + self.alpha * dao + self.beta * dco
        return total, {"task": float(task.detach()), "dao": float(dao.detach()), "dco": float(dco.detach())}
