"""Image decoding and preprocessing for the frozen image encoders (PIL and torch, no torchvision).

Every image becomes a float32 tensor [3, size, size]: decoded, scaled to [0, 1], grey copied to three
channels, the shorter side resized to ``size`` (bilinear, antialiased) and centre-cropped, then normalised
with the encoder's per-channel mean and std (ImageNet by default).

8-bit images (grey or colour: chest X-ray JPEGs and PNGs) are resized as 8-bit PIL images, as torchvision's
``Resize`` on a PIL image does for the ImageNet weights, and scaled and normalised in one pass afterwards;
this is faster than resizing float planes and differs from it only by the 8-bit rounding of the resized
pixels (at most one grey level, 1/255 before normalisation). 16-bit and float images, and volume slices, are
resized as float32 planes.

An image of more than :data:`MAX_IMAGE_PIXELS` pixels (width times height, read from the file's header
before any pixel is decoded) is refused as an ``InputError``: a decompression bomb, such as a 20,000 x 20,000
PNG of a few hundred kilobytes that would take 400 MB or more once decoded, is masked like any unreadable
image. Importing this module sets PIL's own limit (``PIL.Image.MAX_IMAGE_PIXELS``) to the same value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

MAX_IMAGE_PIXELS = 180_000_000
"""Largest image decoded, in pixels: about 13,400 x 13,400, ten times a large chest X-ray (4,280 x 3,520 is
15 million pixels); PIL's default refuses from 179 million pixels on (twice its warning limit)."""
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS  # PIL warns above this and refuses above twice it

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class InputError(Exception):
    """An input that exists but cannot be used; ``str(err)`` is a short reason without any report text."""


@dataclass(frozen=True)
class ImagePreprocess:
    """How an image (or a volume slice) becomes the encoder's input tensor [3, size, size]."""

    size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: str = "shorter_side_center_crop"
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "image_size": self.size,
            "mean": list(self.mean),
            "std": list(self.std),
            "resize": self.resize,
            "interpolation": "bilinear, antialiased (PIL); 8-bit images resized in 8 bit",
            "grey_to_rgb": "copy",
            **self.extra,
        }

    def _target(self, h: int, w: int) -> tuple[int, int]:
        """(height, width) after the resize, before the centre crop."""
        s = self.size
        if self.resize == "squash":
            return s, s
        scale = s / min(h, w)
        return max(s, round(h * scale)), max(s, round(w * scale))

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
        nh, nw = self._target(h, w)
        if (nh, nw) != (h, w):
            img = img.resize((nw, nh), Image.Resampling.BILINEAR)
        top, left = (nh - s) // 2, (nw - s) // 2
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
        nh, nw = self._target(h, w)
        img = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32))  # mode "F"
        if (nh, nw) != (h, w):
            img = img.resize((nw, nh), Image.Resampling.BILINEAR)
        out = np.asarray(img, dtype=np.float32)
        top, left = (nh - s) // 2, (nw - s) // 2
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
