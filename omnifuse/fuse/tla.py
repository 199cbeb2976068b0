"""Traceable laziness activation (TLA) of OmniFuse (paper eq. 15-17).

- eq. 15, mining: after each epoch, the training rows (a fixed, bounded subset) are predicted with every
  one of the ``2^M - 1`` modality combinations (the other modalities masked, then imputed by the CRA); the
  prediction is the joint output ``o``; per combination the sample-wise cross-entropies are averaged, and the
  combination with the largest mean distance is the lazy one. The paper sums every combination over the
  same rows; we do so on the **common rows** (labelled rows holding every modality) when there are at least
  ``min_common`` of them (:data:`MIN_COMMON_ROWS`, 100), so that case mix cannot decide which combination
  looks lazy. With fewer, each combination is scored on the rows that hold all of its modalities (a row
  lacking one cannot show that combination; a combination with no such row is not a candidate), and the
  result says so (``rows="per_combination"``).
- many modalities: ``2^M - 1`` grows fast (255 combinations at M = 8, each a pass over the mining rows), so
  at most ``max_combinations`` (:data:`MAX_COMBINATIONS`, 31 = 2^5 - 1: every combination up to M = 5, the
  paper's M = 3 included) are scored per epoch (:func:`candidate_combinations`): every modality alone, every
  combination leaving one out and all of them, then a seeded uniform sample of the others, drawn afresh each
  epoch. This bound is ours (the paper has M = 3); the table of each epoch lists the combinations scored;
- eq. 16: in the next epoch the mask selects the rows whose modalities, after that epoch's random drops,
  equal the lazy combination;
- eq. 17: ``L_TLA = CE(o[mask], y[mask])``.
The mined combination of each epoch is returned for logging (the "traceable" part).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import numpy as np
import torch

from omnifuse.fuse.base import Batch
from omnifuse.fuse.layers import row_loss, task_loss


def all_combinations(M: int) -> list[tuple[bool, ...]]:
    """The ``2^M - 1`` non-empty modality combinations, as presence tuples, by increasing bit pattern."""
    return [tuple(bool((c >> m) & 1) for m in range(M)) for c in range(1, 2**M)]


def combination_name(combo: tuple[bool, ...] | list[bool], names: list[str]) -> str:
    return "+".join(n for n, keep in zip(names, combo, strict=True) if keep)


MAX_COMBINATIONS = 31
"""The most combinations :func:`mine_lazy` scores per epoch by default (2^5 - 1: all of them up to M = 5)."""


def candidate_combinations(
    M: int, max_combinations: int = MAX_COMBINATIONS, rng: np.random.Generator | None = None
) -> list[tuple[bool, ...]]:
    """The combinations TLA scores in one epoch: all ``2^M - 1`` when there are at most ``max_combinations``;
    otherwise every single modality, every leave-one-out and the full set (``2M + 1``, always kept, even past
    the bound), then a uniform sample without replacement of the other combinations drawn with ``rng`` up to
    ``max_combinations``; in increasing bit pattern."""
    if max_combinations < 1:
        raise ValueError(f"max_combinations must be >= 1, got {max_combinations}")
    total = 2**M - 1
    if total <= max_combinations:
        return all_combinations(M)
    full = total
    structured = {1 << m for m in range(M)} | {full ^ (1 << m) for m in range(M)} | {full}
    others = np.array([c for c in range(1, total + 1) if c not in structured], dtype=np.int64)
    k = max(0, min(max_combinations - len(structured), others.size))
    rng = rng if rng is not None else np.random.default_rng(0)
    picked = set(rng.choice(others, size=k, replace=False).tolist()) if k else set()
    return [tuple(bool((c >> m) & 1) for m in range(M)) for c in sorted(structured | picked)]


MIN_COMMON_ROWS = 100
"""Mining scores every combination on the common rows (labelled, every modality present) when at least this
many of the mining rows are common; otherwise each combination on the rows that hold it."""


class Mining(NamedTuple):
    """The result of :func:`mine_lazy`: the lazy combination (None when no combination had a row), per
    combination name ``{"distance": mean CE, "n": rows}``, which rows scored the combinations (``"common"``
    or ``"per_combination"``) and how many common rows there were."""

    lazy: tuple[bool, ...] | None
    table: dict[str, dict[str, float]]
    rows: str
    n_common: int


MINING_ROWS_PER_PASS = 16384
"""The fast path of :func:`mine_lazy` fuses the (row, combination) pairs of a batch in passes of at most this
many pairs (31 combinations x 512 rows at the default settings: one pass)."""


@torch.no_grad()
def mine_lazy(
    joint_logits: Callable[[Batch], torch.Tensor] | None,
    batches: Iterable[Batch],
    names: list[str],
    task_kind: str,
    *,
    encode: Callable[[Batch], torch.Tensor] | None = None,
    fuse: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    min_common: int = MIN_COMMON_ROWS,
    combos: Sequence[tuple[bool, ...]] | None = None,
    rows_per_pass: int = MINING_ROWS_PER_PASS,
) -> Mining:
    """Eq. 15: the lazy combination ``argmax_i mean_rows D(o_i, y)`` over all combinations.

    ``joint_logits(batch) -> o`` [B, C] (the model in eval mode); ``batches`` the mining rows (their
    ``mask`` is what they hold). The distance ``D(o, y)`` is the sample-wise cross-entropy [B]
    (:func:`omnifuse.fuse.layers.row_loss`; multilabel: the mean over labels). The rows: the common rows
    (labelled, holding every modality) for every combination when there are at least ``min_common`` of them,
    else for each combination the labelled rows holding all its modalities (in the first case only the common
    rows are passed through the model). Returns a :class:`Mining`.

    Fast path (same result): with ``encode(batch) -> v`` [B, M, d] (eq. 1, the true embeddings) and
    ``fuse(v, mask) -> o`` (eq. 2-5 and 11 from embeddings [n, M, d] and presence masks [n, M]; row by row:
    a row's output depends on that row alone), each batch is encoded once and the (row, combination) pairs
    of every combination are fused together, in passes of at most ``rows_per_pass`` pairs: the cost of the
    modality encoders no longer grows with ``2^M - 1`` and one batched pass replaces one pass per
    combination (the same numbers up to float rounding). ``combos``: the candidate combinations (default all
    ``2^M - 1``; see :func:`candidate_combinations`)."""
    if joint_logits is None and (encode is None or fuse is None):
        raise ValueError("mine_lazy needs joint_logits, or both encode and fuse")
    if rows_per_pass < 1:
        raise ValueError(f"rows_per_pass must be >= 1, got {rows_per_pass}")
    M = len(names)
    combos = list(combos) if combos is not None else all_combinations(M)
    # [0]: every eligible row of a combination; [1]: the common rows only (accumulated together, one pass)
    sums = torch.zeros(2, len(combos), dtype=torch.float64)
    counts = torch.zeros(2, len(combos), dtype=torch.long)
    batches = list(batches)
    n_common = sum(int((b.mask.all(1) & b.y_mask.to(torch.bool)).sum()) for b in batches)
    only_common = n_common >= max(int(min_common), 1)
    for batch in batches:
        if only_common:  # the result reads the common rows only: the other rows need no pass (same result)
            batch = batch.select(batch.mask.all(1) & batch.y_mask.to(torch.bool))
            if batch.mask.shape[0] == 0:
                continue
        labelled = batch.y_mask.to(torch.bool)
        common = batch.mask.all(1) & labelled
        if encode is not None and fuse is not None:
            _fuse_every_combination(
                encode(batch), batch, combos, common, labelled, fuse, task_kind, sums, counts, rows_per_pass
            )
            continue
        assert joint_logits is not None  # checked above
        for i, combo in enumerate(combos):
            c = torch.tensor(combo, dtype=torch.bool, device=batch.mask.device)
            eligible = (batch.mask | ~c).all(1) & labelled  # rows holding every modality of the combination
            if not bool(eligible.any()):
                continue
            sub = batch.select(eligible)
            sub = sub.with_mask(c.unsqueeze(0).expand_as(sub.mask).clone())
            d = row_loss(joint_logits(sub), sub.y, task_kind).double().cpu()
            on_common = common[eligible].cpu()
            sums[0, i] += float(d.sum())
            counts[0, i] += int(d.numel())
            sums[1, i] += float(d[on_common].sum())
            counts[1, i] += int(on_common.sum())
    r = 1 if only_common else 0
    table = {}
    best, best_d = None, -float("inf")
    for i, combo in enumerate(combos):
        if counts[r, i] == 0:
            continue
        dist = float(sums[r, i] / counts[r, i])
        table[combination_name(combo, names)] = {"distance": dist, "n": int(counts[r, i])}
        if dist > best_d:
            best, best_d = combo, dist
    return Mining(best, table, "common" if only_common else "per_combination", n_common)


def _fuse_every_combination(
    v: torch.Tensor,
    batch: Batch,
    combos: Sequence[tuple[bool, ...]],
    common: torch.Tensor,
    labelled: torch.Tensor,
    fuse: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    task_kind: str,
    sums: torch.Tensor,
    counts: torch.Tensor,
    rows_per_pass: int,
) -> None:
    """The fast path of :func:`mine_lazy` for one batch: ``v`` [B, M, d] its embeddings; every (combination,
    eligible row) pair is fused, in passes of at most ``rows_per_pass`` pairs, and the sample-wise distances
    are added per combination to ``sums`` [2, K] (float64; row 0 every eligible row, row 1 the common rows)
    and ``counts`` [2, K]."""
    dev = batch.mask.device
    c = torch.tensor(combos, dtype=torch.bool, device=dev).reshape(len(combos), v.shape[1])  # [K, M]
    # eligible[i, r]: row r is labelled and holds every modality of combination i
    eligible = (batch.mask.unsqueeze(0) | ~c.unsqueeze(1)).all(2) & labelled.unsqueeze(0)  # [K, B]
    ki, ri = eligible.nonzero(as_tuple=True)  # pairs by combination, then row
    for s in range(0, int(ki.numel()), rows_per_pass):
        k, r = ki[s : s + rows_per_pass], ri[s : s + rows_per_pass]
        d = row_loss(fuse(v[r], c[k]), batch.y[r], task_kind).double().cpu()  # [n]
        k, on_common = k.cpu(), common[r].cpu()
        sums[0].index_add_(0, k, d)
        counts[0].index_add_(0, k, torch.ones_like(k))
        sums[1].index_add_(0, k[on_common], d[on_common])
        counts[1].index_add_(0, k[on_common], torch.ones_like(k[on_common]))


def lazy_mask(mask: torch.Tensor, lazy: tuple[bool, ...] | torch.Tensor) -> torch.Tensor:
    """Eq. 16: [B, M] presence -> [B] bool, True where the row's modalities equal the lazy combination."""
    c = torch.as_tensor(lazy, dtype=torch.bool, device=mask.device)
    return (mask == c.unsqueeze(0)).all(1)


def tla_loss(
    joint_logits: torch.Tensor, y: torch.Tensor, sel: torch.Tensor, task_kind: str, y_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Eq. 17: ``CE(o[mask], y[mask])``, mean over the selected (``sel`` [B] bool) labelled rows; zero (with a
    graph) when none."""
    return task_loss(joint_logits, y, task_kind, y_mask, rows=sel)
