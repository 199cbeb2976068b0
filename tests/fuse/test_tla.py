import torch

from omnifuse.fuse.base import Batch
from omnifuse.fuse.tla import all_combinations, combination_name, lazy_mask, mine_lazy, tla_loss


def _batch(n=12, M=3):
    torch.manual_seed(0)
    return Batch(
        x={f"m{j}": torch.randn(n, 2) for j in range(M)},
        mask=torch.ones(n, M, dtype=torch.bool),
        y=(torch.arange(n) % 2).float()[:, None],
        y_mask=torch.ones(n, dtype=torch.bool),
        index=torch.arange(n),
    )


def test_all_combinations_count_and_names():
    c = all_combinations(3)
    assert len(c) == 7 and len(set(c)) == 7 and not any(sum(x) == 0 for x in c)
    assert combination_name((True, False, True), ["a", "b", "c"]) == "a+c"
    assert len(all_combinations(5)) == 31


def test_mining_picks_the_combination_with_the_largest_loss():
    names = ["a", "b", "c"]
    rigged = (False, True, True)  # "b+c" predicts the wrong class with confidence

    def joint(b: Batch) -> torch.Tensor:
        sign = 2 * b.y - 1
        wrong = (b.mask == torch.tensor(rigged)).all(1, keepdim=True)
        conf = b.mask.float().sum(1, keepdim=True)  # other combinations: right, more so with more modalities
        return torch.where(wrong, -3 * sign, conf * sign)

    lazy, table, rows, n_common = mine_lazy(joint, [_batch()], names, "binary", min_common=12)
    assert lazy == rigged and rows == "common" and n_common == 12
    assert max(table, key=lambda k: table[k]["distance"]) == "b+c"
    assert all(v["n"] == 12 for v in table.values())


def test_mining_uses_only_rows_holding_the_combination_when_few_rows_are_common():
    b = _batch()
    b.mask[:6, 0] = False

    def joint(x: Batch) -> torch.Tensor:
        return torch.zeros(x.mask.shape[0], 1)

    mined = mine_lazy(joint, [b], ["a", "b", "c"], "binary", min_common=7)  # 6 common rows: too few
    assert mined.rows == "per_combination" and mined.n_common == 6
    assert mined.table["a"]["n"] == 6 and mined.table["b"]["n"] == 12


def test_mining_scores_every_combination_on_the_common_rows():
    """Rows 0-5 lack modality a and are easy for every combination holding b; the common rows 6-11 are hard.
    Per combination, "b" would be judged mostly on the easy rows and look best, though on the same (common)
    rows it is as bad as "a" alone: case mix decided. On the common rows only, every combination is judged on
    the same patients."""
    b = _batch()
    b.mask[:6, 0] = False
    easy = torch.arange(12) < 6

    def joint(x: Batch) -> torch.Tensor:
        sign = 2 * x.y - 1
        hard = ~easy[x.index].view(-1, 1)
        with_a = x.mask[:, :1]
        # hard rows: 0 logit unless a is shown (then right); easy rows: confidently right
        return torch.where(hard, torch.where(with_a, 2 * sign, torch.zeros_like(sign)), 4 * sign)

    per = mine_lazy(joint, [b], ["a", "b", "c"], "binary", min_common=100)
    common = mine_lazy(joint, [b], ["a", "b", "c"], "binary", min_common=6)
    assert per.rows == "per_combination" and common.rows == "common" and common.n_common == 6
    assert all(v["n"] == 6 for v in common.table.values())
    assert per.table["b"]["n"] == 12 and per.table["b+c"]["n"] == 12
    # every combination without a is equally lazy on the common rows; per combination they look better
    lazy_common = {
        k for k, v in common.table.items() if v["distance"] == max(x["distance"] for x in common.table.values())
    }
    assert lazy_common == {"b", "c", "b+c"}
    assert per.table["b"]["distance"] < common.table["b"]["distance"]
    # in common mode only the common rows are passed through the model (the others cannot change the result)
    seen: list[int] = []
    mine_lazy(lambda x: (seen.extend(x.index.tolist()), joint(x))[1], [b], ["a", "b", "c"], "binary", min_common=6)
    assert set(seen) == set(range(6, 12))
    # unlabelled rows are never common
    b.y_mask[6] = False
    assert mine_lazy(joint, [b], ["a", "b", "c"], "binary", min_common=6).rows == "per_combination"


def test_mask_and_loss_select_exact_pattern():
    mask = torch.tensor([[1, 0, 1], [1, 1, 1], [1, 0, 1], [0, 0, 1]], dtype=torch.bool)
    sel = lazy_mask(mask, (True, False, True))
    assert sel.tolist() == [True, False, True, False]
    logits = torch.tensor([[0.0], [9.0], [0.0], [-9.0]])
    y = torch.ones(4, 1)
    assert tla_loss(logits, y, sel, "binary").item() == torch.log(torch.tensor(2.0)).item()
    assert tla_loss(logits, y, torch.zeros(4, dtype=torch.bool), "binary").item() == 0.0


def test_candidate_combinations_all_when_few_and_bounded_with_structure_when_many():
    import numpy as np

    from omnifuse.fuse.tla import all_combinations, candidate_combinations

    assert candidate_combinations(5, 31) == all_combinations(5)  # 31 = 2^5 - 1: exhaustive
    got = candidate_combinations(8, 31, np.random.default_rng(3))
    assert len(got) == 31 and len(set(got)) == 31 and all(any(c) for c in got)
    singles = {tuple(i == m for i in range(8)) for m in range(8)}
    loo = {tuple(i != m for i in range(8)) for m in range(8)}
    assert singles | loo | {(True,) * 8} <= set(got)  # 17 always scored, 14 sampled
    assert got == candidate_combinations(8, 31, np.random.default_rng(3))  # seeded
    assert got != candidate_combinations(8, 31, np.random.default_rng(4))
    # the sample is uniform over the 238 others: each appears with probability 14 / 238
    pair = (True, True) + (False,) * 6
    hits = sum(pair in candidate_combinations(8, 31, np.random.default_rng(s)) for s in range(2000))
    assert abs(hits / 2000 - 14 / 238) < 0.02
    assert len(candidate_combinations(8, 5)) == 17  # the structured ones are kept past a tiny bound


def test_mining_scores_only_the_given_combinations():
    import torch

    from omnifuse.fuse.base import Batch
    from omnifuse.fuse.tla import mine_lazy

    torch.manual_seed(0)
    B, M = 40, 3
    y = (torch.rand(B, 1) > 0.5).float()
    batch = Batch(x={}, mask=torch.ones(B, M, dtype=torch.bool), y=y, y_mask=torch.ones(B, dtype=torch.bool),
                  index=torch.arange(B))

    def fuse(v, mask):  # the loss grows as modalities are removed: the single modality is lazier
        return v[:, 0, :1] * mask.float().sum(1, keepdim=True)  # v holds the row's sign (2 y - 1)

    combos = [(True, False, False), (True, True, True)]
    mined = mine_lazy(None, [batch], ["a", "b", "c"], "binary", encode=lambda b: (2 * b.y - 1).expand(B, M)[..., None],
                      fuse=fuse, min_common=1, combos=combos)
    assert set(mined.table) == {"a", "a+b+c"} and mined.lazy == (True, False, False)
