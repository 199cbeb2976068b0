"""OmniFuse (omnifuse.fuse.methods.omnifuse): outputs and label-free weights for every missingness pattern,
v^miss for missing rows, training drops entering L_forward only, the ablation switches' loss terms, one
modality, the fast TLA mining path, and the epoch-end mining on the trainer's rows."""

from __future__ import annotations

import pytest
import torch

from omnifuse.fuse.base import Batch, DroppedBatch, ModalityInfo, ModelInfo
from omnifuse.fuse.methods import build_method
from omnifuse.fuse.methods.omnifuse import OmniFuse
from omnifuse.fuse.tla import all_combinations, mine_lazy
from tests.helpers import FakeTrainer

SMALL = dict(d=8, K=2, cra_hidden=16, latent=4, head_hidden=8, dropout=0.0)
MODS = [
    ModalityInfo("img", "vector", (6,)),
    ModalityInfo("rep", "sequence", (4, 5)),
    ModalityInfo("ehr", "timeseries", (3, 4)),
]


def make_batch(info: ModelInfo, n=10, seed=0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    x = {m.name: torch.randn(n, *m.shape, generator=g) for m in info.modalities}
    tm = {m.name: torch.ones(n, m.shape[0], dtype=torch.bool) for m in info.modalities if m.kind == "sequence"}
    if info.task_kind == "multiclass":
        y = torch.randint(0, info.num_outputs, (n,), generator=g)
    else:
        y = (torch.rand(n, info.num_outputs, generator=g) > 0.5).float()
    mask = torch.ones(n, info.num_modalities, dtype=torch.bool)
    return Batch(
        x=x,
        mask=mask,
        y=y,
        y_mask=torch.ones(n, dtype=torch.bool),
        index=torch.arange(n),
        tokens_mask=tm,
        natural_mask=mask.clone(),
    )


@pytest.mark.parametrize("kind,C", [("binary", 1), ("multilabel", 3), ("multiclass", 3)])
def test_shapes_for_every_missingness_pattern(kind, C):
    torch.manual_seed(0)
    info = ModelInfo(MODS, kind, C)
    model = build_method("omnifuse", info, **SMALL).eval()
    b = make_batch(info)
    for combo in all_combinations(3):
        mb = b.with_mask(torch.tensor(combo).expand(10, 3).clone())
        out = model(mb)
        assert out.logits.shape == (10, C) and torch.isfinite(out.logits).all()
        assert set(out.per_modality_logits) == {"img", "rep", "ehr"}
        assert all(v.shape == (10, C) for v in out.per_modality_logits.values())
        w = model.label_free_weights(out)
        assert w is not None and set(w) == {"img", "rep", "ehr"}
        assert all(v.shape == ((10,) if kind == "multiclass" else (10, C)) for v in w.values())
        assert all(torch.isfinite(v).all() and (v >= 0).all() and (v <= 1).all() for v in w.values())


def test_missing_rows_use_vmiss_and_present_rows_keep_their_embedding():
    torch.manual_seed(0)
    info = ModelInfo(MODS, "binary", 1)
    model = OmniFuse(info, **SMALL).eval()
    b = make_batch(info).with_mask(torch.tensor([[True, False, True]] * 10))
    out = model(b)
    v = out.extra["v"]
    vmiss = model.missing_embeddings(torch.device("cpu"))
    assert torch.allclose(v[:, 1], vmiss[1].expand(10, -1), atol=1e-6)
    assert not torch.allclose(v[0, 0], vmiss[0])


def _terms(model, b, lazy=None):
    model.train()
    model.lazy = lazy
    torch.manual_seed(1)
    db = model.train_drop(b, torch.Generator().manual_seed(0))
    return model.loss(db, model(db))[1]


def test_training_drops_enter_forward_loss_only():
    torch.manual_seed(0)
    info = ModelInfo(MODS, "binary", 1)
    model = OmniFuse(info, train_drop_prob=1.0, **SMALL)
    b = make_batch(info, n=32)
    db = model.train_drop(b, torch.Generator().manual_seed(0))
    assert db.mask.any(1).all() and (db.mask.sum(1) < 3).all()  # at least one kept, one dropped
    assert isinstance(db, DroppedBatch) and db.source is b
    assert torch.equal(db.dropped, b.mask & ~db.mask)
    assert _terms(model, b)["forward"] > 0
    # no drop on purpose: natural gaps never enter L_forward (the earlier reading has no other target; the
    # paper's targets v^miss at the seen slots, see tests/fuse/methods/test_omnifuse_fidelity.py)
    model0 = OmniFuse(info, train_drop_prob=0.0, cra_target="dropped_only", **SMALL)
    assert _terms(model0, b)["forward"] == 0.0


def test_each_ablation_switch_changes_the_loss_terms():
    info = ModelInfo(MODS, "binary", 1)
    b = make_batch(info, n=32)
    lazy = (True, False, False)

    def build(**sw):
        torch.manual_seed(0)
        return OmniFuse(info, train_drop_prob=1.0, **SMALL, **sw)

    full = _terms(build(), b, lazy)
    assert full["forward"] > 0 and full["backward"] > 0 and "ens" in full and full["tla"] > 0
    l1, l2, l3 = 1.0, 10.0, 0.5
    want = full["forward"] + l1 * full["backward"] + l2 * full["dwfuse"] + l3 * full["tla"]
    assert full["total"] == pytest.approx(want, rel=1e-5)
    assert full["dwfuse"] == pytest.approx(full["ens"] + 0.1 * full["rp"], rel=1e-5)
    no_dw = _terms(build(dwfuse=False), b, lazy)
    assert "ens" not in no_dw and no_dw["dwfuse"] == pytest.approx(no_dw["rp"])
    assert build(dwfuse=False).heads is None
    no_heads = build(dwfuse=False).eval()
    assert no_heads.label_free_weights(no_heads(b)) is None
    no_tla = _terms(build(tla=False), b, lazy)
    assert no_tla["tla"] == 0.0 and no_tla["forward"] > 0
    no_bw = _terms(build(imp_bw=False), b, lazy)
    assert no_bw["backward"] == 0.0 and no_bw["forward"] > 0
    assert build(imp_bw=False).cra_bw is None
    no_fw = _terms(build(imp_fw=False), b, lazy)
    assert no_fw["forward"] == 0.0 and no_fw["backward"] == 0.0 and build(imp_fw=False).cra_fw is None


def test_single_modality():
    torch.manual_seed(0)
    info = ModelInfo(MODS[:1], "binary", 1)
    model = OmniFuse(info, **SMALL)
    assert not model.use_tla
    t = _terms(model, make_batch(info))
    assert t["forward"] == 0.0 and t["tla"] == 0.0 and t["total"] > 0


@pytest.mark.parametrize("kind,C", [("binary", 1), ("multiclass", 3)])
def test_fast_tla_mining_equals_masking_every_combination(kind, C):
    """Encoding once and fusing per combination gives the distances of masking and re-encoding each time."""
    torch.manual_seed(0)
    info = ModelInfo(MODS, kind, C)
    model = OmniFuse(info, **SMALL).eval()
    b = make_batch(info, n=24, seed=3)
    b = Batch(
        x=b.x,
        mask=torch.rand(24, 3, generator=torch.Generator().manual_seed(5)) > 0.3,
        y=b.y,
        y_mask=b.y_mask,
        index=b.index,
        tokens_mask=b.tokens_mask,
    )
    b = b.with_mask(b.mask)  # inputs of absent modalities are zeros, as in the data
    slow = mine_lazy(model.joint_logits, [b], info.names, kind)
    fast = mine_lazy(None, [b], info.names, kind, encode=model.encode, fuse=model.fuse_embeddings)
    assert slow[0] == fast[0]
    assert slow[1].keys() == fast[1].keys()
    for k in slow[1]:
        assert slow[1][k]["n"] == fast[1][k]["n"]
        assert fast[1][k]["distance"] == pytest.approx(slow[1][k]["distance"], rel=1e-5, abs=1e-6)


def test_epoch_end_mines_on_the_trainer_rows_and_records_the_lazy_combination():
    torch.manual_seed(0)
    info = ModelInfo(MODS, "binary", 1)
    model = OmniFuse(info, **SMALL)
    trainer = FakeTrainer([make_batch(info, n=16, seed=4)])
    model.train()
    model.on_epoch_end(trainer, 0)
    assert model.training  # mining ran in eval mode, the mode is restored
    rec = trainer.records["lazy_combination"]
    assert len(rec) == 1 and rec[0]["epoch"] == 0 and rec[0]["lazy"] is not None
    assert model.lazy is not None and len(rec[0]["distances"]) == 7
    off = OmniFuse(info, tla=False, **SMALL)
    off.on_epoch_end(trainer, 1)
    assert len(trainer.records["lazy_combination"]) == 1 and off.lazy is None


def _cut(x: torch.Tensor, lengths: torch.Tensor, cap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` [B, >=max(lengths), F] cut to each row's length and zero-padded to ``cap`` steps; (x, step mask)."""
    steps = torch.arange(cap)[None, :] < lengths[:, None]
    out = torch.zeros(x.shape[0], cap, x.shape[2])
    n = min(cap, x.shape[1])
    out[:, :n] = torch.where(steps[:, :n, None], x[:, :n], 0.0)
    return out, steps


@pytest.mark.parametrize("rnn", ["gru", "lstm"])
def test_vmiss_of_a_variable_length_series_is_the_same_at_every_cap(rnn):
    """The same data cut at caps T and T + 20 (step masks; ``ehr`` missing in some rows): ``v^miss`` is the encoder
    of the empty series, LN(h_0 = 0) = the LayerNorm's bias (by hand), the same bits at both caps, and so are
    the outputs; the zero input over all T steps (the earlier definition) differs between the caps."""
    T, F, n = 6, 4, 12
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, T, F, generator=g)
    lengths = torch.tensor([6, 3, 1, 5, 2, 6, 4, 1, 3, 2, 6, 5])
    present = torch.ones(n, 2, dtype=torch.bool)
    present[[1, 4, 9], 1] = False  # ehr missing there
    outs, vmiss, zero_over_t = [], [], []
    state = None
    for cap in (T, T + 20):
        mods = [ModalityInfo("img", "vector", (5,)), ModalityInfo("ehr", "timeseries", (cap, F))]
        info = ModelInfo(mods, "binary", 1)
        torch.manual_seed(1)
        model = OmniFuse(info, encoder={"rnn": rnn}, **SMALL).eval()
        if state is None:
            state = model.state_dict()
            with torch.no_grad():  # a trained-looking LayerNorm: its bias is v^miss
                model.enc.encoders[1].norm.bias.copy_(torch.linspace(-1, 1, 8))
                model.enc.encoders[1].norm.weight.mul_(1.5)
            state = model.state_dict()
        model.load_state_dict(state)
        xe, steps = _cut(x, lengths, cap)
        b = Batch(
            x={"img": torch.randn(n, 5, generator=torch.Generator().manual_seed(2)), "ehr": xe},
            mask=torch.ones(n, 2, dtype=torch.bool),
            y=torch.zeros(n, 1),
            y_mask=torch.ones(n, dtype=torch.bool),
            index=torch.arange(n),
            tokens_mask={"ehr": steps},
        ).with_mask(present)
        with torch.no_grad():
            out = model(b)
            outs.append(out.logits)
            vmiss.append(model.missing_embeddings(torch.device("cpu")))  # the step masks seen by forward
            torch.testing.assert_close(vmiss[-1][1], torch.linspace(-1, 1, 8), rtol=0, atol=0)
            assert torch.equal(out.extra["v"][~present[:, 1], 1], vmiss[-1][1].expand(3, -1))
            assert torch.equal(model.fuse_embeddings(model.encode(b), b.mask), out.logits)
            zero_over_t.append(model.missing_embeddings(torch.device("cpu"), step_masked=())[1])
    assert torch.equal(vmiss[0], vmiss[1])
    assert torch.equal(outs[0], outs[1])
    assert not torch.allclose(zero_over_t[0], zero_over_t[1], atol=1e-4)  # the cap-dependent definition


def test_vmiss_of_a_fixed_length_series_is_still_the_zero_input_over_its_steps():
    """Without a step mask (the 48 h EHR, version-2 caches) ``v^miss`` is the encoder of the explicit zero input."""
    torch.manual_seed(0)
    info = ModelInfo(MODS, "binary", 1)
    model = OmniFuse(info, **SMALL).eval()
    model(make_batch(info))  # no step mask in the batch
    assert model.step_masked == frozenset()
    with torch.no_grad():
        want = model.enc.encoders[2](torch.zeros(1, 3, 4), None)[0]
        torch.testing.assert_close(model.missing_embeddings(torch.device("cpu"))[2], want, rtol=0, atol=0)
