"""Shared parts of the baseline fusion methods (concat, sum, se_gate, gblend, ogm_ge, pmr, medfuse, mdrop).

- :func:`check_info`, :func:`check_batch`: clear errors for a problem or a batch a method cannot take;
- :class:`~omnifuse.fuse.encoders.EncoderBank` (re-exported here): one encoder ``e_m`` per modality, the
  shared backbone (``omnifuse.fuse.encoders.BACKBONE``), stacked to ``E`` [B, M, d];
- :class:`MissingFill`: what a missing modality's slot holds: zeros (``"zero"``) or a learned per-modality
  token (``"token"``). Either way the encoder output of a missing row never reaches the fusion, so the
  values in a masked modality's input cannot change the prediction;
- :class:`SupervisedFusion`: encoders, missing fill, a method-specific ``fuse`` and a head, trained with
  the plain task loss (concat, sum, se_gate, medfuse derive from it); :class:`PoolingFusion`, the same
  when the fusion has no parameters of its own (concat, sum);
- :func:`batches_on`: batches moved to a device (for estimates on the trainer's mining batches);
- :func:`parameter_count`: an entry's trainable parameters, total, encoders (the backbone) and fusion
  (exported by :mod:`omnifuse.fuse.methods`, whose import fills the registry).

Heads, losses and modality dropout are :mod:`omnifuse.fuse.layers`' (shared with OmniFuse).
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from omnifuse.fuse.base import Batch, FusionMethod, MethodOutput, ModelInfo
from omnifuse.fuse.encoders import BACKBONE, EncoderBank
from omnifuse.fuse.layers import TASK_KINDS, encode_present, mlp_head, task_loss
from omnifuse.fuse.registry import build_method, get_method

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


# --------------------------------------------------------------------------------------------------------
# the plain supervised family
# --------------------------------------------------------------------------------------------------------
class SupervisedFusion(FusionMethod):
    """Encoders, missing fill, ``fuse`` (subclass) and a head, trained with the task loss.

    Subclasses build their fusion's own modules, then call :meth:`_build_head` with the fused width, and
    implement ``fuse(E [B, M, d], mask [B, M]) -> [B, fused_dim]``.
    """

    ignores_masked_inputs = True

    def __init__(self, info: ModelInfo, d: int, missing: str, dropout: float, encoder: dict[str, Any] | None) -> None:
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
        E = self.fill(encode_present(self.enc, batch), mask)  # a missing slot is filled: never encoded
        h = self.fuse(E, mask)
        return MethodOutput(logits=self.head(self.drop(h)), extra={"embeddings": E})

    def loss(self, batch: Batch, out: MethodOutput) -> tuple[torch.Tensor, dict[str, float]]:
        loss = task_loss(out.logits, batch.y, self.info.task_kind, batch.y_mask)
        return loss, {"task": float(loss.detach())}


POOLING_DEFAULTS: dict[str, Any] = {"d": BACKBONE.d, "missing": "zero", "hidden": 64, "dropout": 0.1, "encoder": {}}
"""Defaults of :class:`PoolingFusion` methods: the backbone's d (64), missing="zero", head hidden=64, dropout=0.1."""


class PoolingFusion(SupervisedFusion):
    """A :class:`SupervisedFusion` whose ``fuse`` has no parameters (concat, sum): the head reads
    :meth:`fused_dim` features. Options: ``d``, ``missing`` ("zero" or "token"), ``hidden`` (head width; falsy:
    a linear head), ``dropout``, ``encoder`` (options of ``build_encoder``)."""

    def __init__(
        self,
        info: ModelInfo,
        d: int = BACKBONE.d,
        missing: str = "zero",
        hidden: int | None = 64,
        dropout: float = 0.1,
        encoder: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(info, d, missing, dropout, encoder)
        self._build_head(self.fused_dim(), hidden, dropout)

    @abc.abstractmethod
    def fused_dim(self) -> int:
        """The width of ``fuse``'s output."""


def batches_on(batches: Iterable[Batch], device: torch.device) -> Iterator[Batch]:
    """``batches`` moved to ``device``, one at a time."""
    for b in batches:
        yield b.to(device)


def parameter_count(name: str, info: ModelInfo, **params: Any) -> dict[str, int] | None:
    """The trainable parameters of registry entry ``name`` built for ``info`` (its defaults, then ``params``):
    ``{"total": n, "encoders": the modality encoders' (the shared backbone), "fusion": the rest}``; None for a
    reference learner (no network). The network is built on torch's meta device: no memory, no time. Call it
    through :mod:`omnifuse.fuse.methods` (the full registry)."""
    if get_method(name).kind == "reference":
        return None
    with torch.device("meta"):
        model = build_method(name, info, **params)
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    banks = [m for m in model.modules() if isinstance(m, EncoderBank)]
    encoders = sum(p.numel() for bank in banks for p in bank.parameters() if p.requires_grad)
    return {"total": total, "encoders": encoders, "fusion": total - encoders}
