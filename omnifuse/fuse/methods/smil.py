"""SMIL: multimodal learning with severely missing modality (Ma, Ren, Zhao, Tulyakov, Wu, Peng, "SMIL:
multimodal learning with severely missing modality", AAAI 2021), on cached features, for any M >= 1.

The authors' code is github mengmenm/SMIL (their avMNIST experiment; image always present, sound mostly
missing): the priors ``src/get_sound_mean_kmean.py`` (``KMeans(n_clusters=10)`` on the sound features of the
training rows holding sound), the networks ``src/models/soundlenet5.py`` (``SoundLenet5New.forward``) and
``src/models/newencoder.py`` (``InferNetNew``: ``fc0`` the reconstruction weights, ``fc1``/``fc2`` the feature
perturbations), the Bayesian meta-learning ``src/train_missing_eval_missing.py`` (``meta_training``) and the
meta-validation loss ``src/models/loss.py`` (``KDLossAlignTwo(alpha=0.01, beta=0.01)``).

Equation numbers: none. The paper's text could not be read here (``docs/methods.md``, "Equation numbers"), so
the parts carry the paper's names and their code's definitions, and no equation number is cited.

The model (B rows, M modalities, d the backbone's width, K priors per modality, C outputs):

- the shared backbone (:class:`~omnifuse.fuse.encoders.EncoderBank`) gives ``u_m`` [B, d]; ``z`` [B, M d + M] is
  the present slots side by side (a missing slot zero) with the presence indicators;
- **modality priors**: per modality, K-means centroids ``c_{m,k}`` [K, d] of the embeddings of the training rows
  holding it (their sound-feature K-means; scikit-learn's ``KMeans``); recomputed from the trainer's mining rows
  before the first epoch and after every epoch (their extractors were pre-trained and frozen, ours learn, so the
  priors follow them) and kept in the state;
- **reconstruction network** (their ``fc0`` on the image feature): a missing modality m is the weighted mean of
  its priors, ``u^_m = sum_k w_k c_{m,k} / sum_k w_k`` with ``w = softplus(R_m(z_m))`` [B, K], ``z_m`` being ``z``
  without slot m (their ``sound_mean.matmul(weight) / weight.sum(1)``);
- the fused feature ``f`` [B, M d] is the present embeddings and the reconstructions side by side;
- **regularisation network** (their ``fc1`` and ``fc2`` perturbations): on a row with a reconstructed modality,
  ``f <- f + softplus(mu_1(z) + e_1)`` and, after the first layer of the classifier,
  ``h <- h + softplus(mu_2(f) + e_2)``, with ``e ~ N(0, I)`` in training and ``e = 0`` in evaluation (their
  ``meta_train`` switch of ``InferNetNew``); a complete row is not perturbed (their ``mode='two'``);
- the classifier: ``h = relu(W_1 f)`` [B, hidden], dropout, ``W_2 h`` (their ``fc1``, ``fc2``).

Training (:meth:`SMIL.loss`), their ``meta_training``:

- meta-train: the task loss of the model on the batch as the method sees it (reconstructions and random
  perturbations where a modality is missing); then one inner gradient step of the classifier's weights,
  ``theta* = theta - inner_lr grad``, kept in the graph (second order, their ``create_graph=True``);
- meta-validation, on the rows where a modality was dropped on purpose (a
  :class:`~omnifuse.fuse.base.DroppedBatch`: the trainer's shared drop, or ours, ``drop_prob``): with ``theta*``,
  the task loss of the reconstructed, deterministically perturbed path plus ``alpha`` times the mean squared
  difference of its fused feature ``f`` and ``beta`` times that of its hidden feature ``h`` from the clean path,
  which reads the real embeddings of the dropped modalities (the reconstruction target; detached, as their sound
  branch is frozen);
- the loss is the sum of both (their ``(loss_meta_train + loss_meta_val).backward()``).

Simplifications, each stated in ``docs/methods.md``: the inner step updates the classifier only (theirs also the
always-present image extractor; here the encoders are shared by every row and modality, and a second-order step
through a GRU is impractical); the meta-train and meta-validation rows come from the same batch (theirs two
loaders: image-only rows and complete rows); the clean path's classification loss, computed but left out of
their sum, is left out; a complete row trains through the meta-train loss (they pre-train on complete rows,
``train_soundmnist.py``); ``meta="joint"`` drops the inner step (first order). Defaults: :data:`DEFAULTS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from torch import nn

from omnifuse.fuse.base import Batch, DroppedBatch, FusionMethod, MethodOutput, ModelInfo, TrainerView
from omnifuse.fuse.encoders import BACKBONE, EncoderBank
from omnifuse.fuse.layers import drop_modalities, task_loss
from omnifuse.fuse.methods.common import batches_on, check_batch, check_info
from omnifuse.fuse.registry import register_method

DEFAULTS: dict[str, Any] = {
    "d": BACKBONE.d,
    "priors": 10,
    "hidden": 64,
    "dropout": 0.1,
    "meta": "maml",
    "inner_lr": 1e-3,
    "alpha": 0.01,
    "beta": 0.01,
    "drop_prob": 0.2,
    "encoder": {},
}
"""``priors``: their ``n_clusters=10``; ``hidden``: their classifier's 64 units; ``inner_lr``: their ``lr_inner``;
``alpha``, ``beta``: their ``KDLossAlignTwo(alpha=0.01, beta=0.01)``; ``drop_prob``: our own modality drop when the
trainer's shared drop is off."""

METAS = ("maml", "joint")


# --------------------------------------------------------------------------------------------------------
# pure functions (tested against hand computations)
# --------------------------------------------------------------------------------------------------------
def kmeans_priors(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """``k`` centroids [k, d] of the rows of ``x`` [n, d] by scikit-learn's ``KMeans`` (their
    ``get_sound_mean_kmean.py``); with fewer than ``k`` distinct rows, the rows repeated in turn; zeros when
    ``n = 0``."""
    n = x.shape[0]
    if n == 0:
        return np.zeros((k, x.shape[1]), dtype=np.float32)
    distinct = np.unique(x, axis=0)
    if distinct.shape[0] <= k:
        return distinct[np.arange(k) % distinct.shape[0]].astype(np.float32)
    km = KMeans(n_clusters=k, random_state=seed, n_init="auto").fit(x)
    return km.cluster_centers_.astype(np.float32)


def reconstruct(weights_logits: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """The reconstruction ``sum_k w_k c_k / sum_k w_k`` with ``w = softplus(weights_logits)`` [B, K] and priors
    ``c`` [K, d] -> [B, d] (their ``sound_mean.matmul(weight)`` divided by ``weight.sum(1)``)."""
    w = F.softplus(weights_logits)
    return (w @ priors) / w.sum(1, keepdim=True).clamp(min=1e-6)


def presence_input(E: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``z`` [B, M d + M]: the slots ``E`` [B, M, d] side by side, a missing one zero, then the presence
    indicators ``mask`` [B, M]."""
    m = mask.to(E.dtype)
    return torch.cat([(E * m.unsqueeze(-1)).reshape(E.shape[0], -1), m], dim=1)


# --------------------------------------------------------------------------------------------------------
# the method
# --------------------------------------------------------------------------------------------------------
@register_method(
    "smil",
    description="reconstructs a missing modality as a weighted mean of k-means priors, perturbs the features "
    "of incomplete rows (Bayesian regularisation), trained by one-step meta-learning",
    paper="Ma, Ren, Zhao, Tulyakov, Wu, Peng. SMIL: multimodal learning with severely missing modality. AAAI 2021",
    defaults=DEFAULTS,
)
class SMIL(FusionMethod):
    """SMIL on the shared backbone (module docstring). ``forward`` returns ``logits`` [B, C] and in ``extra``:
    ``embeddings`` ``u`` [B, M, d] (the encoder outputs; in training on a
    :class:`~omnifuse.fuse.base.DroppedBatch`, those of its ``source``, so a dropped slot holds its real
    embedding), ``reconstructed`` ``u^`` [B, M, d] (every slot's reconstruction), ``fused`` ``f`` [B, M d] (before
    perturbation), ``z`` [B, M d + M], ``incomplete`` [B] (rows with a reconstructed slot)."""

    ignores_masked_inputs = True
    priors: torch.Tensor  # [M, K, d] the K-means centroids of each modality's embeddings

    def __init__(
        self,
        info: ModelInfo,
        d: int = BACKBONE.d,
        priors: int = 10,
        hidden: int = 64,
        dropout: float = 0.1,
        meta: str = "maml",
        inner_lr: float = 1e-3,
        alpha: float = 0.01,
        beta: float = 0.01,
        drop_prob: float = 0.2,
        encoder: Mapping[str, Any] | None = None,
    ) -> None:
        check_info(info)
        super().__init__(info)
        if meta not in METAS:
            raise ValueError(f"smil meta must be one of {METAS}, got {meta!r}")
        if priors < 1 or hidden < 1:
            raise ValueError("smil priors and hidden must be >= 1")
        if not 0.0 <= drop_prob <= 1.0:
            raise ValueError(f"smil drop_prob must be in [0, 1], got {drop_prob}")
        m, c = info.num_modalities, info.num_outputs
        self.d, self.k, self.meta = int(d), int(priors), meta
        self.inner_lr, self.alpha, self.beta, self.drop_prob = float(inner_lr), float(alpha), float(beta), drop_prob
        width = m * self.d
        self.enc = EncoderBank(info, self.d, encoder)
        self.recon = nn.ModuleList([nn.Linear(width + m, self.k) for _ in range(m)])
        self.noise1 = nn.Linear(width + m, width)
        self.noise2 = nn.Linear(width, hidden)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, c)
        self.drop = nn.Dropout(dropout)
        self.register_buffer("priors", torch.zeros(m, self.k, self.d))

    # --- priors ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def fit_priors(self, batches: list[Batch], seed: int = 0) -> None:
        """K-means priors of each modality from the embeddings of ``batches``' rows holding it (eval mode)."""
        hs, ms = [], []
        with self.evaluating():
            for b in batches_on(batches, self.priors.device):
                hs.append(self.enc(b).float().cpu())
                ms.append(b.mask.to(torch.bool).cpu())
        if not hs:
            return
        E, mask = torch.cat(hs), torch.cat(ms)
        for j in range(self.info.num_modalities):
            c = kmeans_priors(E[mask[:, j], j].numpy(), self.k, seed)
            self.priors[j] = torch.as_tensor(c, dtype=self.priors.dtype, device=self.priors.device)

    def _prior_batches(self, trainer: TrainerView) -> list[Batch]:
        return trainer.mining_batches() or trainer.batches(trainer.train_rows[:512])

    def on_train_start(self, trainer: TrainerView) -> None:
        self.fit_priors(self._prior_batches(trainer), seed=trainer.seed)

    def on_epoch_end(self, trainer: TrainerView, epoch: int) -> None:
        self.fit_priors(self._prior_batches(trainer), seed=trainer.seed + epoch + 1)

    # --- drops -------------------------------------------------------------------------------------------
    def train_drop(self, batch: Batch, generator: torch.Generator | None = None) -> Batch:
        """The trainer's shared drop (a :class:`DroppedBatch`) is used as it is; otherwise each present modality
        is dropped with probability ``drop_prob`` (never all of a row's), giving meta-validation rows."""
        if isinstance(batch, DroppedBatch) or self.drop_prob <= 0:
            return batch
        return DroppedBatch.drop(batch, drop_modalities(batch.mask, self.drop_prob, generator))

    # --- forward -----------------------------------------------------------------------------------------
    def reconstruct_all(self, E: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``u^`` [B, M, d]: every slot's reconstruction from the other present slots (``z_m``)."""
        m = self.info.num_modalities
        out = []
        for j in range(m):
            others = mask.clone()
            others[:, j] = False
            out.append(reconstruct(self.recon[j](presence_input(E, others)), self.priors[j].to(E.dtype)))
        return torch.stack(out, dim=1)

    def classify(
        self,
        params: list[torch.Tensor],
        f: torch.Tensor,
        z: torch.Tensor,
        incomplete: torch.Tensor,
        noise: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The perturbed classifier with weights ``params`` (``fc1.weight, fc1.bias, fc2.weight, fc2.bias``):
        ``f`` [B, M d] fused feature, ``z`` [B, M d + M], ``incomplete`` [B] the rows perturbed; ``noise``: draw
        ``e ~ N(0, I)`` (else 0). Returns (logits [B, C], perturbed ``f`` [B, M d], hidden ``h`` [B, hidden])."""
        w1, b1, w2, b2 = params
        inc = incomplete.to(f.dtype).unsqueeze(1)
        mu1 = self.noise1(z)
        f = f + inc * F.softplus(mu1 + torch.randn_like(mu1) if noise else mu1)
        h = F.relu(F.linear(f, w1, b1))
        mu2 = self.noise2(f)
        h = h + inc * F.softplus(mu2 + torch.randn_like(mu2) if noise else mu2)
        return F.linear(self.drop(h), w2, b2), f, h

    def head_params(self) -> list[torch.Tensor]:
        return [self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias]

    def forward(self, batch: Batch) -> MethodOutput:
        check_batch(self.info, batch)
        mask = batch.mask.to(torch.bool)
        b = mask.shape[0]
        source = batch.source if self.training and isinstance(batch, DroppedBatch) else batch
        E = self.enc(source)  # a present slot's embedding is the same from the batch or its source
        U = self.reconstruct_all(E, mask)
        X = torch.where(mask.unsqueeze(-1), E, U)  # a missing slot holds its reconstruction, never its input
        f = X.reshape(b, -1)
        z = presence_input(E, mask)
        incomplete = ~mask.all(1)
        logits, _, _ = self.classify(self.head_params(), f, z, incomplete, noise=self.training)
        return MethodOutput(
            logits=logits,
            extra={"embeddings": E, "reconstructed": U, "fused": f, "z": z, "incomplete": incomplete},
        )

    # --- losses ------------------------------------------------------------------------------------------
    def clean_fused(self, batch: DroppedBatch, out: MethodOutput) -> torch.Tensor:
        """The clean path's fused feature [B, M d]: the real embeddings where ``batch.source`` holds a modality
        (a dropped one detached: the reconstruction target), reconstructions where it lacks one."""
        E = out.extra["embeddings"]
        dropped = batch.dropped.to(torch.bool).unsqueeze(-1)
        src = batch.source.mask.to(torch.bool)
        real = torch.where(dropped, E.detach(), E)
        clean = torch.where(src.unsqueeze(-1), real, self.reconstruct_all(real, src))
        return clean.reshape(E.shape[0], -1)

    def loss(self, batch: Batch, out: MethodOutput) -> tuple[torch.Tensor, dict[str, float]]:
        kind, y, ym = self.info.task_kind, batch.y, batch.y_mask
        train = task_loss(out.logits, y, kind, ym)
        terms = {"meta_train": float(train.detach())}
        val_rows = (
            batch.dropped.any(1) & ym.to(torch.bool)
            if isinstance(batch, DroppedBatch)
            else torch.zeros_like(ym, dtype=torch.bool)
        )
        if not self.training or not torch.is_grad_enabled() or not bool(val_rows.any()):
            return train, terms
        assert isinstance(batch, DroppedBatch)
        params = self.head_params()
        if self.meta == "maml":
            grads = torch.autograd.grad(train, params, create_graph=True, allow_unused=True)
            params = [p if g is None else p - self.inner_lr * g for p, g in zip(params, grads, strict=True)]
        ex = out.extra
        r = val_rows
        noised_logits, f_noised, h_noised = self.classify(
            params, ex["fused"][r], ex["z"][r], ex["incomplete"][r], noise=False
        )
        f_clean = self.clean_fused(batch, out)[r]
        zeros = torch.zeros(int(r.sum()), dtype=torch.bool, device=r.device)
        _, _, h_clean = self.classify(params, f_clean, ex["z"][r], zeros, noise=False)
        val_task = task_loss(noised_logits, y[r], kind)
        align_f = F.mse_loss(f_noised, f_clean)
        align_h = F.mse_loss(h_noised, h_clean)
        val = val_task + self.alpha * align_f + self.beta * align_h
        terms.update(
            meta_val=float(val_task.detach()), align_f=float(align_f.detach()), align_h=float(align_h.detach())
        )
        return train + val, terms
