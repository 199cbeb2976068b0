"""Flex-MoE (Yun, Choi, Peng, Wu, Bao, Zhang, Xin, Long, Chen, "Flex-MoE: modeling arbitrary modality
combination via the flexible mixture-of-experts", NeurIPS 2024), for any number of modalities, on the shared
backbone. The authors' code is github UNITES-Lab/flex-moe (``models.py``, ``moe_module.py``, ``main.py``,
``data.py``); the facts below are read from it, the code is ours. Equation numbers: none. The paper's text
could not be read here (``docs/methods.md``, "Equation numbers"); its parts are cited by the panels of its
Fig. 3 (the figure's caption as quoted on liner.com's review page; the figure is ``assets/Model.png`` in their
repository), the definitions are their code's.

Notation: B rows, M modalities, d the backbone width, E experts, k the experts each token is routed to,
``C = 2^M`` modality combinations (the empty one included).

- **Combination index** (their ``data.get_modality_combinations``): the non-empty subsets of the M modalities,
  largest first, so index 0 is the full combination; ours adds the empty set as the last index ``2^M - 1``
  (their data has none; the eICU demo has 26 rows without any modality). :func:`combination_table` maps a
  presence bitmask to the index.
- **Missing-modality bank** (the paper's Fig. 3b; their ``main.train_and_evaluate``: ``missing_embeds``, a
  parameter [2^M - 1, M, P, h] drawn from N(0, 1), and ``main.run_epoch``: ``missing_embeds[batch_mcs[~mask],
  m]``): a learned embedding per (observed combination, missing modality). Row b's slot m holds the backbone's
  ``v_m`` [d] when m is present, else ``bank[c_b, m]`` [d]. Their P patch tokens per modality become one
  token per modality here: the backbone pools each modality to one [d] embedding.
- **Transformer with a sparse MoE** (their ``models.FlexMoE``, ``models.TransformerEncoderLayer``): a learned
  slot embedding (their ``pos_embed``, zero at the start) is added, then ``layers`` pre-norm layers of
  multi-head self-attention over the M slot tokens and a feed-forward that is a sparse MoE in the first layer
  and every second one after (their ``mlp_sparse`` alternation); the M tokens are concatenated ([B, M d]) for a
  linear head (their ``MLP`` with ``num_layers_pred=1``).
- **Experts and router** (their ``moe_module.FMoETransformerMLP``, ``AddtionalNoisyGate``; FastMoE's
  ``NoisyGate``, i.e. the noisy top-k gating of Shazeer et al., "Outrageously large neural networks", ICLR 2017;
  its equation numbers were not read here): expert e is Linear(d, hidden_times d), GELU, Linear(hidden_times d, d);
  clean logits ``h W_g`` [T, E], noise standard deviation ``softplus(h W_n) + 0.01`` (training only), noisy
  logits ``H = h W_g + eps * std``; the k largest H are softmax-normalised into the gates, the token's output is
  ``sum_j gate_j expert_{e_j}(h)``.
- **G-Router and S-Router** (Fig. 3c-d; their ``AddtionalNoisyGate.forward``), computed per modality slot
  (their MoE runs once per modality and the gate losses add up):

  - S-Router: rows whose combination is not the full one push their router logits towards the expert of their
    combination, ``CE(H_t, c_b)`` over the tokens of those rows (the top-1 gate specialised per combination);
  - G-Router: load balancing, ``cv^2(importance) + cv^2(load)`` with ``importance_e = sum_t gate_te``,
    ``load_e = sum_t P(e in top-k of t)`` (Shazeer et al.'s smooth load estimator when
    k < E in training, else the count of tokens routed to e), ``cv^2(x) = var(x) / (mean(x)^2 + 1e-10)`` with
    the unbiased variance; over the full-combination tokens on all experts plus over the other tokens on
    experts 1..E-1 (expert 0 is the full combination's); over all tokens when every row is full.

  :func:`gate_loss` implements it as a pure function; the loss is ``task + gate_weight * sum_m gate_loss_m``
  (their ``gate_loss_weight=1e-2``).
- **Warm-up** (their ``main.py``: ``warm_up_epochs=5`` of 50, where the training loader is not shuffled and is
  sorted by the number of available modalities, so the full-modality rows train the experts first): our
  trainer shuffles, so during the first ``warmup_epochs`` epochs the losses are taken over the rows the method
  sees with every modality present (the G-Router's training on full-modality samples); afterwards over all
  rows. ``warmup_epochs=0`` turns it off. A warm-up batch without a full row has a zero loss (no gradient).
  On the eICU demo (folds 0-2, one seed) 3 warm-up epochs gave test AUROC 0.773, 0.812, 0.785 against 0.766,
  0.757, 0.752 without.

Generalisation to M modalities: C = 2^M combinations, one expert per non-empty combination by default
(``experts=None``: ``min(2^M - 1, max_experts)``, ``max_experts=16``; the authors use 16 experts for 4
modalities, 15 combinations, and ``top_k=4``). With fewer experts than non-empty combinations, combination
c >= 1 targets expert ``1 + (c - 1) mod (E - 1)`` (ours). The empty combination (no modality) has no S-Router target.

Differences from their code: the attention sub-layer keeps its residual (their ``TransformerEncoderLayer``
adds the attention output to itself, ``x = x + dropout1(x)``, dropping the input); dropout is 0.1 (theirs
0.5) and the trainer's AdamW is kept (theirs Adam, lr 1e-4).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from omnifuse.fuse.base import Batch, FusionMethod, MethodOutput, ModelInfo, TrainerView
from omnifuse.fuse.encoders import BACKBONE, EncoderBank
from omnifuse.fuse.layers import mlp_head, task_loss
from omnifuse.fuse.methods.common import check_batch, check_info
from omnifuse.fuse.registry import register_method

DEFAULTS: dict[str, Any] = {
    "d": BACKBONE.d,
    "experts": None,
    "max_experts": 16,
    "top_k": 4,
    "heads": 4,
    "layers": 1,
    "hidden_times": 2,
    "dropout": 0.1,
    "gate_weight": 1e-2,
    "noise_eps": 1e-2,
    "warmup_epochs": 3,
    "encoder": {},
}

CV_EPS = 1e-10


# --------------------------------------------------------------------------------------------------------
# combinations and the gate loss (pure functions; tested against hand computations)
# --------------------------------------------------------------------------------------------------------
def combination_table(m: int) -> list[int]:
    """``table[bitmask] = combination index`` for the 2^M presence patterns (bit j set: modality j present).

    Non-empty combinations are numbered largest first, each size in ``itertools.combinations`` order (their
    ``data.get_modality_combinations``; index 0 is the full combination); the empty one is ``2^M - 1``."""
    table = [0] * (2**m)
    idx = 0
    for size in range(m, 0, -1):
        for comb in itertools.combinations(range(m), size):
            table[sum(1 << j for j in comb)] = idx
            idx += 1
    table[0] = 2**m - 1
    return table


def cv_squared(x: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation ``var(x) / (mean(x)^2 + 1e-10)`` (unbiased variance; 0 for one value)."""
    if x.numel() <= 1:
        return x.sum() * 0.0
    x = x.float()
    return x.var() / (x.mean() ** 2 + CV_EPS)


def prob_in_top_k(clean: torch.Tensor, noisy: torch.Tensor, std: torch.Tensor, k: int) -> torch.Tensor:
    """[T, E]: the probability that expert e is in token t's top k when only its own noise is redrawn
    (Shazeer et al. 2017's smooth estimator; its equation number not read here):
    ``Phi((clean - threshold) / std)``, the threshold being the k-th largest of the other noisy logits (the
    (k+1)-th largest noisy logit when e is in the top k, else the k-th)."""
    top = noisy.topk(k + 1, dim=1).values  # [T, k+1]
    thr_in = top[:, k : k + 1]  # (k+1)-th largest
    thr_out = top[:, k - 1 : k]  # k-th largest
    is_in = noisy > thr_in
    normal = torch.distributions.Normal(torch.zeros((), device=clean.device), torch.ones((), device=clean.device))
    p_in = normal.cdf((clean - thr_in) / std)
    p_out = normal.cdf((clean - thr_out) / std)
    return torch.where(is_in, p_in, p_out)


def route(noisy: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k routing: (expert indices [T, k], gates [T, k], the softmax of the k largest logits)."""
    top_logits, top_idx = noisy.topk(k, dim=1)
    return top_idx, torch.softmax(top_logits, dim=1)


def gate_loss(
    clean: torch.Tensor,
    noisy: torch.Tensor,
    std: torch.Tensor,
    target: torch.Tensor,
    k: int,
    smooth_load: bool,
) -> torch.Tensor:
    """The G-Router and S-Router losses of one MoE call (one modality slot): ``clean``, ``noisy``, ``std``
    [T, E] router logits and noise scale, ``target`` [T] the token's combination expert (0: the full
    combination; -1: no target, e.g. the empty combination), ``k`` experts per token, ``smooth_load``: use
    :func:`prob_in_top_k` (training with k < E) rather than the count of tokens routed to each expert.

    Returns ``CE(noisy[not full], target[not full]) + balance`` where ``balance`` is ``cv^2(importance) +
    cv^2(load)`` over all tokens when every token is full, else that over the full tokens plus the same over
    the other tokens restricted to experts 1..E-1 (their ``AddtionalNoisyGate.forward``)."""
    top_idx, top_gates = route(noisy, k)
    gates = torch.zeros_like(noisy).scatter(1, top_idx, top_gates)
    load = prob_in_top_k(clean, noisy, std, k) if smooth_load else (gates > 0).to(noisy.dtype)
    full = target == 0
    loss = noisy.sum() * 0.0
    specialise = ~full & (target >= 0)
    if bool(specialise.any()):
        loss = loss + F.cross_entropy(noisy[specialise], target[specialise])
    if bool(full.all()):
        return loss + cv_squared(gates.sum(0)) + cv_squared(load.sum(0))
    loss = loss + cv_squared(gates[full].sum(0)) + cv_squared(load[full].sum(0))
    rest = ~full
    return loss + cv_squared(gates[rest, 1:].sum(0)) + cv_squared(load[rest, 1:].sum(0))


# --------------------------------------------------------------------------------------------------------
# parts
# --------------------------------------------------------------------------------------------------------
class Experts(nn.Module):
    """E two-layer experts ``Linear(d, h) -> GELU -> Linear(h, d)`` (FastMoE's ``_Expert``), weights stacked."""

    def __init__(self, num: int, d: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(num, d, hidden))
        self.b1 = nn.Parameter(torch.zeros(num, hidden))
        self.w2 = nn.Parameter(torch.empty(num, hidden, d))
        self.b2 = nn.Parameter(torch.zeros(num, d))
        bound1, bound2 = 1 / math.sqrt(d), 1 / math.sqrt(hidden)
        nn.init.uniform_(self.w1, -bound1, bound1)
        nn.init.uniform_(self.w2, -bound2, bound2)

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert ``e`` on tokens [n, d] -> [n, d]."""
        return F.gelu(x @ self.w1[e] + self.b1[e]) @ self.w2[e] + self.b2[e]

    def forward(self, x: torch.Tensor, idx: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """Tokens [T, d], their experts [T, k] and gates [T, k] -> ``sum_j gate_j expert_{idx_j}(x)`` [T, d]:
        each expert runs only on the tokens routed to it (the (token, slot) pairs sorted by expert)."""
        k = idx.shape[1]
        flat = idx.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=self.w1.shape[0]).tolist()
        tok = order // k
        inp = x[tok]
        g = gates.reshape(-1)[order].unsqueeze(1)
        outs, start = [], 0
        for e, n in enumerate(counts):
            if n:
                outs.append(self.expert(e, inp[start : start + n]))
            start += n
        return torch.zeros_like(x).index_add(0, tok, g * torch.cat(outs, dim=0))


class NoisyRouter(nn.Module):
    """Noisy top-k gate (FastMoE ``NoisyGate``, as Flex-MoE uses it): ``h`` [T, d] -> (clean, noisy, std) [T, E].
    The noise is drawn in training only (std = 0 in eval, where noisy = clean)."""

    def __init__(self, d: int, num: int, noise_eps: float) -> None:
        super().__init__()
        self.w_gate = nn.Parameter(torch.empty(d, num))
        self.w_noise = nn.Parameter(torch.empty(d, num))
        for w in (self.w_gate, self.w_noise):  # FastMoE's reset_parameters: as torch.nn.Linear
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        self.noise_eps = float(noise_eps)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        clean = h @ self.w_gate
        if not self.training:
            return clean, clean, torch.zeros_like(clean)
        std = F.softplus(h @ self.w_noise) + self.noise_eps
        return clean, clean + torch.randn_like(clean) * std, std


class MoEBlock(nn.Module):
    """Pre-norm transformer layer over the M slot tokens whose feed-forward is a sparse MoE (or a dense MLP):
    ``x <- x + Attn(LN(x))``, ``x <- x + FF(LN(x))``. Router outputs of the MoE are kept for the losses."""

    def __init__(
        self, d: int, heads: int, hidden: int, dropout: float, experts: int, top_k: int, noise_eps: float, sparse: bool
    ) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, bias=False, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.sparse, self.top_k = sparse, top_k
        self.experts: Experts | None = Experts(experts, d, hidden) if sparse else None
        self.router: NoisyRouter | None = NoisyRouter(d, experts, noise_eps) if sparse else None
        self.mlp: nn.Module | None = (
            None
            if sparse
            else nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d))
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """[B, M, d] -> ([B, M, d], (clean, noisy, std) [B, M, E] or None for a dense layer)."""
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, h, h, need_weights=False)[0])
        h = self.norm2(x)
        if self.mlp is not None:
            return x + self.drop(self.mlp(h)), None
        assert self.router is not None and self.experts is not None
        b, m, d = h.shape
        flat = h.reshape(b * m, d)
        clean, noisy, std = self.router(flat)
        idx, gates = route(noisy, self.top_k)
        y = self.experts(flat, idx, gates).view(b, m, d)
        e = clean.shape[1]
        return x + self.drop(y), (clean.view(b, m, e), noisy.view(b, m, e), std.view(b, m, e))


# --------------------------------------------------------------------------------------------------------
# the method
# --------------------------------------------------------------------------------------------------------
@register_method(
    "flexmoe",
    description="missing-modality bank indexed by the observed combination, then a transformer whose "
    "feed-forward is a sparse mixture of experts routed by the missingness pattern (G-/S-Router)",
    paper="Yun, Choi, Peng, Wu, Bao, Zhang, Xin, Long, Chen. Flex-MoE: modeling arbitrary modality "
    "combination via the flexible mixture-of-experts. NeurIPS 2024",
    defaults=DEFAULTS,
)
class FlexMoE(FusionMethod):
    """Missing-modality bank + sparse-MoE transformer over the M slot tokens (see the module docstring)."""

    ignores_masked_inputs = True
    combo_of_mask: torch.Tensor  # [2^M] long: presence bitmask -> combination index
    expert_of_combo: torch.Tensor  # [2^M] long: combination index -> S-Router target expert (-1: none)

    def __init__(
        self,
        info: ModelInfo,
        d: int = BACKBONE.d,
        experts: int | None = None,
        max_experts: int = 16,
        top_k: int = 4,
        heads: int = 4,
        layers: int = 1,
        hidden_times: int = 2,
        dropout: float = 0.1,
        gate_weight: float = 1e-2,
        noise_eps: float = 1e-2,
        warmup_epochs: int = 3,
        encoder: Mapping[str, Any] | None = None,
    ) -> None:
        check_info(info)
        super().__init__(info)
        m = info.num_modalities
        if d % heads != 0:
            raise ValueError(f"flexmoe: d={d} must be divisible by heads={heads}")
        if layers < 1 or top_k < 1 or hidden_times < 1 or max_experts < 1:
            raise ValueError("flexmoe: layers, top_k, hidden_times and max_experts must be >= 1")
        if warmup_epochs < 0 or gate_weight < 0:
            raise ValueError("flexmoe: warmup_epochs and gate_weight must be >= 0")
        n_combos = 2**m - 1  # non-empty combinations
        num = int(experts) if experts is not None else min(n_combos, int(max_experts))
        if num < 1:
            raise ValueError(f"flexmoe: experts must be >= 1, got {experts}")
        self.d, self.num_experts = int(d), num
        self.top_k = min(int(top_k), num)
        self.gate_weight, self.warmup_epochs = float(gate_weight), int(warmup_epochs)
        self.warmup = self.warmup_epochs > 0

        self.enc = EncoderBank(info, self.d, encoder)
        self.bank = nn.Parameter(torch.randn(2**m, m, self.d))  # their missing_embeds: N(0, 1)
        self.slot_embed = nn.Parameter(torch.zeros(m, self.d))  # their pos_embed: zeros
        self.blocks = nn.ModuleList(
            [
                MoEBlock(self.d, heads, hidden_times * self.d, dropout, num, self.top_k, noise_eps, sparse=i % 2 == 0)
                for i in range(layers)
            ]
        )
        self.head = mlp_head(m * self.d, info.num_outputs, None, dropout)
        table = combination_table(m)
        targets = [-1] * (2**m)
        for c in range(n_combos):
            targets[c] = c if c < num else (1 + (c - 1) % (num - 1) if num > 1 else 0)
        self.register_buffer("combo_of_mask", torch.tensor(table, dtype=torch.long), persistent=False)
        self.register_buffer("expert_of_combo", torch.tensor(targets, dtype=torch.long), persistent=False)

    # --- hooks ----------------------------------------------------------------------------------------
    def on_epoch_start(self, trainer: TrainerView, epoch: int) -> None:
        self.warmup = int(epoch) < self.warmup_epochs

    # --- forward --------------------------------------------------------------------------------------
    def combinations(self, mask: torch.Tensor) -> torch.Tensor:
        """[B, M] presence -> [B] combination index (0: full, 2^M - 1: empty)."""
        weights = 2 ** torch.arange(mask.shape[1], device=mask.device)
        return self.combo_of_mask[(mask.long() * weights).sum(1)]

    def slots(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(slot tokens [B, M, d]: ``v_m`` where present, ``bank[c_b, m]`` where missing; combinations [B])."""
        mask = batch.mask.to(torch.bool)
        combo = self.combinations(mask)
        filled = self.bank[combo]  # [B, M, d]
        return torch.where(mask.unsqueeze(-1), self.enc(batch), filled.to(self.slot_embed.dtype)), combo

    def forward(self, batch: Batch) -> MethodOutput:
        check_batch(self.info, batch)
        x, combo = self.slots(batch)
        x = x + self.slot_embed.unsqueeze(0)
        routers = []
        for block in self.blocks:
            x, r = block(x)
            if r is not None:
                routers.append(r)
        logits = self.head(x.reshape(x.shape[0], -1))
        return MethodOutput(logits=logits, extra={"combination": combo, "routers": routers, "tokens": x})

    # --- losses -----------------------------------------------------------------------------------------
    def router_loss(self, out: MethodOutput, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Sum over the MoE layers and modality slots of :func:`gate_loss` (over ``rows`` [B] bool when given)."""
        combo = out.extra["combination"]
        target = self.expert_of_combo[combo]  # [B]
        total = out.logits.sum() * 0.0
        smooth = self.training and self.top_k < self.num_experts
        for clean, noisy, std in out.extra["routers"]:
            c, n, s, t = clean, noisy, std, target
            if rows is not None:
                c, n, s, t = clean[rows], noisy[rows], std[rows], target[rows]
            if t.numel() == 0:
                continue
            for j in range(c.shape[1]):
                total = total + gate_loss(c[:, j], n[:, j], s[:, j], t, self.top_k, smooth)
        return total

    def loss(self, batch: Batch, out: MethodOutput) -> tuple[torch.Tensor, dict[str, float]]:
        rows = None
        if self.warmup and self.training:
            rows = out.extra["combination"] == 0  # warm-up: the full-modality rows train the experts
        task = task_loss(out.logits, batch.y, self.info.task_kind, batch.y_mask, rows=rows)
        gate = self.router_loss(out, rows)
        total = task + self.gate_weight * gate
        return total, {"task": float(task.detach()), "gate": float(gate.detach())}
