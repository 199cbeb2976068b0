"""Heads, task losses and modality dropout shared by OmniFuse's parts and the baselines.

Task kinds: ``binary`` and ``multilabel`` logits [B, C] with a sigmoid and binary cross-entropy per label
(labels [B, C] 0/1; binary has C = 1); ``multiclass`` logits [B, C] with softmax and cross-entropy (labels
[B] class indices).

- :func:`mlp_head`: a classifier head (Linear, or Linear-GELU-Dropout-Linear);
- :func:`probabilities`: logits to probabilities;
- :func:`true_class_probability`: the probability a prediction gives the true class;
- :func:`row_loss`, :func:`task_loss`, :func:`masked_mean`: per-row losses and their mean over selected rows;
- :func:`drop_modalities`: random modality dropout of a presence mask, per modality or per row.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

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
