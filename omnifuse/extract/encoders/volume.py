"""The volume encoder: CT/PET volumes sliced along z through an image encoder.

One registered entry, ``slices``: each volume's slices (at most ``max_slices``, evenly spaced over z when
there are more; ``omnifuse.extract.volumes``) go through the image encoder one by one, giving [S, D] with a
slice mask (``slices``) or their mean [D] (``mean``). The weights, their hash, source and licence are the
image encoder's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from omnifuse.extract.encoders.base import check_pooling, pooled_shape
from omnifuse.extract.encoders.image import ImageEncoder
from omnifuse.extract.encoders.registry import EncoderEntry, entry_for, list_encoders, register_encoder
from omnifuse.extract.volumes import volume_slices

VOLUME_POOLINGS = ("slices", "mean")
DEFAULT_VOLUME_ENCODER = "slices"
DEFAULT_MAX_SLICES = 64


def volume_preprocessing(max_slices: int, window: tuple[float, float] | None, pooling: str) -> dict[str, object]:
    """The slicing attributes a volume encoder adds to its image encoder's preprocessing."""
    return {
        "max_slices": max_slices,
        "slice_selection": "all, or evenly spaced over z when more",
        "window": list(window) if window else "percentile 0.5-99.5 per volume",
        "pooling": pooling,
    }


class ImageAttribute:
    """A read-only attribute of a ``VolumeEncoder`` that is its image encoder's attribute of the same name."""

    def __set_name__(self, owner: type, attr: str) -> None:
        self.attr = attr

    def __get__(self, volume: VolumeEncoder, owner: type | None = None) -> str:
        return str(getattr(volume.image, self.attr))


@dataclass
class VolumeEncoder:
    """Slices along z through an image encoder: [S, 3, size, size] per volume -> [S, D] (``slices``, with
    a slice mask of the first S rows) or their mean [D] (``mean``)."""

    image: ImageEncoder
    max_slices: int = DEFAULT_MAX_SLICES
    pooling: str = "slices"
    window: tuple[float, float] | None = None
    family: str = field(default="volume", init=False)

    def __post_init__(self) -> None:
        check_pooling("volume", self.pooling, VOLUME_POOLINGS)
        if self.max_slices < 1:
            raise ValueError("max_slices must be at least 1")

    # the cache's encoder, weights hash, source and licence are the image encoder's
    name = ImageAttribute()
    weights_hash = ImageAttribute()
    source = ImageAttribute()
    licence = ImageAttribute()

    @property
    def shape(self) -> tuple[int, ...]:
        return pooled_shape(self.pooling, "slices", self.max_slices, self.image.dim)

    def preprocessing(self) -> dict[str, object]:
        """The image encoder's preprocessing (with its source and licence) and the slicing."""
        return {**self.image.preprocessing(), **volume_preprocessing(self.max_slices, self.window, self.pooling)}

    def load(self, path: str | Path) -> torch.Tensor:
        """A DICOM folder / NIfTI / .npy volume -> slice inputs [s, 3, size, size], s <= max_slices."""
        return volume_slices(path, self.image.prep, self.max_slices, self.window)

    def finish(self, slice_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embeddings of one volume's slices [s, D] -> ([max_slices, D], slice mask) or ([D], None)."""
        s = slice_emb.shape[0]
        if self.pooling == "mean":
            return slice_emb.mean(0), None
        x = torch.zeros(self.max_slices, slice_emb.shape[1])
        x[:s] = slice_emb
        mask = torch.zeros(self.max_slices, dtype=torch.bool)
        mask[:s] = True
        return x, mask

    def encode_volume(self, slices: torch.Tensor, batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Slice inputs [s, 3, size, size] of one volume -> as ``finish``."""
        parts = [self.image.encode(slices[i : i + batch_size]) for i in range(0, slices.shape[0], batch_size)]
        return self.finish(torch.cat(parts, 0))


@dataclass(frozen=True)
class VolumeOptions:
    """What a volume builder is given besides its entry: the image encoder the slices go through, the slice
    cap, the pooling and an intensity window (None: each volume's 0.5th-99.5th percentiles)."""

    image: ImageEncoder
    max_slices: int = DEFAULT_MAX_SLICES
    pooling: str = "slices"
    window: tuple[float, float] | None = None


@register_encoder(
    DEFAULT_VOLUME_ENCODER,
    family="volume",
    source="the image encoder, slice by slice",
    licence="the image encoder's",
    output_shapes={"slices": ("max_slices", "image_dim"), "mean": ("image_dim",)},
    preprocessing=volume_preprocessing(DEFAULT_MAX_SLICES, None, "slices"),
    aliases=("volume",),
)
def slices(entry: EncoderEntry, opts: VolumeOptions) -> VolumeEncoder:
    """CT/PET slices along z through the image encoder (--image-encoder): a ``VolumeEncoder``."""
    return VolumeEncoder(opts.image, opts.max_slices, opts.pooling, opts.window)


def build_volume_encoder(
    image: ImageEncoder,
    name: str = DEFAULT_VOLUME_ENCODER,
    max_slices: int = DEFAULT_MAX_SLICES,
    pooling: str = "slices",
    window: tuple[float, float] | None = None,
) -> VolumeEncoder:
    """A registered volume encoder (``slices``) over the image encoder ``image``."""
    entry = entry_for(name, "volume", _unregistered_volume)
    enc = entry.builder(entry, VolumeOptions(image, max_slices, pooling, window))
    if not isinstance(enc, VolumeEncoder):
        raise TypeError(f"the builder of volume encoder {entry.name!r} returned {type(enc).__name__}")
    return enc


def _unregistered_volume(entry: EncoderEntry, opts: VolumeOptions) -> VolumeEncoder:
    names = [e.name for e in list_encoders("volume")]
    raise ValueError(f"volume encoder {entry.name!r} is not registered; registered: {names}")
