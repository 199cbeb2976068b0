"""PMR: prototypical modal rebalance (Fan, Xu, Wang, Wang, Guo, "PMR: Prototypical modal rebalance for
multimodal learning", CVPR 2023), generalised to M modalities and to binary / multilabel tasks.

Model: one encoder per modality, zero-filled missing embeddings, concatenation and a linear head (the
authors' concatenation setting); the prediction is the fused head's.

Prototypes (eq. 4): for each modality m and class k, ``c_k^m`` = the mean embedding of modality m over the
training rows of class k where m is present. ``prototypes="epoch"`` (default, as the authors' code:
``main_Prototype_grad.py``, ``calculate_prototype``, called before the first epoch and after each one):
recomputed at each epoch's start in eval mode without gradient, as class means over a subset of the training
rows, then mixed with the previous epoch's, ``c <- momentum * c_old + (1 - momentum) * c_new`` (their
``momentum_coef``, 0.2; the first computation sets them). Their subset is the first tenth of a shuffled
training loader; ours is the trainer's mining batches (``trainer.mining_batches()``, a fixed subset of at most
``TrainConfig.mining_rows`` training rows); without mining rows the method falls back to ``"ema"``.
``prototypes="ema"`` updates them from every training batch (train mode), ``c <- momentum * c + (1 -
momentum) * batch class mean`` (the first batch that holds a class sets its prototype; a per-batch EMA
wants a larger momentum, e.g. 0.9). Prototypes are buffers: no gradient reaches them.

Prototypical cross-entropy (eq. 5-6): ``p^m_k ∝ exp(-||u_m - c^m_k|| / temperature)`` (Euclidean distance, as in
the authors' code); ``L_PCE^m`` = cross-entropy of p^m with the label over rows where m is present.
Multiclass: one group of C classes. Binary and multilabel: each label is its own two-class problem with a
negative and a positive prototype per modality; ``L_PCE`` and scores average over labels.

Imbalance (eq. 7-8 generalised): ``s_m`` = mean over present, labelled rows of p^m of the true class;
``rho_m = s_m / mean_{n != m} s_n``. Modality m is slow when rho_m < 1 and dominant when rho_m > 1.
- PCE weight of a slow modality: ``coef="step"`` (default, the authors' code): ``beta_m = alpha``;
  ``coef="tanh"``: ``beta_m = alpha * tanh(1 / rho_m - 1)`` (grows with how far behind it is). Modalities
  with rho_m >= 1 get 0. For M = 2 both reduce to the paper's two-modality rule.
- entropy regularisation (eq. 9-10): during the first ``entropy_epochs`` epochs the loss subtracts
  ``mu * H(p^m)`` (mean entropy of the prototype prediction, per label for multilabel) for every dominant
  modality, slowing its premature convergence.
Total: ``L = CE(fused) + sum_m beta_m L_PCE^m - mu * sum_{m dominant} H(p^m)``. M = 1: no rebalancing
(rho = 1), plain CE. PCE and ratios start once every prototype of a modality has been seen.

Defaults: the backbone's d (64), alpha=1.0, coef="step", mu=0.1, entropy_epochs=5, prototypes="epoch",
momentum=0.2, temperature=1.0, dropout=0.1.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from omnifuse.fuse.base import Batch, FusionMethod, MethodOutput, ModelInfo, TrainerView
from omnifuse.fuse.encoders import BACKBONE, EncoderBank
from omnifuse.fuse.layers import encode_present, task_loss
from omnifuse.fuse.methods.common import batches_on, check_batch, check_info
from omnifuse.fuse.methods.ogm_ge import ogm_coefficients
from omnifuse.fuse.registry import register_method

DEFAULTS: dict[str, Any] = {
    "d": BACKBONE.d,
    "alpha": 1.0,
    "coef": "step",
    "mu": 0.1,
    "entropy_epochs": 5,
    "prototypes": "epoch",
    "momentum": 0.2,
    "temperature": 1.0,
    "dropout": 0.1,
    "encoder": {},
}


def label_groups(y: torch.Tensor, kind: str, num_outputs: int) -> torch.Tensor:
    """Targets as [B, G] class indices: multiclass G = 1 (index among C); binary/multilabel G = C (0/1)."""
    if kind == "multiclass":
        return y.long().clamp(min=0).view(-1, 1)
    return (y > 0.5).long().view(y.shape[0], num_outputs)


def prototype_logits(u: torch.Tensor, protos: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``u`` [B, d], ``protos`` [G, K, d] -> logits [B, G, K] = -||u - c_gk|| / temperature."""
    diff = u[:, None, None, :] - protos[None]
    dist = torch.sqrt((diff * diff).sum(-1) + 1e-12)
    return -dist / temperature


@register_method(
    "pmr",
    description="prototypical modal rebalance: prototype cross-entropy on slow modalities, "
    "entropy regularisation on dominant ones early on",
    paper="Fan, Xu, Wang, Wang, Guo. PMR: Prototypical modal rebalance for multimodal learning. CVPR 2023",
    defaults=DEFAULTS,
)
class PrototypicalRebalance(FusionMethod):
    """Concatenation + linear head, with prototype cross-entropy on slow modalities and entropy
    regularisation on dominant ones."""

    ignores_masked_inputs = True
    protos: torch.Tensor  # [M, G, K, d] prototypes (a buffer)
    seen: torch.Tensor  # [M, G, K] whether each prototype has been set

    def __init__(
        self,
        info: ModelInfo,
        d: int = BACKBONE.d,
        alpha: float = 1.0,
        coef: str = "step",
        mu: float = 0.1,
        entropy_epochs: int = 5,
        prototypes: str = "epoch",
        momentum: float = 0.2,
        temperature: float = 1.0,
        dropout: float = 0.1,
        encoder: dict[str, Any] | None = None,
    ) -> None:
        check_info(info)
        super().__init__(info)
        if coef not in ("step", "tanh"):
            raise ValueError(f"pmr coef must be 'step' or 'tanh', got {coef!r}")
        if prototypes not in ("ema", "epoch"):
            raise ValueError(f"pmr prototypes must be 'ema' or 'epoch', got {prototypes!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"pmr momentum must be in [0, 1), got {momentum}")
        if temperature <= 0:
            raise ValueError(f"pmr temperature must be positive, got {temperature}")
        self.d, self.alpha, self.coef, self.mu = int(d), float(alpha), coef, float(mu)
        self.entropy_epochs, self.proto_mode, self.momentum = int(entropy_epochs), prototypes, float(momentum)
        self.temperature = float(temperature)
        m, c = info.num_modalities, info.num_outputs
        self.groups, self.classes = (1, c) if info.task_kind == "multiclass" else (c, 2)
        self.enc = EncoderBank(info, self.d, encoder)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(m * self.d, c)
        self.register_buffer("protos", torch.zeros(m, self.groups, self.classes, self.d))
        self.register_buffer("seen", torch.zeros(m, self.groups, self.classes, dtype=torch.bool))
        self.epoch = 0
        self._epoch_protos_done = False
        self.last_ratios: torch.Tensor | None = None

    def forward(self, batch: Batch) -> MethodOutput:
        check_batch(self.info, batch)
        U = encode_present(self.enc, batch)  # [B, M, d], missing slots zero
        logits = self.head(self.drop(U).reshape(U.shape[0], -1))
        return MethodOutput(logits=logits, extra={"embeddings": U})

    # --- prototypes --------------------------------------------------------------------------------------
    @staticmethod
    def class_sums(
        u: torch.Tensor, t: torch.Tensor, rows: torch.Tensor, classes: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sums [G, K, d] and counts [G, K] of embeddings ``u`` [B, d] per group and class ``t`` [B, G]."""
        onehot = F.one_hot(t, classes).to(u.dtype) * rows.to(u.dtype).view(-1, 1, 1)  # [B, G, K]
        return torch.einsum("bgk,bd->gkd", onehot, u), onehot.sum(0)

    @torch.no_grad()
    def update_prototypes_ema(self, U: torch.Tensor, batch: Batch) -> None:
        """EMA of the batch's class means into the prototypes (first sighting sets the prototype)."""
        t = label_groups(batch.y, self.info.task_kind, self.info.num_outputs)
        lab = batch.y_mask.to(torch.bool)
        for m in range(self.info.num_modalities):
            rows = lab & batch.mask[:, m].to(torch.bool)
            if not bool(rows.any()):
                continue
            s, n = self.class_sums(U[:, m].detach(), t, rows, self.classes)
            has = n > 0
            mean = s / n.clamp(min=1).unsqueeze(-1)
            old = self.protos[m]
            new = torch.where(self.seen[m].unsqueeze(-1), self.momentum * old + (1 - self.momentum) * mean, mean)
            self.protos[m] = torch.where(has.unsqueeze(-1), new, old)
            self.seen[m] |= has

    @torch.no_grad()
    def set_prototypes_from(self, batches: Iterable[Batch], device: torch.device) -> None:
        """Class means over ``batches`` in eval mode, mixed with the prototypes already set:
        ``momentum * old + (1 - momentum) * new`` (a prototype seen for the first time is the new mean; one
        without rows in ``batches`` is kept)."""
        m_, g, k, d = self.protos.shape
        s = torch.zeros(m_, g, k, d, device=device)
        n = torch.zeros(m_, g, k, device=device)
        with self.evaluating():
            for b in batches_on(batches, device):
                U = self(b).extra["embeddings"]
                t = label_groups(b.y, self.info.task_kind, self.info.num_outputs)
                for m in range(m_):
                    rows = b.y_mask.to(torch.bool) & b.mask[:, m].to(torch.bool)
                    sm, nm = self.class_sums(U[:, m], t, rows, k)
                    s[m] += sm
                    n[m] += nm
        has = n > 0
        new = s / n.clamp(min=1).unsqueeze(-1)
        mixed = torch.where(self.seen.unsqueeze(-1), self.momentum * self.protos + (1 - self.momentum) * new, new)
        self.protos.copy_(torch.where(has.unsqueeze(-1), mixed, self.protos))
        self.seen |= has

    def on_epoch_start(self, trainer: TrainerView, epoch: int) -> None:
        self.epoch = int(epoch)
        self._epoch_protos_done = False
        if self.proto_mode == "epoch":
            batches = trainer.mining_batches()
            if batches:
                self.set_prototypes_from(batches, trainer.device)
                self._epoch_protos_done = True

    # --- loss -------------------------------------------------------------------------------------------
    def modality_terms(
        self, U: torch.Tensor, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per modality: PCE [M], score s [M], entropy [M], valid [M] (prototypes ready, rows present), every
        modality at once: ``U`` [B, M, d] against the prototypes [M, G, K, d] (:func:`prototype_logits` of each
        modality), each term the mean over the labelled rows where the modality is present (0 without any)."""
        t = label_groups(batch.y, self.info.task_kind, self.info.num_outputs)  # [B, G]
        b, m = U.shape[0], self.info.num_modalities
        rows = batch.y_mask.to(torch.bool).unsqueeze(1) & batch.mask.to(torch.bool)  # [B, M]
        diff = U[:, :, None, None, :] - self.protos[None]  # [B, M, G, K, d]
        logits = -torch.sqrt((diff * diff).sum(-1) + 1e-12) / self.temperature  # [B, M, G, K]
        logp = torch.log_softmax(logits, dim=-1)
        target = t[:, None, :, None].expand(b, m, self.groups, 1)
        nll = -logp.gather(-1, target).squeeze(-1).mean(-1)  # [B, M]
        p = logp.exp()
        s = p.gather(-1, target).squeeze(-1).mean(-1)
        h = -(p * logp).sum(-1).mean(-1)
        w = rows.to(U.dtype)
        count = w.sum(0).clamp(min=1)  # rows are counted; no row: the sums are 0, so is the mean

        def mean(v: torch.Tensor) -> torch.Tensor:
            return (v * w).sum(0) / count

        valid = self.seen.flatten(1).all(1) & rows.any(0)
        return mean(nll), mean(s.detach()), mean(h), valid

    def loss(self, batch: Batch, out: MethodOutput) -> tuple[torch.Tensor, dict[str, float]]:
        U = out.extra["embeddings"]
        ce = task_loss(out.logits, batch.y, self.info.task_kind, batch.y_mask)
        if self.training and torch.is_grad_enabled() and not self._epoch_protos_done:
            self.update_prototypes_ema(U, batch)
        terms = {"task": float(ce.detach())}
        if self.info.num_modalities < 2:
            return ce, terms
        pce, s, ent, valid = self.modality_terms(U, batch)
        _, rho = ogm_coefficients(s, valid)  # rho_m = s_m / mean of the others
        self.last_ratios = rho.detach().cpu()
        slow = valid & (rho < 1)
        dominant = valid & (rho > 1)
        if self.coef == "step":
            beta = torch.where(slow, torch.full_like(rho, self.alpha), torch.zeros_like(rho))
        else:
            beta = torch.where(slow, self.alpha * torch.tanh(1 / rho.clamp(min=1e-6) - 1), torch.zeros_like(rho))
        total = ce + (beta.detach() * pce).sum()
        if self.epoch < self.entropy_epochs and self.mu > 0:
            total = total - self.mu * (dominant.to(ent.dtype) * ent).sum()
        pce_values, rho_values = pce.detach().tolist(), rho.tolist()
        for i, n in enumerate(self.info.names):
            terms[f"pce_{n}"] = pce_values[i]
            terms[f"rho_{n}"] = rho_values[i]
        return total, terms
