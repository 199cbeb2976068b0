"""Heads, task losses and modality dropout shared by OmniFuse's parts and the baselines.

Task kinds: ``binary`` and ``multilabel`` logits [B, C] with a sigmoid and binary cross-entropy per label
(labels [B, C] 0/1; binary has C = 1); ``multiclass`` logits [B, C] with softmax and cross-entropy (labels
[B] class indices).

- :func:`mlp_head`: a classifier head (Linear, or Linear-GELU-Dropout-Linear);
- :func:`probabilities`: logits to probabilities;
- :func:`true_class_probability`: the probability a prediction gives the true class;
- :func:`row_loss`, :func:`task_loss`, :func:`masked_mean`: per-row losses and their mean over selected rows;
- :func:`drop_modalities`: random modality dropout of a presence mask, per modality or per row;
- :func:`encode_present`: the shared backbone's embeddings of the present modalities only (what every
  method that never reads a missing slot's encoder output needs), each encoder run on the rows holding its
  modality, with the same numbers and random draws as running it on the whole batch.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from omnifuse.fuse import encoders as _encoders
from omnifuse.fuse.base import Batch

TASK_KINDS = ("binary", "multilabel", "multiclass")
DropUnit = Literal["modality", "row"]


# --------------------------------------------------------------------------------------------------------
# heads and probabilities
# --------------------------------------------------------------------------------------------------------
def mlp_head(in_dim: int, out_dim: int, hidden: int | None = None, dropout: float = 0.1) -> nn.Module:
    """A classifier head [B, in_dim] -> logits [B, out_dim]: ``Linear`` when ``hidden`` is falsy, else
    ``Linear(in_dim, hidden)``, GELU, ``Dropout(dropout)``, ``Linear(hidden, out_dim)``."""
    if not hidden:
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim))


def probabilities(logits: torch.Tensor, task_kind: str) -> torch.Tensor:
    """Logits [B, C] -> probabilities [B, C]: softmax for multiclass, a sigmoid per label otherwise."""
    return torch.softmax(logits, dim=-1) if task_kind == "multiclass" else torch.sigmoid(logits)


def check_targets(logits: torch.Tensor, y: torch.Tensor, kind: str) -> None:
    """Raise a clear error when labels ``y`` do not fit ``logits`` [B, C] for the task kind."""
    if kind == "multiclass":
        if y.dim() != 1 or y.shape[0] != logits.shape[0]:
            raise ValueError(f"multiclass labels must be [B] class indices, got {tuple(y.shape)}")
    elif kind in ("binary", "multilabel"):
        if y.shape != logits.shape:
            raise ValueError(f"{kind} labels must match logits {tuple(logits.shape)}, got {tuple(y.shape)}")
    else:
        raise ValueError(f"unknown task kind {kind!r}; expected one of {TASK_KINDS}")


def true_class_probability(
    logits: torch.Tensor, y: torch.Tensor, kind: str, *, mean_labels: bool = False
) -> torch.Tensor:
    """The probability the prediction gives the true class.

    Multiclass: softmax of the true class, [B]. Binary and multilabel: per label ``sigmoid(z)`` where
    ``y = 1`` and ``1 - sigmoid(z)`` where ``y = 0``, [B, C]; with ``mean_labels`` their mean over labels, [B].
    """
    check_targets(logits, y, kind)
    if kind == "multiclass":
        return torch.softmax(logits, dim=1).gather(1, y.long().clamp(min=0).unsqueeze(1)).squeeze(1)
    p = torch.sigmoid(logits)
    per_label = torch.where(y > 0.5, p, 1.0 - p)
    return per_label.mean(dim=1) if mean_labels else per_label


# --------------------------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------------------------
def row_loss(logits: torch.Tensor, y: torch.Tensor, kind: str, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row task loss [B]: cross-entropy (multiclass) or the mean over labels of binary cross-entropy.

    ``weight`` ([B], or [B, C] per label for binary/multilabel) scales each row's (label's) loss before the
    mean over labels."""
    check_targets(logits, y, kind)
    if kind == "multiclass":
        per = F.cross_entropy(logits, y.long().clamp(min=0), reduction="none")  # [B]
    else:
        per = F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype), reduction="none")  # [B, C]
    if weight is not None:
        per = per * (weight.unsqueeze(1) if weight.dim() < per.dim() else weight)
    return per.mean(dim=1) if per.dim() == 2 else per


def masked_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` [B] over rows where ``weight`` [B] (bool or float) is set, weighted; a zero that
    keeps the graph when no row is set."""
    w = weight.to(values.dtype)
    total = w.sum()
    if float(total) <= 0:
        return values.sum() * 0.0
    return (values * w).sum() / total


def task_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    kind: str,
    y_mask: torch.Tensor | None = None,
    *,
    rows: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """The mean task loss over the labelled rows (``y_mask`` [B] bool), restricted to ``rows`` [B] bool when
    given; the mean over all rows when neither is given.

    ``weight`` ([B] or [B, C], see :func:`row_loss`) scales the losses but not the count they are divided by
    (DWFuse's down-weighting: a down-weighted row still counts as a row). A zero that keeps the graph when no
    row is selected."""
    per = row_loss(logits, y, kind, weight)
    if y_mask is None and rows is None:
        return per.mean()
    if y_mask is None:
        sel = rows
    elif rows is None:
        sel = y_mask
    else:
        sel = y_mask.to(torch.bool) & rows.to(torch.bool)
    assert sel is not None
    return masked_mean(per, sel)


# --------------------------------------------------------------------------------------------------------
# modality dropout
# --------------------------------------------------------------------------------------------------------
def _one_present(mask: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """[B, M] one-hot of a present modality of each row, drawn uniformly (one [B, M] draw of ``generator``);
    a row with nothing present gets column 0."""
    r = torch.rand(mask.shape, generator=generator, device="cpu").to(mask.device)
    r = torch.where(mask, r, torch.full_like(r, -1.0))
    one = torch.zeros_like(mask)
    one[torch.arange(mask.shape[0], device=mask.device), r.argmax(dim=1)] = True
    return one


def drop_modalities(
    mask: torch.Tensor, p: float, generator: torch.Generator | None = None, *, unit: DropUnit = "modality"
) -> torch.Tensor:
    """Random modality dropout of a presence mask [B, M] bool -> [B, M] bool, a subset of ``mask``; a row
    never loses all its present modalities, and rows with nothing present stay empty.

    - ``unit="modality"``: each present modality of each row is dropped with probability ``p``; a row that
      would lose all of them keeps one, chosen uniformly (the baselines' dropout, mdrop);
    - ``unit="row"``: with probability ``p`` a row holding two or more modalities keeps a uniformly drawn
      non-empty proper subset of them (at least one kept, at least one dropped); for M = 3 with all present
      this draws the six patterns of OmniFuse's table 1 (the trainer's shared drop by default,
      ``TrainConfig.modality_drop_unit="row"``; OmniFuse's own when the shared drop is off).
    Random numbers come from ``generator`` (on the CPU; the global generator when None).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"drop probability must be in [0, 1], got {p}")
    if unit not in ("modality", "row"):
        raise ValueError(f"drop unit must be 'modality' or 'row', got {unit!r}")
    mask = mask.to(torch.bool)
    B, M = mask.shape
    if p == 0.0 or mask.numel() == 0 or (unit == "row" and M == 1):
        return mask.clone()
    dev = mask.device
    if unit == "modality":
        u = torch.rand(mask.shape, generator=generator, device="cpu").to(dev)
        keep = mask & (u >= p)
        emptied = mask.any(dim=1) & ~keep.any(dim=1)
        if bool(emptied.any()):
            keep = torch.where(emptied.unsqueeze(1), _one_present(mask, generator) & mask, keep)
        return keep
    u = torch.rand(B, generator=generator).to(dev)
    n_present = mask.sum(1)
    todo = (u < p) & (n_present >= 2)
    # a random subset of the present modalities by rejection: keep each with probability 1/2, accept when
    # it is non-empty and a proper subset; after 8 rounds about (1/2)^8 of the draws remain, which keep one
    keep = mask.clone()
    for _ in range(8):
        if not bool(todo.any()):
            break
        r = (torch.rand(B, M, generator=generator).to(dev) < 0.5) & mask
        ok = todo & r.any(1) & (r.sum(1) < n_present)
        keep[ok] = r[ok]
        todo &= ~ok
    if bool(todo.any()):
        keep[todo] = _one_present(mask, generator)[todo]
    return keep


# --------------------------------------------------------------------------------------------------------
# the backbone on the present rows only
# --------------------------------------------------------------------------------------------------------
_ROWWISE_ENCODERS = ("MLPEncoder", "TabularEncoder", "SequenceEncoder", "RecurrentEncoder")
"""Encoder classes of :mod:`omnifuse.fuse.encoders` known to act on each row alone (a row's output does not
depend on the other rows of the batch) and to apply their dropout to tensors whose first dimension is the
rows (a time series with a step mask is the exception: its dropout acts on packed steps, see
:func:`_subset_ok`)."""

_ROWWISE_PARTS: tuple[type[nn.Module], ...] = (
    nn.Sequential,
    nn.ModuleList,
    nn.Linear,
    nn.GELU,
    nn.ReLU,
    nn.LayerNorm,
    nn.Embedding,
    nn.GRU,
    nn.LSTM,
)
"""Module types an encoder may hold, besides plain :class:`torch.nn.Dropout` and the numeric embeddings of
:mod:`omnifuse.fuse.encoders`, for its rows to be computed apart (no batch statistics, no dropout of another
kind)."""

_ROWWISE_CACHE: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()


def _rowwise(encoder: nn.Module) -> bool:
    """Whether ``encoder`` is one of :data:`_ROWWISE_ENCODERS` built only of row-wise parts."""
    known = _ROWWISE_CACHE.get(encoder)
    if known is None:
        classes = tuple(c for n in _ROWWISE_ENCODERS if isinstance(c := getattr(_encoders, n, None), type))
        embeddings = tuple(
            c
            for n in ("PiecewiseLinearEmbedding", "PeriodicEmbedding")
            if isinstance(c := getattr(_encoders, n, None), type)
        )
        known = type(encoder) in classes
        for m in encoder.modules():
            if m is encoder or type(m) in classes or type(m) in embeddings:
                continue
            if type(m) is nn.Dropout:
                known = known and not m.inplace
            elif isinstance(m, nn.RNNBase):
                known = known and type(m) in _ROWWISE_PARTS and (m.num_layers == 1 or m.dropout == 0)
            else:
                known = known and type(m) in _ROWWISE_PARTS
        _ROWWISE_CACHE[encoder] = known
    return known


def _active_dropout(encoder: nn.Module) -> bool:
    return any(type(m) is nn.Dropout and m.training and m.p > 0 for m in encoder.modules())


@contextlib.contextmanager
def _dropout_of_rows(encoder: nn.Module, rows: torch.Tensor, n: int) -> Iterator[None]:
    """Inside the block, every dropout layer of ``encoder`` (run on the rows ``rows`` [k] of an ``n``-row batch)
    draws its random mask for all ``n`` rows and applies the mask's rows ``rows``: the draws and the numbers
    of ``torch.nn.functional.dropout`` on the whole batch (on the CPU that is ``input * noise``, ``noise`` a
    Bernoulli(1 - p) draw of the input's shape divided by 1 - p; :func:`_subset_ok` keeps other devices on
    the whole batch)."""
    layers = [m for m in encoder.modules() if type(m) is nn.Dropout]

    def rows_of_full(layer: nn.Dropout) -> Callable[[torch.Tensor], torch.Tensor]:
        def forward(x: torch.Tensor) -> torch.Tensor:
            p = float(layer.p)
            if not layer.training or p == 0 or x.numel() == 0:
                return x
            if x.shape[0] != rows.numel() or not x.is_contiguous():
                raise RuntimeError(
                    f"encode_present: a dropout layer of {type(encoder).__name__} got a {tuple(x.shape)} input, not "
                    f"a contiguous one of {rows.numel()} rows; this encoder cannot be run on the present rows only"
                )
            if p == 1:
                return x * torch.zeros((), dtype=x.dtype, device=x.device)
            noise = torch.empty((n, *x.shape[1:]), dtype=x.dtype, device=x.device).bernoulli_(1 - p)
            noise.div_(1 - p)
            return x * noise.index_select(0, rows)

        return forward

    for layer in layers:
        layer.forward = rows_of_full(layer)  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


def _subset_ok(encoder: nn.Module, batch: Batch, name: str) -> bool:
    """Whether ``encoder`` can be run on some rows of ``batch`` with the numbers and random draws of the whole
    batch: a row-wise encoder (:func:`_rowwise`), not a time series with a step mask (packed), and, while its
    dropout is active, a CPU batch (the CPU dropout is what :func:`_dropout_of_rows` reproduces)."""
    if not _rowwise(encoder):
        return False
    recurrent = getattr(_encoders, "RecurrentEncoder", None)
    if isinstance(recurrent, type) and isinstance(encoder, recurrent) and name in batch.tokens_mask:
        return False
    return batch.mask.device.type == "cpu" or not _active_dropout(encoder)


def encode_present(bank: Any, batch: Batch) -> torch.Tensor:
    """The backbone's embeddings of the present modalities: ``E`` [B, M, d], ``bank(batch)`` where
    ``batch.mask`` [B, M] holds and zero elsewhere (``bank`` an :class:`~omnifuse.fuse.encoders.EncoderBank`).

    For the methods that never read a missing slot's encoder output (they zero-fill, token-fill or skip it):
    each encoder runs on the rows holding its modality only. That gives the same numbers as the whole batch
    (up to float rounding of the smaller matrix products): the encoders act on each row alone, and in training
    each dropout layer still draws its random mask for every row of the batch, in the same order, and applies
    the present rows' part (:func:`_dropout_of_rows`), so the random stream and the dropout masks are those of
    ``bank(batch)``. A modality held by every row, an encoder not known to act row by row (:func:`_subset_ok`),
    and a modality held by no row while dropout is active (its draws must still be made) run on the whole
    batch, as ``bank.encode``; without active dropout a modality held by no row is not encoded at all."""
    names: list[str] = list(bank.names)
    mask = batch.mask.to(torch.bool)
    n = mask.shape[0]
    counts = mask.sum(0).tolist()
    out = []
    for m, name in enumerate(names):
        encoder = bank.encoders[m]
        keep = mask[:, m]
        if counts[m] == 0 and not _active_dropout(encoder):
            out.append(torch.zeros(n, bank.d, device=mask.device))
            continue
        if counts[m] in (0, n) or not _subset_ok(encoder, batch, name):
            e = bank.encode(batch, m)
            out.append(e if counts[m] == n else torch.where(keep.unsqueeze(1), e, torch.zeros_like(e)))
            continue
        rows = torch.nonzero(keep).squeeze(1)
        tm = batch.tokens_mask.get(name)
        with _dropout_of_rows(encoder, rows, n):
            e = encoder(batch.x[name].index_select(0, rows), None if tm is None else tm.index_select(0, rows))
        out.append(e.new_zeros(n, e.shape[1]).index_copy(0, rows, e))
    return torch.stack(out, dim=1)
