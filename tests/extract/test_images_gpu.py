"""The GPU JPEG path on the CPU: its preprocessing maths against PIL's, the choice of decoder, the fallback to
PIL and its counts, through a stand-in for torchvision that records its calls (no GPU, no torchvision here).

The stand-in decodes with PIL at full resolution, which is what nvJPEG computes (both are exact IDCT decoders
of the same bitstream, up to the IDCT's rounding), and like torchvision it fails a whole batch when one file
in it fails."""

from __future__ import annotations

import io
import logging
import sys
import types
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from omnifuse.cache import CacheError, load_cache
from omnifuse.extract import pipeline
from omnifuse.extract.datasets.manifest import ManifestAdapter
from omnifuse.extract.images import (
    GPU_DECODED,
    IMAGENET_STD,
    NVJPEG_FAILED,
    GpuJpegDecoder,
    ImagePreprocess,
    InputError,
    JpegFile,
    gpu_jpeg_decoder,
    jpeg_draft_scale,
    load_image,
    open_image,
    read_jpeg,
)
from omnifuse.extract.pipeline import _prefetch, extract
from tests.helpers import IMAGE_SIZE

# one grey level after normalisation, in the channel with the smallest std (the largest step)
ONE_LEVEL = 1 / 255 / min(IMAGENET_STD)


def _cxr_like(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random field plus noise of two grey levels: the content of a chest X-ray, in miniature."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(6, 5))
    base = ((base - base.min()) / np.ptp(base) * 200 + 20).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC), np.float32)
    return np.clip(smooth + rng.normal(0, 2, smooth.shape), 0, 255).astype(np.uint8)


def _as_tensor(arr: np.ndarray) -> torch.Tensor:
    """[H, W] or [H, W, 3] uint8 -> [1, C, H, W]."""
    t = torch.from_numpy(np.array(arr, dtype=np.uint8, copy=True))
    return (t[None] if t.ndim == 2 else t.permute(2, 0, 1))[None]


# ------------------------------------------------------------------------------------------- the maths


@pytest.mark.parametrize(
    "shape, size, resize",
    [
        ((300, 250), 64, "shorter_side_center_crop"),  # downscale, portrait
        ((97, 211), 64, "shorter_side_center_crop"),  # downscale by a non-integer factor, landscape
        ((40, 50), 64, "shorter_side_center_crop"),  # upscale
        ((300, 120), 64, "squash"),  # one axis down, the other up
        ((64, 64), 64, "shorter_side_center_crop"),  # no resize at all
    ],
)
@pytest.mark.parametrize("colour", [False, True])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_torch_preprocessing_matches_pil_within_one_grey_level(shape, size, resize, colour, interpolation):
    """``from_uint8`` (the GPU path, run here on CPU tensors) against ``from_pil8`` on the same decoded pixels.

    The bound is one grey level after normalisation, and it is exact, not fitted: PIL's 8-bit resize rounds
    its horizontal pass to 8 bit (an error of at most half a level, carried through the vertical pass's convex
    weights) and rounds its result; ``from_uint8`` resizes in float and rounds once. Two values within half a
    level of each other round to at most one level apart. The filters themselves are the same (PyTorch's
    antialiased bilinear kernel computes PIL's; its float weights and PIL's 22-bit fixed-point ones differ far
    below a level), which the share of identical pixels shows.

    Bicubic (RAD-DINO, BiomedCLIP): two levels. Its weights are not convex, so its horizontal pass overshoots
    [0, 255] at sharp edges and PIL clips there; ``from_uint8`` takes PIL's two passes, each rounded and
    clipped, and each rounding may differ by one level (float against fixed-point weights)."""
    h, w = shape
    grey = _cxr_like(h, w)
    arr = np.stack([grey, grey[::-1], 255 - grey], -1) if colour else grey
    prep = ImagePreprocess(size=size, resize=resize, interpolation=interpolation)
    ref = prep.from_pil8(Image.fromarray(arr, mode="RGB" if colour else "L"))
    got = prep.from_uint8(_as_tensor(arr))[0]
    assert got.shape == ref.shape == (3, size, size) and got.dtype == torch.float32
    diff = (got - ref).abs()
    assert float(diff.max()) <= (1 if interpolation == "bilinear" else 2) * ONE_LEVEL + 1e-5
    assert float((diff < 1e-5).float().mean()) > 0.6  # mostly identical: the same filter, rounding apart
    if shape == (size, size):
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)  # nothing resized: the same numbers


@pytest.mark.parametrize("shape", [(600, 700), (70, 80), (40, 50), (50, 120), (300, 120)])
def test_torch_bicubic_takes_pils_clipped_passes_on_noise(shape):
    """On grey noise every pixel is an edge and bicubic's first pass overshoots [0, 255] (unless a strong
    reduction's wide kernel smooths it: 600 x 700 to 64): PIL clips it before the vertical pass. ``from_uint8``
    does too and stays within two levels (above), most pixels identical; one float pass, which does not clip
    in between, misses by 12 to 18 levels at the mild scales."""
    import torch.nn.functional as F  # noqa: N812 - the usual name

    h, w = shape
    noise = np.random.default_rng(h + w).integers(0, 256, (h, w), dtype=np.uint8)
    prep = ImagePreprocess(
        size=64,
        resize="squash" if shape == (300, 120) else "shorter_side_center_crop",
        interpolation="bicubic",
        arithmetic="transformers",
    )
    ref = prep.from_pil8(Image.fromarray(noise, mode="L"))
    got = prep.from_uint8(_as_tensor(noise))[0]
    levels = (got - ref).abs() * 255 * torch.tensor(prep.std).view(3, 1, 1)
    assert float(levels.max()) <= 2 + 1e-3 and float((levels < 1e-3).float().mean()) > 0.75
    nh, nw, top, left = prep._geometry(h, w)
    one = F.interpolate(_as_tensor(noise).float(), size=(nh, nw), mode="bicubic", antialias=True)
    one = one.round().clamp(0, 255)[0, 0, top : top + 64, left : left + 64]
    pil = (ref[0] * prep.std[0] + prep.mean[0]) * 255
    if shape in ((70, 80), (40, 50), (50, 120)):
        assert float((one - pil).abs().max()) > 5


def test_draft_scale_is_the_one_pil_decodes_at(tmp_path):
    """``jpeg_draft_scale`` against PIL's own draft (``open_image``) on real JPEG headers: the decoded size is
    ceil(side / scale) on both sides."""
    for (w, h), req in [((2544, 3056), 448), ((1000, 900), 128), ((500, 500), 128), ((300, 200), 128), ((90, 90), 448)]:
        path = tmp_path / f"{w}x{h}.jpg"
        Image.fromarray(np.zeros((h, w), dtype=np.uint8), mode="L").save(path)
        s = jpeg_draft_scale(w, h, req)
        img = open_image(path, req // 2)  # open_image drafts at twice its size hint
        assert img.size == (-(-w // s), -(-h // s)), (w, h, req, s)


@pytest.mark.parametrize("colour", [False, True])
def test_gpu_path_stands_for_pils_reduced_jpeg_decoding(tmp_path, image_encoder, colour):
    """A chest X-ray-like JPEG decoded at full size (as nvJPEG does) then box-averaged by the draft scale and
    resized in torch, against ``load_image`` (PIL decodes it at a quarter of the DCT scale, then resizes).

    libjpeg's scaled IDCT keeps the low frequencies of each 8x8 block and the box average of the full decode
    averages 4x4 pixels: both are a 4x low-pass of the same coefficients, rounded to 8 bit. Measured on three
    such images, grey and colour: at most one grey level apart after the resize (as without a draft), 0.10 to
    0.14 levels on average, 86 to 90 % of the values identical. The bounds: one level, a mean of 0.2 and 80 %
    identical; the random ResNet34's embeddings agree to a cosine above 0.9999. (nvJPEG's own colour
    upsampling is not PIL's; chest X-rays are grey.)"""
    h, w = 1024, 900  # draft for size 64: min(900 // 128, 1024 // 128) = 7 -> scale 4
    grey = _cxr_like(h, w, seed=3)
    arr = np.stack([grey, np.roll(grey, 40, 0), 255 - grey], -1) if colour else grey
    path = tmp_path / "cxr.jpg"
    Image.fromarray(arr, mode="RGB" if colour else "L").save(path, quality=95)
    prep = ImagePreprocess(size=IMAGE_SIZE)
    assert jpeg_draft_scale(w, h, 2 * IMAGE_SIZE) == 4
    ref = load_image(path, prep)
    with Image.open(path) as img:
        full = np.asarray(img.convert("RGB" if colour else "L"))  # no draft: full size
    got = prep.from_uint8(_as_tensor(full), draft=4)[0]
    levels = (got - ref).abs() * torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255
    assert float(levels.max()) <= 1.0 + 1e-3 and float(levels.mean()) < 0.2
    assert float((levels < 1e-3).float().mean()) > 0.8
    a, b = image_encoder.encode(torch.stack([got, ref]))
    assert float(torch.nn.functional.cosine_similarity(a, b, dim=0)) > 0.9999


# ------------------------------------------------------------------------------------------- reading


def test_read_jpeg_gives_bytes_of_jpegs_nvjpeg_takes_and_a_reason_for_the_others(tmp_path):
    grey = _cxr_like(60, 50)
    Image.fromarray(grey, mode="L").save(tmp_path / "g.jpg")
    Image.fromarray(np.stack([grey] * 3, -1), mode="RGB").save(tmp_path / "c.jpg")
    Image.fromarray(grey, mode="L").convert("CMYK").save(tmp_path / "k.jpg")
    Image.fromarray(grey, mode="L").save(tmp_path / "p.png")
    (tmp_path / "t.jpg").write_text("not an image")
    for name in ("g.jpg", "c.jpg"):
        got = read_jpeg(tmp_path / name)
        assert isinstance(got, JpegFile) and (got.height, got.width) == (60, 50)
        assert got.data.dtype == torch.uint8 and bytes(got.data.numpy()) == (tmp_path / name).read_bytes()
    assert read_jpeg(tmp_path / "k.jpg") == "JPEG in mode CMYK"
    assert read_jpeg(tmp_path / "p.png") == "not a JPEG"
    with pytest.raises(InputError, match="file not found"):
        read_jpeg(tmp_path / "missing.jpg")
    with pytest.raises(InputError, match=r"unreadable image \(UnidentifiedImageError\)"):
        read_jpeg(tmp_path / "t.jpg")  # the reason open_image gives: the same skip counts on both paths


# ------------------------------------------------------------------------------------------- the stand-in


class FakeTorchvision:
    """``torchvision`` and ``torchvision.io`` modules whose ``decode_jpeg`` records its calls and decodes with
    PIL at full size on the CPU ([1, H, W] grey, [3, H, W] colour, like ``ImageReadMode.UNCHANGED``). A file
    whose bytes are in ``refuse``, or that PIL cannot decode, fails the whole call, as in torchvision. With
    ``device`` cuda it returns stand-ins that have only ``shape`` and ``device`` (the probe looks at those)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str, object]] = []
        self.refuse: set[bytes] = set()
        self.io = types.ModuleType("torchvision.io")
        self.io.ImageReadMode = types.SimpleNamespace(UNCHANGED="UNCHANGED", GRAY="GRAY", RGB="RGB")  # type: ignore[attr-defined]
        self.io.decode_jpeg = self.decode_jpeg  # type: ignore[attr-defined]
        self.module = types.ModuleType("torchvision")
        self.module.__version__ = "0.0-fake"  # type: ignore[attr-defined]
        self.module.io = self.io  # type: ignore[attr-defined]

    def decode_jpeg(self, data, device="cpu", mode=None):
        device = torch.device(device)
        files = data if isinstance(data, list) else [data]
        self.calls.append((len(files), device.type, mode))
        out = []
        for t in files:
            raw = bytes(t.numpy())
            if raw in self.refuse:
                raise RuntimeError("nvjpeg: unsupported JPEG")
            with Image.open(io.BytesIO(raw)) as img:
                arr = np.asarray(img)  # raises for a truncated file
            if device.type == "cuda":
                out.append(types.SimpleNamespace(shape=(1, *arr.shape[:2]), device=device))
            else:
                out.append(_as_tensor(arr)[0].clone())
        return out if isinstance(data, list) else out[0]

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(sys.modules, "torchvision", self.module)
        monkeypatch.setitem(sys.modules, "torchvision.io", self.io)


def test_decoder_chosen_only_on_cuda_with_a_torchvision_that_decodes_there(monkeypatch, caplog):
    prep = ImagePreprocess(size=IMAGE_SIZE)
    caplog.set_level(logging.INFO, logger="omnifuse")
    fake = FakeTorchvision()
    fake.install(monkeypatch)
    assert gpu_jpeg_decoder(prep, torch.device("cpu")) is None and fake.calls == []  # CPU: not even probed
    dec = gpu_jpeg_decoder(prep, torch.device("cuda", 0))
    assert isinstance(dec, GpuJpegDecoder) and dec.device == torch.device("cuda", 0)
    assert fake.calls == [(1, "cuda", "UNCHANGED")]  # one probe, on the device, channels unchanged
    assert "decoded on cuda:0 by nvJPEG (torchvision 0.0-fake)" in caplog.text

    # a torchvision built without nvJPEG fails the probe: PIL decodes, and the log says why
    def no_nvjpeg(*a, **k):
        raise RuntimeError("decode_jpegs_cuda: torchvision not compiled with nvJPEG support")

    monkeypatch.setattr(fake.io, "decode_jpeg", no_nvjpeg)
    assert gpu_jpeg_decoder(prep, torch.device("cuda")) is None
    assert "not compiled with nvJPEG support" in caplog.text
    # a torchvision without decode_jpeg, and none at all (sys.modules None: the import raises ImportError)
    monkeypatch.delattr(fake.io, "decode_jpeg")
    assert gpu_jpeg_decoder(prep, torch.device("cuda")) is None
    monkeypatch.setitem(sys.modules, "torchvision", None)
    assert gpu_jpeg_decoder(prep, torch.device("cuda")) is None
    assert "torchvision does not import (ModuleNotFoundError)" in caplog.text


def test_decoder_batches_files_and_isolates_the_one_that_fails(tmp_path):
    """One call per batch; a file the decoder refuses fails that call, the batch is decoded again file by
    file, and only that file comes back as None (counted ``nvJPEG failed``)."""
    fake = FakeTorchvision()
    prep = ImagePreprocess(size=IMAGE_SIZE)
    dec = GpuJpegDecoder(fake.decode_jpeg, "UNCHANGED", prep, torch.device("cpu"))
    files = []
    for k, (h, w) in enumerate([(300, 250), (300, 250), (200, 260), (300, 250)]):
        Image.fromarray(_cxr_like(h, w, k), mode="L").save(tmp_path / f"{k}.jpg")
        got = read_jpeg(tmp_path / f"{k}.jpg")
        assert isinstance(got, JpegFile)
        files.append(got)
    out = dec.decode(files)
    assert fake.calls == [(4, "cpu", "UNCHANGED")]
    for k, t in enumerate(out):
        assert t is not None and t.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
        with Image.open(tmp_path / f"{k}.jpg") as img:
            torch.testing.assert_close(t, prep.from_uint8(_as_tensor(np.asarray(img)))[0])
    fake.refuse.add(bytes(files[2].data.numpy()))
    fake.calls.clear()
    out = dec.decode(files)
    assert fake.calls == [(4, "cpu", "UNCHANGED")] + [(1, "cpu", "UNCHANGED")] * 4
    assert [t is None for t in out] == [False, False, True, False]
    assert dec.counts == {GPU_DECODED: 7, NVJPEG_FAILED: 1}


# ------------------------------------------------------------------------------------------- the pipeline


def _manifest(tmp_path: Path) -> tuple[Path, dict, list[str]]:
    """Eight rows: grey JPEGs (two sizes, one large enough for a draft), a colour JPEG, a CMYK JPEG, a PNG, a
    JPEG the decoder refuses, a truncated JPEG and a missing file."""
    d = tmp_path / "img"
    d.mkdir()
    grey = _cxr_like(520, 430, 1)
    Image.fromarray(grey, mode="L").save(d / "big.jpg", quality=95)
    Image.fromarray(grey[:90, :80], mode="L").save(d / "small.jpg")
    Image.fromarray(np.stack([grey, grey[::-1], 255 - grey], -1)[:200, :150], mode="RGB").save(d / "rgb.jpg")
    Image.fromarray(grey[:100, :100], mode="L").convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray(grey[:120, :100], mode="L").save(d / "g.png")
    Image.fromarray(grey[:110, :100], mode="L").save(d / "refused.jpg")
    data = (d / "big.jpg").read_bytes()
    (d / "trunc.jpg").write_bytes(data[: len(data) // 3])
    names = ["big.jpg", "small.jpg", "rgb.jpg", "cmyk.jpg", "g.png", "refused.jpg", "trunc.jpg", "missing.jpg"]
    csv = tmp_path / "m.csv"
    n = len(names)
    pl.DataFrame(
        {
            "stay_id": list(range(1, n + 1)),
            "subject_id": [f"p{i}" for i in range(n)],
            "img": [str(d / x) for x in names],
        }
    ).write_csv(csv)
    return csv, {"modalities": {"cxr": {"input": "image", "column": "img"}}}, names


@pytest.mark.parametrize("workers, threads", [(0, 0), (0, 2), (1, 0)])
def test_extraction_with_the_gpu_decoder_matches_pil(tmp_path, image_encoder, monkeypatch, caplog, workers, threads):
    """The whole pipeline with the stand-in decoder (on the CPU): the same rows present and masked for the same
    reasons as the PIL extraction, embeddings that agree, JPEGs decoded in batches, the others decoded by PIL
    and counted in the log, and the decoding recorded in the modality's preprocessing."""
    csv, spec, names = _manifest(tmp_path)
    fake = FakeTorchvision()
    fake.refuse.add((tmp_path / "img" / "refused.jpg").read_bytes())
    made: list[GpuJpegDecoder] = []

    def decoder(prep, device):
        made.append(GpuJpegDecoder(fake.decode_jpeg, "UNCHANGED", prep, torch.device("cpu")))
        return made[-1]

    run = dict(image_encoder=image_encoder, batch_size=4, progress=False, num_workers=workers, decode_threads=threads)
    extract(ManifestAdapter(csv, spec), tmp_path / "pil.zarr", **run)
    monkeypatch.setattr(pipeline, "gpu_jpeg_decoder", decoder)
    caplog.set_level(logging.INFO, logger="omnifuse")
    s = extract(ManifestAdapter(csv, spec), tmp_path / "gpu.zarr", **run)
    pil, gpu = load_cache(tmp_path / "pil.zarr").modalities["cxr"], load_cache(tmp_path / "gpu.zarr").modalities["cxr"]
    assert gpu.mask.tolist() == pil.mask.tolist() == [1, 1, 1, 1, 1, 1, 0, 0]
    assert s.skipped["cxr"] == {"file not found": 1, "unreadable image (OSError)": 1}
    for row in np.flatnonzero(pil.mask):
        a, b = gpu.x[row].astype(np.float32), pil.x[row].astype(np.float32)
        cos = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        assert cos > 0.9999, (names[row], cos)
    assert "jpeg_decoding" in gpu.preprocessing and "jpeg_decoding" not in pil.preprocessing
    # batches of up to four readable JPEGs in one call each; the batch holding the refused and the truncated
    # files was decoded again one by one
    assert max(k for k, _, _ in fake.calls) > 1 and {(1, "cpu", "UNCHANGED")} <= {c for c in fake.calls}
    counts = made[-1].counts
    assert counts == {GPU_DECODED: 3, "JPEG in mode CMYK": 1, "not a JPEG": 1, NVJPEG_FAILED: 2}
    line = [r.getMessage() for r in caplog.records if "decoded on the GPU" in r.getMessage()]
    assert line == [
        "cxr: 3 JPEGs decoded on the GPU, 4 images by PIL (JPEG in mode CMYK: 1, not a JPEG: 1, nvJPEG failed: 2)"
    ]


def test_prefetch_keeps_order_raises_the_producers_error_and_stops_early():
    assert list(_prefetch(iter(range(50)), ahead=2)) == list(range(50))

    def failing():
        yield 1
        raise ValueError("decoder broke")

    got = []
    with pytest.raises(ValueError, match="decoder broke"):
        for x in _prefetch(failing()):
            got.append(x)
    assert got == [1]
    produced = []

    def endless():
        k = 0
        while True:
            produced.append(k)
            yield k
            k += 1

    it = _prefetch(endless(), ahead=2)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()  # the consumer stops: the thread stops within a few items
    n = len(produced)
    assert n <= 3 + 2 + 1
    import threading

    assert not [t for t in threading.enumerate() if t.name == "omnifuse-gpu-decode"]


def test_an_addition_decodes_on_the_gpu_too_and_a_store_keeps_its_decoding(tmp_path, image_encoder, monkeypatch):
    """Extraction and addition share their set-up (``pipeline._Encoders.build``): an image modality added to a
    PIL-decoded cache is decoded by the GPU decoder and records it; and a store is not resumed under the other
    decoding (like another precision, it is another cache)."""
    csv, spec, _ = _manifest(tmp_path)
    fake = FakeTorchvision()
    run = dict(image_encoder=image_encoder, batch_size=4, progress=False, num_workers=0, decode_threads=0)
    extract(ManifestAdapter(csv, spec), tmp_path / "c.zarr", **run)
    monkeypatch.setattr(
        pipeline, "gpu_jpeg_decoder", lambda prep, device: GpuJpegDecoder(fake.decode_jpeg, "UNCHANGED", prep, device)
    )
    with pytest.raises(CacheError, match=r"different specification \(differs in: modalities\)"):
        extract(ManifestAdapter(csv, spec), tmp_path / "c.zarr", **run)
    assert fake.calls == []  # refused before anything was decoded
    s = extract(ManifestAdapter(csv, spec), tmp_path / "c.zarr", add_modalities=["cxr"], modality_name="cxr_gpu", **run)
    assert s.added == ["cxr_gpu"] and fake.calls
    mods = load_cache(tmp_path / "c.zarr").modalities
    assert "jpeg_decoding" in mods["cxr_gpu"].preprocessing and "jpeg_decoding" not in mods["cxr"].preprocessing
    assert mods["cxr_gpu"].mask.tolist() == mods["cxr"].mask.tolist()
