"""MUSE: mutual-consistent graph contrastive learning on a patient-modality bipartite graph (Wu, Dadu, Tustison,
Avants, Nalls, Sun, Faghri, "Multimodal patient representation learning with missing modalities and labels",
ICLR 2024), for any number of modalities, on the shared backbone. The paper's text could not be read here
(``docs/methods.md``, "Equation numbers"), so no equation number is cited; the definitions follow the authors'
code, github zzachw/MUSE
(``src/core/gnn.py``: ``EdgeSAGEConv``, ``GNNStack``, ``MML``; ``src/core/eicu_model.py``; defaults in
``src/core/run.py``); the facts below are read from it, the code is ours.

Notation: B patients (rows) of a batch, M modalities, d the backbone width (node, edge and hidden width).

- **Bipartite graph** (their ``MML.forward``): B patient nodes (initial state all ones)
  and M modality nodes (learned states [M, d], N(0, 1)); an edge between patient b and modality m when m is
  present for b, in both directions, its attribute the modality's embedding ``v_bm`` [d] (the shared backbone's;
  their encoders' outputs). A missing modality is no edge: its values never reach the patient.
- **Message passing** (their ``EdgeSAGEConv``, ``GNNStack``; ``gnn_layers=2`` in ``run.py``): per layer,
  message ``ReLU(W_msg [x_src ; e])``, mean over a node's incoming edges (a node without edges gets 0), update
  ``ReLU(W_agg [mean ; x])``; between layers dropout on the node states and an edge update
  ``e <- ReLU(W_e [x_src ; x_dst ; e])`` per direction. The patient's final state ``z_b`` [d] is its
  representation; the classifier is Linear(d, d), ReLU, dropout, Linear(d, C) (their ``MML.classifier``).
- **Mutual-consistent contrastive loss** (their ``MML.forward``, ``unsup_ce_loss``, ``sup_ce_loss``):
  a second graph with edge dropout (their ``MML.edgedrop``: each patient, with probability 1/2, keeps a
  uniformly drawn number in 1..n-1 of its n >= 2 edges, chosen at random) gives ``z'_b``; projections
  ``u = normalize(tanh(W z))``, ``u' = normalize(tanh(W z'))``, logits ``S = tau u u'^T`` with ``tau = 1/0.07``
  fixed;

  - unsupervised (every row, labelled or not): ``(CE(S, I) + CE(S^T, I)) / 2``, the patient's own augmented
    view as the positive;
  - supervised (labelled rows): with ``Y_ij = 1`` when rows i and j carry the same label (same class; for a
    multilabel task the same label vector), ``(2 BCE(tau u u^T, Y) + BCE(S, Y) + BCE(S^T, Y)) / 4`` (binary
    cross-entropy with logits, averaged over all pairs);
  - total: ``CE_task(z) + 0.5 unsup + 0.5 sup`` (their ``return 0.5 * unsup_loss + 0.5 * sup_loss + cls_loss``;
    the weights ``lambda_unsup``, ``lambda_sup``).

  :func:`unsup_contrastive` and :func:`sup_contrastive` are pure functions, tested on hand computations.
- **Missing labels**: MUSE trains on patients without a label through the graph and the unsupervised term,
  the supervised term and the classifier using the labelled ones (their ``y_flag``). Here a row's label
  presence is ``batch.y_mask``: the same split applies to any batch. In omnifuse labels are not partially
  missing within a task in training: the folds are drawn over the labelled rows
  (:func:`omnifuse.fuse.data.make_folds`), so every training row carries a label and the unlabelled-row path
  (unsupervised term only) is exercised by hand-made batches, not by the trainer. MUSE's semi-supervised use
  of unlabelled patients therefore does not apply here.

**Row independence at prediction** (ours): modality nodes aggregate over every patient of the batch, so from
the second layer on a patient's state depends on the other patients of its batch (their inference runs on
test batches of 512). A prediction must not depend on which other rows share its batch, so each layer's
modality aggregate (the mean message a modality node receives) used in eval mode is a kept one, as batch
normalisation keeps its statistics: after every epoch (``on_epoch_end``) it is recomputed with the current
weights, in eval mode, over the trainer's mining rows (a fixed subset of the training rows, up to
``TrainConfig.mining_rows``, in one graph: "precise" statistics); a running average of the training batches'
aggregates (``momentum``, 0.1) stands in before the first epoch ends and when there are no mining rows. In
training the batch's own aggregate is used, as in their code. ``edge_drop`` is the per-patient drop
probability (theirs 0.5).

Defaults: their ``run.py`` (``gnn_layers=2``, ``dropout=0.25``, no node normalisation) at the backbone's d.
Their encoders' extra Linear ``mapper`` and dropout after each modality encoder are not added (the shared
backbone is the encoder).
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
    "layers": 2,
    "dropout": 0.25,
    "tau": 1 / 0.07,
    "edge_drop": 0.5,
    "lambda_unsup": 0.5,
    "lambda_sup": 0.5,
    "normalize": False,
    "momentum": 0.1,
    "encoder": {},
}


# --------------------------------------------------------------------------------------------------------
# losses and edge dropout (pure functions; tested against hand computations)
# --------------------------------------------------------------------------------------------------------
def unsup_contrastive(u: torch.Tensor, u_aug: torch.Tensor, tau: float) -> torch.Tensor:
    """``(CE(S, I) + CE(S^T, I)) / 2`` with ``S = tau u u_aug^T`` ([N, p] each; their ``unsup_ce_loss``)."""
    s = tau * (u @ u_aug.T)
    target = torch.arange(s.shape[0], device=s.device)
    return 0.5 * (F.cross_entropy(s, target) + F.cross_entropy(s.T, target))


def same_label_matrix(y: torch.Tensor) -> torch.Tensor:
    """[N, N] float: 1 where rows i and j carry the same label (class index [N], or equal label vectors [N, C])."""
    v = y.view(y.shape[0], -1).to(torch.float32)
    return (v[:, None, :] == v[None, :, :]).all(-1).to(torch.float32)


def sup_contrastive(u: torch.Tensor, u_aug: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    """``(2 BCE(tau u u^T, Y) + BCE(tau u u_aug^T, Y) + BCE((tau u u_aug^T)^T, Y)) / 4`` with ``Y`` the
    same-label matrix (their ``sup_ce_loss``); BCE with logits, averaged over the N^2 pairs."""
    target = same_label_matrix(y)
    s_zz = tau * (u @ u.T)
    s_za = tau * (u @ u_aug.T)
    bce = F.binary_cross_entropy_with_logits
    return (2 * bce(s_zz, target) + bce(s_za, target) + bce(s_za.T, target)) / 4


def edge_dropout(mask: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Their ``MML.edgedrop``, vectorised: each row with n >= 2 present modalities is, with probability ``p``,
    cut to a uniformly drawn number k in 1..n-1 of its present modalities, chosen uniformly; [B, M] -> [B, M]."""
    mask = mask.to(torch.bool)
    b, m = mask.shape
    dev = mask.device
    n = mask.sum(1)
    act = (torch.rand(b, generator=generator).to(dev) < p) & (n >= 2)
    k = 1 + (torch.rand(b, generator=generator).to(dev) * (n - 1).clamp(min=1).to(torch.float32)).floor().long()
    score = torch.rand(b, m, generator=generator).to(dev).masked_fill(~mask, 2.0)  # absent ones last
    rank = score.argsort(1).argsort(1)  # 0 = kept first
    keep = mask & (rank < k.unsqueeze(1))
    return torch.where(act.unsqueeze(1), keep, mask)


# --------------------------------------------------------------------------------------------------------
# the bipartite graph network
# --------------------------------------------------------------------------------------------------------
class BipartiteLayer(nn.Module):
    """One ``EdgeSAGEConv`` on the patient-modality graph, dense over [B, M] presence:

    patients [B, d], modality nodes [M, d], edge attributes patient->modality ``e_pm`` and modality->patient
    ``e_mp`` [B, M, d], presence [B, M]. Messages ``ReLU(W_msg [x_src ; e])``, mean over present edges, update
    ``ReLU(W_agg [mean ; x])`` (optionally L2-normalised). The modality nodes' mean message can be replaced by
    a given one (the running average used for prediction)."""

    def __init__(self, d: int, normalize: bool) -> None:
        super().__init__()
        self.message = nn.Linear(2 * d, d)
        self.update = nn.Linear(2 * d, d)
        self.normalize = normalize

    def _out(self, agg: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.update(torch.cat([agg, x], dim=-1)))
        return F.normalize(h, dim=-1) if self.normalize else h

    def modality_aggregate(self, patients: torch.Tensor, e_pm: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[M, d]: the mean message each modality node receives from the patients holding it (0 when none)."""
        b, m, d = e_pm.shape
        msg = F.relu(self.message(torch.cat([patients.unsqueeze(1).expand(b, m, d), e_pm], dim=-1)))  # [B, M, d]
        w = mask.to(msg.dtype).unsqueeze(-1)
        return (msg * w).sum(0) / w.sum(0).clamp(min=1.0)

    def forward(
        self,
        patients: torch.Tensor,
        modalities: torch.Tensor,
        e_pm: torch.Tensor,
        e_mp: torch.Tensor,
        mask: torch.Tensor,
        modality_agg: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (new patients [B, d], new modality nodes [M, d], the modality aggregate used [M, d])."""
        b, m, d = e_mp.shape
        w = mask.to(e_mp.dtype).unsqueeze(-1)
        msg_p = F.relu(self.message(torch.cat([modalities.unsqueeze(0).expand(b, m, d), e_mp], dim=-1)))
        agg_p = (msg_p * w).sum(1) / w.sum(1).clamp(min=1.0)  # [B, d]
        agg_m = self.modality_aggregate(patients, e_pm, mask) if modality_agg is None else modality_agg
        return self._out(agg_p, patients), self._out(agg_m, modalities), agg_m


@register_method(
    "muse",
    description="patient-modality bipartite graph (a missing modality is no edge) with a GraphSAGE-style "
    "network and the mutual-consistent contrastive loss between the graph with and without edge dropout",
    paper="Wu, Dadu, Tustison, Avants, Nalls, Sun, Faghri. Multimodal patient representation learning with "
    "missing modalities and labels. ICLR 2024",
    defaults=DEFAULTS,
)
class MUSE(FusionMethod):
    """Bipartite patient-modality graph network with mutual-consistent graph contrastive learning."""

    ignores_masked_inputs = True
    running_agg: torch.Tensor  # [layers, M, d]: running mean of each layer's modality aggregate
    running_seen: torch.Tensor  # [layers, M] bool: whether that aggregate has been seen in training

    def __init__(
        self,
        info: ModelInfo,
        d: int = BACKBONE.d,
        layers: int = 2,
        dropout: float = 0.25,
        tau: float = 1 / 0.07,
        edge_drop: float = 0.5,
        lambda_unsup: float = 0.5,
        lambda_sup: float = 0.5,
        normalize: bool = False,
        momentum: float = 0.1,
        encoder: Mapping[str, Any] | None = None,
    ) -> None:
        check_info(info)
        super().__init__(info)
        if layers < 1:
            raise ValueError(f"muse: layers must be >= 1, got {layers}")
        if not 0.0 <= edge_drop <= 1.0 or not 0.0 < momentum <= 1.0 or tau <= 0:
            raise ValueError("muse: edge_drop must be in [0, 1], momentum in (0, 1], tau > 0")
        m = info.num_modalities
        self.d, self.tau, self.edge_drop = int(d), float(tau), float(edge_drop)
        self.lambda_unsup, self.lambda_sup, self.momentum = float(lambda_unsup), float(lambda_sup), float(momentum)
        self.enc = EncoderBank(info, self.d, encoder)
        self.modality_nodes = nn.Parameter(torch.randn(m, self.d))
        self.convs = nn.ModuleList([BipartiteLayer(self.d, normalize) for _ in range(layers)])
        self.edge_mlps = nn.ModuleList(
            [nn.Sequential(nn.Linear(3 * self.d, self.d), nn.ReLU()) for _ in range(layers - 1)]
        )
        self.node_drop = nn.Dropout(dropout)
        self.projection = nn.Sequential(nn.Linear(self.d, self.d), nn.Tanh())
        self.classifier = nn.Sequential(
            nn.Linear(self.d, self.d), nn.ReLU(), nn.Dropout(dropout), nn.Linear(self.d, info.num_outputs)
        )
        self.register_buffer("running_agg", torch.zeros(layers, m, self.d))
        self.register_buffer("running_seen", torch.zeros(layers, m, dtype=torch.bool))

    # --- the graph network ----------------------------------------------------------------------------
    def encode_graph(
        self, E: torch.Tensor, mask: torch.Tensor, track: bool, own: bool | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(patient states [B, d] after the GNN on the graph of presence ``mask`` [B, M] with edge attributes
        ``E`` [B, M, d], each layer's modality aggregate [M, d]). ``own`` (default: in training) uses the rows'
        own aggregates, as their code does; otherwise the kept ones (:attr:`running_agg`), so that the rows are
        independent. ``track`` folds the rows' aggregates into the running average."""
        b = E.shape[0]
        patients = torch.ones(b, self.d, dtype=E.dtype, device=E.device)
        modalities = self.modality_nodes.to(E.dtype)
        e_pm, e_mp = E, E
        own = self.training if own is None else own
        aggs = []
        for i, conv in enumerate(self.convs):
            fixed = None
            if not own:
                seen = self.running_seen[i].unsqueeze(-1)
                fixed = torch.where(seen, self.running_agg[i], torch.zeros_like(self.running_agg[i]))
            patients_new, modalities, agg = conv(patients, modalities, e_pm, e_mp, mask, fixed)
            aggs.append(agg)
            if track:
                self._track(i, agg.detach(), mask)
            patients = patients_new
            if i < len(self.convs) - 1:
                patients = self.node_drop(patients)
                modalities = self.node_drop(modalities)
                mlp = self.edge_mlps[i]
                pm = patients.unsqueeze(1).expand_as(e_pm)
                mm = modalities.unsqueeze(0).expand_as(e_pm)
                e_pm, e_mp = mlp(torch.cat([pm, mm, e_pm], dim=-1)), mlp(torch.cat([mm, pm, e_mp], dim=-1))
        return patients, aggs

    def on_epoch_end(self, trainer: TrainerView, epoch: int) -> None:
        """The aggregates used for prediction, recomputed with the current weights (eval mode) over the
        trainer's mining rows (a fixed subset of the training rows, all in one graph); the running average
        of the training batches stays where there are none (``mining_rows=0``) or a modality is absent."""
        batches = trainer.mining_batches()
        if not batches:
            return
        with self.evaluating(), torch.no_grad():
            Es, masks = [], []
            for b in batches_on(batches, trainer.device):
                m = b.mask.to(torch.bool)
                E = self.enc(b)
                Es.append(torch.where(m.unsqueeze(-1), E, torch.zeros_like(E)))
                masks.append(m)
            mask = torch.cat(masks)
            _, aggs = self.encode_graph(torch.cat(Es), mask, track=False, own=True)
            here = mask.any(0).unsqueeze(-1)
            for i, agg in enumerate(aggs):
                self.running_agg[i] = torch.where(here, agg, self.running_agg[i])
                self.running_seen[i] |= here.squeeze(-1)

    @torch.no_grad()
    def _track(self, layer: int, agg: torch.Tensor, mask: torch.Tensor) -> None:
        """Fold the batch's modality aggregates (modalities some row holds) into the running average."""
        here = mask.any(0)  # [M]
        first = here & ~self.running_seen[layer]
        old = self.running_agg[layer]
        mixed = (1 - self.momentum) * old + self.momentum * agg
        new = torch.where(first.unsqueeze(-1), agg, torch.where(here.unsqueeze(-1), mixed, old))
        self.running_agg[layer] = new
        self.running_seen[layer] |= here

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """[N, d] -> L2-normalised ``tanh(W z)`` [N, d] (their ``cl_projection``)."""
        return F.normalize(self.projection(z), dim=-1)

    # --- forward --------------------------------------------------------------------------------------
    def forward(self, batch: Batch) -> MethodOutput:
        check_batch(self.info, batch)
        mask = batch.mask.to(torch.bool)
        E = self.enc(batch)
        E = torch.where(mask.unsqueeze(-1), E, torch.zeros_like(E))  # a missing modality is no edge
        train = self.training and torch.is_grad_enabled()
        z, _ = self.encode_graph(E, mask, track=train)
        extra: dict[str, Any] = {"z": z}
        if train:
            aug = edge_dropout(mask, self.edge_drop)
            extra["z_aug"], _ = self.encode_graph(E, aug, track=False)
            extra["aug_mask"] = aug
        return MethodOutput(logits=self.classifier(z), extra=extra)

    def loss(self, batch: Batch, out: MethodOutput) -> tuple[torch.Tensor, dict[str, float]]:
        task = task_loss(out.logits, batch.y, self.info.task_kind, batch.y_mask)
        terms = {"task": float(task.detach())}
        if "z_aug" not in out.extra:
            return task, terms
        u, u_aug = self.project(out.extra["z"]), self.project(out.extra["z_aug"])
        unsup = unsup_contrastive(u, u_aug, self.tau)
        lab = batch.y_mask.to(torch.bool)
        sup = unsup * 0.0
        if bool(lab.any()):
            y = batch.y.view(-1) if self.info.task_kind == "multiclass" else batch.y
            sup = sup_contrastive(u[lab], u_aug[lab], y[lab], self.tau)
        terms.update(unsup=float(unsup.detach()), sup=float(sup.detach()))
        return task + self.lambda_unsup * unsup + self.lambda_sup * sup, terms
