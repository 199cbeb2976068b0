"""The image encoder: ResNet34's architecture and known output, bf16 autocast against fp32."""

from __future__ import annotations

import torch

from omnifuse.extract.encoders import build_image_encoder
from tests.helpers import IMAGE_SIZE


def test_resnet34_architecture_and_output(image_encoder):
    n_params = sum(p.numel() for p in image_encoder.model.parameters())
    assert 21.0e6 < n_params < 21.6e6  # ResNet34 without the classifier
    assert image_encoder.shape == (512,)
    x = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE)
    y = image_encoder.encode(x)
    assert y.shape == (3, 512) and y.dtype == torch.float32
    with torch.inference_mode():  # known answer: the backbone's pooled output, flattened
        ref = image_encoder.model(pixel_values=x).pooler_output.flatten(1)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5)
    # batch composition does not change a row's embedding
    torch.testing.assert_close(image_encoder.encode(x[1:2])[0], y[1], rtol=1e-4, atol=1e-4)


def test_bf16_autocast_is_close_to_fp32():
    enc32 = build_image_encoder("random:resnet34", device="cpu", precision="fp32", size=IMAGE_SIZE)
    enc16 = build_image_encoder("random:resnet34", device="cpu", precision="bf16", size=IMAGE_SIZE)
    assert enc16.weights_hash == enc32.weights_hash
    x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    a, b = enc32.encode(x), enc16.encode(x)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
    assert (cos > 0.98).all(), cos
