"""Reading images: 8- and 16-bit files, grey and colour, large JPEGs decoded at a reduced scale, resize and
centre crop, ImageNet normalisation, and the files that cannot be read."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from omnifuse.extract.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImagePreprocess,
    InputError,
    load_image,
    open_image,
    read_image,
)
from tests.helpers import IMAGE_SIZE


def test_8bit_resize_matches_the_float_path_to_rounding(tmp_path, image_encoder):
    """8-bit files are resized in 8 bit: within half a grey level of the float resize, same embedding."""
    rng = np.random.default_rng(0)
    smooth = np.asarray(Image.fromarray(rng.integers(0, 255, (12, 9), dtype=np.uint8)).resize((90, 120)))
    grey = np.clip(smooth.astype(int) + rng.integers(-20, 20, smooth.shape), 0, 255).astype(np.uint8)
    Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
    rgb = np.stack([grey, grey[::-1], 255 - grey], -1)
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "c.png")
    prep = ImagePreprocess(size=IMAGE_SIZE)
    for name in ("g.png", "c.png"):
        fast = load_image(tmp_path / name, prep)
        ref = prep.from_float(read_image(tmp_path / name))
        assert fast.shape == ref.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and fast.dtype == torch.float32
        # 8-bit rounding of the resized pixel: at most one grey level before normalisation (std >= 0.224)
        assert float((fast - ref).abs().max()) <= 1 / 255 / 0.224 + 1e-5
        assert float((fast - ref).abs().max()) > 0  # the 8-bit path is the one taken
        a, b = image_encoder.encode(torch.stack([fast, ref]))
        assert float(torch.nn.functional.cosine_similarity(a, b, dim=0)) > 0.9999
    # grey files give three identical channels before normalisation
    t = load_image(tmp_path / "g.png", prep)
    raw = [t[c] * s + m for c, (m, s) in enumerate(zip(IMAGENET_MEAN, IMAGENET_STD, strict=True))]
    torch.testing.assert_close(raw[0], raw[1])
    torch.testing.assert_close(raw[1], raw[2])
    # palette and grey+alpha images are read as RGB and L
    Image.fromarray(grey, mode="L").convert("P").save(tmp_path / "p.png")
    Image.fromarray(grey, mode="L").convert("LA").save(tmp_path / "la.png")
    assert open_image(tmp_path / "p.png").mode == "RGB" and open_image(tmp_path / "la.png").mode == "L"
    torch.testing.assert_close(load_image(tmp_path / "la.png", prep), load_image(tmp_path / "g.png", prep))


def test_large_jpeg_is_decoded_at_a_reduced_scale(tmp_path):
    arr = np.tile(np.linspace(0, 255, 2000, dtype=np.float32), (1800, 1)).astype(np.uint8)
    Image.fromarray(arr, mode="L").save(tmp_path / "big.jpg", quality=90)
    img = open_image(tmp_path / "big.jpg", 224)
    assert img.mode == "L" and 448 <= min(img.size) < 900  # DCT-scaled: 1/2 of 1800x2000 is 900x1000
    t = load_image(tmp_path / "big.jpg", ImagePreprocess(size=224))
    assert t.shape == (3, 224, 224)
    ramp = t[0, 112]  # a horizontal ramp stays a ramp
    assert (ramp[1:] >= ramp[:-1] - 1e-3).all() and float(ramp[-1] - ramp[0]) > 3


def test_image_preprocessing_grey_to_rgb_and_normalisation(tmp_path):
    grey = np.full((40, 60), 128, dtype=np.uint8)
    Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
    prep = ImagePreprocess(size=32)
    t = load_image(tmp_path / "g.png", prep)
    assert t.shape == (3, 32, 32)
    expect = [(128 / 255 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    for c in range(3):
        assert torch.allclose(t[c], torch.full((32, 32), expect[c]), atol=1e-4)
    # the shorter side is resized and the centre kept: a left/right split stays centred
    half = np.zeros((32, 64), dtype=np.uint8)
    half[:, 32:] = 255
    Image.fromarray(half, mode="L").save(tmp_path / "half.png")
    u = load_image(tmp_path / "half.png", prep)
    assert u[0, :, :14].max() < u[0, :, 18:].min()


def test_image_16bit_and_colour(tmp_path):
    arr = np.full((20, 20), 65535, dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "w.png")
    assert read_image(tmp_path / "w.png").max() == pytest.approx(1.0)
    rgb = np.zeros((10, 10, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "r.png")
    a = read_image(tmp_path / "r.png")
    assert a.shape == (10, 10, 3) and a[..., 0].min() == 1.0 and a[..., 1].max() == 0.0


def test_image_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(InputError, match="unreadable image"):
        read_image(tmp_path / "text.png")
    Image.fromarray(np.zeros((50, 50), dtype=np.uint8), mode="L").save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="unreadable image"):
        read_image(tmp_path / "trunc.jpg")


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_interpolation_is_pils_filter_on_8bit_and_float_images(interpolation):
    """``ImagePreprocess.interpolation`` picks PIL's filter on both paths: the 8-bit one equals PIL's own 8-bit
    resize and crop exactly, the float one PIL's resize of the float plane (mode F) within float32 rounding;
    the two filters give different pixels, and an unknown name is refused."""
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 256, (90, 70), dtype=np.uint8)
    prep = ImagePreprocess(size=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), interpolation=interpolation)
    filt = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}[interpolation]
    nh = round(32 * 90 / 70)  # 41: the shorter side to 32, then the centre crop
    ref8 = np.asarray(Image.fromarray(arr).resize((32, nh), filt), np.float32)[(nh - 32) // 2 :][:32] / 255
    got8 = prep.from_pil8(Image.fromarray(arr))
    torch.testing.assert_close(got8, torch.from_numpy(ref8)[None].expand(3, -1, -1), rtol=0, atol=1e-6)
    plane = arr.astype(np.float32) / 255
    reff = np.array(Image.fromarray(plane).resize((32, nh), filt), np.float32)[(nh - 32) // 2 :][:32]
    torch.testing.assert_close(prep.from_float(plane), torch.from_numpy(reff)[None].expand(3, -1, -1))
    other = ImagePreprocess(
        size=32,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        interpolation="bicubic" if interpolation == "bilinear" else "bilinear",
    )
    assert float((other.from_pil8(Image.fromarray(arr)) - got8).abs().max()) > 10 / 255
    assert prep.as_dict()["interpolation"].startswith(interpolation)
    with pytest.raises(ValueError, match="interpolation must be one of"):
        ImagePreprocess(interpolation="nearest")
