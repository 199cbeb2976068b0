import pytest
import torch

from omnifuse.fuse.base import ModalityInfo
from omnifuse.fuse.encoders import build_encoder

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
