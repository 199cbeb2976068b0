"""One sweep over the fusion-method registry: every registered method (plus the main option variants of the
baselines) x every task kind x every missingness pattern (all 2^M - 1, M = 1 and M = 3), through the
hooks in the order the trainer calls them: shapes, finite losses, gradients reaching exactly the encoders of
the modalities present, modality dropout never adding or emptying, and (eval mode) outputs that do not
depend on a masked modality's input values nor on the other rows of the batch.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch

from omnifuse.fuse.base import Batch, METHODS, ModalityInfo, ModelInfo, build_method
from omnifuse.fuse.methods.common import EncoderBank

B = 6
MODS3 = [ModalityInfo("img", "vector", (10,)), ModalityInfo("rep", "sequence", (5, 6)),
         ModalityInfo("ehr", "timeseries", (4, 3))]
MODS1 = [ModalityInfo("rep", "sequence", (5, 6))]
KINDS = {"binary": 1, "multilabel": 3, "multiclass": 3}

# small sizes for speed; unknown future methods get their defaults
SMALL: dict[str, dict[str, Any]] = {
    "omnifuse": {"d": 16, "K": 2, "cra_hidden": 32, "latent": 8, "head_hidden": 16},
    "mdrop": {"d": 16, "heads": 2, "ff": 32, "proj_dim": 8, "hidden": 16, "contrastive_epochs": 1},
    "concat": {"d": 16, "hidden": 16}, "sum": {"d": 16, "hidden": 16}, "se_gate": {"d": 16, "hidden": 16},
    "gblend": {"d": 16, "hidden": 16}, "ogm_ge": {"d": 16}, "pmr": {"d": 16, "entropy_epochs": 2},
    "medfuse": {"d": 16, "lstm_hidden": 16},
}
# option variants of the baselines, each on one task kind and M = 3
VARIANTS: list[tuple[str, dict[str, Any], str]] = [
    ("concat", {"missing": "token"}, "binary"), ("sum", {"missing": "token"}, "multilabel"),
    ("se_gate", {"missing": "token"}, "multiclass"),
    ("medfuse", {"missing": "skip"}, "binary"), ("medfuse", {"missing": "zero"}, "multiclass"),
    ("ogm_ge", {"form": "paper", "noise": False}, "multiclass"),
    ("pmr", {"prototypes": "epoch", "coef": "tanh"}, "multilabel"),
    ("gblend", {"every": 2}, "binary"),
    ("mdrop", {"loss": "sigmoid", "label_aware": True, "memory_bank": 16}, "multiclass"),
    ("mdrop", {"loss": "infonce", "label_aware": True, "memory_bank": 16}, "multilabel"),
    ("mdrop", {"mode": "joint", "empty": "zero", "pairs": "uni_fused", "memory_bank": 8}, "binary"),
    ("mdrop", {"mode": "supervised", "token_on_present": True}, "multilabel"),
]
# the methods of this package whose missing slots never see the masked input (zero fill or a token)
BASELINES = {"concat", "sum", "se_gate", "gblend", "ogm_ge", "pmr", "medfuse", "mdrop"}


def _registered() -> list[str]:
    from omnifuse.fuse import methods  # noqa: F401  (fills the registry)

    return sorted(METHODS)


def _cases() -> list:
    """(name, variant, kind, M): every registered method x kind x M in {1, 3}, then the variants."""
    cases = [pytest.param(n, {}, k, m, id=f"{n}-{k}-M{m}") for n in _registered() for k in KINDS for m in (1, 3)]
    for n, v, k in VARIANTS:
        vid = "-".join(f"{a}={b}" for a, b in v.items())
        cases.append(pytest.param(n, v, k, 3, id=f"{n}-{vid}-{k}-M3"))
    return cases


def _patterns(m: int) -> list[tuple[bool, ...]]:
    return [p for p in itertools.product([True, False], repeat=m) if any(p)]


def _batch(mods: list[ModalityInfo], kind: str, c: int, pattern: tuple[bool, ...], seed: int,
           index_start: int = 0) -> Batch:
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
    return Batch(x=x, mask=mask, y=y, y_mask=y_mask, index=torch.arange(index_start, index_start + B),
                 tokens_mask=tm, natural_mask=mask.clone())


class FakeTrainer:
    """What the methods may use of ``omnifuse.fuse.train.Trainer``: epoch, device, mining_batches(), record()."""

    def __init__(self, batches: list[Batch]) -> None:
        self._batches = batches
        self.epoch = 0
        self.device = torch.device("cpu")
        self.records: dict[str, list] = {}

    def mining_batches(self) -> list[Batch]:
        return self._batches

    def record(self, key: str, value: Any) -> None:
        self.records.setdefault(key, []).append(value)


def _encoder_grad_norms(method: torch.nn.Module) -> list[float] | None:
    enc = getattr(method, "enc", None)
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
    return Batch(x=x, mask=batch.mask, y=batch.y, y_mask=batch.y_mask, index=batch.index, tokens_mask=tm,
                 natural_mask=batch.natural_mask)


def test_registry_entries_are_documented() -> None:
    names = set(_registered())
    assert BASELINES <= names, f"baselines missing from the registry: {BASELINES - names}"
    info = ModelInfo(MODS3, "multiclass", 3)
    for n in names:
        e = METHODS[n]
        assert e.description.strip() and e.paper.strip(), n
        # the registry defaults are exactly options the builder accepts
        method = build_method(n, info)
        assert method.info is info
    with pytest.raises(TypeError):
        build_method("concat", info, no_such_option=1)


@pytest.mark.parametrize("name,variant,kind,m", _cases())
def test_method_sweep(name: str, variant: dict[str, Any], kind: str, m: int) -> None:
    torch.manual_seed(0)
    mods = MODS3 if m == 3 else MODS1
    c = KINDS[kind]
    info = ModelInfo(mods, kind, c)
    method = build_method(name, info, **{**SMALL.get(name, {}), **variant})
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
            no_pairs = getattr(method, "stage", None) == "contrastive" and int(b.mask.sum(1).max()) < 2
            if no_pairs:
                # contrastive stage with single-modality rows: no pair of views, nothing to learn
                assert float(loss.detach()) == 0.0
                continue
            total = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))
            assert total > 0, f"no gradient for pattern {pattern}"
            norms = _encoder_grad_norms(method)
            if norms is not None:
                for j, (here, gn) in enumerate(zip(present, norms)):
                    if here:
                        assert gn > 0, f"encoder of present modality {info.names[j]} got no gradient"
                    else:
                        assert gn < 1e-5, f"encoder of absent modality {info.names[j]} got gradient {gn}"
        method.on_epoch_end(trainer, epoch)

    method.eval()
    with torch.no_grad():
        for pi, pattern in enumerate(_patterns(m)):
            batch = _batch(mods, kind, c, pattern, seed=500 + pi)
            ref = method(batch).logits
            # a row's prediction does not depend on the other rows of its batch
            solo = method(_rows(batch, [2])).logits
            torch.testing.assert_close(solo, ref[2:3], rtol=1e-4, atol=1e-5)
            if getattr(method, "ignores_masked_inputs", False) and not all(pattern):
                moved = method(_perturb_masked(batch, seed=pi)).logits
                torch.testing.assert_close(moved, ref, rtol=1e-5, atol=1e-6)
    if name in BASELINES:
        assert getattr(method, "ignores_masked_inputs", False), f"{name} should declare ignores_masked_inputs"


def _rows(batch: Batch, rows: list[int]) -> Batch:
    r = torch.tensor(rows)
    return Batch(x={k: v[r] for k, v in batch.x.items()}, mask=batch.mask[r], y=batch.y[r], y_mask=batch.y_mask[r],
                 index=batch.index[r], tokens_mask={k: v[r] for k, v in batch.tokens_mask.items()},
                 natural_mask=None if batch.natural_mask is None else batch.natural_mask[r])


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
