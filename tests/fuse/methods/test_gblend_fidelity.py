"""G-Blend estimating its blending weights on its whole held-out split (omnifuse.fuse.methods.gblend): the
checkpoint losses cover every held-out training row the trainer has (``trainer.batches(train_rows)``), not
the bounded mining subset."""

from __future__ import annotations

import torch

from omnifuse.fuse.base import Batch, ModelInfo
from omnifuse.fuse.methods import build_method
from omnifuse.fuse.methods.gblend import heldout_rows
from tests.helpers import TWO, FakeTrainer, vector_batch


class SubsetMining(FakeTrainer):
    """A trainer whose mining batches are only the first batch (as a bounded mining subset would be)."""

    def mining_batches(self) -> list[Batch]:
        return self._batches[:1]


def test_checkpoint_losses_cover_every_held_out_row() -> None:
    torch.manual_seed(0)
    model = build_method("gblend", ModelInfo(TWO, "binary", 1), d=8, hidden=8)
    batches = [
        vector_batch(
            torch.ones(50, 2, dtype=torch.bool),
            (torch.arange(50) % 2).float().view(-1, 1),
            seed=s,
            index=torch.arange(50 * s, 50 * s + 50),
        )
        for s in range(4)
    ]
    trainer = SubsetMining(batches)
    got = model.checkpoint_losses(trainer)
    assert got is not None
    # by hand: every row of the four batches, eval mode, the held-out ones for L^V, the others for L^T
    model.eval()
    sums, counts = torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64)
    with torch.no_grad():
        for b in batches:
            L, where = model.head_row_losses(b, model(b))
            held = heldout_rows(b.index, 0.2)
            for r, part in enumerate((~held, held)):
                sel = (where & part.unsqueeze(0)).to(torch.float64)
                sums[r] += (L.double() * sel).sum(1)
                counts[r] += sel.sum(1)
    torch.testing.assert_close(got, sums / counts)
    n_held = int(sum(int(heldout_rows(b.index, 0.2).sum()) for b in batches))
    assert n_held > int(heldout_rows(batches[0].index, 0.2).sum())  # more than the mining subset's
