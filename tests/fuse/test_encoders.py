import json
import math

import numpy as np
import pytest
import torch

from omnifuse.fuse.base import ModalityInfo, ModelInfo
from omnifuse.fuse.encoders import (
    BACKBONE,
    EncoderBank,
    MLPEncoder,
    PeriodicEmbedding,
    PiecewiseLinearEmbedding,
    TabularEncoder,
    build_encoder,
    embedding_dim,
)
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
    assert (BACKBONE.d, BACKBONE.dropout, BACKBONE.hidden, BACKBONE.pool, BACKBONE.rnn, BACKBONE.numeric) == (
        64,
        0.1,
        None,
        "attention",
        "gru",
        "linear",
    )
    assert BACKBONE.options({"rnn": "lstm"}) == {
        "dropout": 0.1,
        "hidden": None,
        "pool": "attention",
        "rnn": "lstm",
        "numeric": "linear",
    }
    with pytest.raises(TypeError, match=r"unknown encoder option\(s\) \['width'\]"):
        BACKBONE.options({"width": 3})
    lstm = build_method("concat", ModelInfo(MODS, "binary", 1), encoder={"rnn": "lstm"})
    assert isinstance(lstm.enc.encoders[2].rnn, torch.nn.LSTM)


LAB = ModalityInfo(
    "lab",
    "tabular",
    (4,),
    feature_kinds=("numeric", "categorical:3", "binary", "numeric"),
    bin_edges=((0.0, 1.0, 3.0), None, None, (-1.0, 0.0, 2.0, 4.0)),
)


def test_piecewise_linear_encoding_by_hand():
    """Gorishniy et al. 2022, eq. 1: 1 below x, the fraction in x's bin, 0 above; the outer bins extrapolate."""
    ple = PiecewiseLinearEmbedding([(0.0, 1.0, 3.0), (-1.0, 0.0, 2.0, 4.0)], k=4)
    x = torch.tensor([[2.0, -2.0], [5.0, 1.0], [0.5, 6.0]])
    e = ple.encode(x)
    want = [
        [[1.0, 0.5, 0.0], [-1.0, 0.0, 0.0]],  # column 0 has two bins: its third component is padding
        [[1.0, 2.0, 0.0], [1.0, 0.5, 0.0]],
        [[0.5, 0.0, 0.0], [1.0, 1.0, 2.0]],  # (6 - 2) / (4 - 2)
    ]
    assert torch.allclose(e, torch.tensor(want))
    out = ple(x)  # ReLU(e_f W_f + b_f) per column
    hand = torch.relu(torch.stack([e[:, f] @ ple.weight[f] + ple.bias[f] for f in range(2)], dim=1))
    assert out.shape == (3, 2, 4) and torch.allclose(out, hand, atol=1e-6)


def test_categorical_columns_are_embedded():
    torch.manual_seed(0)
    enc = build_encoder(LAB, 8).eval()
    assert isinstance(enc, TabularEncoder) and len(enc.embeddings) == 1
    assert enc.embeddings[0].num_embeddings == 4 and enc.embeddings[0].embedding_dim == embedding_dim(3) == 3
    x = torch.tensor([[0.3, 1.0, 1.0, -0.2]]).repeat(4, 1)
    x[:, 1] = torch.tensor([0.0, 1.0, 2.0, 3.0])  # missing and the three categories
    out = enc(x)
    assert all(not torch.allclose(out[i], out[j]) for i in range(4) for j in range(i + 1, 4))
    with torch.no_grad():  # the code reaches the output only through its embedding row
        enc.embeddings[0].weight[2] = enc.embeddings[0].weight[1]
    assert torch.allclose(enc(x)[1], enc(x)[2])
    assert torch.isfinite(enc(torch.zeros(2, 4))).all()
    assert embedding_dim(224) == 16


@pytest.mark.parametrize("numeric", ["ple", "periodic"])
def test_numeric_encodings_are_options(numeric):
    torch.manual_seed(0)
    enc = build_encoder(LAB, 8, numeric=numeric).eval()
    assert isinstance(enc.num_embedding, PiecewiseLinearEmbedding if numeric == "ple" else PeriodicEmbedding)
    x = torch.randn(5, 4)
    x[:, 1] = 1.0
    assert enc(x).shape == (5, 8) and torch.isfinite(enc(torch.zeros(2, 4))).all()
    plain = ModalityInfo("lab", "tabular", (3,), feature_kinds=("numeric", "binary", "numeric"))
    assert isinstance(build_encoder(plain, 8), MLPEncoder)  # no categorical, linear: the network of old
    assert isinstance(build_encoder(plain, 8, numeric="periodic"), TabularEncoder)
    with pytest.raises(ValueError, match="needs bin edges"):
        build_encoder(plain, 8, numeric="ple")
    with pytest.raises(ValueError, match="numeric encoding must be one of"):
        build_encoder(LAB, 8, numeric="spline")


def test_modality_info_round_trips_through_model_json():
    again = ModalityInfo.from_json(json.loads(json.dumps(LAB.to_json())))
    assert again == LAB
    old = ModalityInfo.from_json({"name": "a", "kind": "vector", "shape": [3]})
    assert old == ModalityInfo("a", "vector", (3,)) and "feature_kinds" not in old.to_json()


def test_a_model_trained_with_kinds_saves_and_rebuilds_in_predict(tmp_path, fast):
    from omnifuse.fuse.predict import load_model, predict
    from omnifuse.fuse.train import train
    from tests.helpers import write_kinds_cache

    cache = write_kinds_cache(tmp_path / "k.zarr")
    params = {"d": 16, "encoder": {"numeric": "ple"}}
    r = train(cache, "mortality", "concat", folds=2, out=tmp_path / "run", **{**fast, "method_params": params})
    meta = json.loads((tmp_path / "run" / "fold0" / "model.json").read_text())
    lab = next(m for m in meta["modalities"] if m["name"] == "lab")
    assert lab["feature_kinds"][:4] == ["numeric", "numeric", "binary", "categorical:3"] and lab["bin_edges"][0]
    model, norm, _ = load_model(tmp_path / "run" / "fold0")
    enc = model.enc.encoders[model.info.names.index("lab")]
    assert isinstance(enc, TabularEncoder) and enc.numeric == "ple" and len(enc.embeddings) == 1
    assert norm.stats["lab"]["transform"] == ["numeric", "log", "binary", "categorical"]
    res = predict(tmp_path / "run", cache, fold=0, shap=False)
    te = r.folds[0].test_rows
    np.testing.assert_allclose(res["score"][te], r.folds[0].probs, rtol=1e-5, atol=1e-6)
