"""Image decoding and preprocessing for the frozen image encoders (PIL and torch; torchvision optional).

Every image becomes a float32 tensor [3, size, size]: decoded, scaled to [0, 1], grey copied to three
channels, the shorter side resized to ``size`` and centre-cropped, then normalised with the encoder's
per-channel mean and std (ImageNet by default). The resize is antialiased bilinear (PIL's ``BILINEAR``;
ResNet34 and the other default entries) or antialiased bicubic (PIL's ``BICUBIC``, Keys' cubic with a = -0.5:
RAD-DINO and BiomedCLIP, whose authors' processors resize so), as ``ImagePreprocess.interpolation`` says.

8-bit images (grey or colour: chest X-ray JPEGs and PNGs) are resized as 8-bit PIL images, as torchvision's
``Resize`` on a PIL image does for the ImageNet weights, and scaled and normalised in one pass afterwards;
this is faster than resizing float planes and differs from it only by the 8-bit rounding of the resized
pixels (at most one grey level, 1/255 before normalisation). 16-bit and float images, and volume slices, are
resized as float32 planes.

On a CUDA device where torchvision imports, JPEGs are decoded on the GPU instead (``GpuJpegDecoder``: nvJPEG
through ``torchvision.io.decode_jpeg``, whole batches at once) and preprocessed there by
``ImagePreprocess.from_uint8``, the same steps written in torch: a box average by the DCT scale PIL's draft
mode would have decoded at (``jpeg_draft_scale``), the antialiased resize (PyTorch's antialiased kernels
compute PIL's bilinear and bicubic filters), rounding to 8 bit, the crop and the normalisation. Files nvJPEG
is not given (not JPEG, CMYK...) or refuses are decoded by PIL as above, one by one, and counted
(``GpuJpegDecoder.counts``).

An image of more than :data:`MAX_IMAGE_PIXELS` pixels (width times height, read from the file's header
before any pixel is decoded) is refused as an ``InputError``: a decompression bomb, such as a 20,000 x 20,000
PNG of a few hundred kilobytes that would take 400 MB or more once decoded, is masked like any unreadable
image. Importing this module sets PIL's own limit (``PIL.Image.MAX_IMAGE_PIXELS``) to the same value.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

MAX_IMAGE_PIXELS = 180_000_000
"""Largest image decoded, in pixels: about 13,400 x 13,400, ten times a large chest X-ray (4,280 x 3,520 is
15 million pixels); PIL's default refuses from 179 million pixels on (twice its warning limit)."""
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS  # PIL warns above this and refuses above twice it

INTERPOLATIONS = ("bilinear", "bicubic")
ARITHMETICS = ("omnifuse", "transformers", "torchvision")
_PIL_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class InputError(Exception):
    """An input that exists but cannot be used; ``str(err)`` is a short reason without any report text."""


@dataclass(frozen=True)
class ImagePreprocess:
    """How an image (or a volume slice) becomes the encoder's input tensor [3, size, size].

    ``interpolation``: ``bilinear`` or ``bicubic`` (PIL's antialiased filters, ``INTERPOLATIONS``).
    ``arithmetic``: how the resized long side and the crop's corner are computed (``ARITHMETICS``):
    ``omnifuse`` rounds ``size * long / short`` and crops at ``(n - size) // 2`` (the default entries);
    ``transformers`` truncates the long side (``image_transforms.get_resize_output_image_size``) and crops at
    ``(n - size) // 2`` (``image_transforms.center_crop``); ``torchvision`` truncates it
    (``transforms.functional._compute_resized_output_size``) and crops at ``int(round((n - size) / 2))``
    (``transforms.functional.center_crop``, Python's half-to-even rounding). Where they differ the long side
    differs by one pixel and the crop by a sub-pixel shift, which on noisy pixels moves values by several
    grey levels: an entry takes its authors' arithmetic."""

    size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: str = "shorter_side_center_crop"
    extra: dict[str, Any] = field(default_factory=dict)
    interpolation: str = "bilinear"
    arithmetic: str = "omnifuse"

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if self.arithmetic not in ARITHMETICS:
            raise ValueError(f"arithmetic must be one of {ARITHMETICS}, got {self.arithmetic!r}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "image_size": self.size,
            "mean": list(self.mean),
            "std": list(self.std),
            "resize": self.resize,
            "interpolation": f"{self.interpolation}, antialiased (PIL); 8-bit images resized in 8 bit",
            "grey_to_rgb": "copy",
            **({} if self.arithmetic == "omnifuse" else {"resize_arithmetic": self.arithmetic}),
            **self.extra,
        }

    def _geometry(self, h: int, w: int) -> tuple[int, int, int, int]:
        """(height, width) after the resize and the (top, left) corner of the centre crop, by ``arithmetic``."""
        s = self.size
        if self.resize == "squash":
            return s, s, 0, 0
        if self.arithmetic == "omnifuse":
            scale = s / min(h, w)
            nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
        else:  # the short side becomes s, the long one int(s * long / short)
            nh, nw = (s, int(s * w / h)) if h <= w else (int(s * h / w), s)
        if self.arithmetic == "torchvision":
            return nh, nw, int(round((nh - s) / 2.0)), int(round((nw - s) / 2.0))
        return nh, nw, (nh - s) // 2, (nw - s) // 2

    def from_pil8(self, img: Image.Image) -> torch.Tensor:
        """A decoded 8-bit PIL image (mode ``L`` or ``RGB``) -> normalised tensor [3, size, size].

        Resized in 8 bit, then ``(v / 255 - mean) / std`` per channel in one multiply-add. NumPy, not torch:
        this runs in decoding threads beside the encoder, and a torch op there would start a second
        OpenMP team competing with the encoder's.
        """
        if img.mode not in ("L", "RGB"):
            raise ValueError(f"from_pil8 takes mode L or RGB, got {img.mode!r}")
        w, h = img.size
        if w < 1 or h < 1:
            raise InputError(f"unsupported image shape {(h, w)}")
        s = self.size
        nh, nw, top, left = self._geometry(h, w)
        if (nh, nw) != (h, w):
            img = img.resize((nw, nh), _PIL_FILTERS[self.interpolation])
        if (nh, nw) != (s, s):
            img = img.crop((left, top, left + s, top + s))
        pix = np.asarray(img, dtype=np.uint8)  # [S, S] or [S, S, 3]
        pix = pix[None] if pix.ndim == 2 else pix.transpose(2, 0, 1)
        scale, bias = self._affine()
        out = np.empty((3, s, s), dtype=np.float32)
        np.multiply(pix, scale, out=out)  # broadcasts grey to three channels
        out += bias
        return torch.from_numpy(out)

    def _affine(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (scale, bias) [3, 1, 1] with ``scale * v + bias == (v / 255 - mean) / std``."""
        std = np.asarray(self.std, dtype=np.float64).reshape(3, 1, 1)
        mean = np.asarray(self.mean, dtype=np.float64).reshape(3, 1, 1)
        return (1.0 / (255.0 * std)).astype(np.float32), (-mean / std).astype(np.float32)

    def from_uint8(self, img: torch.Tensor, draft: int = 1) -> torch.Tensor:
        """Decoded 8-bit images [B, C, H, W] (uint8, C = 1 or 3, any device) -> normalised [B, 3, size, size]
        float32 on the same device: ``from_pil8`` written in torch, for images decoded on the GPU.

        ``draft`` > 1 stands for PIL's reduced-scale JPEG decoding (``open_image``): a ``draft`` x ``draft``
        box average (partial boxes at the right and bottom edges average the pixels they hold), which is
        what decoding at 1/``draft`` of the DCT scale computes up to the JPEG's own rounding. Then the
        antialiased resize of the shorter side to ``size`` (PyTorch's ``antialias=True`` kernels compute PIL's
        bilinear and bicubic filters, the latter with PIL's a = -0.5), rounding to 8 bit and clipping to
        [0, 255] as PIL's 8-bit resize does, the centre crop, and ``(v / 255 - mean) / std`` per channel, grey
        copied to three channels. On the same decoded pixels it differs from ``from_pil8`` by at most one grey
        level bilinear (PIL rounds between its horizontal and vertical passes as well) and two bicubic (taken
        in PIL's two rounded and clipped passes, each may round a value differently from PIL's fixed-point
        weights; tests/extract/test_images_gpu.py).
        """
        import torch.nn.functional as F  # noqa: N812 - the usual name

        if img.ndim != 4 or img.shape[1] not in (1, 3) or img.dtype != torch.uint8:
            raise ValueError(f"from_uint8 takes uint8 [B, 1 or 3, H, W], got {img.dtype} {tuple(img.shape)}")
        x = img.float()
        if draft > 1:
            x = F.avg_pool2d(x, draft, stride=draft, ceil_mode=True).round_()  # the scaled decode is 8-bit too
        h, w = int(x.shape[2]), int(x.shape[3])
        if h < 1 or w < 1:
            raise InputError(f"unsupported image shape {(h, w)}")
        s = self.size
        nh, nw, top, left = self._geometry(h, w)
        # PIL resizes 8-bit images in two passes, horizontal first, each rounded and clipped to 8 bit. Bilinear
        # weights are convex, so one float pass stays within a level of it; bicubic's first pass overshoots
        # at sharp edges and PIL clips it there, so bicubic takes the two passes (both of [B, C, *, *]).
        steps = [(h, nw), (nh, nw)] if self.interpolation == "bicubic" else [(nh, nw)]
        for step in steps:
            if tuple(x.shape[2:]) != step:
                x = F.interpolate(x, size=step, mode=self.interpolation, align_corners=False, antialias=True)
                x = x.round_().clamp_(0.0, 255.0)
        x = x[:, :, top : top + s, left : left + s]
        scale, bias = (torch.from_numpy(a).to(x.device) for a in self._affine())
        return (x * scale + bias).contiguous()  # [B, 1 or 3, S, S] * [3, 1, 1]: grey broadcasts to three

    def from_float(self, arr: np.ndarray) -> torch.Tensor:
        """[H, W] or [H, W, 3] float values in [0, 1] -> normalised tensor [3, size, size]."""
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3 or arr.shape[2] not in (1, 3) or arr.shape[0] < 1 or arr.shape[1] < 1:
            raise InputError(f"unsupported image shape {tuple(arr.shape)}")
        if not np.isfinite(arr).all():
            raise InputError("image has non-finite pixel values")
        chans = np.stack(
            [self._resize_plane(arr[:, :, c].astype(np.float32, copy=False)) for c in range(arr.shape[2])], 0
        )
        mean = np.asarray(self.mean, dtype=np.float32).reshape(3, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(3, 1, 1)
        return torch.from_numpy(np.ascontiguousarray((chans - mean) / std, dtype=np.float32))

    def _resize_plane(self, plane: np.ndarray) -> np.ndarray:
        """Resize one float plane [H, W] so that the shorter side is ``size``, then centre-crop."""
        h, w = plane.shape
        s = self.size
        nh, nw, top, left = self._geometry(h, w)
        img = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32))  # mode "F"
        if (nh, nw) != (h, w):
            img = img.resize((nw, nh), _PIL_FILTERS[self.interpolation])
        out = np.asarray(img, dtype=np.float32)
        return out[top : top + s, left : left + s]


_8BIT_GREY = ("1", "LA", "La")  # read as L
_FLOAT_MODES = ("I;16", "I;16B", "I;16L", "I", "F")


def open_image(path: str | Path, size_hint: int = 224) -> Image.Image:
    """Decode an image file into a loaded PIL image: 8-bit grey as ``L``, other 8-bit modes as ``RGB``,
    16-bit, 32-bit integer and float images in their own mode.

    JPEGs much larger than ``2 * size_hint`` are decoded at a reduced DCT scale (exact, and several times
    faster for chest X-ray sized files). Raises ``InputError`` for a missing, unreadable or truncated file,
    and for an image of more than :data:`MAX_IMAGE_PIXELS` pixels (before decoding it).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found")
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise InputError(f"image larger than the pixel limit ({MAX_IMAGE_PIXELS:,} pixels)")
            if img.format == "JPEG":
                img.draft(img.mode, (size_hint * 2, size_hint * 2))
            img.load()
            out: Image.Image
            if img.mode in _FLOAT_MODES or img.mode in ("L", "RGB"):
                out = img  # loaded: its pixels stay usable once the file is closed
            elif img.mode in _8BIT_GREY:
                out = img.convert("L")
            else:
                out = img.convert("RGB")
            if out.width < 1 or out.height < 1:
                raise InputError("empty image")
            return out
    except Image.DecompressionBombError:
        raise InputError(f"image larger than the pixel limit ({MAX_IMAGE_PIXELS:,} pixels)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InputError(f"unreadable image ({type(e).__name__})") from None


def _as_float(img: Image.Image) -> np.ndarray:
    """A decoded image -> float32 [H, W] or [H, W, 3] in [0, 1] (see ``read_image``)."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(img, dtype=np.float32) / 65535.0
    if mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise InputError("image has non-finite pixel values")
        lo, hi = float(arr.min()), float(arr.max())
        return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    return np.asarray(img, dtype=np.float32) / 255.0


def read_image(path: str | Path, size_hint: int = 224) -> np.ndarray:
    """Decode an image file to float32 [H, W] (grey) or [H, W, 3] (colour) with values in [0, 1].

    8-bit images are divided by 255, 16-bit grey by 65535; 32-bit integer and float images are scaled by
    their own minimum and maximum. Raises ``InputError`` for a missing, unreadable or truncated file.
    """
    return _as_float(open_image(path, size_hint))


def load_image(path: str | Path, prep: ImagePreprocess) -> torch.Tensor:
    """A file path -> the encoder input [3, size, size] (float32, normalised); 8-bit images take the 8-bit
    resize (``ImagePreprocess.from_pil8``), the others the float one."""
    img = open_image(path, prep.size)
    if img.mode in ("L", "RGB"):
        return prep.from_pil8(img)
    return prep.from_float(_as_float(img))


# --------------------------------------------------------------------------- JPEGs decoded on the GPU

GPU_DECODED = "GPU"
"""``GpuJpegDecoder.counts`` key of the JPEGs decoded on the device; the other keys say why PIL decoded one."""
NVJPEG_FAILED = "nvJPEG failed"
GPU_JPEG_MODES = ("L", "RGB")  # 8-bit grey and colour JPEGs; CMYK and YCCK ones are decoded by PIL
GPU_RESIZE_CHUNK = 8  # images preprocessed together: 8 chest X-rays of 2544 x 3056 take 250 MB as float32


def jpeg_draft_scale(width: int, height: int, requested: int) -> int:
    """The DCT scale (1, 2, 4 or 8) at which PIL decodes a ``width`` x ``height`` JPEG for a draft of
    ``requested`` x ``requested`` (``open_image``): the largest not above ``min(width, height) // requested``
    per side, as ``PIL.JpegImagePlugin.JpegImageFile.draft`` chooses it."""
    scale = min(width // requested, height // requested)
    return next((s for s in (8, 4, 2) if scale >= s), 1)


@dataclass(frozen=True)
class JpegFile:
    """A JPEG read but not decoded: its bytes ``data`` [N] uint8, and ``height`` and ``width`` from its header."""

    data: torch.Tensor
    height: int
    width: int


def read_jpeg(path: str | Path) -> JpegFile | str:
    """A file's bytes when it is a JPEG that nvJPEG decodes as PIL would (8-bit grey or colour), else the reason
    PIL decodes it instead (``"not a JPEG"``, ``"JPEG in mode CMYK"``). The file is read once and only its
    header parsed. Raises ``InputError`` as ``open_image`` does for a missing or unreadable file and for one
    of more than :data:`MAX_IMAGE_PIXELS` pixels."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found")
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            fmt, mode, (w, h) = img.format, img.mode, img.size
    except Image.DecompressionBombError:
        raise InputError(f"image larger than the pixel limit ({MAX_IMAGE_PIXELS:,} pixels)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InputError(f"unreadable image ({type(e).__name__})") from None
    if w * h > MAX_IMAGE_PIXELS:
        raise InputError(f"image larger than the pixel limit ({MAX_IMAGE_PIXELS:,} pixels)")
    if fmt != "JPEG":
        return "not a JPEG"
    if mode not in GPU_JPEG_MODES:
        return f"JPEG in mode {mode}"
    return JpegFile(torch.frombuffer(bytearray(data), dtype=torch.uint8), h, w)


class GpuJpegDecoder:
    """Batches of ``JpegFile`` -> encoder inputs [3, size, size] float32 on ``device``.

    One ``decode_jpeg(list_of_byte_tensors, device=device, mode=mode)`` call (torchvision's nvJPEG decoder)
    per batch, then ``ImagePreprocess.from_uint8`` on the device for the images of one size together (at most
    ``GPU_RESIZE_CHUNK`` at a time). A batch the decoder refuses is decoded again one file at a time, so one
    bad file costs only itself. ``counts``: files decoded on the device (``GPU_DECODED``) and ones given back
    to the caller (``NVJPEG_FAILED``), who decodes them with PIL and adds its own reasons.
    """

    def __init__(self, decode_jpeg: Callable[..., Any], mode: Any, prep: ImagePreprocess, device: torch.device) -> None:
        self._decode_jpeg = decode_jpeg
        self.mode = mode
        self.prep = prep
        self.device = device
        self.counts: Counter[str] = Counter()

    def _decode(self, data: list[torch.Tensor]) -> list[torch.Tensor]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torchvision from 0.29 on points to torchcodec
            out = self._decode_jpeg(data, device=self.device, mode=self.mode)
        out = list(out) if isinstance(out, (list, tuple)) else [out]
        if len(out) != len(data):
            raise RuntimeError(f"decode_jpeg returned {len(out)} images for {len(data)} files")
        return out

    def decode(self, files: list[JpegFile]) -> list[torch.Tensor | None]:
        """One [3, size, size] float32 tensor on the device per file, or ``None`` where the decoder failed or
        returned another size than the file's header (counted as ``NVJPEG_FAILED``)."""
        if not files:
            return []
        raw: list[torch.Tensor | None]
        try:
            raw = list(self._decode([f.data for f in files]))
        except Exception:  # noqa: BLE001 - one bad file fails the whole call: decode them one by one
            raw = []
            for f in files:
                try:
                    raw.append(self._decode([f.data])[0])
                except Exception:  # noqa: BLE001 - this file goes to PIL, which masks it if it cannot read it
                    raw.append(None)
        groups: dict[tuple[int, ...], list[int]] = {}
        for k, (f, img) in enumerate(zip(files, raw, strict=True)):
            if (
                img is not None
                and img.ndim == 3
                and img.shape[0] in (1, 3)
                and img.dtype == torch.uint8
                and (int(img.shape[1]), int(img.shape[2])) == (f.height, f.width)
            ):
                groups.setdefault(tuple(img.shape), []).append(k)
        out: list[torch.Tensor | None] = [None] * len(files)
        for (_, h, w), ks in groups.items():
            draft = jpeg_draft_scale(w, h, 2 * self.prep.size)
            for a in range(0, len(ks), GPU_RESIZE_CHUNK):
                part = ks[a : a + GPU_RESIZE_CHUNK]
                x = self.prep.from_uint8(torch.stack([raw[k] for k in part]), draft)  # type: ignore[misc]
                for j, k in enumerate(part):
                    out[k] = x[j]
        done = sum(o is not None for o in out)
        self.counts[GPU_DECODED] += done
        if done < len(files):
            self.counts[NVJPEG_FAILED] += len(files) - done
        return out


def _probe_jpeg() -> torch.Tensor:
    """The bytes of a 16 x 16 grey JPEG."""
    buf = io.BytesIO()
    Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16), mode="L").save(buf, format="JPEG")
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


def gpu_jpeg_decoder(prep: ImagePreprocess, device: torch.device) -> GpuJpegDecoder | None:
    """A ``GpuJpegDecoder`` for ``device`` when it is a CUDA device and torchvision imports with a
    ``decode_jpeg`` that decodes a small JPEG there; else ``None`` (JPEGs are then decoded by PIL), the reason
    logged once. torchvision is optional and imported here only."""
    if device.type != "cuda":
        return None
    try:
        import torchvision  # noqa: F401 - optional (omnifuse[gpu])
        import torchvision.io as tvio
    except Exception as e:  # noqa: BLE001 - not installed, or a build that fails to import with more than ImportError
        log.info("JPEGs are decoded by PIL on the CPU: torchvision does not import (%s)", type(e).__name__)
        return None
    decode = getattr(tvio, "decode_jpeg", None)
    mode = getattr(getattr(tvio, "ImageReadMode", None), "UNCHANGED", None)
    if decode is None or mode is None:
        log.info("JPEGs are decoded by PIL on the CPU: this torchvision has no decode_jpeg with ImageReadMode")
        return None
    dec = GpuJpegDecoder(decode, mode, prep, device)
    try:
        img = dec._decode([_probe_jpeg()])[0]
        if tuple(img.shape[-2:]) != (16, 16) or img.device.type != device.type:
            raise RuntimeError(f"got {tuple(img.shape)} on {img.device}")
    except Exception as e:  # noqa: BLE001 - a torchvision built without nvJPEG, a driver problem...
        log.info("JPEGs are decoded by PIL on the CPU: torchvision cannot decode them on %s (%s)", device, e)
        return None
    log.info("JPEGs are decoded on %s by nvJPEG (torchvision %s)", device, getattr(torchvision, "__version__", "?"))
    return dec
