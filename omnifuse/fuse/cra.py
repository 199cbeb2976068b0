"""The cascade residual autoencoder (CRA) and the imputation losses of OmniFuse (paper eq. 4-8).

On the input triplet ``v`` [B, M*d] (eq. 2-3: each modality's embedding where present, the encoder's output
for a zero input where missing), K residual autoencoders run in cascade:

- eq. 4: ``dz_1 = phi_1(v)``, ``dz_k = phi_k(v + sum_{j<k} dz_j)``;
- eq. 5 (forward imputation): ``v' = v + sum_k dz_k``; the latents ``s_k`` of the K encoders form the joint
  embedding of eq. 11;
- eq. 6 (backward imputation): a second CRA maps ``v'`` to ``v'' = v' + sum_k dz''_k``.

Targets (:func:`cra_targets`), ``cra_target="paper"`` (default; eq. 2-3, 7-8 and the MMIN cycle the design
comes from, Zhao et al., ACL 2021):

- forward (eq. 7): ``v-hat``, the mirror of ``v``: ``v^miss`` at every slot the model sees (kept), the detached
  true embedding at every slot dropped on purpose; a naturally missing slot has no target (its truth is
  unknown). So the forward CRA must produce the absent modalities from the present ones, and its output
  carries no copy of the present ones;
- backward (eq. 8): ``v`` at every slot (the input triplet, detached): the backward CRA rebuilds the available
  modalities from the imputed ones ("from missing to available"); copying its input cannot solve it, because
  its input holds ``v^miss`` where the target holds the available embeddings.

``cra_target="dropped_only"`` (the earlier reading, kept for the ablation): forward target the true
embedding at the dropped slots only; backward target ``v`` at the present slots only. Then ``v'`` still
holds the available embeddings and the backward CRA can learn to copy them.
"""

from __future__ import annotations

import torch
from torch import nn

CRA_TARGETS = ("paper", "dropped_only")


class ResidualAutoencoder(nn.Module):
    """One RA ``phi_k``: [B, D] -> (dz [B, D], latent s [B, latent])."""

    def __init__(self, dim: int, hidden: int, latent: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, latent), nn.GELU()
        )
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.encoder(v)
        return self.decoder(s), s


class CRA(nn.Module):
    """A cascade of K residual autoencoders (eq. 4-5): ``v`` [B, D] -> (``v + sum dz_k`` [B, D],
    latents [B, K * latent])."""

    def __init__(self, dim: int, K: int = 5, hidden: int = 256, latent: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        if K < 1:
            raise ValueError(f"the CRA needs K >= 1 residual autoencoders, got {K}")
        self.K = K
        self.latent = latent
        self.blocks = nn.ModuleList(ResidualAutoencoder(dim, hidden, latent, dropout) for _ in range(K))

    def forward(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        acc = torch.zeros_like(v)
        latents = []
        for k, phi in enumerate(self.blocks):
            dz, s = phi(v if k == 0 else v + acc)  # eq. 4
            acc = acc + dz
            latents.append(s)
        return v + acc, torch.cat(latents, dim=-1)  # eq. 5 and the concat of eq. 11


def _masked_mse(pred: torch.Tensor, target: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
    """Mean over selected (row, modality) pairs of the per-pair mean squared error.

    ``pred``/``target`` [B, M, d]; ``sel`` [B, M] bool. Zero (with a graph) when nothing is selected."""
    err = ((pred - target) ** 2).mean(-1)  # [B, M]
    w = sel.to(err.dtype)
    return (err * w).sum() / w.sum().clamp(min=1.0)


def forward_loss(v_prime: torch.Tensor, target: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """Eq. 7, L_forward: ``||v'_m - stopgrad(target_m)||^2``, mean over the selected (row, modality) slots.

    ``v_prime``, ``target`` [B, M, d] (:func:`cra_targets`: ``v-hat``); ``slots`` [B, M] bool. The target is
    detached so the encoders cannot collapse to make imputation trivial."""
    return _masked_mse(v_prime, target.detach(), slots)


def backward_loss(v_second: torch.Tensor, v: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """Eq. 8, L_backward: ``||v''_m - stopgrad(v_m)||^2``, mean over the selected (row, modality) slots.

    ``v_second``, ``v`` [B, M, d]; ``slots`` [B, M] bool (:func:`cra_targets`: every slot)."""
    return _masked_mse(v_second, v.detach(), slots)


def cra_targets(
    v: torch.Tensor,
    v_true: torch.Tensor | None,
    v_miss: torch.Tensor,
    mask: torch.Tensor,
    dropped: torch.Tensor | None,
    mode: str = "paper",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The targets of eq. 7 and 8 and the slots they cover: ``(forward target [B, M, d], forward slots [B, M],
    backward target [B, M, d], backward slots [B, M])``, targets detached.

    ``v`` [B, M, d]: the input triplet (eq. 2-3); ``v_true`` [B, M, d]: the true embeddings of the batch before
    the drop (None without a drop); ``v_miss`` [M, d] or [B, M, d]: each encoder's output for a zero input;
    ``mask`` [B, M]: what the model sees; ``dropped`` [B, M]: the slots dropped on purpose (None: none).

    - ``"paper"``: forward target ``v-hat`` = ``v^miss`` where seen, the true embedding where dropped, over the
      seen and dropped slots (a naturally missing slot has none); backward target ``v`` over every slot;
    - ``"dropped_only"``: forward target the true embedding over the dropped slots; backward target ``v`` over
      the seen slots.
    """
    if mode not in CRA_TARGETS:
        raise ValueError(f"cra_target must be one of {CRA_TARGETS}, got {mode!r}")
    mask = mask.to(torch.bool)
    drop = torch.zeros_like(mask) if dropped is None else dropped.to(torch.bool) & ~mask
    truth = v if v_true is None else v_true  # without a drop nothing is dropped: truth is read nowhere
    if mode == "paper":
        vm = v_miss.expand_as(v)
        fw_target = torch.where(mask.unsqueeze(-1), vm, truth)
        fw_slots = mask | drop
        bw_slots = torch.ones_like(mask)
    else:
        fw_target, fw_slots, bw_slots = truth, drop, mask
    return fw_target.detach(), fw_slots, v.detach(), bw_slots
