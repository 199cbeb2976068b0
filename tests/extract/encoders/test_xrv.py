"""torchxrayvision's DenseNet-121 without torchxrayvision or torchvision: the architecture against torchvision's
published size and torchxrayvision's module names, the preprocessing against ``xrv.utils.normalize`` and its
crop, and the authors' weight file (a pickled module of classes that are not installed) read key for key."""

from __future__ import annotations

import os
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from omnifuse.extract.encoders import build_image_encoder, get_encoder_entry
from omnifuse.extract.encoders.checkpoints import read_state_dict
from omnifuse.extract.encoders.xrv import XRVDenseNet, load_xrv_weights

TORCHVISION_DENSENET121_PARAMS = 7_978_856  # torchvision.models.densenet121 (3 channels, 1000 classes), its docs


def xrv_key_shapes(growth=32, blocks=(6, 12, 24, 16), init=64, bn_size=4, in_channels=1, classes=18) -> dict:
    """torchxrayvision ``models.DenseNet``'s state-dict names and shapes, written from its code: ``features``
    = conv0, norm0, denselayers (norm1, conv1, norm2, conv2) in denseblock1..4, transition1..3 (norm, conv),
    norm5; then ``classifier``."""

    def bn(prefix: str, c: int) -> dict:
        return {f"{prefix}.{k}": (c,) for k in ("weight", "bias", "running_mean", "running_var")} | {
            f"{prefix}.num_batches_tracked": ()
        }

    keys = {"features.conv0.weight": (init, in_channels, 7, 7), **bn("features.norm0", init)}
    n = init
    for i, layers in enumerate(blocks, 1):
        for j in range(1, layers + 1):
            p, c = f"features.denseblock{i}.denselayer{j}", n + (j - 1) * growth
            keys |= bn(f"{p}.norm1", c) | {f"{p}.conv1.weight": (bn_size * growth, c, 1, 1)}
            keys |= bn(f"{p}.norm2", bn_size * growth) | {f"{p}.conv2.weight": (growth, bn_size * growth, 3, 3)}
        n += layers * growth
        if i < len(blocks):
            keys |= bn(f"features.transition{i}.norm", n) | {f"features.transition{i}.conv.weight": (n // 2, n, 1, 1)}
            n //= 2
    return keys | bn("features.norm5", n) | {"classifier.weight": (classes, n), "classifier.bias": (classes,)}


@pytest.fixture(scope="module")
def encoder():
    return build_image_encoder("xrv-densenet121", device="cpu", precision="fp32", pretrained=False)


def test_architecture_is_densenet121_under_torchxrayvision_names(encoder):
    rgb = XRVDenseNet(in_channels=3, num_classes=1000)
    assert sum(p.numel() for p in rgb.parameters()) == TORCHVISION_DENSENET121_PARAMS
    model = encoder.model
    # one input channel (2 x 64 x 7 x 7 conv weights fewer) and 18 pathologies instead of 1000 classes
    want = TORCHVISION_DENSENET121_PARAMS - 2 * 64 * 49 - 1025 * (1000 - 18)
    assert sum(p.numel() for p in model.parameters()) == want == 6_966_034
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == xrv_key_shapes()
    x = torch.randn(1, 3, 224, 224)
    y = encoder.encode(x)
    assert y.shape == (1, 1024) == (1, *get_encoder_entry("xrv-densenet121").output_shape())
    with torch.inference_mode():  # features2: ReLU of the features, global average, on the channel mean
        ref = torch.relu(model.features(x.mean(1, keepdim=True))).mean((2, 3))
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5)


def test_preprocessing_is_xrv_normalize_and_its_crop(encoder, tmp_path):
    prep = encoder.preprocessing()
    assert prep["image_size"] == 224 and prep["pooling"] == "avg" and prep["resize"] == "shorter_side_center_crop"
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (300, 224), dtype=np.uint8)  # a tall image: XRayCenterCrop keeps rows 38..261
    Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
    x = encoder.load(tmp_path / "g.png")
    start = 300 // 2 - 224 // 2  # xrv.datasets.XRayCenterCrop.crop_center
    want = (2 * (grey[start : start + 224].astype(np.float32) / 255) - 1.0) * 1024  # xrv.utils.normalize(img, 255)
    assert x.shape == (3, 224, 224)
    for c in range(3):
        np.testing.assert_allclose(x[c].numpy(), want, atol=2e-3)
    rgb = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "c.png")
    x = encoder.load(tmp_path / "c.png")
    readme = ((2 * (rgb.astype(np.float32) / 255) - 1.0) * 1024).mean(2)  # the README: normalize, then mean(2)
    np.testing.assert_allclose(x.mean(0).numpy(), readme, atol=2e-3)


def _fake_xrv_module(monkeypatch, keys: dict) -> nn.Module:
    """A module tree as torchxrayvision's weight file holds it: classes ``torchxrayvision.models.DenseNet``,
    ``_DenseBlock``, ``_DenseLayer``, ``_Transition`` (importable only while this test saves it), torch's own
    layers, and an ``op_threshs`` buffer as newer files carry; random values."""
    pkg, mod = types.ModuleType("torchxrayvision"), types.ModuleType("torchxrayvision.models")
    classes = {
        n: type(n, (nn.Module,), {"__module__": mod.__name__})
        for n in ("DenseNet", "_DenseBlock", "_DenseLayer", "_Transition")
    }
    for n, c in classes.items():
        setattr(mod, n, c)
    monkeypatch.setitem(sys.modules, "torchxrayvision", pkg)
    monkeypatch.setitem(sys.modules, "torchxrayvision.models", mod)
    kinds = {"denseblock": "_DenseBlock", "denselayer": "_DenseLayer", "transition": "_Transition"}
    top = classes["DenseNet"]()
    top.features = nn.Sequential()
    for key, shape in keys.items():
        *path, leaf_name, tensor_name = key.split(".")
        node = top
        for part in path:
            if part not in node._modules:
                kind = next((v for k, v in kinds.items() if part.startswith(k)), None)
                node.add_module(part, classes[kind]() if kind else nn.Module())
            node = node._modules[part]
        if leaf_name not in node._modules:
            if leaf_name.startswith("conv"):
                leaf: nn.Module = nn.Conv2d(shape[1], shape[0], shape[2], bias=False)
            elif leaf_name == "classifier":
                leaf = nn.Linear(shape[1], shape[0])
            else:
                leaf = nn.BatchNorm2d(shape[0])
            node.add_module(leaf_name, leaf)
        t = getattr(node._modules[leaf_name], tensor_name)
        with torch.no_grad():
            if t.dtype.is_floating_point:
                t.copy_(torch.rand(shape) + 0.5 if tensor_name == "running_var" else torch.randn(shape))
            else:
                t.fill_(7)
    top.register_buffer("op_threshs", torch.rand(18))
    return top


@pytest.mark.filterwarnings("ignore:Couldn't retrieve source code")  # torch.save of the test's stand-in classes
@pytest.mark.parametrize("legacy", [False, True])
def test_the_authors_pickled_module_loads_without_their_code(monkeypatch, tmp_path, legacy):
    keys = xrv_key_shapes()
    fake = _fake_xrv_module(monkeypatch, keys)
    path = tmp_path / "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"
    torch.save(fake, path, _use_new_zipfile_serialization=not legacy)
    monkeypatch.delitem(sys.modules, "torchxrayvision.models")  # torchxrayvision is not installed when it loads
    monkeypatch.delitem(sys.modules, "torchxrayvision")
    state = read_state_dict(path)
    assert set(state) == set(keys) | {"op_threshs"}
    model = load_xrv_weights(XRVDenseNet(), path)  # every key, no missing or unexpected one
    own = model.state_dict()
    for k in keys:
        assert torch.equal(own[k], state[k]), k


def test_old_layer_names_missing_keys_and_foreign_code(tmp_path):
    model = XRVDenseNet()
    state = {k: v.clone() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    old = {k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v for k, v in state.items()}
    torch.save({"state_dict": {f"module.{k}": v for k, v in old.items()}}, tmp_path / "old.pt")
    loaded = load_xrv_weights(XRVDenseNet(), tmp_path / "old.pt")  # torchvision's old names, DataParallel prefix
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    del state["features.norm5.weight"]
    torch.save(state, tmp_path / "short.pt")
    with pytest.raises(ValueError, match=r"short\.pt: does not match the architecture: missing 1 keys \(features"):
        load_xrv_weights(XRVDenseNet(), tmp_path / "short.pt")
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"w": torch.zeros(1), "x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"evil\.pt: refused global (posix|nt|os)\.system"):
        read_state_dict(tmp_path / "evil.pt")
    assert not marker.exists()
