"""Contracts of stage two: modality and model descriptions, batches, method outputs, the view of the trainer
that methods get in their hooks, and the fusion-method base class (the method protocol).

The registry of methods lives in :mod:`omnifuse.fuse.registry` and is filled and exported by
:mod:`omnifuse.fuse.methods`; this module holds only the contracts, so it imports nothing of either.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn


@dataclass
class ModalityInfo:
    """What a method needs to know about one cached modality.

    ``kind``: ``vector`` [D], ``sequence`` [L, D] with a token mask, ``timeseries`` [T, F], ``tabular`` [F].
    ``shape`` is the per-row input shape fed to the encoder (after normalisation, which may append
    observed-indicator columns).

    Tabular modalities normalised by a version-3 normaliser also carry, per encoder input column (length
    ``shape[-1]``): ``feature_kinds`` -- ``"numeric"`` (a scaled value), ``"binary"`` (read as it is: binary
    and pass-through columns, observed-indicators) or ``"categorical:<n>"`` (an embedding index 0..n, 0 the
    missing index) -- and ``bin_edges``, the piecewise-linear-encoding bin edges of each numeric column (None
    for the others). None (the default, and every model saved before them): a plain MLP reads every column.
    Both are written into ``model.json`` (:meth:`to_json`) so a saved model rebuilds identically.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    feature_kinds: tuple[str, ...] | None = None
    bin_edges: tuple[tuple[float, ...] | None, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``model.json`` entry of this modality (``feature_kinds`` and ``bin_edges`` only when set)."""
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "shape": list(self.shape)}
        if self.feature_kinds is not None:
            out["feature_kinds"] = list(self.feature_kinds)
        if self.bin_edges is not None:
            out["bin_edges"] = [None if e is None else list(e) for e in self.bin_edges]
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModalityInfo:
        """The inverse of :meth:`to_json` (an entry without kinds, from an older ``model.json``, gives None)."""
        kinds = d.get("feature_kinds")
        edges = d.get("bin_edges")
        return cls(
            str(d["name"]),
            str(d["kind"]),
            tuple(int(s) for s in d["shape"]),
            feature_kinds=None if kinds is None else tuple(str(k) for k in kinds),
            bin_edges=None
            if edges is None
            else tuple(None if e is None else tuple(float(v) for v in e) for e in edges),
        )


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

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            x={k: v.to(device) for k, v in self.x.items()},
            mask=self.mask.to(device),
            y=self.y.to(device),
            y_mask=self.y_mask.to(device),
            index=self.index.to(device),
            tokens_mask={k: v.to(device) for k, v in self.tokens_mask.items()},
            natural_mask=None if self.natural_mask is None else self.natural_mask.to(device),
        )

    def select(self, rows: torch.Tensor) -> Batch:
        """The rows picked by ``rows`` ([B] bool, or [n] positions), every field sliced alike."""
        return Batch(
            x={k: v[rows] for k, v in self.x.items()},
            mask=self.mask[rows],
            y=self.y[rows],
            y_mask=self.y_mask[rows],
            index=self.index[rows],
            tokens_mask={k: v[rows] for k, v in self.tokens_mask.items()},
            natural_mask=None if self.natural_mask is None else self.natural_mask[rows],
        )

    def with_mask(self, mask: torch.Tensor) -> Batch:
        """The same rows with another presence mask; inputs of newly masked modalities are zeroed."""
        x = {}
        for i, (name, v) in enumerate(self.x.items()):
            keep = mask[:, i].to(v.dtype).view(-1, *([1] * (v.dim() - 1)))
            x[name] = v * keep
        tm = {k: v & mask[:, list(self.x).index(k)].unsqueeze(1) for k, v in self.tokens_mask.items()}
        return Batch(
            x=x,
            mask=mask,
            y=self.y,
            y_mask=self.y_mask,
            index=self.index,
            tokens_mask=tm,
            natural_mask=self.natural_mask,
        )


@dataclass
class DroppedBatch(Batch):
    """A training batch after a modality drop: ``mask`` [B, M] what the method may see, ``source`` the batch
    before the drop (the truth of the dropped modalities, e.g. OmniFuse's imputation targets) and ``dropped``
    [B, M] the modalities removed on purpose (present in ``source``, absent in ``mask``). The Trainer's shared
    drop (``TrainConfig.modality_drop``) makes one; a method's own ``train_drop`` returns it unchanged."""

    source: Batch = field(kw_only=True)
    dropped: torch.Tensor = field(kw_only=True)

    @classmethod
    def drop(cls, batch: Batch, keep: torch.Tensor) -> DroppedBatch:
        """``batch`` with only the modalities in ``keep`` [B, M] (a subset of ``batch.mask``)."""
        nb = batch.with_mask(keep)
        return cls(
            x=nb.x,
            mask=keep,
            y=nb.y,
            y_mask=nb.y_mask,
            index=nb.index,
            tokens_mask=nb.tokens_mask,
            natural_mask=batch.natural_mask,
            source=batch,
            dropped=batch.mask & ~keep,
        )


@dataclass
class MethodOutput:
    """``logits``: the fused prediction [B, C] (multiclass) or [B, C] per-label logits (binary: C = 1)."""

    logits: torch.Tensor
    per_modality_logits: dict[str, torch.Tensor] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class TrainerView(Protocol):
    """What a method sees of the trainer in its hooks (``omnifuse.fuse.trainer.Trainer`` implements it).

    ``epoch``: the current epoch (0-based); ``fold``: the fold being trained; ``seed``: the fold's seed;
    ``device``: where batches and the model live; ``train_rows``: the training rows (positions in the data,
    without the inner validation rows); ``generator``: the trainer's CPU generator (shuffling, drops).
    """

    epoch: int
    fold: int
    seed: int
    device: torch.device
    train_rows: np.ndarray
    generator: torch.Generator

    def mining_batches(self) -> list[Batch]:
        """A fixed, bounded random subset of the training rows as evaluation batches (no simulated drops, no
        shuffling; the same batches at every call of a fold). Empty when the run asks for no mining rows."""
        ...

    def batches(self, rows: np.ndarray) -> list[Batch]:
        """``rows`` (positions in the data) as evaluation batches, in order: normalised like training batches,
        without drops (G-Blend's estimates over all its training rows)."""
        ...

    def record(self, key: str, value: object) -> None:
        """Keep ``value`` under ``key`` in the fold's records (e.g. TLA's lazy combination per epoch)."""
        ...


class FusionMethod(nn.Module, metaclass=abc.ABCMeta):
    """Base class of every fusion method: the method protocol.

    Subclasses implement :meth:`forward` and :meth:`loss`. Everything else has a default the trainer relies
    on; the trainer calls, per fold: :meth:`configure_optimizer`, :meth:`on_train_start`, then per epoch
    :meth:`on_epoch_start`, per training batch :meth:`train_drop`, ``forward``, :meth:`loss`, ``backward``,
    :meth:`after_backward` (before gradient clipping and the optimiser step), and :meth:`on_epoch_end`.
    Model selection and patience start at epoch :attr:`selection_start_epoch`. Scoring
    (:func:`omnifuse.fuse.predict.predict`) also reports :meth:`label_free_weights`.
    """

    info: ModelInfo
    #: the first epoch whose validation score means anything (mdrop's contrastive stage trains no classifier)
    selection_start_epoch: int = 0
    #: a masked modality's input values never reach the output (its slot is zero or a learned token)
    ignores_masked_inputs: bool = False

    def __init__(self, info: ModelInfo) -> None:
        super().__init__()
        self.info = info

    @abc.abstractmethod
    def forward(self, batch: Batch) -> MethodOutput:
        """The fused prediction (and per-modality logits where the method has them) for a batch."""

    @abc.abstractmethod
    def loss(self, batch: Batch, out: MethodOutput) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss and its named terms (floats) for a batch and its output."""

    def configure_optimizer(self, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        """The optimiser of the run: AdamW over the parameters that require a gradient, its multi-tensor
        (``foreach``) implementation (the same updates as the per-parameter loop, value for value)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=True)

    def label_free_weights(self, out: MethodOutput) -> dict[str, torch.Tensor] | None:
        """Per-modality weights that need no label, for scoring (OmniFuse: eq. 10 with the predicted class):
        ``{modality: [B] or [B, C]}``; None when the method has none (the default)."""
        return None

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Eval mode inside the block (for estimates made in the hooks), the previous mode restored after."""
        was = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was)

    # --- hooks (defaults do nothing) -----------------------------------------------------------------
    def train_drop(self, batch: Batch, generator: torch.Generator | None = None) -> Batch:
        """Method-specific modality dropout applied to training batches (default: none)."""
        return batch

    def on_train_start(self, trainer: TrainerView) -> None:
        """Once per fold, before the first epoch."""

    def on_epoch_start(self, trainer: TrainerView, epoch: int) -> None:
        """Before the epoch's first training batch."""

    def after_backward(self, batch: Batch, out: MethodOutput) -> None:
        """After ``loss.backward()``, before gradient clipping and the optimiser step (OGM-GE modulates here)."""

    def on_epoch_end(self, trainer: TrainerView, epoch: int) -> None:
        """After the epoch's last training batch, before validation (TLA mining, G-Blend re-estimation)."""
