"""Frozen encoders: preprocessing, known outputs, pooling, weights hashes, volumes (DICOM, NIfTI)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from omnifuse.extract.encoders import (
    VolumeEncoder,
    build_image_encoder,
    cpu_has_native_bf16,
    first_words,
    random_resnet34,
    resolve_precision,
    weights_hash,
)
from omnifuse.extract.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImagePreprocess,
    InputError,
    load_image,
    open_image,
    read_image,
)
from omnifuse.extract.volumes import read_dicom_series, read_volume, select_slices

from .conftest import IMAGE_SIZE, MAX_TOKENS, write_dicom_series


def test_weights_hash_is_stable_and_tracks_weights():
    a, b, c = random_resnet34(0), random_resnet34(0), random_resnet34(1)
    assert weights_hash(a) == weights_hash(b)
    assert weights_hash(a) != weights_hash(c)
    with torch.no_grad():
        next(b.parameters()).view(-1)[0] += 1e-3
    assert weights_hash(a) != weights_hash(b)


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


def test_auto_precision_is_bf16_only_where_the_cpu_computes_it(monkeypatch):
    cpu = torch.device("cpu")
    for caps, want in (({"avx512_bf16": False, "amx_bf16": False}, "fp32"), ({"avx512_bf16": True}, "bf16"),
                       ({"amx_bf16": True, "avx512_bf16": False}, "bf16"), ({}, "fp32")):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda caps=caps: dict(caps))
        assert cpu_has_native_bf16() is (want == "bf16")
        assert resolve_precision("auto", cpu) == want
        assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    enc = build_image_encoder("random:resnet34", device="cpu", precision="auto", size=IMAGE_SIZE)
    assert enc.precision == "fp32" and enc.preprocessing()["precision"] == "fp32"
    with pytest.raises(ValueError, match="precision must be"):
        resolve_precision("fp16", cpu)


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
    raw = [t[c] * s + m for c, (m, s) in enumerate(zip(IMAGENET_MEAN, IMAGENET_STD))]
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
    expect = [(128 / 255 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
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


def test_text_tokens_mask_and_truncation(text_encoder):
    long = " ".join(f"word{i}" for i in range(100))
    assert first_words(long, 20).split() == [f"word{i}" for i in range(20)]
    texts = [text_encoder.prepare("Heart size normal."), text_encoder.prepare(long)]
    x, tm = text_encoder.encode(texts)
    assert x.shape == (2, MAX_TOKENS, 384) and tm.shape == (2, MAX_TOKENS)
    n0 = len(text_encoder.tokenizer("Heart size normal.")["input_ids"])
    assert int(tm[0].sum()) == n0  # CLS, wordpieces, SEP
    assert int(tm[1].sum()) == MAX_TOKENS  # capped
    assert torch.all(x[0, n0:] == 0)  # padding is zero
    # alone or in a batch: the same vectors on the valid tokens
    x0, _ = text_encoder.encode(texts[:1])
    torch.testing.assert_close(x0[0, :n0], x[0, :n0], rtol=1e-4, atol=1e-4)


def test_text_pooling_mean_and_cls(minilm_path, text_encoder):
    from omnifuse.extract.encoders import TextEncoder

    mean = TextEncoder(text_encoder.model, text_encoder.tokenizer, minilm_path, pooling="mean", max_words=20,
                       max_tokens=MAX_TOKENS, device="cpu", precision="fp32")
    cls = TextEncoder(text_encoder.model, text_encoder.tokenizer, minilm_path, pooling="cls", max_words=20,
                      max_tokens=MAX_TOKENS, device="cpu", precision="fp32")
    texts = ["no acute process", "small left effusion with atelectasis at the base"]
    tok, tm = text_encoder.encode(texts)
    m, _ = mean.encode(texts)
    c, _ = cls.encode(texts)
    assert m.shape == (2, 384) and mean.shape == (384,)
    ref = (tok * tm[..., None]).sum(1) / tm.sum(1, keepdim=True)
    torch.testing.assert_close(m, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(c, tok[:, 0], rtol=1e-4, atol=1e-5)
    assert mean.weights_hash == text_encoder.weights_hash
    # known answer: sentence-transformers' own pipeline for this model (mean pooling, then L2 norm)
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(minilm_path, device="cpu").encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(torch.nn.functional.normalize(m, dim=1), st.float().cpu(), rtol=1e-3, atol=1e-4)


def test_text_bad_inputs_and_tokenizer_trap(text_encoder, minilm_path):
    with pytest.raises(InputError, match="empty report"):
        text_encoder.prepare("  \n\t ")
    with pytest.raises(InputError):
        text_encoder.prepare(None)
    from transformers import BertTokenizerFast

    from omnifuse.extract.encoders import TextEncoder

    bad_tok = BertTokenizerFast(vocab_file=f"{minilm_path}/vocab.txt")
    if len(bad_tok) < 100:  # transformers 5 builds a near-empty vocabulary here
        with pytest.raises(ValueError, match="AutoTokenizer"):
            TextEncoder(text_encoder.model, bad_tok, "x", device="cpu")


def test_dicom_series_sorted_by_position(tmp_path):
    write_dicom_series(tmp_path / "s", 4)  # file names in reverse z order
    vol = read_dicom_series(tmp_path / "s")
    assert vol.shape == (4, 128, 128)
    # slice k was shifted by 100 k in stored values; the rescale (slope 1) keeps the differences
    means = vol.reshape(4, -1).mean(1)
    assert np.allclose(np.diff(means), 100.0, atol=1e-3)


def test_dicom_mixed_series_and_garbage(tmp_path):
    write_dicom_series(tmp_path / "m", 3, series_uid="9.9.9")
    with pytest.raises(InputError, match="mixed DICOM series"):
        read_volume(tmp_path / "m")
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "x.dcm").write_text("garbage")
    with pytest.raises(InputError, match="unreadable DICOM"):
        read_volume(tmp_path / "g")
    (tmp_path / "e").mkdir()
    with pytest.raises(InputError, match="no DICOM files"):
        read_volume(tmp_path / "e")


def test_nifti_volume(tmp_path):
    nib = pytest.importorskip("nibabel")
    data = np.zeros((10, 12, 5), dtype=np.float32)  # x, y, z
    for z in range(5):
        data[:, :, z] = z
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "v.nii.gz")
    vol = read_volume(tmp_path / "v.nii.gz")
    assert vol.shape == (5, 12, 10)
    assert np.allclose(vol.reshape(5, -1).mean(1), np.arange(5))


def test_slice_selection():
    assert select_slices(3, 4).tolist() == [0, 1, 2]
    assert select_slices(9, 3).tolist() == [0, 4, 8]


def test_volume_encoder_slices_and_pooling(tmp_path, image_encoder):
    write_dicom_series(tmp_path / "s", 3)
    v = VolumeEncoder(image_encoder, max_slices=4)
    slices = v.load(tmp_path / "s")
    assert slices.shape == (3, 3, IMAGE_SIZE, IMAGE_SIZE)
    x, mask = v.encode_volume(slices)
    assert x.shape == (4, 512) and mask.tolist() == [True, True, True, False]
    assert torch.all(x[3] == 0)
    torch.testing.assert_close(x[:3], image_encoder.encode(slices), rtol=1e-4, atol=1e-5)
    pooled = VolumeEncoder(image_encoder, max_slices=4, pooling="mean")
    p, none = pooled.encode_volume(slices)
    assert none is None and p.shape == (512,)
    torch.testing.assert_close(p, x[:3].mean(0), rtol=1e-4, atol=1e-5)
