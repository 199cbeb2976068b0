"""M3Care: imputation of missing modalities in the latent space from similar patients (Zhang, Gao, Zhu, Wang,
Ma, "M3Care: learning with missing modalities in multimodal healthcare data", KDD 2022), on cached features,
for any number of modalities M >= 1.

The authors' code is github choczhang/M3Care, the notebooks ``OV/M3Care.ipynb`` and ``ODIR/M3Care.ipynb``
(``M3Care.__init__``, ``M3Care.forward``, ``guassian_kernel``, ``euclidean_dist``, ``GraphConvolution``, the
training loop with ``model_loss = BCE_Loss + sum_of_diff * 1e-8``). Their model has six clinical modalities
behind modality-specific encoders; ours has M slots behind the shared backbone.

Equation numbers: none. The paper's text could not be read here (``docs/methods.md``, "Equation numbers"), so
the parts carry the paper's names and their code's definitions, and no equation number is cited.

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

Computation (the same numbers, tested): in training the M modalities run as batched products over [M, N, N]
(:meth:`M3Care._graph`, :meth:`M3Care.impute`); in evaluation the bank-and-batch graph is built by blocks
(:meth:`M3Care._bank_graph`), never as the (bank + B)^2 matrix.

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


def block_sq_dists(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The blocks of :func:`sq_dists` of ``x`` [N, d] that evaluation needs, the first ``k`` rows being the bank
    and the other ``b = N - k`` the batch: bank-bank [k, k], batch-bank [b, k] and each batch row's distance to
    itself [b] (the same formula, so 0 up to rounding)."""
    sq = x.pow(2).sum(1)
    xk, xq, sk, sq_q = x[:k], x[k:], sq[:k], sq[k:]
    kk = (sk.unsqueeze(1) + sk.unsqueeze(0) - 2 * xk @ xk.T).clamp(min=0)
    qk = (sq_q.unsqueeze(1) + sk.unsqueeze(0) - 2 * xq @ xk.T).clamp(min=0)
    qq = (sq_q + sq_q - 2 * (xq * xq).sum(1)).clamp(min=0)
    return kk, qk, qq


def combine_similarity(
    kernels: list[torch.Tensor], present: torch.Tensor, cols: torch.Tensor | None = None
) -> torch.Tensor:
    """The patient similarity [N, N]: the mean over the modalities both patients hold of the per-modality
    kernels ``kernels[m]`` [N, N] (``present`` [N, M]); 0 for two patients without a common modality. With
    ``cols`` [N', M] the kernels are [N, N'] between the rows ``present`` and the columns ``cols``."""
    cols = present if cols is None else cols
    num = torch.zeros_like(kernels[0])
    den = torch.zeros_like(kernels[0])
    for j, k in enumerate(kernels):
        both = (present[:, j : j + 1] & cols[:, j].unsqueeze(0)).to(k.dtype)
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
    @staticmethod
    def _stacked(linears: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The weights [M, in, out] (transposed) and biases [M, 1, out] of M ``nn.Linear`` layers, for one
        batched product ``baddbmm(b, x [M, N, in], W)`` equal to applying each layer to its own slice."""
        w = torch.stack([lin.weight for lin in linears]).transpose(1, 2)
        return w, torch.stack([lin.bias for lin in linears]).unsqueeze(1)

    def _graph(
        self, H: torch.Tensor, present: torch.Tensor, allowed: torch.Tensor, bw_rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The filtered similarity [N, N] of the nodes ``H`` [N, M, d] (presence [N, M]); ``allowed`` [N, N] the
        edges that may exist; ``bw_rows`` [N] the nodes whose pairs set the bandwidth. Also returns the
        stabilisation term (norm differences of the present nodes).

        All M modalities at once ([M, N, N] kernels, the projections as batched products); per modality the
        same numbers as :func:`sq_dists`, :func:`mean_pair_distance`, :func:`gaussian_kernel` and
        :func:`combine_similarity` (tested against that loop)."""
        m, n = self.info.num_modalities, H.shape[0]
        fallback = 2.0 * self.d  # the expected squared distance of two independent normalised vectors
        X = H.transpose(0, 1)  # [M, N, d]
        proj = X
        proj_layers = [seq for seq in self.sim_proj if isinstance(seq, nn.Sequential)]
        for i in (0, 2, 4):  # the sim_proj stacks: Linear, SELU, Linear, SELU, Linear
            w, b = self._stacked([proj_layers[j][i] for j in range(m)])
            proj = torch.baddbmm(b, proj, w)
            proj = F.selu(proj) if i < 4 else proj
        stab = H.sum() * 0.0
        for j in range(m):
            here = present[:, j]
            if bool(here.any()):
                stab = stab + (proj[j][here].norm() - H[here, j].norm()).abs()
        here = present.T  # [M, N]
        hb = here & bw_rows.unsqueeze(0)
        off = hb.unsqueeze(2) & hb.unsqueeze(1) & ~torch.eye(n, dtype=torch.bool, device=H.device)
        count = off.sum((1, 2))  # [M] the pairs setting each modality's bandwidth
        mix = torch.sigmoid(self.eps).view(m, 1, 1)
        kern = []
        for x in (self.norm(proj), self.norm(X)):
            sq = x.pow(2).sum(-1)  # [M, N]
            dist = (sq.unsqueeze(2) + sq.unsqueeze(1) - 2 * x @ x.transpose(1, 2)).clamp(min=0)  # [M, N, N]
            mean = (dist.detach() * off.to(dist.dtype)).sum((1, 2)) / count.clamp(min=1).to(dist.dtype)
            bw = torch.where(count > 0, mean, torch.full_like(mean, fallback)).view(m, 1, 1)
            kern.append(gaussian_kernel(dist, bw, self.kernels, self.kernel_mul))
        K = (1 - mix) * kern[0] + mix * kern[1]  # [M, N, N]
        both = (here.unsqueeze(2) & here.unsqueeze(1)).to(K.dtype)
        sim = (K * both).sum(0) / both.sum(0).clamp(min=1)
        return filter_similarity(sim * allowed.to(H.dtype), self.threshold), stab

    def impute(self, H: torch.Tensor, present: torch.Tensor, sim: torch.Tensor) -> torch.Tensor:
        """``h~`` [N, M, d]: per modality, the GCN over the neighbours holding it (weights
        :func:`neighbour_graph`), from the nodes' embeddings ``H`` [N, M, d] (zero where missing); all
        modalities at once (batched products with each modality's own GCN weights)."""
        m = self.info.num_modalities
        a = sim.unsqueeze(0) * present.T.to(sim.dtype).unsqueeze(1)  # [M, N, N]: neighbours holding m
        a = a / a.sum(2, keepdim=True).clamp(min=1e-12)
        x = H.transpose(0, 1)  # [M, N, d]
        gcn = [layers for layers in self.gcn if isinstance(layers, nn.ModuleList)]
        for i in range(len(gcn[0])):
            w, b = self._stacked([gcn[j][i] for j in range(m)])
            x = F.selu(torch.baddbmm(b, torch.bmm(a, x), w))
        return x.transpose(0, 1)

    def _bank_graph(self, H: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Evaluation: the batch ``H`` [B, M, d] (presence ``mask`` [B, M]) imputed from the bank. Returns (each
        row's filtered similarity to the bank then the batch [B, bank + B], ``h~`` [B, M, d], the stabilisation
        term).

        The same numbers as :meth:`_graph` then :meth:`impute` on the graph of the bank and the batch (every node
        sees the bank, a batch row also itself, no other batch row; the bandwidth from the bank's pairs), computed
        by blocks: bank-bank [k, k], batch-bank [B, k] and the batch rows' own entries [B]. The batch-batch block
        is zero off its diagonal and the bank never sees the batch, so the (k + B)^2 graph is not built and only
        the batch rows' imputations are computed (the bank rows' GCN states up to the last layer)."""
        k = self.bank_size
        nodes = torch.cat([self.bank_h.to(H.dtype), H], dim=0)
        present = torch.cat([self.bank_mask, mask], dim=0)
        bank_present, fallback = self.bank_mask, 2.0 * self.d
        stab = nodes.sum() * 0.0
        kk, qk, qq = [], [], []
        for j in range(self.info.num_modalities):
            here = present[:, j]
            proj = self.sim_proj[j](nodes[:, j])
            if bool(here.any()):
                stab = stab + (proj[here].norm() - nodes[here, j].norm()).abs()
            valid = bank_present[:, j].unsqueeze(1) & bank_present[:, j].unsqueeze(0)
            blocks = []
            for x in (self.norm(proj), self.norm(nodes[:, j])):
                d_kk, d_qk, d_qq = block_sq_dists(x, k)
                bw = mean_pair_distance(d_kk, valid, fallback)
                blocks.append([gaussian_kernel(dd, bw, self.kernels, self.kernel_mul) for dd in (d_kk, d_qk, d_qq)])
            mix = torch.sigmoid(self.eps[j])
            kk.append((1 - mix) * blocks[0][0] + mix * blocks[1][0])
            qk.append((1 - mix) * blocks[0][1] + mix * blocks[1][1])
            qq.append((1 - mix) * blocks[0][2] + mix * blocks[1][2])
        s_kk = filter_similarity(combine_similarity(kk, bank_present), self.threshold)
        s_qk = filter_similarity(combine_similarity(qk, mask, bank_present), self.threshold)
        own = mask.to(H.dtype)  # a batch row with itself: the modalities it holds
        num = sum((q * own[:, j] for j, q in enumerate(qq)), start=torch.zeros_like(qq[0]))
        s_qq = filter_similarity(num / own.sum(1).clamp(min=1), self.threshold)  # [B]
        out = []
        for j in range(self.info.num_modalities):
            a_kk = neighbour_graph(s_kk, bank_present[:, j])
            a_qk = s_qk * bank_present[:, j].to(H.dtype).unsqueeze(0)
            a_qq = s_qq * own[:, j]
            norm = (a_qk.sum(1) + a_qq).clamp(min=1e-12)
            a_qk, a_qq = a_qk / norm.unsqueeze(1), a_qq / norm
            x_k, x_q = nodes[:k, j], H[:, j]
            layers = self.gcn[j]
            assert isinstance(layers, nn.ModuleList)
            for i, lin in enumerate(layers):
                new_q = F.selu(lin(a_qk @ x_k + a_qq.unsqueeze(1) * x_q))
                if i < len(layers) - 1:
                    x_k = F.selu(lin(a_kk @ x_k))
                x_q = new_q
            out.append(x_q)
        sim = torch.cat([s_qk, torch.diag_embed(s_qq)], dim=1)
        return sim, torch.stack(out, dim=1), stab

    def forward(self, batch: Batch) -> MethodOutput:
        check_batch(self.info, batch)
        mask = batch.mask.to(torch.bool)
        b, m = mask.shape
        E = self.enc(batch)
        H = torch.where(mask.unsqueeze(-1), E, torch.zeros_like(E))  # a missing slot is never read
        if self.training:  # neighbours: the batch (theirs)
            allowed = torch.ones(b, b, dtype=torch.bool, device=mask.device)
            bw_rows = torch.ones(b, dtype=torch.bool, device=mask.device)
            sim, stab = self._graph(H, mask, allowed, bw_rows)
            imputed = self.impute(H, mask, sim)  # [B, M, d]
        else:  # neighbours: the bank of training patients, never the other rows of the batch
            sim, imputed, stab = self._bank_graph(H, mask)
        w1 = torch.sigmoid(torch.stack([self.w_imputed[j](imputed[:, j]) for j in range(m)], dim=1))
        w2 = torch.sigmoid(torch.stack([self.w_own[j](H[:, j]) for j in range(m)], dim=1))
        a = w1 / (w1 + w2)
        final = torch.where(mask.unsqueeze(-1), a * imputed + (1 - a) * H, imputed)
        z = self.transformer(final + self.type_emb.unsqueeze(0))
        logits = self.out(z.reshape(b, -1))
        return MethodOutput(
            logits=logits,
            extra={"similarity": sim, "imputed": imputed, "embeddings": final, "stab": stab},
        )

    def loss(self, batch: Batch, out: MethodOutput) -> tuple[torch.Tensor, dict[str, float]]:
        task = task_loss(out.logits, batch.y, self.info.task_kind, batch.y_mask)
        stab = out.extra["stab"]
        return task + self.lambda_stab * stab, {"task": float(task.detach()), "stab": float(stab.detach())}
