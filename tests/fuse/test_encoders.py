import math

import pytest
import torch

from omnifuse.fuse.base import ModalityInfo, ModelInfo
from omnifuse.fuse.encoders import BACKBONE, EncoderBank, build_encoder
from omnifuse.fuse.methods import build_method, get_method, list_methods, parameter_count

CASES = [
    ("vector", (10,), {}),
    ("tabular", (7,), {}),
    ("sequence", (5, 6), {"pool": "attention"}),
    ("sequence", (5, 6), {"pool": "mean"}),
    ("timeseries", (4, 3), {"rnn": "gru"}),
    ("timeseries", (4, 3), {"rnn": "lstm"}),
]


@pytest.mark.parametrize("kind,shape,kw", CASES)
def test_shape_and_finite_missing_output(kind, shape, kw):
    torch.manual_seed(0)
    enc = build_encoder(ModalityInfo("m", kind, shape), 8, **kw).eval()
    x = torch.randn(3, *shape)
    tm = torch.ones(3, shape[0], dtype=torch.bool) if kind == "sequence" else None
    assert enc(x, tm).shape == (3, 8)
    z = enc(torch.zeros(2, *shape), torch.zeros(2, shape[0], dtype=torch.bool) if kind == "sequence" else None)
    assert torch.isfinite(z).all()
    assert torch.allclose(z[0], z[1])  # v^miss: one vector for every missing row


@pytest.mark.parametrize("pool", ["attention", "mean"])
def test_sequence_ignores_masked_tokens(pool):
    torch.manual_seed(0)
    enc = build_encoder(ModalityInfo("r", "sequence", (4, 6)), 8, pool=pool).eval()
    x = torch.randn(1, 4, 6)
    tm = torch.tensor([[True, True, False, False]])
    x2 = x.clone()
    x2[0, 2:] = 100.0
    assert torch.allclose(enc(x, tm), enc(x2, tm))
    assert not torch.allclose(enc(x, tm), enc(x, torch.ones_like(tm)))


def test_bad_options_raise():
    with pytest.raises(TypeError):
        build_encoder(ModalityInfo("a", "vector", (3,)), 4, nonsense=1)
    with pytest.raises(ValueError):
        build_encoder(ModalityInfo("a", "vector", (3, 2)), 4)
    with pytest.raises(ValueError):
        build_encoder(ModalityInfo("a", "image", (3,)), 4)


# ------------------------------------------------------------------------------------------------------
# the shared backbone
# ------------------------------------------------------------------------------------------------------
MODS = [
    ModalityInfo("img", "vector", (12,)),
    ModalityInfo("rep", "sequence", (5, 8)),
    ModalityInfo("ehr", "timeseries", (6, 4)),
    ModalityInfo("lab", "tabular", (7,)),
]


def _encoder_shapes(model: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    banks = [m for m in model.modules() if isinstance(m, EncoderBank)]
    assert len(banks) == 1, type(model).__name__
    return [(n, tuple(p.shape)) for n, p in banks[0].named_parameters()]


def test_every_registered_method_builds_the_same_encoders_at_its_defaults():
    """The encoders are one configuration (BACKBONE) every method and variant takes by default: the same
    parameter names, shapes and count; only the fusion differs."""
    info = ModelInfo(MODS, "multiclass", 3)
    names = [n for n in list_methods() if get_method(n).kind != "reference"]
    want = _encoder_shapes(EncoderBank(info))
    assert {"omnifuse", "dwfuse_only", "concat", "mdrop", "medfuse"} <= set(names)
    counts = {}
    for n in names:
        model = build_method(n, info)
        assert _encoder_shapes(model) == want, n
        counts[n] = parameter_count(n, info)
    enc = {c["encoders"] for c in counts.values() if c is not None}
    assert enc == {sum(math.prod(s) for _, s in want)}
    assert all(c is not None and c["total"] == c["encoders"] + c["fusion"] for c in counts.values())
    assert parameter_count("gbm", info) is None  # a reference learner has no network
    # more capacity only through a documented parameter
    wide = parameter_count("concat", info, d=2 * BACKBONE.d)
    assert wide is not None and wide["encoders"] > counts["concat"]["encoders"]


def test_backbone_options_and_defaults():
    assert (BACKBONE.d, BACKBONE.dropout, BACKBONE.hidden, BACKBONE.pool, BACKBONE.rnn) == (
        64,
        0.1,
        None,
        "attention",
        "gru",
    )
    assert BACKBONE.options({"rnn": "lstm"}) == {"dropout": 0.1, "hidden": None, "pool": "attention", "rnn": "lstm"}
    with pytest.raises(TypeError, match=r"unknown encoder option\(s\) \['width'\]"):
        BACKBONE.options({"width": 3})
    lstm = build_method("concat", ModelInfo(MODS, "binary", 1), encoder={"rnn": "lstm"})
    assert isinstance(lstm.enc.encoders[2].rnn, torch.nn.LSTM)
