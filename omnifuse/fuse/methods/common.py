"""Shared parts of the baseline fusion methods (concat, sum, se_gate, gblend, ogm_ge, pmr, medfuse, mdrop).

- :class:`EncoderBank`: one encoder ``e_m`` per modality (``omnifuse.fuse.encoders.build_encoder``), stacked
  to ``E`` [B, M, d].
- :class:`MissingFill`: what a missing modality's slot holds: zeros (``"zero"``) or a learned per-modality
  token (``"token"``). Either way the encoder output of a missing row never reaches the fusion, so the
  values in a masked modality's input cannot change the prediction.
- :func:`task_loss`, :func:`row_loss`, :func:`true_class_prob`: the supervised loss and the probability of the
  true class for the three task kinds (binary and multilabel: sigmoid per label; multiclass: softmax).
- :class:`SupervisedFusion`: encoders, missing fill, a method-specific ``fuse`` and a head, trained with
  the plain task loss (concat, sum, se_gate, medfuse derive from it).
- :func:`iter_train_batches`: the one way methods ask the trainer for the training rows (G-Blend, PMR).
"""

from __future__ import annotations

import abc

import logging
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from omnifuse.fuse.base import Batch, FusionMethod, MethodOutput, ModelInfo

log = logging.getLogger(__name__)

TASK_KINDS = ("binary", "multilabel", "multiclass")
MISSING_MODES = ("zero", "token")


# --------------------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------------------
def check_info(info: ModelInfo) -> None:
    """Raise a clear error for a problem no method can be built for."""
    if info.task_kind not in TASK_KINDS:
        raise ValueError(f"unknown task kind {info.task_kind!r}; expected one of {TASK_KINDS}")
    if info.num_modalities < 1:
        raise ValueError("a fusion method needs at least one modality")
    if info.task_kind == "binary" and info.num_outputs != 1:
        raise ValueError(f"a binary task has one output, got num_outputs={info.num_outputs}")
    if info.task_kind == "multiclass" and info.num_outputs < 2:
        raise ValueError(f"a multiclass task needs at least 2 classes, got {info.num_outputs}")
    if info.num_outputs < 1:
        raise ValueError(f"num_outputs must be positive, got {info.num_outputs}")
    names = info.names
    if len(set(names)) != len(names):
        raise ValueError(f"modality names must be unique, got {names}")


def check_batch(info: ModelInfo, batch: Batch) -> None:
    """Raise a clear error when a batch does not match the modalities the method was built for."""
    names = info.names
    missing = [n for n in names if n not in batch.x]
    if missing:
        raise KeyError(f"batch lacks modality input(s) {missing}; the method was built for {names}")
    m = len(names)
    if batch.mask.dim() != 2 or batch.mask.shape[1] != m:
        raise ValueError(f"batch.mask must be [B, {m}] (one column per modality), got {tuple(batch.mask.shape)}")
    if [k for k in batch.x if k in names] != names:
        # Batch.with_mask relies on the dict order matching the mask columns.
        raise ValueError(f"batch.x must list the modalities in the order {names}, got {list(batch.x)}")


def check_missing_mode(missing: str) -> str:
    if missing not in MISSING_MODES:
        raise ValueError(f"missing must be one of {MISSING_MODES}, got {missing!r}")
    return missing


# --------------------------------------------------------------------------------------------------------
# encoders and missing slots
# --------------------------------------------------------------------------------------------------------
class EncoderBank(nn.Module):
    """One encoder per modality (eq. 1 of OmniFuse: v_m = e_m(x_m)), in the order of ``info.modalities``.

    ``forward(batch)`` -> ``E`` [B, M, d], the raw encoder outputs (a missing row gives the encoder's
    output for its zero input; :class:`MissingFill` decides what the fusion sees there).
    """

    def __init__(self, info: ModelInfo, d: int, encoder: dict[str, Any] | None = None) -> None:
        super().__init__()
        from omnifuse.fuse.encoders import build_encoder

        self.names = list(info.names)
        self.d = int(d)
        self.encoders = nn.ModuleList([build_encoder(mi, self.d, **dict(encoder or {})) for mi in info.modalities])

    def encode(self, batch: Batch, m: int) -> torch.Tensor:
        """[B, d] embedding of modality ``m``."""
        name = self.names[m]
        return self.encoders[m](batch.x[name], batch.tokens_mask.get(name))

    def forward(self, batch: Batch) -> torch.Tensor:
        return torch.stack([self.encode(batch, m) for m in range(len(self.names))], dim=1)


class MissingFill(nn.Module):
    """What a missing modality's slot holds: ``E`` [B, M, d], ``mask`` [B, M] -> [B, M, d].

    ``"zero"``: the slot is zero; ``"token"``: a learned vector per modality (init N(0, 0.02)).
    """

    def __init__(self, num_modalities: int, d: int, mode: str = "zero") -> None:
        super().__init__()
        self.mode = check_missing_mode(mode)
        self.token = nn.Parameter(torch.randn(num_modalities, d) * 0.02) if mode == "token" else None

    def forward(self, E: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keep = mask.to(torch.bool).unsqueeze(-1)  # [B, M, 1]
        if self.token is None:
            return torch.where(keep, E, torch.zeros_like(E))
        return torch.where(keep, E, self.token.unsqueeze(0).to(E.dtype).expand_as(E))


def mlp_head(in_dim: int, out_dim: int, hidden: int | None = None, dropout: float = 0.1) -> nn.Module:
    """A classifier head: Linear when ``hidden`` is falsy, else Linear-GELU-Dropout-Linear."""
    if not hidden:
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim))


# --------------------------------------------------------------------------------------------------------
# losses per task kind
# --------------------------------------------------------------------------------------------------------
def _check_targets(logits: torch.Tensor, y: torch.Tensor, kind: str) -> None:
    if kind == "multiclass":
        if y.dim() != 1 or y.shape[0] != logits.shape[0]:
            raise ValueError(f"multiclass labels must be [B] class indices, got {tuple(y.shape)}")
    elif kind in ("binary", "multilabel"):
        if y.shape != logits.shape:
            raise ValueError(f"{kind} labels must match logits {tuple(logits.shape)}, got {tuple(y.shape)}")
    else:
        raise ValueError(f"unknown task kind {kind!r}; expected one of {TASK_KINDS}")


def row_loss(logits: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-row task loss [B]: cross-entropy (multiclass) or mean over labels of binary cross-entropy."""
    _check_targets(logits, y, kind)
    if kind == "multiclass":
        return F.cross_entropy(logits, y.long().clamp(min=0), reduction="none")
    return F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype), reduction="none").mean(dim=1)


def masked_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` [B] over rows where ``weight`` [B] (bool or float) is set; 0 (graph kept) if none."""
    w = weight.to(values.dtype)
    total = w.sum()
    if float(total) <= 0:
        return values.sum() * 0.0
    return (values * w).sum() / total


def task_loss(logits: torch.Tensor, y: torch.Tensor, y_mask: torch.Tensor, kind: str,
              row_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean task loss over labelled rows (``y_mask``), optionally restricted/weighted by ``row_weight`` [B].

    A batch without a labelled row gives a zero that keeps the graph (no NaN)."""
    w = y_mask.to(logits.dtype)
    if row_weight is not None:
        w = w * row_weight.to(logits.dtype)
    return masked_mean(row_loss(logits, y, kind), w)


def true_class_prob(logits: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """[B] probability the prediction gives the true class: softmax of the true class (multiclass), or
    the mean over labels of sigmoid(z) where y = 1 and 1 - sigmoid(z) where y = 0 (binary, multilabel)."""
    _check_targets(logits, y, kind)
    if kind == "multiclass":
        return torch.softmax(logits, dim=1).gather(1, y.long().clamp(min=0).unsqueeze(1)).squeeze(1)
    p = torch.sigmoid(logits)
    yt = y.to(p.dtype)
    return (yt * p + (1 - yt) * (1 - p)).mean(dim=1)


def zero_with_graph(module: nn.Module, ref: torch.Tensor | None = None) -> torch.Tensor:
    """A scalar zero attached to the graph (so ``backward`` works when a term has no rows)."""
    if ref is not None:
        return ref.sum() * 0.0
    p = next(module.parameters())
    return p.sum() * 0.0


# --------------------------------------------------------------------------------------------------------
# the plain supervised family
# --------------------------------------------------------------------------------------------------------
class SupervisedFusion(FusionMethod):
    """Encoders, missing fill, ``fuse`` (subclass) and a head, trained with the task loss.

    Subclasses set ``self.fused_dim`` before calling :meth:`_build_head` and implement
    ``fuse(E [B, M, d], mask [B, M]) -> [B, fused_dim]``.
    """

    #: a masked modality's input values never reach the output (its slot is zero or a learned token)
    ignores_masked_inputs = True

    def __init__(self, info: ModelInfo, d: int, missing: str, dropout: float,
                 encoder: dict[str, Any] | None) -> None:
        check_info(info)
        super().__init__(info)
        self.d = int(d)
        self.enc = EncoderBank(info, self.d, encoder)
        self.fill = MissingFill(info.num_modalities, self.d, missing)
        self.drop = nn.Dropout(dropout)

    def _build_head(self, fused_dim: int, hidden: int | None, dropout: float) -> None:
        self.head = mlp_head(fused_dim, self.info.num_outputs, hidden, dropout)

    @abc.abstractmethod
    def fuse(self, E: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Fuse the filled modality embeddings ``E`` [B, M, d] (presence ``mask`` [B, M]) into [B, fused_dim]."""

    def forward(self, batch: Batch) -> MethodOutput:
        check_batch(self.info, batch)
        mask = batch.mask.to(torch.bool)
        E = self.fill(self.enc(batch), mask)
        h = self.fuse(E, mask)
        return MethodOutput(logits=self.head(self.drop(h)), extra={"embeddings": E})

    def loss(self, batch: Batch, out: MethodOutput) -> tuple[torch.Tensor, dict[str, float]]:
        loss = task_loss(out.logits, batch.y, batch.y_mask, self.info.task_kind)
        return loss, {"task": float(loss.detach())}


# --------------------------------------------------------------------------------------------------------
# the trainer, as seen by the methods
# --------------------------------------------------------------------------------------------------------
def iter_train_batches(trainer: Any) -> Iterable[Batch] | None:
    """Batches of training rows, unshuffled and without simulated drops, for estimates made at an epoch's
    start or end (G-Blend's checkpoint losses, PMR's per-epoch prototypes); ``None`` when the trainer offers
    none (methods then fall back to statistics gathered during the epoch).

    Looked up, in order: ``trainer.iter_train_batches()`` (any iterable of :class:`Batch`), then
    ``trainer.mining_batches()`` (``omnifuse.fuse.train.Trainer``: a fixed, bounded random subset of the
    training rows, ``TrainConfig.mining_rows``), then ``trainer.train_eval_loader``.
    """
    if trainer is None:
        return None
    for attr in ("iter_train_batches", "mining_batches"):
        fn = getattr(trainer, attr, None)
        if callable(fn):
            return fn()
    loader = getattr(trainer, "train_eval_loader", None)
    if loader is not None:
        return loader
    return None


def trainer_device(trainer: Any, module: nn.Module) -> torch.device:
    dev = getattr(trainer, "device", None)
    if dev is not None:
        return torch.device(dev)
    return next(module.parameters()).device


def batches_on(batches: Iterable[Batch], device: torch.device) -> Iterator[Batch]:
    for b in batches:
        yield b.to(device)


# --------------------------------------------------------------------------------------------------------
# modality dropout
# --------------------------------------------------------------------------------------------------------
def drop_modalities(mask: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random modality dropout: each present modality of each row is dropped with probability ``p``;
    a row that would lose all its present modalities keeps one of them, chosen uniformly.

    ``mask`` [B, M] bool -> [B, M] bool, a subset of ``mask``; rows with nothing present stay empty.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"drop probability must be in [0, 1], got {p}")
    mask = mask.to(torch.bool)
    if p == 0.0 or mask.numel() == 0:
        return mask.clone()
    u = torch.rand(mask.shape, generator=generator, device="cpu").to(mask.device)
    keep = mask & (u >= p)
    emptied = mask.any(dim=1) & ~keep.any(dim=1)
    if bool(emptied.any()):
        # pick one present modality uniformly: the argmax of random scores over present slots
        r = torch.rand(mask.shape, generator=generator, device="cpu").to(mask.device)
        r = torch.where(mask, r, torch.full_like(r, -1.0))
        pick = torch.zeros_like(mask)
        pick[torch.arange(mask.shape[0], device=mask.device), r.argmax(dim=1)] = True
        keep = torch.where(emptied.unsqueeze(1), pick & mask, keep)
    return keep
