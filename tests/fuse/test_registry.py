"""The fusion-method registry and the method protocol.

One sweep over the registry: every registered method x every task kind x every missingness pattern (all
2^M - 1, M = 1 and M = 3), plus the main option variants of the baselines and every registered variant
(dwfuse_only, omnifuse_no_imp, the ablation rows), through the hooks in the order the trainer calls them:
shapes, finite losses, gradients reaching exactly the encoders of the modalities present, modality dropout
never adding or emptying, and (eval mode) outputs that do not depend on a masked modality's input values nor
on the other rows of the batch. Then the registry itself: entries and their fields, variants building their
base network with their switches, the API in a fresh interpreter, and the protocol of the registered methods
(the protocol's defaults are :mod:`tests.fuse.test_base`'s).
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from typing import Any

import pytest
import torch

from omnifuse.fuse.base import Batch, FusionMethod, ModalityInfo, ModelInfo
from omnifuse.fuse.methods import METHODS, build_method, get_method, list_methods
from omnifuse.fuse.methods.common import EncoderBank
from omnifuse.fuse.methods.mdrop import ContrastiveModalityDropout
from omnifuse.fuse.methods.omnifuse import ABLATION_ROWS, ABLATION_SWITCHES, OmniFuse
from omnifuse.fuse.registry import register_method, register_variant
from tests.helpers import FakeTrainer

B = 6
MODS3 = [
    ModalityInfo("img", "vector", (10,)),
    ModalityInfo("rep", "sequence", (5, 6)),
    ModalityInfo("ehr", "timeseries", (4, 3)),
]
MODS1 = [ModalityInfo("rep", "sequence", (5, 6))]
KINDS = {"binary": 1, "multilabel": 3, "multiclass": 3}

# small sizes for speed; unknown future methods get their defaults
SMALL: dict[str, dict[str, Any]] = {
    "omnifuse": {"d": 16, "K": 2, "cra_hidden": 32, "latent": 8, "head_hidden": 16},
    "mdrop": {"d": 16, "heads": 2, "ff": 32, "proj_dim": 8, "fusion_hidden": 16, "contrastive_epochs": 1},
    "concat": {"d": 16, "hidden": 16},
    "sum": {"d": 16, "hidden": 16},
    "se_gate": {"d": 16, "hidden": 16},
    "gblend": {"d": 16, "hidden": 16},
    "ogm_ge": {"d": 16},
    "pmr": {"d": 16, "entropy_epochs": 2},
    "medfuse": {"d": 16, "lstm_hidden": 16},
    "drfuse": {"d": 16},
    "shaspec": {"d": 16, "hidden": 16},
    "m3care": {"d": 16, "heads": 2, "bank": 8},
    "smil": {"d": 16, "hidden": 16, "priors": 3},
    "flexmoe": {"d": 16, "warmup_epochs": 0},
    "healnet": {"d": 16, "latents": 4, "latent_dim": 8},
    "muse": {"d": 16},
    "umse": {"d": 16},
}
# option sets of the baselines, each on one task kind and M = 3
OPTIONS: list[tuple[str, dict[str, Any], str]] = [
    ("concat", {"missing": "token"}, "binary"),
    ("sum", {"missing": "token"}, "multilabel"),
    ("se_gate", {"missing": "token"}, "multiclass"),
    ("medfuse", {"missing": "skip"}, "binary"),
    ("medfuse", {"missing": "zero"}, "multiclass"),
    ("ogm_ge", {"form": "paper", "noise": False}, "multiclass"),
    ("pmr", {"prototypes": "epoch", "coef": "tanh"}, "multilabel"),
    ("gblend", {"every": 2}, "binary"),
    ("mdrop", {"loss": "sigmoid", "label_aware": True, "memory_bank": 16}, "multiclass"),
    ("mdrop", {"loss": "infonce", "label_aware": True, "memory_bank": 16}, "multilabel"),
    ("mdrop", {"mode": "joint", "empty": "zero", "pairs": "uni_fused", "memory_bank": 8}, "binary"),
    ("mdrop", {"mode": "supervised", "token_on_present": True}, "multilabel"),
    ("drfuse", {"jsd": "bernoulli"}, "multiclass"),
    ("shaspec", {"fill": "first", "dao": "l2"}, "multilabel"),
    ("smil", {"meta": "joint", "drop_prob": 0.0}, "binary"),
    ("m3care", {"gcn_layers": 1, "layers": 1, "bank": 0}, "multiclass"),
    ("mdrop", {"fusion": "transformer", "token_space": "embedding", "token_on_present": True}, "binary"),
    ("mdrop", {"loss": "infonce", "label_aware": True, "label_form": "supcon", "proj_layers": 1}, "multiclass"),
    ("omnifuse", {"cra_target": "dropped_only"}, "multilabel"),
]
# the methods of this package whose missing slots never see the masked input (zero fill or a token)
BASELINES = {
    "concat", "sum", "se_gate", "gblend", "ogm_ge", "pmr", "medfuse", "mdrop", "drfuse", "shaspec", "m3care", "smil",
    "flexmoe", "healnet", "muse", "umse",
}


def _cases() -> list:
    """(name, options, kind, M): every registered method x kind x M in {1, 3}, then the baselines' option
    sets, then every registered variant on M = 3 (one task kind each, in turn)."""
    cases = [
        pytest.param(n, {}, k, m, id=f"{n}-{k}-M{m}") for n in list_methods("method") for k in KINDS for m in (1, 3)
    ]
    for n, v, k in OPTIONS:
        vid = "-".join(f"{a}={b}" for a, b in v.items())
        cases.append(pytest.param(n, v, k, 3, id=f"{n}-{vid}-{k}-M3"))
    for i, n in enumerate(list_methods("variant")):
        k = list(KINDS)[i % len(KINDS)]
        cases.append(pytest.param(n, {}, k, 3, id=f"{n}-{k}-M3"))
    return cases


def _patterns(m: int) -> list[tuple[bool, ...]]:
    return [p for p in itertools.product([True, False], repeat=m) if any(p)]


def _batch(
    mods: list[ModalityInfo], kind: str, c: int, pattern: tuple[bool, ...], seed: int, index_start: int = 0
) -> Batch:
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor(pattern, dtype=torch.bool).expand(B, len(mods)).clone()
    x, tm = {}, {}
    for j, mi in enumerate(mods):
        v = torch.randn(B, *mi.shape, generator=g)
        keep = mask[:, j].view(-1, *([1] * len(mi.shape))).to(v.dtype)
        x[mi.name] = v * keep
        if mi.kind == "sequence":
            t = torch.rand(B, mi.shape[0], generator=g) > 0.3
            t[:, 0] = True
            tm[mi.name] = t & mask[:, j : j + 1]
    if kind == "multiclass":
        y = torch.arange(B) % c
    else:
        y = (torch.rand(B, c, generator=g) > 0.5).float()
        y[0], y[1] = 1.0, 0.0  # both classes in every batch
    y_mask = torch.ones(B, dtype=torch.bool)
    y_mask[-1] = False  # one unlabelled row
    return Batch(
        x=x,
        mask=mask,
        y=y,
        y_mask=y_mask,
        index=torch.arange(index_start, index_start + B),
        tokens_mask=tm,
        natural_mask=mask.clone(),
    )


def _encoder_grad_norms(method: torch.nn.Module) -> list[float] | None:
    """Gradient norm of each modality's encoder (methods with an :class:`EncoderBank` named ``enc``)."""
    enc = dict(method.named_children()).get("enc")
    if not isinstance(enc, EncoderBank):
        return None
    out = []
    for e in enc.encoders:
        s = 0.0
        for p in e.parameters():
            if p.grad is not None:
                s += float(p.grad.double().pow(2).sum())
        out.append(math.sqrt(s))
    return out


def _perturb_masked(batch: Batch, seed: int) -> Batch:
    """The same batch with random values (and random token masks) in every masked modality's rows."""
    g = torch.Generator().manual_seed(seed)
    x = {}
    for j, (name, v) in enumerate(batch.x.items()):
        off = (~batch.mask[:, j]).view(-1, *([1] * (v.dim() - 1))).to(v.dtype)
        x[name] = v + off * (5 * torch.randn(v.shape, generator=g))
    tm = {}
    for name, t in batch.tokens_mask.items():
        j = list(batch.x).index(name)
        tm[name] = torch.where(batch.mask[:, j : j + 1], t, torch.rand(t.shape, generator=g) > 0.5)
    return Batch(
        x=x,
        mask=batch.mask,
        y=batch.y,
        y_mask=batch.y_mask,
        index=batch.index,
        tokens_mask=tm,
        natural_mask=batch.natural_mask,
    )


def test_registry_entries_are_documented() -> None:
    names = set(list_methods())
    assert names >= BASELINES, f"baselines missing from the registry: {BASELINES - names}"
    assert {"omnifuse", "dwfuse_only", "omnifuse_no_imp", *(f"ablation_{r}" for r in "abcdef")} <= names
    info = ModelInfo(MODS3, "multiclass", 3)
    for n in names:
        e = METHODS[n]
        assert e.name == n and e.description.strip() and e.paper.strip(), n
        assert e.kind in ("method", "variant", "reference") and (e.base == n) == (e.kind != "variant"), n
        assert METHODS[e.base].kind == ("reference" if e.kind == "reference" else "method"), n
        # the registry defaults are exactly options the builder accepts
        method = build_method(n, info)
        if e.kind == "reference":  # a reference learner is no network: it fits and predicts
            assert callable(method.fit) and callable(method.predict_proba), n
        else:
            assert isinstance(method, FusionMethod) and method.info is info
    unknown = "fusion method 'concat' has no parameter 'no_such_option'; its parameters: d, missing"
    with pytest.raises(ValueError, match=unknown):
        build_method("concat", info, no_such_option=1)
    with pytest.raises(KeyError, match="unknown fusion method 'nope'; known: ablation_a"):
        get_method("nope")
    assert list_methods("variant") == sorted(n for n in names if METHODS[n].kind == "variant")
    assert {"logreg", "gbm"} == set(list_methods("reference"))
    assert sorted(list_methods("method") + list_methods("variant") + list_methods("reference")) == list_methods()


@pytest.mark.parametrize("name,options,kind,m", _cases())
def test_method_sweep(name: str, options: dict[str, Any], kind: str, m: int) -> None:
    torch.manual_seed(0)
    mods = MODS3 if m == 3 else MODS1
    c = KINDS[kind]
    info = ModelInfo(mods, kind, c)
    method = build_method(name, info, **{**SMALL.get(get_method(name).base, {}), **options})
    full = tuple([True] * m)
    trainer = FakeTrainer([_batch(mods, kind, c, full, seed=100 + i, index_start=B * i) for i in range(2)])
    method.on_train_start(trainer)
    gen = torch.Generator().manual_seed(1)
    for epoch in (0, 3):  # mdrop: contrastive stage at 0, supervised at 3
        trainer.epoch = epoch
        method.train()
        method.on_epoch_start(trainer, epoch)
        for pi, pattern in enumerate(_patterns(m)):
            batch = _batch(mods, kind, c, pattern, seed=10 * pi + epoch, index_start=50 + 7 * pi)
            b = method.train_drop(batch, gen)
            assert b.mask.shape == batch.mask.shape
            assert not (b.mask & ~batch.mask).any(), "train_drop added a modality"
            assert b.mask.any(dim=1).all(), "train_drop emptied a row"
            out = method(b)
            assert out.logits.shape == (B, c)
            assert torch.isfinite(out.logits).all()
            if out.per_modality_logits is not None:
                assert set(out.per_modality_logits) == set(info.names)
                for z in out.per_modality_logits.values():
                    assert z.shape == (B, c) and torch.isfinite(z).all()
            loss, terms = method.loss(b, out)
            assert loss.dim() == 0 and torch.isfinite(loss), (pattern, terms)
            assert all(math.isfinite(float(v)) for v in terms.values()), terms
            method.zero_grad(set_to_none=True)
            loss.backward()
            method.after_backward(b, out)
            grads = [p.grad for p in method.parameters() if p.grad is not None]
            assert all(torch.isfinite(g).all() for g in grads)
            present = b.mask.any(dim=0).tolist()
            no_pairs = (
                isinstance(method, ContrastiveModalityDropout)
                and method.stage == "contrastive"
                and int(b.mask.sum(1).max()) < 2
            )
            if no_pairs:
                # contrastive stage with single-modality rows: no pair of views, nothing to learn
                assert float(loss.detach()) == 0.0
                continue
            total = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))
            assert total > 0, f"no gradient for pattern {pattern}"
            norms = _encoder_grad_norms(method)
            # an absent modality's encoder still learns where its output for the empty input is used: OmniFuse's
            # v^miss, mdrop's empty token in the input space
            token_encoded = isinstance(method, ContrastiveModalityDropout) and method.empty.space == "input"
            if norms is not None:
                for j, (here, gn) in enumerate(zip(present, norms, strict=True)):
                    if here:
                        assert gn > 0, f"encoder of present modality {info.names[j]} got no gradient"
                    elif method.ignores_masked_inputs and not token_encoded:
                        assert gn < 1e-5, f"encoder of absent modality {info.names[j]} got gradient {gn}"
        method.on_epoch_end(trainer, epoch)

    method.eval()
    with torch.no_grad():
        for pi, pattern in enumerate(_patterns(m)):
            batch = _batch(mods, kind, c, pattern, seed=500 + pi)
            ref = method(batch).logits
            # a row's prediction does not depend on the other rows of its batch
            solo = method(batch.select(torch.tensor([2]))).logits
            torch.testing.assert_close(solo, ref[2:3], rtol=1e-4, atol=1e-5)
            if method.ignores_masked_inputs and not all(pattern):
                moved = method(_perturb_masked(batch, seed=pi)).logits
                torch.testing.assert_close(moved, ref, rtol=1e-5, atol=1e-6)
    assert method.ignores_masked_inputs == (name in BASELINES), f"{name}: ignores_masked_inputs"


def test_masked_input_check_can_fail() -> None:
    """The invariance check above detects a method that reads a masked modality's values: the raw encoder
    bank (no fill) changes its output when masked inputs change."""
    torch.manual_seed(0)
    info = ModelInfo(MODS3, "binary", 1)
    bank = EncoderBank(info, 8).eval()
    batch = _batch(MODS3, "binary", 1, (True, False, True), seed=3)
    with torch.no_grad():
        a = bank(batch)
        b = bank(_perturb_masked(batch, seed=0))
    assert not torch.allclose(a[:, 1], b[:, 1])
    torch.testing.assert_close(a[:, [0, 2]], b[:, [0, 2]])


# ------------------------------------------------------------------------------------------------------
# variants
# ------------------------------------------------------------------------------------------------------
def _switches(model: OmniFuse) -> dict[str, bool]:
    return {"dwfuse": model.use_dwfuse, "tla": model.use_tla, "imp_fw": model.use_imp_fw, "imp_bw": model.use_imp_bw}


@pytest.mark.parametrize("name", list_methods("variant"))
def test_variant_builds_its_base_network_with_its_switches(name: str) -> None:
    entry = get_method(name)
    base = get_method(entry.base)
    assert entry.kind == "variant" and entry.base == "omnifuse" and entry.build is base.build
    assert entry.defaults == {**base.defaults, **entry.params}
    info = ModelInfo(MODS3, "binary", 1)
    small = SMALL["omnifuse"]
    torch.manual_seed(0)
    model = build_method(name, info, **small)
    torch.manual_seed(0)
    explicit = build_method("omnifuse", info, **small, **entry.params)
    assert type(model) is OmniFuse
    assert _switches(model) == _switches(explicit)
    assert model.state_dict().keys() == explicit.state_dict().keys()
    for k, v in model.state_dict().items():
        assert torch.equal(v, explicit.state_dict()[k]), k
    # the switches the entry sets are the network's (IMP-bw needs IMP-fw; TLA needs two modalities)
    want = {**{"dwfuse": True, "tla": True, "imp_fw": True, "imp_bw": True}, **entry.params}
    want["imp_bw"] = want["imp_bw"] and want["imp_fw"]
    assert _switches(model) == want
    assert (model.heads is None) == (not want["dwfuse"])
    assert (model.cra_fw is None) == (not want["imp_fw"]) and (model.cra_bw is None) == (not want["imp_bw"])
    # parameters given when building override the variant's own, as they do a method's defaults
    assert build_method(name, info, **small, tla=True).use_tla


def test_named_variants_and_ablation_rows() -> None:
    assert get_method("dwfuse_only").params == {"dwfuse": True, "tla": False, "imp_fw": False, "imp_bw": False}
    assert get_method("omnifuse_no_imp").params == {"imp_fw": False, "imp_bw": False}
    table4 = {
        "a": (False, False, False, False),
        "b": (True, False, False, False),
        "c": (True, True, False, False),
        "d": (True, True, True, False),
        "e": (True, False, True, True),
        "f": (True, True, True, True),
    }
    assert ABLATION_SWITCHES == ("dwfuse", "tla", "imp_fw", "imp_bw")
    assert {r: sw for r, (sw, _) in ABLATION_ROWS.items()} == table4
    for row, switches in table4.items():
        assert get_method(f"ablation_{row}").params == dict(zip(ABLATION_SWITCHES, switches, strict=True))
    assert get_method("ablation_b").params == get_method("dwfuse_only").params


def test_registration_errors() -> None:
    with pytest.raises(ValueError, match="'concat' is registered twice"):
        register_method("concat", description="x", paper="y")(OmniFuse)
    with pytest.raises(KeyError, match="base method 'nope' is not registered"):
        register_variant("nope_variant", "nope", {}, description="x")
    assert "nope_variant" not in METHODS


def test_registry_api_in_a_fresh_interpreter() -> None:
    """``from omnifuse.fuse.methods import get_method`` alone fills the registry: every name resolves, and
    building a variant from the registry works, in an interpreter that imported nothing else first."""
    names = list_methods()
    code = (
        "import json, sys\n"
        "from omnifuse.fuse.methods import build_method, get_method, list_methods\n"
        "from omnifuse.fuse.base import ModalityInfo, ModelInfo\n"
        "names = json.loads(sys.argv[1])\n"
        "entries = {n: [get_method(n).base, get_method(n).kind] for n in names}\n"
        "m = build_method('dwfuse_only', ModelInfo([ModalityInfo('a', 'vector', (3,))], 'binary', 1), d=4, K=1)\n"
        "print(json.dumps({'listed': list_methods(), 'entries': entries, 'type': type(m).__name__}))\n"
    )
    r = subprocess.run([sys.executable, "-c", code, json.dumps(names)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["listed"] == names
    assert got["entries"] == {n: [METHODS[n].base, METHODS[n].kind] for n in names}
    assert got["type"] == "OmniFuse"


def test_protocol_of_the_registered_methods() -> None:
    """mdrop sets selection_start_epoch (its contrastive epochs), OmniFuse has label-free weights, every other
    entry keeps the defaults; each configures AdamW over its trainable parameters, except OGM-GE (SGD with
    momentum 0.9, as its authors train)."""
    info = ModelInfo(MODS3, "binary", 1)
    for n in list_methods("method"):
        model = build_method(n, info, **SMALL.get(n, {}))
        opt = model.configure_optimizer(1e-3, 1e-4)
        trainable = [p for p in model.parameters() if p.requires_grad]
        want_opt = torch.optim.SGD if n == "ogm_ge" else torch.optim.AdamW
        assert type(opt) is want_opt and len(opt.param_groups[0]["params"]) == len(trainable), n
        want_start = SMALL["mdrop"]["contrastive_epochs"] if n == "mdrop" else 0
        assert model.selection_start_epoch == want_start, n
        batch = _batch(MODS3, "binary", 1, (True, True, True), seed=0)
        model.eval()
        with torch.no_grad():
            weights = model.label_free_weights(model(batch))
        if n == "omnifuse":
            assert weights is not None and set(weights) == set(info.names)
        else:
            assert weights is None, n
    assert build_method("mdrop", info, d=8, heads=2, contrastive_epochs=4).selection_start_epoch == 4
    assert build_method("mdrop", info, d=8, heads=2, mode="joint").selection_start_epoch == 0
    # mdrop's learnable-scale switch freezes a parameter; the optimiser leaves it out
    frozen = build_method("mdrop", info, d=8, heads=2, learn_scale=False)
    ids = {id(p) for p in frozen.configure_optimizer(1e-3, 0.0).param_groups[0]["params"]}
    assert id(frozen.logit_scale) not in ids and id(frozen.cls_head.weight) in ids
