"""OmniFuse (Wu et al., Information Fusion 2025): CRA imputation, DWFuse and TLA, the full objective (eq. 18).

``L = L_forward + lambda_1 L_backward + lambda_2 L_DWFuse + lambda_3 L_TLA`` with the paper's defaults
K = 5, alpha = 0.1, beta = 0.5, lambda = (1, 10, 0.5). Switches for the ablation of table 4:

- ``dwfuse=False``: no per-modality heads; ``L_DWFuse`` becomes the plain cross-entropy of the joint head o;
- ``tla=False``: no mining, ``L_TLA = 0``;
- ``imp_fw=False``: no CRA; missing modalities stay ``v^miss`` and ``o = g_rp(concat(v))``; this also turns
  the backward CRA off (IMP-bw needs IMP-fw), so ``L_forward = L_backward = 0``;
- ``imp_bw=False``: no backward CRA, ``L_backward = 0``.

The CRA's targets (``cra_target``, :func:`omnifuse.fuse.cra.cra_targets`): ``"paper"`` (default) trains the
forward CRA towards ``v-hat`` (``v^miss`` at the slots it sees, the detached true embedding at the slots
dropped on purpose, nothing at naturally missing slots) and the backward CRA towards ``v`` at every slot;
``"dropped_only"`` is the earlier reading (forward at the dropped slots, backward at the present ones).
After imputation ``u_m = v_m`` where present and ``v'_m`` where missing. With one modality nothing can be
imputed: ``L_forward = L_backward = 0``.

Registry entries: ``omnifuse``; its variants ``dwfuse_only`` (DWFuse on, TLA and imputation off: the
"DWFuse" row of table 3), ``omnifuse_no_imp`` (imputation off) and the rows of table 4, ``ablation_a`` to
``ablation_f`` (:data:`ABLATION_ROWS`). The paper's row (e) cannot be read from its text; our reading is
DWFuse + IMP-fw + IMP-bw without TLA (see :data:`ABLATION_ROWS` and docs/omnifuse.md).

Training drops: the trainer's shared drop (``TrainConfig.modality_drop``, the same masks for every method;
``modality_drop=1.0`` with ``unit="row"`` is the paper's table 1) arrives as a
:class:`~omnifuse.fuse.base.DroppedBatch` and is used as it is; with the shared drop off, the method draws its
own (``train_drop_prob``: a row keeps a uniformly drawn non-empty proper subset of its present modalities,
:func:`omnifuse.fuse.layers.drop_modalities` with ``unit="row"``). Only slots dropped on purpose have a true
target at a missing slot; natural gaps have none. Inference: forward imputation only, then ``o`` (the paper's
figure 3b).

The modality encoders are the shared backbone (:data:`omnifuse.fuse.encoders.BACKBONE`, ``d`` and ``encoder``
on top of it), as every other method's.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from omnifuse.fuse.base import Batch, DroppedBatch, FusionMethod, MethodOutput, ModelInfo, TrainerView
from omnifuse.fuse.cra import CRA, CRA_TARGETS, backward_loss, cra_targets, forward_loss
from omnifuse.fuse.dwfuse import down_weights, dwfuse_loss, predicted_class_probability
from omnifuse.fuse.encoders import BACKBONE, EncoderBank, RecurrentEncoder
from omnifuse.fuse.layers import drop_modalities, mlp_head, task_loss
from omnifuse.fuse.registry import register_method, register_variant
from omnifuse.fuse.tla import (
    MAX_COMBINATIONS,
    MIN_COMMON_ROWS,
    candidate_combinations,
    combination_name,
    lazy_mask,
    mine_lazy,
    tla_loss,
)

log = logging.getLogger(__name__)

PAPER_DEFAULTS: dict[str, Any] = {
    "K": 5,
    "alpha": 0.1,
    "beta": 0.5,
    "lambda_backward": 1.0,
    "lambda_dwfuse": 10.0,
    "lambda_tla": 0.5,
}


@register_method(
    "omnifuse",
    description="OmniFuse: CRA forward/backward imputation, down-weighting fusion (DWFuse), traceable laziness "
    "activation (TLA)",
    paper="Wu et al., OmniFuse, Information Fusion 117 (2025) 102890",
    defaults=PAPER_DEFAULTS,
)
class OmniFuse(FusionMethod):
    """Encoders (eq. 1), forward/backward CRA (4-8), DWFuse (9-14), TLA (15-17); objective (18).

    ``forward(batch)`` -> ``MethodOutput(logits=o [B, C], per_modality_logits={name: p_m logits [B, C]},
    extra)``; extra holds ``v``, ``v_prime``, ``v_second`` [B, M, d] and the masks the losses need.
    ``dropout`` is the heads'; the encoders' is the backbone's (``encoder={"dropout": ...}``)."""

    def __init__(
        self,
        info: ModelInfo,
        *,
        d: int = BACKBONE.d,
        K: int = 5,
        cra_hidden: int = 256,
        latent: int = 64,
        head_hidden: int = 128,
        dropout: float = 0.1,
        alpha: float = 0.1,
        beta: float = 0.5,
        lambda_backward: float = 1.0,
        lambda_dwfuse: float = 10.0,
        lambda_tla: float = 0.5,
        dwfuse: bool = True,
        tla: bool = True,
        imp_fw: bool = True,
        imp_bw: bool = True,
        train_drop_prob: float = 0.5,
        tla_mask_down: bool = False,
        tla_min_common: int = MIN_COMMON_ROWS,
        tla_max_combinations: int = MAX_COMBINATIONS,
        cra_target: str = "paper",
        encoder: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(info)
        M, C = info.num_modalities, info.num_outputs
        if M < 1:
            raise ValueError("OmniFuse needs at least one modality")
        if cra_target not in CRA_TARGETS:
            raise ValueError(f"omnifuse cra_target must be one of {CRA_TARGETS}, got {cra_target!r}")
        self.cra_target = cra_target
        self.tla_min_common = int(tla_min_common)
        if int(tla_max_combinations) < 1:
            raise ValueError(f"omnifuse tla_max_combinations must be >= 1, got {tla_max_combinations}")
        self.tla_max_combinations = int(tla_max_combinations)
        self.d, self.M = d, M
        self.alpha, self.beta = float(alpha), float(beta)
        self.lambdas = (float(lambda_backward), float(lambda_dwfuse), float(lambda_tla))
        self.use_dwfuse, self.use_imp_fw = bool(dwfuse), bool(imp_fw)
        self.use_imp_bw = bool(imp_bw) and bool(imp_fw)
        self.use_tla = bool(tla) and M > 1
        self.train_drop_prob = float(train_drop_prob)
        self.tla_mask_down = bool(tla_mask_down)
        self.enc = EncoderBank(info, d, encoder)  # the shared backbone (eq. 1)
        self.cra_fw = CRA(M * d, K, cra_hidden, latent) if self.use_imp_fw else None
        self.cra_bw = CRA(M * d, K, cra_hidden, latent) if self.use_imp_bw else None
        joint_in = K * latent if self.use_imp_fw else M * d
        self.joint_head = mlp_head(joint_in, C, head_hidden, dropout)  # g_rp, eq. 11
        self.heads = (
            nn.ModuleDict({m.name: mlp_head(d, C, head_hidden, dropout) for m in info.modalities})
            if self.use_dwfuse
            else None
        )  # g_m, eq. 9
        self.lazy: tuple[bool, ...] | None = None
        self.step_masked: frozenset[str] = frozenset()  # variable-length time series seen (missing_embeddings)
        self.lazy_history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------------------ building blocks
    def missing_embeddings(self, device: torch.device, step_masked: Collection[str] | None = None) -> torch.Tensor:
        """``v^miss`` [M, d] (eq. 2-3): each encoder's output for an explicit zero input (all-false token mask).

        A variable-length time series (named in ``step_masked``: its batches carry a step mask [B, T], schema
        version 3) has no zero input of a fixed length: the zeros over its T steps would make ``v^miss`` depend
        on the cap T the cache pads to. Its ``v^miss`` is the encoder of the empty series instead, what it reads
        from no step at all: the RNN's initial state ``h_0 = 0`` through the encoder's LayerNorm
        (:class:`~omnifuse.fuse.encoders.RecurrentEncoder`), the same for every cap, as a sequence with no
        valid token pools to zeros before its output layer. (A zero input over one step would coincide with a
        present one-step stay at the normal values.) ``step_masked`` None: the names seen in the last batch
        :meth:`forward` read (:attr:`step_masked`)."""
        names = self.step_masked if step_masked is None else frozenset(step_masked)
        out = []
        for j, m in enumerate(self.info.modalities):
            enc = self.enc.encoders[j]
            if m.kind == "timeseries" and m.name in names:
                if not isinstance(enc, RecurrentEncoder):
                    raise TypeError(f"modality {m.name!r}: a step-masked time series needs a RecurrentEncoder")
                out.append(enc.norm(torch.zeros(1, self.d, device=device)))  # LN(h_0): the empty series
                continue
            x = torch.zeros(1, *m.shape, device=device)
            tm = torch.zeros(1, m.shape[0], dtype=torch.bool, device=device) if m.kind == "sequence" else None
            out.append(enc(x, tm))
        return torch.cat(out, 0)

    def _step_masked_of(self, batch: Batch) -> frozenset[str]:
        """The time-series modalities of ``batch`` that carry a step mask (variable length); remembered in
        :attr:`step_masked` for :meth:`missing_embeddings` called without a batch."""
        ts = {m.name for m in self.info.modalities if m.kind == "timeseries"}
        self.step_masked = frozenset(n for n in batch.tokens_mask if n in ts)
        return self.step_masked

    def encode(self, batch: Batch) -> torch.Tensor:
        """Eq. 1: [B, M, d], the encoders' outputs; :meth:`forward` puts ``v^miss`` at missing slots (eq. 2-3)."""
        return self.enc(batch)

    def _encode_noting_steps(self, batch: Batch) -> torch.Tensor:
        """:meth:`encode`, noting the batch's step-masked series for :meth:`fuse_embeddings` (TLA's fast path)."""
        self._step_masked_of(batch)
        return self.encode(batch)

    def train_drop(self, batch: Batch, generator: torch.Generator | None = None) -> Batch:
        """The trainer's shared drop (a :class:`DroppedBatch`) as it is; otherwise (the shared drop off) the
        method's own: each row, with probability ``train_drop_prob``, keeps a uniformly drawn non-empty proper
        subset of its present modalities. The pre-drop batch travels along."""
        if isinstance(batch, DroppedBatch):  # the trainer's shared drop: its masks are the ones to learn from
            return batch
        return DroppedBatch.drop(batch, drop_modalities(batch.mask, self.train_drop_prob, generator, unit="row"))

    # ------------------------------------------------------------------------------------- forward
    def forward(self, batch: Batch) -> MethodOutput:
        """``o`` [B, C] and the heads' logits; ``extra`` holds ``v``, ``v_true`` (the pre-drop embeddings of a
        :class:`DroppedBatch`, else None), ``v_miss`` [M, d], ``mask``, ``dropped`` and, with IMP-fw,
        ``v_prime`` (and ``v_second`` in training with IMP-bw), all [B, M, d] / [B, M]."""
        B = batch.mask.shape[0]
        mask = batch.mask
        dropped = None
        v_miss = self.missing_embeddings(mask.device, self._step_masked_of(batch))  # [M, d]
        if isinstance(batch, DroppedBatch):
            v_true = self.encode(batch.source)  # the truth of dropped modalities
            dropped = batch.dropped
            enc = v_true
        else:
            v_true = None
            enc = self.encode(batch)
        v = torch.where(mask.unsqueeze(-1), enc, v_miss.unsqueeze(0).expand(B, -1, -1))  # eq. 2-3
        extra: dict[str, Any] = {"v": v, "v_true": v_true, "v_miss": v_miss, "mask": mask, "dropped": dropped}
        if self.cra_fw is not None:
            vp_flat, latents = self.cra_fw(v.reshape(B, -1))  # eq. 4-5
            v_prime = vp_flat.view(B, self.M, self.d)
            u = torch.where(mask.unsqueeze(-1), v, v_prime)  # available kept, missing imputed
            o = self.joint_head(latents)  # eq. 11
            extra["v_prime"] = v_prime
            if self.cra_bw is not None and self.training:
                extra["v_second"] = self.cra_bw(vp_flat)[0].view(B, self.M, self.d)  # eq. 6
        else:
            u = v
            o = self.joint_head(v.reshape(B, -1))
        per = None
        if self.heads is not None:
            per = {n: self.heads[n](u[:, j]) for j, n in enumerate(self.info.names)}  # eq. 9
        return MethodOutput(logits=o, per_modality_logits=per, extra=extra)

    def joint_logits(self, batch: Batch) -> torch.Tensor:
        return self.forward(batch).logits

    def fuse_embeddings(
        self, v_true: torch.Tensor, mask: torch.Tensor, step_masked: Collection[str] | None = None
    ) -> torch.Tensor:
        """The joint output ``o`` [B, C] from true embeddings ``v_true`` [B, M, d] and a presence mask [B, M]:
        eq. 2-3 (``v^miss`` where masked; ``step_masked`` as in :meth:`missing_embeddings`), the forward CRA
        (eq. 4-5) and the joint head (eq. 11). Equal to :meth:`joint_logits` of the batch masked the same way
        (in eval mode)."""
        B = v_true.shape[0]
        v_miss = self.missing_embeddings(v_true.device, step_masked).unsqueeze(0).expand(B, -1, -1)
        v = torch.where(mask.unsqueeze(-1), v_true, v_miss)
        if self.cra_fw is not None:
            return self.joint_head(self.cra_fw(v.reshape(B, -1))[1])
        return self.joint_head(v.reshape(B, -1))

    # ---------------------------------------------------------------------------------------- loss
    def loss(self, batch: Batch, out: MethodOutput) -> tuple[torch.Tensor, dict[str, float]]:
        """Eq. 18 with its terms (floats, unweighted): forward, backward, dwfuse (ens, rp), tla, total."""
        kind = self.info.task_kind
        zero = out.logits.sum() * 0.0
        ex = out.extra
        l_fw = l_bw = zero
        if "v_prime" in ex and self.M > 1:  # one modality: nothing to impute, no imputation loss
            fw_t, fw_s, bw_t, bw_s = cra_targets(
                ex["v"], ex["v_true"], ex["v_miss"], ex["mask"], ex["dropped"], self.cra_target
            )
            l_fw = forward_loss(ex["v_prime"], fw_t, fw_s)  # eq. 7: towards v-hat
            if "v_second" in ex:
                l_bw = backward_loss(ex["v_second"], bw_t, bw_s)  # eq. 8: back to v
        terms: dict[str, float] = {}
        if out.per_modality_logits is not None:
            l_dw, t = dwfuse_loss(
                list(out.per_modality_logits.values()), out.logits, batch.y, kind, self.beta, self.alpha, batch.y_mask
            )  # eq. 12-14
            terms["ens"], terms["rp"] = float(t["ens"].detach()), float(t["rp"].detach())
        else:
            l_dw = task_loss(out.logits, batch.y, kind, batch.y_mask)
            terms["rp"] = float(l_dw.detach())
        l_tla = zero
        if self.use_tla and self.lazy is not None:
            sel = lazy_mask(batch.mask, self.lazy)  # eq. 16
            l_tla = tla_loss(out.logits, batch.y, sel, kind, batch.y_mask)  # eq. 17
            if self.tla_mask_down:
                c = torch.as_tensor(self.lazy, dtype=torch.bool, device=batch.mask.device)
                sup = (batch.mask | ~c).all(1) & ~sel & batch.y_mask
                if bool(sup.any()):
                    sub = batch.select(sup)
                    sub = sub.with_mask(c.unsqueeze(0).expand_as(sub.mask).clone())
                    n1, n2 = int(sel.sum()), int(sup.sum())
                    l_down = tla_loss(self.forward(sub).logits, sub.y, torch.ones_like(sub.y_mask), kind)
                    l_tla = (l_tla * n1 + l_down * n2) / max(n1 + n2, 1)
        l1, l2, l3 = self.lambdas
        total = l_fw + l1 * l_bw + l2 * l_dw + l3 * l_tla  # eq. 18
        terms.update(
            {
                k: float(v.detach())
                for k, v in (("forward", l_fw), ("backward", l_bw), ("dwfuse", l_dw), ("tla", l_tla), ("total", total))
            }
        )
        return total, terms

    # --------------------------------------------------------------------------------------- hooks
    def on_epoch_end(self, trainer: TrainerView, epoch: int) -> None:
        """Eq. 15: mine the lazy combination on the trainer's fixed mining rows (their common rows when there
        are at least ``tla_min_common``; see :func:`omnifuse.fuse.tla.mine_lazy`), scoring at most
        ``tla_max_combinations`` combinations (:func:`omnifuse.fuse.tla.candidate_combinations`, drawn per epoch
        with the run seed); record it with the rows
        used."""
        if not self.use_tla:
            return
        combos = candidate_combinations(
            self.M, self.tla_max_combinations, np.random.default_rng([trainer.seed, epoch, 7])
        )
        with self.evaluating():
            mined = mine_lazy(
                None,
                trainer.mining_batches(),
                self.info.names,
                self.info.task_kind,
                encode=self._encode_noting_steps,  # notes the batch's step masks: fuse's v^miss follows them
                fuse=self.fuse_embeddings,
                min_common=self.tla_min_common,
                combos=combos,
            )
        lazy = mined.lazy
        self.lazy = lazy
        if mined.rows != "common":
            log.info(
                "TLA epoch %d: %d common rows (< %d): each combination scored on the rows that hold it",
                epoch,
                mined.n_common,
                self.tla_min_common,
            )
        rec = {
            "epoch": epoch,
            "lazy": None if lazy is None else combination_name(lazy, self.info.names),
            "distances": mined.table,
            "rows": mined.rows,
            "n_common": mined.n_common,
            "n_scored": len(combos),
        }
        self.lazy_history.append(rec)
        trainer.record("lazy_combination", rec)

    @torch.no_grad()
    def label_free_weights(self, out: MethodOutput) -> dict[str, torch.Tensor] | None:
        """Eq. 10 with the class predicted by ``o`` in place of the true label (inference has no label), per
        modality: [B, C] per label (binary, multilabel) or [B] (multiclass); None without DWFuse's heads.
        Scoring names them ``weight_predicted_class_<modality>``."""
        if out.per_modality_logits is None:
            return None
        kind = self.info.task_kind
        p = torch.stack([predicted_class_probability(z, out.logits, kind) for z in out.per_modality_logits.values()])
        w = down_weights(p, self.beta)
        return {n: w[j] for j, n in enumerate(out.per_modality_logits)}


# ------------------------------------------------------------------------------------------------ variants
register_variant(
    "dwfuse_only",
    "omnifuse",
    {"dwfuse": True, "tla": False, "imp_fw": False, "imp_bw": False},
    description="OmniFuse with DWFuse only (no TLA, no imputation): the DWFuse row of table 3, row (b) of table 4",
)
register_variant(
    "omnifuse_no_imp",
    "omnifuse",
    {"imp_fw": False, "imp_bw": False},
    description="OmniFuse without forward and backward imputation (DWFuse and TLA kept)",
)

ABLATION_SWITCHES = ("dwfuse", "tla", "imp_fw", "imp_bw")
"""The OmniFuse switches of table 4's columns (DWFuse, TLA, IMP-fw, IMP-bw)."""

ABLATION_ROWS: dict[str, tuple[tuple[bool, bool, bool, bool], str]] = {
    "a": ((False, False, False, False), "every component off: encoders, concatenation, the joint head"),
    "b": ((True, False, False, False), "+ DWFuse (the DWFuse-only model of table 3)"),
    "c": ((True, True, False, False), "+ TLA"),
    "d": ((True, True, True, False), "+ forward imputation (CRA)"),
    "e": ((True, False, True, True), "DWFuse + IMP-fw + IMP-bw, TLA off (our reading of the row)"),
    "f": ((True, True, True, True), "everything (OmniFuse)"),
}
"""Table 4's rows: (switches in the order of :data:`ABLATION_SWITCHES`, reading). Row (e): the paper ticks three
of the four components but its text loses which. IMP-bw needs IMP-fw (the backward CRA reconstructs the
forward CRA's output) and leaving DWFuse out would break the table's cumulative reading, so (e) is (f) without
TLA; the paper's numbers agree ((e) mostly below (d) and (f), as removing TLA lowered (c) to (b))."""

for _row, (_switches, _reading) in ABLATION_ROWS.items():
    register_variant(
        f"ablation_{_row}",
        "omnifuse",
        dict(zip(ABLATION_SWITCHES, _switches, strict=True)),
        description=f"OmniFuse ablation, table 4 row ({_row}): {_reading}",
    )
