"""The cascade residual autoencoder (CRA) and the imputation losses of OmniFuse (paper eq. 4-8).

On the input triplet ``v`` [B, M*d] (eq. 2-3: each modality's embedding where present, the encoder's output
for a zero input where missing), K residual autoencoders run in cascade:

- eq. 4: ``dz_1 = phi_1(v)``, ``dz_k = phi_k(v + sum_{j<k} dz_j)``;
- eq. 5 (forward imputation): ``v' = v + sum_k dz_k``; the latents ``s_k`` of the K encoders form the joint
  embedding of eq. 11;
- eq. 6 (backward imputation): a second CRA maps ``v'`` to ``v'' = v' + sum_k dz''_k``.
"""

from __future__ import annotations

import torch
from torch import nn


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


def forward_loss(v_prime: torch.Tensor, v_true: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
    """Eq. 7, L_forward: ``||v'_m - stopgrad(v_m)||^2`` over the modalities dropped on purpose.

    ``v_prime``, ``v_true`` [B, M, d]; ``dropped`` [B, M] bool (present in the cache, removed by the
    training drop). The truth is detached so the encoders cannot collapse to make imputation trivial."""
    return _masked_mse(v_prime, v_true.detach(), dropped)


def backward_loss(v_second: torch.Tensor, v: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Eq. 8, L_backward: ``||v''_m - stopgrad(v_m)||^2`` over the modalities present in the input.

    ``v_second``, ``v`` [B, M, d]; ``present`` [B, M] bool."""
    return _masked_mse(v_second, v.detach(), present)
