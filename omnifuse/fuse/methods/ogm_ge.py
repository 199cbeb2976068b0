"""OGM-GE: on-the-fly gradient modulation with generalisation enhancement (Peng, Wei, Deng, Wang, Hu,
"Balanced multimodal learning via on-the-fly gradient modulation", CVPR 2022), generalised to M modalities.

Model: one encoder per modality, missing embeddings zero-filled, concatenation and a *linear* head, so the
logits split exactly into per-modality contributions ``z_m = W_m u_m + b / M`` (the paper's eq. 6 for
concatenation, with the bias shared equally).

Modulation, after each backward pass (trainer hook ``after_backward``):
- score ``s_m`` = mean, over the batch's labelled rows where modality m is present, of the probability that
  ``z_m`` gives the true class (softmax for multiclass; sigmoid per label, averaged over labels, for binary
  and multilabel). The paper sums over the batch; with missing modalities the row counts differ, so we
  take means. (eq. 7)
- discrepancy ratio ``rho_m = s_m / mean_{n != m} s_n`` over the other modalities that have rows in the batch
  (for M = 2 this is the paper's s_a / s_v). (eq. 8 generalised)
- coefficient: ``form="paper"`` (default) ``k_m = 1 - tanh(alpha * relu(rho_m))`` if rho_m > 1 else 1, as
  eq. 9 and the authors' code (``main.py``, ``train_epoch``: ``coeff_v = 1 - tanh(args.alpha * relu(ratio_v))``
  when ``ratio_v > 1``): 0.46 at rho = 1.2 with alpha = 0.5; ``form="shifted"`` (ours, continuous at 1)
  ``k_m = 1 - tanh(alpha * relu(rho_m - 1))``: 0.90 at rho = 1.2. Modalities with rho_m <= 1 keep k_m = 1.
  (eq. 9)
- every weight matrix (parameters with two or more dimensions; the authors modulate convolution kernels
  only) of encoder m: ``grad <- k_m * grad + N(0, std(grad)^2)`` (GE, eq. 11; ``noise=False`` gives OGM).
  The noise is added to every modality's encoder, as in the authors' code.
Modulation runs in epochs ``[start_epoch, end_epoch]`` (``end_epoch=None``: to the end). M = 1: k = 1.

Optimiser (:meth:`OGMGE.configure_optimizer`): ``optimizer="sgd"`` (default), SGD with momentum 0.9 and
weight decay 1e-4, as the authors train (``main.py``, ``main``: ``optim.SGD(model.parameters(),
lr=args.learning_rate, momentum=0.9, weight_decay=1e-4)``), at the run's learning rate times ``lr_scale``
(10: SGD wants a larger step than AdamW; at the run's own rate, 1e-3 like the authors' with their 100 epochs,
the eICU demo's best epoch was the last of 30 allowed); an adaptive optimiser such as AdamW largely undoes
the modulation (it rescales each parameter's step by its own gradient history). ``optimizer="adamw"``: the
protocol's default AdamW.

Defaults: the backbone's d (64), alpha=0.5, form="paper", noise=True, start_epoch=0, end_epoch=None,
dropout=0.1, optimizer="sgd", momentum=0.9, sgd_weight_decay=1e-4, lr_scale=10.0.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from omnifuse.fuse.base import Batch, FusionMethod, MethodOutput, ModelInfo, TrainerView
from omnifuse.fuse.encoders import BACKBONE, EncoderBank
from omnifuse.fuse.layers import encode_present, task_loss, true_class_probability
from omnifuse.fuse.methods.common import check_batch, check_info
from omnifuse.fuse.registry import register_method

DEFAULTS: dict[str, Any] = {
    "d": BACKBONE.d,
    "alpha": 0.5,
    "form": "paper",
    "noise": True,
    "start_epoch": 0,
    "end_epoch": None,
    "dropout": 0.1,
    "optimizer": "sgd",
    "momentum": 0.9,
    "sgd_weight_decay": 1e-4,
    "lr_scale": 10.0,
    "encoder": {},
}
OPTIMIZERS = ("sgd", "adamw")


def modality_scores(
    per_modality_logits: list[torch.Tensor], y: torch.Tensor, y_mask: torch.Tensor, mask: torch.Tensor, kind: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores ``s`` [M] (mean true-class probability of each modality's own contribution over the labelled
    rows where it is present) and ``valid`` [M] bool (the modality had such rows)."""
    scores, valid = [], []
    for m, z in enumerate(per_modality_logits):
        rows = y_mask.to(torch.bool) & mask[:, m].to(torch.bool)
        if bool(rows.any()):
            scores.append(true_class_probability(z.detach()[rows], y[rows], kind, mean_labels=True).mean())
            valid.append(True)
        else:
            scores.append(torch.zeros((), device=z.device))
            valid.append(False)
    return torch.stack(scores), torch.tensor(valid, device=scores[0].device)


def ogm_coefficients(
    scores: torch.Tensor, valid: torch.Tensor | None = None, alpha: float = 0.5, form: str = "paper"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Coefficients ``k`` [M] and ratios ``rho`` [M] from scores ``s`` [M] (eq. 8-9 generalised to M).

    ``rho_m = s_m / mean_{n != m, valid} s_n``; a modality without valid rows, or without another valid
    modality to compare with, gets rho = 1 and k = 1.
    """
    if form not in ("shifted", "paper"):
        raise ValueError(f"OGM-GE form must be 'shifted' or 'paper', got {form!r}")
    m = scores.shape[0]
    valid = torch.ones(m, dtype=torch.bool, device=scores.device) if valid is None else valid.to(torch.bool)
    v = valid.to(scores.dtype)
    n_other = v.sum() - v  # [M] number of other valid modalities
    other_mean = (torch.sum(scores * v) - scores * v) / n_other.clamp(min=1)
    ok = valid & (n_other > 0) & (other_mean > 0)
    rho = torch.where(ok, scores / other_mean.clamp(min=1e-12), torch.ones_like(scores))
    if form == "shifted":
        k = 1 - torch.tanh(alpha * torch.relu(rho - 1))
    else:
        k = torch.where(rho > 1, 1 - torch.tanh(alpha * rho), torch.ones_like(rho))
    return k, rho


@register_method(
    "ogm_ge",
    description="on-the-fly gradient modulation of each encoder plus Gaussian noise",
    paper="Peng, Wei, Deng, Wang, Hu. Balanced multimodal learning via on-the-fly gradient modulation. CVPR 2022",
    defaults=DEFAULTS,
)
class OGMGE(FusionMethod):
    """Concatenation + linear head with per-modality gradient modulation and Gaussian noise."""

    ignores_masked_inputs = True

    def __init__(
        self,
        info: ModelInfo,
        d: int = BACKBONE.d,
        alpha: float = 0.5,
        form: str = "paper",
        noise: bool = True,
        start_epoch: int = 0,
        end_epoch: int | None = None,
        dropout: float = 0.1,
        optimizer: str = "sgd",
        momentum: float = 0.9,
        sgd_weight_decay: float = 1e-4,
        lr_scale: float = 10.0,
        encoder: dict[str, Any] | None = None,
    ) -> None:
        check_info(info)
        super().__init__(info)
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"ogm_ge optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if not 0.0 <= momentum < 1.0 or sgd_weight_decay < 0 or lr_scale <= 0:
            raise ValueError(
                f"ogm_ge needs 0 <= momentum < 1, sgd_weight_decay >= 0 and lr_scale > 0, got {momentum}, "
                f"{sgd_weight_decay}, {lr_scale}"
            )
        self.optimizer_name, self.momentum = optimizer, float(momentum)
        self.sgd_weight_decay, self.lr_scale = float(sgd_weight_decay), float(lr_scale)
        ogm_coefficients(torch.ones(1), alpha=alpha, form=form)  # validates form
        self.d, self.alpha, self.form, self.noise = int(d), float(alpha), form, bool(noise)
        self.start_epoch, self.end_epoch = int(start_epoch), end_epoch
        self.enc = EncoderBank(info, self.d, encoder)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(info.num_modalities * self.d, info.num_outputs)
        self.epoch = 0
        self.last_coefficients: torch.Tensor | None = None
        self.last_ratios: torch.Tensor | None = None

    def forward(self, batch: Batch) -> MethodOutput:
        check_batch(self.info, batch)
        U = encode_present(self.enc, batch)  # [B, M, d], missing slots zero
        U = self.drop(U)
        m, d = self.info.num_modalities, self.d
        logits = self.head(U.reshape(U.shape[0], -1))
        W = self.head.weight.view(-1, m, d)  # [C, M, d]
        per = {name: U[:, i] @ W[:, i].T + self.head.bias / m for i, name in enumerate(self.info.names)}
        return MethodOutput(logits=logits, per_modality_logits=per)

    def loss(self, batch: Batch, out: MethodOutput) -> tuple[torch.Tensor, dict[str, float]]:
        loss = task_loss(out.logits, batch.y, self.info.task_kind, batch.y_mask)
        return loss, {"task": float(loss.detach())}

    def configure_optimizer(self, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        """SGD with momentum (``optimizer="sgd"``: the authors' optimiser; learning rate ``lr * lr_scale``,
        weight decay ``sgd_weight_decay``, the run's ``weight_decay`` being AdamW's), or the default AdamW."""
        if self.optimizer_name == "adamw":
            return super().configure_optimizer(lr, weight_decay)
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.SGD(
            params, lr=lr * self.lr_scale, momentum=self.momentum, weight_decay=self.sgd_weight_decay
        )

    def on_epoch_start(self, trainer: TrainerView, epoch: int) -> None:
        self.epoch = int(epoch)

    def modulating(self) -> bool:
        return self.epoch >= self.start_epoch and (self.end_epoch is None or self.epoch <= self.end_epoch)

    @torch.no_grad()
    def coefficients(self, batch: Batch, out: MethodOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """``k`` [M] and ``rho`` [M] for this batch."""
        assert out.per_modality_logits is not None
        per = [out.per_modality_logits[n] for n in self.info.names]
        s, valid = modality_scores(per, batch.y, batch.y_mask, batch.mask, self.info.task_kind)
        return ogm_coefficients(s, valid, self.alpha, self.form)

    @torch.no_grad()
    def after_backward(self, batch: Batch, out: MethodOutput, generator: torch.Generator | None = None) -> None:
        """Scale encoder m's weight-matrix gradients by k_m and add N(0, std(grad)^2) (eq. 9-11)."""
        if not self.modulating():
            return
        k, rho = self.coefficients(batch, out)
        self.last_coefficients, self.last_ratios = k.cpu(), rho.cpu()
        for m, enc in enumerate(self.enc.encoders):
            km = float(k[m])
            for p in enc.parameters():
                if p.grad is None or p.dim() < 2:
                    continue
                g = p.grad
                if self.noise and g.numel() > 1:
                    std = float(g.std()) + 1e-8
                    noise = torch.randn(g.shape, generator=generator, device="cpu").to(g) * std
                    p.grad = g * km + noise
                elif km != 1.0:
                    p.grad = g * km
