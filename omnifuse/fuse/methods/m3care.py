"""M3Care: imputation of missing modalities in the latent space from similar patients (Zhang, Gao, Zhu, Wang,
Ma, "M3Care: learning with missing modalities in multimodal healthcare data", KDD 2022), on cached features,
for any number of modalities M >= 1.

The authors' code is github choczhang/M3Care, the notebooks ``OV/M3Care.ipynb`` and ``ODIR/M3Care.ipynb``
(``M3Care.__init__``, ``M3Care.forward``, ``guassian_kernel``, ``euclidean_dist``, ``GraphConvolution``, the
training loop with ``model_loss = BCE_Loss + sum_of_diff * 1e-8``). Their model has six clinical modalities
behind modality-specific encoders; ours has M slots behind the shared backbone.

Per modality m (B rows, d the backbone's width; ``v_m`` [B, d] the encoder outputs, a missing slot zero):

1. **patient similarity** (their ``guassian_kernel`` on ``self.bn(self.simiProj[m](h))`` and on
   ``self.bn(h)``): a multi-bandwidth Gaussian kernel of squared Euclidean distances,
   ``k(D) = mean_{i < kernels} exp(-D / (b mul^(i - kernels // 2)))``, with the bandwidth ``b`` the mean squared
   distance between distinct patients (detached), on a learned projection (Linear-SELU-Linear-SELU-Linear) and
   on the embedding itself, mixed by a learned ``sigma(eps_m)`` (init eps = -0.3):
   ``K_m = (1 - sigma(eps_m)) k(proj) + sigma(eps_m) k(raw)`` [B, B], defined where both patients hold m;
2. the similarity of two patients is the mean of ``K_m`` over the modalities both hold, then **filtered** by a
   learned threshold: ``S = relu(S - sigma(theta)) + 1[S > sigma(theta)] sigma(theta).detach()`` (their
   ``self.threshold``, init 0): dissimilar patients get 0, similar ones keep their similarity;
3. **aggregation of the neighbours' embeddings** (their two ``GraphConvolution`` layers with SELU): on the graph
   ``A_m = S`` restricted to neighbours that hold m, ``x <- SELU(A_m x W + b)`` twice, from ``x = v_m``: ``h~_m``;
4. **adaptive combination** (their ``weight1``/``weight2``): a present modality keeps
   ``a h~_m + (1 - a) v_m`` with ``a = sigma(w1 . h~_m) / (sigma(w1 . h~_m) + sigma(w2 . v_m))``; a missing one
   takes the imputed ``h~_m``.

Then the M embeddings (plus a learned modality-type embedding, their ``token_type_embeddings``) pass a
transformer encoder (their ``MM_model`` and ``MM_model2``), are concatenated [B, M d] and read by
Linear(M d, 2 d)-SELU-Dropout-Linear (their ``proj1`` and ``out_layer``). Loss: the task loss plus
``lambda_stab * sum_m | ||proj_m(v_m)||_F - ||v_m||_F |`` (their ``sum_of_diff`` times 1e-8, the stabilisation
that keeps the learned projection at the scale of the embedding it projects).

Our choices (each stated in ``docs/methods.md``):

- the aggregation is row-normalised (a similarity-weighted mean of the neighbours; their sum grows with the batch
  size) and a neighbour must hold the modality being imputed. Their ``similar_score * mask2`` with
  ``mask2 = mask mask^T`` also requires the imputed patient to hold it, which leaves a missing modality's row of
  the graph empty (its "imputation" is then the GCN's bias); we keep the imputed patient's own row;
- the normalisation before the kernel is a LayerNorm without parameters (theirs one BatchNorm1d shared by all
  modalities): batch statistics would make a patient's similarity depend on the batch, and fail on a batch with
  one patient holding a modality; the kernels use the present patients only;
- neighbours: in training the other patients of the batch (theirs, in training and evaluation); in evaluation a
  fixed **bank** of training patients (the trainer's mining rows, at most ``bank``, encoded at the end of every
  epoch and kept in the state), so a prediction never depends on the other test patients of its batch. The
  bandwidth in evaluation is the bank's;
- one transformer stack of ``layers`` layers (theirs two single-layer encoders, the second after adding their
  always-present "values" token); the transformer reads every slot, since a missing one holds its imputation.

Defaults: :data:`DEFAULTS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from omnifuse.fuse.base import Batch, FusionMethod, MethodOutput, ModelInfo, TrainerView
from omnifuse.fuse.encoders import BACKBONE, EncoderBank
from omnifuse.fuse.layers import task_loss
from omnifuse.fuse.methods.common import batches_on, check_batch, check_info
from omnifuse.fuse.registry import register_method

DEFAULTS: dict[str, Any] = {
    "d": BACKBONE.d,
    "heads": 4,
    "layers": 2,
    "ff": None,
    "hidden": None,
    "dropout": 0.1,
    "kernels": 3,
    "kernel_mul": 2.0,
    "gcn_layers": 2,
    "lambda_stab": 1e-8,
    "bank": 512,
    "encoder": {},
}
"""``ff``: the transformer's feed-forward width (None: 4 d, theirs); ``hidden``: the output projection's width
(None: 2 d, their ``proj1``); ``kernels``, ``kernel_mul``: their ``guassian_kernel(kernel_mul=2.0,
kernel_num=3)``; ``lambda_stab``: their 1e-8; ``bank``: the evaluation neighbours kept (training rows)."""


# --------------------------------------------------------------------------------------------------------
# pure functions (tested against hand computations)
# --------------------------------------------------------------------------------------------------------
def sq_dists(x: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances [N, N] between the rows of ``x`` [N, d] (their ``euclidean_dist``)."""
    sq = x.pow(2).sum(1)
    return (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * x @ x.T).clamp(min=0)


def mean_pair_distance(dist: torch.Tensor, valid: torch.Tensor, fallback: float) -> torch.Tensor:
    """The mean of ``dist`` [N, N] over the pairs ``valid`` [N, N] with i != j (detached; their bandwidth
    ``sum(L2.data) / (n^2 - n)``); ``fallback`` when no pair is valid."""
    off = valid & ~torch.eye(dist.shape[0], dtype=torch.bool, device=dist.device)
    n = off.sum()
    if int(n) == 0:
        return torch.tensor(fallback, dtype=dist.dtype, device=dist.device)
    return (dist.detach() * off.to(dist.dtype)).sum() / n.to(dist.dtype)


def gaussian_kernel(dist: torch.Tensor, bandwidth: torch.Tensor, kernels: int = 3, mul: float = 2.0) -> torch.Tensor:
    """``mean_{i < kernels} exp(-dist / (bandwidth * mul^(i - kernels // 2)))`` (their ``guassian_kernel``)."""
    base = bandwidth / mul ** (kernels // 2)
    out = torch.exp(-dist / base)
    for i in range(1, kernels):
        out = out + torch.exp(-dist / (base * mul**i))
    return out / kernels


def combine_similarity(kernels: list[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
    """The patient similarity [N, N]: the mean over the modalities both patients hold of the per-modality
    kernels ``kernels[m]`` [N, N] (``present`` [N, M]); 0 for two patients without a common modality."""
    num = torch.zeros_like(kernels[0])
    den = torch.zeros_like(kernels[0])
    for j, k in enumerate(kernels):
        both = (present[:, j : j + 1] & present[:, j].unsqueeze(0)).to(k.dtype)
        num = num + k * both
        den = den + both
    return num / den.clamp(min=1)


def filter_similarity(sim: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """``relu(sim - t) + 1[sim > t] t.detach()`` with ``t = sigmoid(threshold)``: similarities at or below the
    threshold become 0, those above keep their value (their ``similar_score`` filtering)."""
    t = torch.sigmoid(threshold)
    return F.relu(sim - t) + (sim > t).to(sim.dtype) * t.detach()


def neighbour_graph(sim: torch.Tensor, holds: torch.Tensor) -> torch.Tensor:
    """Row-normalised aggregation weights [N, N] for one modality: ``sim`` [N, N] restricted to the neighbours
    (columns) that hold it (``holds`` [N]), each row divided by its sum (a row without neighbour stays 0)."""
    a = sim * holds.to(sim.dtype).unsqueeze(0)
    return a / a.sum(1, keepdim=True).clamp(min=1e-12)


# --------------------------------------------------------------------------------------------------------
# the method
# --------------------------------------------------------------------------------------------------------
@register_method(
    "m3care",
    description="imputes a missing modality's embedding from similar patients (learned kernel similarity, "
    "threshold, graph aggregation), then a transformer over the modality embeddings",
    paper="Zhang, Gao, Zhu, Wang, Ma. M3Care: learning with missing modalities in multimodal healthcare data. KDD 2022",
    defaults=DEFAULTS,
)
class M3Care(FusionMethod):
    """M3Care on the shared backbone (module docstring). ``forward`` returns ``logits`` [B, C] and in ``extra``:
    ``similarity`` [B, N] (each row's filtered similarity to the N graph nodes: the batch in training, the bank
    then the batch in evaluation), ``imputed`` [B, M, d] (``h~_m``), ``embeddings`` [B, M, d] (after the
    combination: what the transformer reads) and ``stab`` (the norm-difference regulariser, a scalar)."""

    ignores_masked_inputs = True
    bank_h: torch.Tensor  # [bank, M, d] the bank's encoder outputs (zero where missing)
    bank_mask: torch.Tensor  # [bank, M] which bank slots hold a modality (an unused row holds none)

    def __init__(
        self,
        info: ModelInfo,
        d: int = BACKBONE.d,
        heads: int = 4,
        layers: int = 2,
        ff: int | None = None,
        hidden: int | None = None,
        dropout: float = 0.1,
        kernels: int = 3,
        kernel_mul: float = 2.0,
        gcn_layers: int = 2,
        lambda_stab: float = 1e-8,
        bank: int = 512,
        encoder: Mapping[str, Any] | None = None,
    ) -> None:
        check_info(info)
        super().__init__(info)
        if d % heads != 0:
            raise ValueError(f"m3care: d={d} must be divisible by heads={heads}")
        if kernels < 1 or gcn_layers < 1 or layers < 1:
            raise ValueError("m3care kernels, gcn_layers and layers must be >= 1")
        if kernel_mul <= 0 or bank < 0:
            raise ValueError("m3care kernel_mul must be positive and bank >= 0")
        m, c = info.num_modalities, info.num_outputs
        self.d, self.kernels, self.kernel_mul = int(d), int(kernels), float(kernel_mul)
        self.lambda_stab = float(lambda_stab)
        d = self.d
        self.enc = EncoderBank(info, d, encoder)
        self.sim_proj = nn.ModuleList(
            [nn.Sequential(nn.Linear(d, d), nn.SELU(), nn.Linear(d, d), nn.SELU(), nn.Linear(d, d)) for _ in range(m)]
        )
        self.norm = nn.LayerNorm(d, elementwise_affine=False)
        self.eps = nn.Parameter(torch.full((m,), -0.3))
        self.threshold = nn.Parameter(torch.zeros(1))
        self.gcn = nn.ModuleList([nn.ModuleList([nn.Linear(d, d) for _ in range(gcn_layers)]) for _ in range(m)])
        self.w_imputed = nn.ModuleList([nn.Linear(d, 1) for _ in range(m)])
        self.w_own = nn.ModuleList([nn.Linear(d, 1) for _ in range(m)])
        self.type_emb = nn.Parameter(torch.randn(m, d) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d, heads, int(ff) if ff else 4 * d, dropout, batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        width = int(hidden) if hidden else 2 * d
        self.out = nn.Sequential(nn.Linear(m * d, width), nn.SELU(), nn.Dropout(dropout), nn.Linear(width, c))
        self.bank_size = int(bank)
        self.register_buffer("bank_h", torch.zeros(self.bank_size, m, d))
        self.register_buffer("bank_mask", torch.zeros(self.bank_size, m, dtype=torch.bool))

    # --- the bank of evaluation neighbours -----------------------------------------------------------------
    @torch.no_grad()
    def fill_bank(self, batches: list[Batch]) -> None:
        """Encode ``batches`` (training rows, eval mode) into the bank: the first ``bank`` rows are kept."""
        hs, ms = [], []
        with self.evaluating():
            for b in batches_on(batches, self.bank_h.device):
                mask = b.mask.to(torch.bool)
                E = self.enc(b)
                hs.append(torch.where(mask.unsqueeze(-1), E, torch.zeros_like(E)))
                ms.append(mask)
        self.bank_h.zero_()
        self.bank_mask.zero_()
        if not hs or self.bank_size == 0:
            return
        h, msk = torch.cat(hs)[: self.bank_size], torch.cat(ms)[: self.bank_size]
        self.bank_h[: h.shape[0]] = h.to(self.bank_h.dtype)
        self.bank_mask[: h.shape[0]] = msk

    def on_epoch_end(self, trainer: TrainerView, epoch: int) -> None:
        """Refresh the bank with the current encoders before validation (the trainer's mining rows; the first
        ``bank`` training rows when it has none)."""
        batches = trainer.mining_batches() or trainer.batches(trainer.train_rows[: self.bank_size])
        self.fill_bank(batches)

    # --- imputation ------------------------------------------------------------------------------------------
    def _graph(
        self, H: torch.Tensor, present: torch.Tensor, allowed: torch.Tensor, bw_rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The filtered similarity [N, N] of the nodes ``H`` [N, M, d] (presence [N, M]); ``allowed`` [N, N] the
        edges that may exist; ``bw_rows`` [N] the nodes whose pairs set the bandwidth. Also returns the
        stabilisation term (norm differences of the present nodes)."""
        kernels = []
        stab = H.sum() * 0.0
        fallback = 2.0 * self.d  # the expected squared distance of two independent normalised vectors
        for j in range(self.info.num_modalities):
            here = present[:, j]
            proj = self.sim_proj[j](H[:, j])
            if bool(here.any()):
                stab = stab + (proj[here].norm() - H[here, j].norm()).abs()
            dp, dr = sq_dists(self.norm(proj)), sq_dists(self.norm(H[:, j]))
            valid = (here & bw_rows).unsqueeze(1) & (here & bw_rows).unsqueeze(0)
            kp = gaussian_kernel(dp, mean_pair_distance(dp, valid, fallback), self.kernels, self.kernel_mul)
            kr = gaussian_kernel(dr, mean_pair_distance(dr, valid, fallback), self.kernels, self.kernel_mul)
            mix = torch.sigmoid(self.eps[j])
            kernels.append((1 - mix) * kp + mix * kr)
        sim = combine_similarity(kernels, present) * allowed.to(H.dtype)
        return filter_similarity(sim, self.threshold), stab

    def impute(self, H: torch.Tensor, present: torch.Tensor, sim: torch.Tensor) -> torch.Tensor:
        """``h~`` [N, M, d]: per modality, the GCN over the neighbours holding it (weights
        :func:`neighbour_graph`), from the nodes' embeddings ``H`` [N, M, d] (zero where missing)."""
        out = []
        for j in range(self.info.num_modalities):
            a = neighbour_graph(sim, present[:, j])
            x = H[:, j]
            layers = self.gcn[j]
            assert isinstance(layers, nn.ModuleList)
            for lin in layers:
                x = F.selu(lin(a @ x))
            out.append(x)
        return torch.stack(out, dim=1)

    def forward(self, batch: Batch) -> MethodOutput:
        check_batch(self.info, batch)
        mask = batch.mask.to(torch.bool)
        b, m = mask.shape
        E = self.enc(batch)
        H = torch.where(mask.unsqueeze(-1), E, torch.zeros_like(E))  # a missing slot is never read
        if self.training:  # neighbours: the batch (theirs)
            nodes, present = H, mask
            allowed = torch.ones(b, b, dtype=torch.bool, device=mask.device)
            bw_rows = torch.ones(b, dtype=torch.bool, device=mask.device)
            first = 0
        else:  # neighbours: the bank of training patients, never the other rows of the batch
            k = self.bank_size
            nodes = torch.cat([self.bank_h.to(H.dtype), H], dim=0)
            present = torch.cat([self.bank_mask, mask], dim=0)
            n = k + b
            allowed = torch.eye(n, dtype=torch.bool, device=mask.device)
            allowed[:, :k] = True  # every node sees the bank; a batch row sees itself, no other batch row
            bw_rows = torch.zeros(n, dtype=torch.bool, device=mask.device)
            bw_rows[:k] = True
            first = k
        sim, stab = self._graph(nodes, present, allowed, bw_rows)
        imputed = self.impute(nodes, present, sim)[first:]  # [B, M, d]
        w1 = torch.sigmoid(torch.stack([self.w_imputed[j](imputed[:, j]) for j in range(m)], dim=1))
        w2 = torch.sigmoid(torch.stack([self.w_own[j](H[:, j]) for j in range(m)], dim=1))
        a = w1 / (w1 + w2)
        final = torch.where(mask.unsqueeze(-1), a * imputed + (1 - a) * H, imputed)
        z = self.transformer(final + self.type_emb.unsqueeze(0))
        logits = self.out(z.reshape(b, -1))
        return MethodOutput(
            logits=logits,
            extra={"similarity": sim[first:], "imputed": imputed, "embeddings": final, "stab": stab},
        )

    def loss(self, batch: Batch, out: MethodOutput) -> tuple[torch.Tensor, dict[str, float]]:
        task = task_loss(out.logits, batch.y, self.info.task_kind, batch.y_mask)
        stab = out.extra["stab"]
        return task + self.lambda_stab * stab, {"task": float(task.detach()), "stab": float(stab.detach())}
