"""RAD-DINO and MedSigLIP offline: the real configurations' sizes against a hand count and the published
ones, the forward at the real resolution (one layer), the poolings the model cards describe, the
preprocessing against their processor configs, and the gated-model refusal."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from omnifuse.extract.encoders import build_image_encoder, get_encoder_entry, vision_hub


def vit_count(d: int, layers: int, mlp: int, tokens: int, patch: int, per_layer_extra: int, extra: int) -> int:
    """Parameters of a pre-norm ViT written out: patch conv, positions, per layer two LayerNorms, q/k/v/out
    projections and the MLP (with biases), the final LayerNorm, plus model-specific extras."""
    layer = 2 * 2 * d + 4 * (d * d + d) + (d * mlp + mlp) + (mlp * d + d) + per_layer_extra
    return (3 * patch * patch * d + d) + tokens * d + layers * layer + 2 * d + extra


def test_rad_dino_is_dinov2_vit_b14_at_518():
    config = vision_hub.rad_dino_config()
    with torch.device("meta"):
        n = sum(p.numel() for p in transformers.Dinov2Model(config).parameters())
    # 1 + 37 x 37 positions; per layer two LayerScale vectors; CLS and mask tokens
    assert n == vit_count(768, 12, 3072, 1 + 37 * 37, 14, per_layer_extra=2 * 768, extra=2 * 768)
    assert 86.0e6 < n < 87.0e6  # DINOv2 ViT-B/14: 86 M (facebookresearch/dinov2 README)


def test_medsiglip_is_siglip_400m_at_448():
    config = vision_hub.medsiglip_config()
    with torch.device("meta"):
        n = sum(p.numel() for p in transformers.SiglipVisionModel(config).parameters())
    d, mlp = 1152, 4304
    head = d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (d * mlp + mlp) + (mlp * d + d)  # probe, MHA, LN, MLP
    assert n == vit_count(d, 27, mlp, 32 * 32, 14, per_layer_extra=0, extra=head) == 428_565_440
    assert 4.0e8 < n < 4.4e8  # the model card: "a 400M parameter vision encoder"


@pytest.fixture()
def one_layer(monkeypatch):
    """Both entries at one layer (their sizes at full depth are checked above)."""
    for name in ("rad_dino_config", "medsiglip_config"):
        full = getattr(vision_hub, name)

        def small(full=full):
            c = full()
            c.num_hidden_layers = 1
            return c

        monkeypatch.setattr(vision_hub, name, small)


def test_rad_dino_poolings_and_preprocessing(one_layer, tmp_path):
    enc = build_image_encoder("rad-dino", device="cpu", precision="fp32", pretrained=False)
    prep = enc.preprocessing()
    assert (prep["image_size"], prep["resize"], prep["pooling"]) == (518, "shorter_side_center_crop", "cls")
    assert prep["mean"] == [0.5307] * 3 and prep["std"] == [0.2583] * 3  # its preprocessor_config.json
    assert prep["source"] == "random" and prep["init"] == "random(seed=0)"
    Image.fromarray(np.full((600, 700), 90, np.uint8), mode="L").save(tmp_path / "g.png")
    x = enc.load(tmp_path / "g.png")
    assert x.shape == (3, 518, 518)
    torch.testing.assert_close(x, torch.full((3, 518, 518), (90 / 255 - 0.5307) / 0.2583))
    x = torch.randn(1, 3, 518, 518)
    y = enc.encode(x)
    with torch.inference_mode():
        out = enc.model.model(pixel_values=x)
    assert y.shape == (1, 768) and out.last_hidden_state.shape == (1, 1 + 37 * 37, 768)
    torch.testing.assert_close(y, out.pooler_output)  # the card's cls_embeddings
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state[:, 0])  # CLS after the final LayerNorm
    patch = build_image_encoder("rad-dino", device="cpu", precision="fp32", pretrained=False, pooling="patch_mean")
    assert patch.weights_hash == enc.weights_hash and patch.preprocessing()["pooling"] == "patch_mean"
    torch.testing.assert_close(patch.encode(x), out.last_hidden_state[:, 1:].mean(1), rtol=1e-4, atol=1e-5)


def test_medsiglip_poolings_and_preprocessing(one_layer, tmp_path):
    enc = build_image_encoder("google/medsiglip-448", device="cpu", precision="fp32", pretrained=False)
    assert enc.name == "medsiglip" and enc.shape == (1152,) == get_encoder_entry("medsiglip").output_shape()
    prep = enc.preprocessing()
    assert (prep["image_size"], prep["resize"], prep["mean"], prep["std"]) == (448, "squash", [0.5] * 3, [0.5] * 3)
    Image.fromarray(np.full((300, 500), 200, np.uint8), mode="L").save(tmp_path / "w.png")
    x = enc.load(tmp_path / "w.png")  # SiglipImageProcessor: the whole image to 448 x 448, (v / 255 - 0.5) / 0.5
    torch.testing.assert_close(x, torch.full((3, 448, 448), (200 / 255 - 0.5) / 0.5))
    x = torch.randn(1, 3, 448, 448)
    with torch.inference_mode():
        out = enc.model.model(pixel_values=x)
    assert out.last_hidden_state.shape == (1, 32 * 32, 1152)
    torch.testing.assert_close(enc.encode(x), out.pooler_output)  # the attention-pooling head
    mean = build_image_encoder("medsiglip", device="cpu", precision="fp32", pretrained=False, pooling="mean")
    torch.testing.assert_close(mean.encode(x), out.last_hidden_state.mean(1), rtol=1e-4, atol=1e-5)


def test_a_gated_model_without_access_is_refused_in_one_line(monkeypatch):
    def gated(*args, **kwargs):
        raise OSError("You are trying to access a gated repo. Make sure to have access to it at ...")

    monkeypatch.setattr(vision_hub, "hub_load", gated)
    with pytest.raises(ValueError) as err:
        build_image_encoder("medsiglip", device="cpu")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("image encoder 'medsiglip' (google/medsiglip-448) is gated")
    assert "accept the Health AI Developer Foundations terms" in msg and "hf auth login" in msg

    def missing(*args, **kwargs):
        raise OSError("no file named model.safetensors")

    monkeypatch.setattr(vision_hub, "hub_load", missing)
    with pytest.raises(ValueError, match="image encoder 'rad-dino' cannot be loaded from microsoft/rad-dino: no file"):
        build_image_encoder("microsoft/rad-dino", device="cpu")


def _noise(h: int, w: int, seed: int = 0) -> Image.Image:
    """8-bit grey noise: every pixel a sharp edge, so any change of filter, size or crop shows."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8), mode="L")


@pytest.mark.parametrize("shape", [(600, 700), (1000, 1100), (550, 551), (300, 400), (519, 1031), (518, 518)])
def test_rad_dino_preprocessing_is_its_processors(shape):
    """``RAD_DINO_PREP`` against transformers' ``BitImageProcessor`` (PIL backend) configured as microsoft/rad-dino's
    preprocessor_config.json: shorter side 518 bicubic (resample 3), centre crop 518, 1/255, mean 0.5307, std
    0.2583. Tolerance 1e-4 after normalisation (float32 rounding; a grey level is 0.015): the same 8-bit PIL
    resize, the long side truncated and the crop at (n - 518) // 2 as transformers computes them. The shapes
    include long sides where rounding and truncating differ (1100 -> 569.8, 551 -> 518.9, 400 -> 690.7), which
    our default arithmetic misses by several grey levels, as the bilinear filter does everywhere."""
    bit = pytest.importorskip("transformers.models.bit.image_processing_pil_bit")
    proc = bit.BitImageProcessorPil(
        do_resize=True,
        size={"shortest_edge": 518},
        resample=3,
        do_center_crop=True,
        crop_size={"height": 518, "width": 518},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5307] * 3,
        image_std=[0.2583] * 3,
        do_convert_rgb=True,
    )
    img = _noise(*shape)
    ref = proc(img.convert("RGB"), return_tensors="pt")["pixel_values"][0]
    prep = vision_hub.RAD_DINO_PREP
    assert prep.interpolation == "bicubic" and prep.as_dict()["interpolation"].startswith("bicubic")
    got = prep.from_pil8(img)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-4)
    if shape != (518, 518):
        for other in (replace(prep, interpolation="bilinear"), replace(prep, arithmetic="omnifuse")):
            same_filter = other.interpolation == "bicubic" or prep._geometry(*shape)[:2] == tuple(img.size[::-1])
            if other._geometry(*shape) == prep._geometry(*shape) and same_filter:
                continue  # here rounding and truncating agree (700, 1031)
            assert float((other.from_pil8(img) - ref).abs().max()) > 5 / 255 / 0.2583  # the test can tell
