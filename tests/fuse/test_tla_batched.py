"""The batched fast path of TLA mining (:func:`omnifuse.fuse.tla.mine_lazy` with ``encode`` and ``fuse``): every
(combination, row) pair fused together, in passes of at most ``rows_per_pass`` pairs, gives the distances of
a brute force over combinations and rows, and of masking and re-encoding each combination with the model."""

from __future__ import annotations

import math

import pytest
import torch

from omnifuse.fuse.base import Batch, ModalityInfo, ModelInfo
from omnifuse.fuse.methods.omnifuse import OmniFuse
from omnifuse.fuse.tla import all_combinations, candidate_combinations, combination_name, mine_lazy

NAMES = ["a", "b", "c", "d"]


def _batch(n: int, seed: int, p_present: float = 0.75) -> Batch:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n, len(NAMES), generator=g) < p_present
    mask[:, 0] |= ~mask.any(1)  # every row holds something
    y = (torch.rand(n, 1, generator=g) > 0.6).float()
    y_mask = torch.rand(n, generator=g) > 0.1
    return Batch(x={}, mask=mask, y=y, y_mask=y_mask, index=torch.arange(n))


def _encode(b: Batch) -> torch.Tensor:
    """[B, M, 1]: a value per (row, modality) that depends on the row's index only."""
    i = b.index.double().unsqueeze(1)
    return (torch.sin(i * (1 + torch.arange(len(NAMES)).double())) * 2).float().unsqueeze(-1)


def _fuse(v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row-wise: the logit is the sum of the present slots' values (masked slots count -0.3 each)."""
    return torch.where(mask.unsqueeze(-1), v, torch.full_like(v, -0.3)).sum(1)


def _brute_force(batches: list[Batch], combos, min_common: int) -> dict[str, dict[str, float]]:
    """Eq. 15 by hand: per combination the mean binary cross-entropy of ``_fuse`` over the rows that count."""
    n_common = sum(int((b.mask.all(1) & b.y_mask).sum()) for b in batches)
    out = {}
    for combo in combos:
        losses = []
        for b in batches:
            v = _encode(b)
            for r in range(b.mask.shape[0]):
                holds = all(bool(b.mask[r, m]) or not combo[m] for m in range(len(NAMES)))
                common = bool(b.mask[r].all()) and bool(b.y_mask[r])
                if not bool(b.y_mask[r]) or not holds or (n_common >= min_common and not common):
                    continue
                z = sum(float(v[r, m, 0]) if combo[m] else -0.3 for m in range(len(NAMES)))
                y = float(b.y[r, 0])
                losses.append(-(y * math.log(1 / (1 + math.exp(-z))) + (1 - y) * math.log(1 / (1 + math.exp(z)))))
        if losses:
            out[combination_name(combo, NAMES)] = {"distance": sum(losses) / len(losses), "n": len(losses)}
    return out


@pytest.mark.parametrize("min_common", [1, 10_000])  # the common rows only / each combination on its own rows
@pytest.mark.parametrize("rows_per_pass", [1, 7, 16384])
def test_batched_mining_equals_a_brute_force(min_common, rows_per_pass):
    batches = [_batch(23, 1), _batch(9, 2)]
    batches[1] = Batch(x={}, mask=batches[1].mask, y=batches[1].y, y_mask=batches[1].y_mask,
                       index=batches[1].index + 23)
    combos = all_combinations(len(NAMES))
    want = _brute_force(batches, combos, min_common)
    got = mine_lazy(None, batches, NAMES, "binary", encode=_encode, fuse=_fuse, min_common=min_common,
                    combos=combos, rows_per_pass=rows_per_pass)
    assert got.rows == ("common" if min_common == 1 else "per_combination")
    assert got.table.keys() == want.keys()
    for k in want:
        assert got.table[k]["n"] == want[k]["n"]
        assert got.table[k]["distance"] == pytest.approx(want[k]["distance"], rel=1e-6)
    lazy_name = max(want, key=lambda k: want[k]["distance"])
    assert combination_name(got.lazy, NAMES) == lazy_name


def test_rows_per_pass_must_be_positive():
    with pytest.raises(ValueError, match="rows_per_pass"):
        mine_lazy(None, [_batch(4, 0)], NAMES, "binary", encode=_encode, fuse=_fuse, rows_per_pass=0)


@pytest.mark.parametrize("kind,C", [("binary", 1), ("multilabel", 2), ("multiclass", 3)])
def test_batched_mining_of_an_omnifuse_model_equals_masking_each_combination(kind, C):
    """The model's own fast path (encode once, fuse every (combination, row) pair in one pass) against masking the
    batch and running the whole model once per combination: the same lazy combination, rows and distances."""
    torch.manual_seed(0)
    mods = [ModalityInfo("img", "vector", (6,)), ModalityInfo("rep", "sequence", (4, 5)),
            ModalityInfo("ehr", "timeseries", (3, 4)), ModalityInfo("tab", "vector", (3,))]
    info = ModelInfo(mods, kind, C)
    model = OmniFuse(info, d=8, K=2, cra_hidden=16, latent=4, head_hidden=8).eval()
    g = torch.Generator().manual_seed(3)
    n = 40
    x = {m.name: torch.randn(n, *m.shape, generator=g) for m in mods}
    if kind == "multiclass":
        y = torch.randint(0, C, (n,), generator=g)
    else:
        y = (torch.rand(n, C, generator=g) > 0.5).float()
    mask = torch.rand(n, 4, generator=g) > 0.3
    b = Batch(x=x, mask=mask, y=y, y_mask=torch.ones(n, dtype=torch.bool), index=torch.arange(n),
              tokens_mask={"rep": torch.ones(n, 4, dtype=torch.bool)}).with_mask(mask)
    combos = candidate_combinations(4, 9, None)  # 9 of the 15 (the structured ones and a sample)
    for min_common in (1, 1000):
        slow = mine_lazy(model.joint_logits, [b], info.names, kind, min_common=min_common, combos=combos)
        fast = mine_lazy(None, [b], info.names, kind, encode=model.encode, fuse=model.fuse_embeddings,
                         min_common=min_common, combos=combos, rows_per_pass=11)
        assert fast.lazy == slow.lazy and fast.rows == slow.rows and fast.table.keys() == slow.table.keys()
        for k in slow.table:
            assert fast.table[k]["n"] == slow.table[k]["n"]
            assert fast.table[k]["distance"] == pytest.approx(slow.table[k]["distance"], rel=1e-5, abs=1e-6)
