"""Contracts of stage two: batches, method outputs, the fusion-method base class and the method registry.

Every fusion method (OmniFuse, the baselines, contrastive modality dropout) is a small function registered
with :func:`register_method`; one test sweeps the whole registry (timm style).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn


@dataclass
class ModalityInfo:
    """What a method needs to know about one cached modality.

    ``kind``: ``vector`` [D], ``sequence`` [L, D] with a token mask, ``timeseries`` [T, F], ``tabular`` [F].
    ``shape`` is the per-row input shape fed to the encoder (after normalisation, which may append
    observed-indicator columns).
    """

    name: str
    kind: str
    shape: tuple[int, ...]


@dataclass
class ModelInfo:
    """The problem a method is built for: modalities in a fixed order, the task kind and its outputs."""

    modalities: list[ModalityInfo]
    task_kind: str  # "binary" | "multilabel" | "multiclass"
    num_outputs: int  # 1 for binary, C for multilabel and multiclass

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.modalities]

    @property
    def num_modalities(self) -> int:
        return len(self.modalities)


@dataclass
class Batch:
    """A batch of rows. ``mask[:, m]`` is True where modality ``m`` is present (after simulated drops).

    ``x[name]``: [B, *shape] float32 (missing rows hold zeros); ``tokens_mask[name]``: [B, L] bool for
    sequence modalities; ``y``: [B, C] float32 (binary, multilabel) or [B] int64 (multiclass);
    ``y_mask``: [B] bool, rows that carry a label; ``index``: [B] row positions in the data.
    ``natural_mask``: [B, M] presence before simulated drops (what is really in the cache).
    """

    x: dict[str, torch.Tensor]
    mask: torch.Tensor
    y: torch.Tensor
    y_mask: torch.Tensor
    index: torch.Tensor
    tokens_mask: dict[str, torch.Tensor] = field(default_factory=dict)
    natural_mask: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(
            x={k: v.to(device) for k, v in self.x.items()},
            mask=self.mask.to(device),
            y=self.y.to(device),
            y_mask=self.y_mask.to(device),
            index=self.index.to(device),
            tokens_mask={k: v.to(device) for k, v in self.tokens_mask.items()},
            natural_mask=None if self.natural_mask is None else self.natural_mask.to(device),
        )

    def with_mask(self, mask: torch.Tensor) -> "Batch":
        """The same rows with another presence mask; inputs of newly masked modalities are zeroed."""
        x = {}
        for i, (name, v) in enumerate(self.x.items()):
            keep = mask[:, i].to(v.dtype).view(-1, *([1] * (v.dim() - 1)))
            x[name] = v * keep
        tm = {k: v & mask[:, list(self.x).index(k)].unsqueeze(1) for k, v in self.tokens_mask.items()}
        return Batch(x=x, mask=mask, y=self.y, y_mask=self.y_mask, index=self.index, tokens_mask=tm,
                     natural_mask=self.natural_mask)


@dataclass
class MethodOutput:
    """``logits``: the fused prediction [B, C] (multiclass) or [B, C] per-label logits (binary: C = 1)."""

    logits: torch.Tensor
    per_modality_logits: dict[str, torch.Tensor] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class FusionMethod(nn.Module, metaclass=abc.ABCMeta):
    """Base class of every fusion method.

    Subclasses implement :meth:`forward` and :meth:`loss`; the hooks are optional and called by the trainer.
    """

    info: ModelInfo

    def __init__(self, info: ModelInfo) -> None:
        super().__init__()
        self.info = info

    @abc.abstractmethod
    def forward(self, batch: Batch) -> MethodOutput:
        """The fused prediction (and per-modality logits where the method has them) for a batch."""

    @abc.abstractmethod
    def loss(self, batch: Batch, out: MethodOutput) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss and its named terms (floats) for a batch and its output."""

    # --- optional hooks -------------------------------------------------------------------------
    def train_drop(self, batch: Batch, generator: torch.Generator | None = None) -> Batch:
        """Method-specific modality dropout applied to training batches (default: none)."""
        return batch

    def on_train_start(self, trainer: Any) -> None:
        pass

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        pass

    def after_backward(self, batch: Batch, out: MethodOutput) -> None:
        pass

    def on_epoch_end(self, trainer: Any, epoch: int) -> None:
        pass


@dataclass
class MethodEntry:
    name: str
    build: Callable[..., FusionMethod]
    description: str
    paper: str
    defaults: dict[str, Any] = field(default_factory=dict)


METHODS: dict[str, MethodEntry] = {}


def register_method(name: str, *, description: str, paper: str, defaults: dict[str, Any] | None = None):
    """Register a builder ``fn(info: ModelInfo, **cfg) -> FusionMethod`` under ``name``."""

    def deco(fn: Callable[..., FusionMethod]) -> Callable[..., FusionMethod]:
        if name in METHODS:
            raise ValueError(f"fusion method {name!r} is registered twice")
        METHODS[name] = MethodEntry(name, fn, description, paper, dict(defaults or {}))
        return fn

    return deco


def get_method(name: str) -> MethodEntry:
    from omnifuse.fuse import methods as _  # noqa: F401  (populates the registry)

    if name not in METHODS:
        raise KeyError(f"unknown fusion method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def build_method(name: str, info: ModelInfo, **cfg: Any) -> FusionMethod:
    entry = get_method(name)
    params = {**entry.defaults, **cfg}
    return entry.build(info, **params)
