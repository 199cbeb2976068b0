"""OmniFuse as the paper writes it (omnifuse.fuse.methods.omnifuse): the CRA's forward target v-hat and
backward target v inside the method's loss, the trainer's drop used as it is, TLA mining on common rows
(recorded), and docs/omnifuse.md agreeing with the code on every ablation row."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from omnifuse.fuse.base import DroppedBatch, ModalityInfo, ModelInfo
from omnifuse.fuse.cra import backward_loss, forward_loss
from omnifuse.fuse.methods import get_method
from omnifuse.fuse.methods.omnifuse import ABLATION_ROWS, ABLATION_SWITCHES, OmniFuse
from tests.helpers import FakeTrainer, vector_batch

SMALL = dict(d=8, K=2, cra_hidden=16, latent=4, head_hidden=8, dropout=0.0, encoder={"dropout": 0.0})
THREE = [ModalityInfo(n, "vector", (6,)) for n in ("a", "b", "c")]
DOCS = Path(__file__).resolve().parents[3] / "docs"


def _dropped_batch() -> DroppedBatch:
    """Six rows of three vector modalities: rows 0-3 hold all three, row 4 lacks c naturally, row 5 lacks a;
    the drop removes b from rows 0 and 4, a and c from row 1, nothing from the rest."""
    source = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 0], [0, 1, 1]], dtype=torch.bool)
    keep = source.clone()
    keep[0, 1] = keep[4, 1] = False
    keep[1, 0] = keep[1, 2] = False
    batch = vector_batch(source, (torch.arange(6) % 2).float().view(-1, 1), names=("a", "b", "c"))
    return DroppedBatch.drop(batch, keep)


def test_the_loss_trains_the_forward_cra_towards_v_hat_and_the_backward_cra_towards_v():
    torch.manual_seed(0)
    model = OmniFuse(ModelInfo(THREE, "binary", 1), tla=False, **SMALL).train()
    db = _dropped_batch()
    out = model(db)
    _, terms = model.loss(db, out)
    ex = out.extra
    v_true, v_miss, mask = ex["v_true"], ex["v_miss"], db.mask
    # v: the true embedding where seen, v^miss elsewhere (eq. 2-3)
    torch.testing.assert_close(ex["v"], torch.where(mask.unsqueeze(-1), v_true, v_miss.expand(6, -1, -1)))
    # forward target: v^miss where seen, the truth where dropped; no target where naturally missing
    v_hat = torch.where(mask.unsqueeze(-1), v_miss.expand(6, -1, -1), v_true)
    slots = db.source.mask
    want_fw = ((ex["v_prime"] - v_hat) ** 2).mean(-1)[slots].mean().detach()
    assert terms["forward"] == pytest.approx(float(want_fw), rel=1e-5)
    assert terms["forward"] == pytest.approx(float(forward_loss(ex["v_prime"], v_hat, slots).detach()), rel=1e-6)
    # backward target: v at every slot
    want_bw = ((ex["v_second"] - ex["v"]) ** 2).mean().detach()
    assert terms["backward"] == pytest.approx(float(want_bw), rel=1e-5)
    # the earlier reading: forward at the dropped slots only, backward at the seen ones
    model.cra_target = "dropped_only"
    _, old = model.loss(db, out)
    assert old["forward"] == pytest.approx(float(forward_loss(ex["v_prime"], v_true, db.dropped).detach()), rel=1e-6)
    assert old["backward"] == pytest.approx(float(backward_loss(ex["v_second"], ex["v"], mask).detach()), rel=1e-6)
    with pytest.raises(ValueError, match="cra_target must be one of"):
        OmniFuse(ModelInfo(THREE, "binary", 1), cra_target="mirror", **SMALL)


def test_no_gradient_flows_through_the_targets():
    """v-hat is detached: the true embedding of a dropped slot, a target only, gets no gradient from the
    loss, while a seen slot's (the CRA's input) does."""
    torch.manual_seed(0)
    model = OmniFuse(ModelInfo(THREE, "binary", 1), tla=False, **SMALL).train()
    source = torch.ones(4, 3, dtype=torch.bool)
    keep = torch.tensor([[True, True, False]] * 4)  # c dropped everywhere: its truth is only ever a target
    db = DroppedBatch.drop(vector_batch(source, torch.zeros(4, 1), names=("a", "b", "c")), keep)
    out = model(db)
    loss, terms = model.loss(db, out)
    assert terms["forward"] > 0
    (g,) = torch.autograd.grad(loss, out.extra["v_true"])
    assert float(g[:, 2].abs().sum()) == 0.0 and float(g[:, 0].abs().sum()) > 0


def test_the_trainers_drop_is_used_as_it_is():
    torch.manual_seed(0)
    model = OmniFuse(ModelInfo(THREE, "binary", 1), train_drop_prob=1.0, **SMALL).train()
    db = _dropped_batch()
    assert model.train_drop(db, torch.Generator().manual_seed(0)) is db
    out = model(db)
    assert torch.equal(out.extra["mask"], db.mask) and torch.equal(out.extra["dropped"], db.dropped)
    torch.testing.assert_close(out.extra["v_true"], model.encode(db.source))


def test_tla_mines_on_common_rows_and_records_which_rows():
    torch.manual_seed(0)
    info = ModelInfo(THREE, "binary", 1)
    mask = torch.ones(16, 3, dtype=torch.bool)
    mask[:4, 2] = False  # 12 common rows
    trainer = FakeTrainer([vector_batch(mask, (torch.arange(16) % 2).float().view(-1, 1), names=("a", "b", "c"))])
    common = OmniFuse(info, tla_min_common=12, **SMALL)
    common.on_epoch_end(trainer, 0)
    rec = trainer.records["lazy_combination"][-1]
    assert rec["rows"] == "common" and rec["n_common"] == 12
    assert all(v["n"] == 12 for v in rec["distances"].values())
    few = OmniFuse(info, tla_min_common=13, **SMALL)
    few.on_epoch_end(trainer, 0)
    rec = trainer.records["lazy_combination"][-1]
    assert rec["rows"] == "per_combination" and rec["distances"]["a"]["n"] == 16 and rec["distances"]["c"]["n"] == 12


def _ticks(cells: list[str]) -> tuple[bool, ...]:
    return tuple(c.strip() in ("✓", "yes", "x", "X", "T") for c in cells)


def test_docs_and_code_agree_on_every_ablation_row():
    """docs/omnifuse.md's ablation table, docs/methods.md's variant line and the registry's rows
    (``ABLATION_ROWS``, which ``experiment ablation`` runs) name the same switches for rows a to f."""
    text = (DOCS / "omnifuse.md").read_text()
    rows = {}
    for line in text.splitlines():
        m = re.match(r"\|\s*\(([a-f])\)\s*\|(.*)\|\s*$", line)
        if m:
            cells = m.group(2).split("|")
            rows[m.group(1)] = _ticks(cells[: len(ABLATION_SWITCHES)])
    assert rows == {r: sw for r, (sw, _) in ABLATION_ROWS.items()}, rows
    methods = (DOCS / "methods.md").read_text()
    for r, (sw, _) in ABLATION_ROWS.items():
        want = "(" + ", ".join("T" if s else "F" for s in sw) + ")"
        assert f"{r} = {want}" in methods, (r, want)
        assert get_method(f"ablation_{r}").params == dict(zip(ABLATION_SWITCHES, sw, strict=True))
