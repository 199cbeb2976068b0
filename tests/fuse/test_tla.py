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

    lazy, table = mine_lazy(joint, [_batch()], names, "binary")
    assert lazy == rigged
    assert max(table, key=lambda k: table[k]["distance"]) == "b+c"
    assert all(v["n"] == 12 for v in table.values())


def test_mining_uses_only_rows_holding_the_combination():
    b = _batch()
    b.mask[:6, 0] = False
    seen = {}

    def joint(x: Batch) -> torch.Tensor:
        seen[tuple(x.mask[0].tolist())] = x.mask.shape[0]
        return torch.zeros(x.mask.shape[0], 1)

    _, table = mine_lazy(joint, [b], ["a", "b", "c"], "binary")
    assert table["a"]["n"] == 6 and table["b"]["n"] == 12


def test_mask_and_loss_select_exact_pattern():
    mask = torch.tensor([[1, 0, 1], [1, 1, 1], [1, 0, 1], [0, 0, 1]], dtype=torch.bool)
    sel = lazy_mask(mask, (True, False, True))
    assert sel.tolist() == [True, False, True, False]
    logits = torch.tensor([[0.0], [9.0], [0.0], [-9.0]])
    y = torch.ones(4, 1)
    assert tla_loss(logits, y, sel, "binary").item() == torch.log(torch.tensor(2.0)).item()
    assert tla_loss(logits, y, torch.zeros(4, dtype=torch.bool), "binary").item() == 0.0
