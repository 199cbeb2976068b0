"""Image decoding and preprocessing for the frozen image encoders (PIL and torch, no torchvision).

Every image becomes a float32 tensor [3, size, size]: decoded, scaled to [0, 1], grey copied to three
channels, the shorter side resized to ``size`` (bilinear, antialiased) and centre-cropped, then normalised
with the encoder's per-channel mean and std (ImageNet by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

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
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "image_size": self.size,
            "mean": list(self.mean),
            "std": list(self.std),
            "resize": self.resize,
            "grey_to_rgb": "copy",
            **self.extra,
        }

    def from_float(self, arr: np.ndarray) -> torch.Tensor:
        """[H, W] or [H, W, 3] float values in [0, 1] -> normalised tensor [3, size, size]."""
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3 or arr.shape[2] not in (1, 3) or arr.shape[0] < 1 or arr.shape[1] < 1:
            raise InputError(f"unsupported image shape {tuple(arr.shape)}")
        if not np.isfinite(arr).all():
            raise InputError("image has non-finite pixel values")
        chans = [self._resize_plane(arr[:, :, c].astype(np.float32, copy=False)) for c in range(arr.shape[2])]
        out = torch.from_numpy(np.stack(chans, 0))
        if out.shape[0] == 1:
            out = out.expand(3, -1, -1)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return ((out - mean) / std).contiguous()

    def _resize_plane(self, plane: np.ndarray) -> np.ndarray:
        """Resize one float plane [H, W] so that the shorter side is ``size``, then centre-crop."""
        h, w = plane.shape
        s = self.size
        if self.resize == "squash":
            nh, nw = s, s
        else:
            scale = s / min(h, w)
            nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
        img = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32))  # mode "F"
        if (nh, nw) != (h, w):
            img = img.resize((nw, nh), Image.Resampling.BILINEAR)
        out = np.asarray(img, dtype=np.float32)
        top, left = (nh - s) // 2, (nw - s) // 2
        return out[top : top + s, left : left + s]


def read_image(path: str | Path, size_hint: int = 224) -> np.ndarray:
    """Decode an image file to float32 [H, W] (grey) or [H, W, 3] (colour) with values in [0, 1].

    8-bit images are divided by 255, 16-bit grey by 65535; 32-bit integer and float images are scaled by
    their own minimum and maximum. Raises ``InputError`` for a missing, unreadable or truncated file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found")
    try:
        with Image.open(path) as img:
            if img.format == "JPEG":
                # decode at a reduced scale when the file is much larger than needed (exact for DCT scaling)
                img.draft(img.mode, (size_hint * 2, size_hint * 2))
            img.load()
            mode = img.mode
            if mode in ("I;16", "I;16B", "I;16L"):
                arr = np.asarray(img, dtype=np.float32) / 65535.0
            elif mode in ("I", "F"):
                arr = np.asarray(img, dtype=np.float32)
                lo, hi = float(arr.min()), float(arr.max())
                arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
            elif mode == "L":
                arr = np.asarray(img, dtype=np.float32) / 255.0
            elif mode == "1":
                arr = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
            elif mode in ("LA", "La"):
                arr = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
            else:
                arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InputError(f"unreadable image ({type(e).__name__})") from None
    if arr.size == 0:
        raise InputError("empty image")
    return arr


def load_image(path: str | Path, prep: ImagePreprocess) -> torch.Tensor:
    """A file path -> the encoder input [3, size, size] (float32, normalised)."""
    return prep.from_float(read_image(path, prep.size))
