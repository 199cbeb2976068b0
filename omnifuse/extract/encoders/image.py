"""Image encoders: a frozen backbone maps inputs [B, 3, size, size] (``images.ImagePreprocess``) to [B, D].

Registered here: ``microsoft/resnet-34`` (the default; transformers ``ResNetModel``, ``pooler_output``
(B, 512, 1, 1) flattened to [B, 512]), ``random:resnet34`` (the same architecture with seeded random weights:
tests, offline machines) and ``torchvision:resnet34`` (where torchvision imports; it is optional and imported
only when that encoder is built). The chest X-ray and medical encoders are registered in their own modules
(``xrv``: torchxrayvision DenseNet-121; ``biomedclip``: BiomedCLIP's ViT-B/16; ``vision_hub``: RAD-DINO and
MedSigLIP), each at its authors' resolution and normalisation (``ImageOptions.size`` None) with the poolings
its entry declares. Any other image backbone transformers loads, by hub id or local folder, builds as an
unregistered entry whose normalisation comes from its image processor config.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from omnifuse.extract.encoders.base import RANDOM_LICENCE, RANDOM_SOURCE, FrozenEncoder, random_init_note, seeded
from omnifuse.extract.encoders.hub import HubUnreachableError, cache_state, hub_load, is_local
from omnifuse.extract.encoders.registry import (
    EncoderEntry,
    Weights,
    entry_for,
    entry_weights,
    list_encoders,
    register_encoder,
)
from omnifuse.extract.images import IMAGENET_MEAN, IMAGENET_STD, ImagePreprocess, load_image

log = logging.getLogger(__name__)

DEFAULT_IMAGE_ENCODER = "microsoft/resnet-34"
DEFAULT_IMAGE_SIZE = 224
RESNET34_SHAPES: dict[str, tuple[int | str, ...]] = {"pooled": (512,)}
# ImageNet normalisation at 224 px, grey copied to three channels: the ResNet34 entries' preprocessing
IMAGENET_PREP = ImagePreprocess(size=DEFAULT_IMAGE_SIZE, mean=IMAGENET_MEAN, std=IMAGENET_STD)


def _image_output(out: object) -> torch.Tensor:
    """A backbone output -> [B, D]: pooler output flattened, else mean over space or the first token."""
    if isinstance(out, torch.Tensor):
        return out.flatten(1)
    pooled = getattr(out, "pooler_output", None)
    if pooled is not None:
        return pooled.flatten(1)
    hidden = getattr(out, "last_hidden_state", None)
    if hidden is None:
        raise TypeError(f"cannot find a pooled output in {type(out).__name__}")
    if hidden.ndim == 4:
        return hidden.mean(dim=(2, 3))
    return hidden[:, 0]


class ImageEncoder(FrozenEncoder):
    """A frozen image backbone: inputs [B, 3, size, size] (``images.ImagePreprocess``) -> [B, D].

    ``model`` is called as ``model(pixel_values=x)``.
    """

    family = "image"

    def __init__(
        self,
        model: nn.Module,
        name: str,
        prep: ImagePreprocess | None = None,
        device: str | torch.device = "auto",
        precision: str = "auto",
        channels_last: bool = True,
        *,
        source: str | None = None,
        licence: str | None = None,
    ) -> None:
        super().__init__(model, name, device, precision, source, licence)
        self.prep = prep or ImagePreprocess()
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        with torch.inference_mode():
            probe = torch.zeros(1, 3, self.prep.size, self.prep.size, device=self.device)
            self.dim = int(_image_output(self.model(pixel_values=probe)).shape[1])

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.dim,)

    def preprocessing(self) -> dict[str, object]:
        return {**self.prep.as_dict(), "precision": self.precision, **self.provenance()}

    @classmethod
    def for_entry(
        cls, entry: EncoderEntry, w: Weights[Any], prep: ImagePreprocess, opts: ImageOptions, pooling: str
    ) -> ImageEncoder:
        """A registered entry's encoder: its authors' preprocessing ``prep`` at ``opts.size`` (None: the
        authors' size), ``pooling`` and, for random weights, ``init`` recorded in the preprocessing."""
        size = prep.size if opts.size is None else opts.size
        prep = replace(prep, size=size, extra={**prep.extra, "pooling": pooling, **w.init})
        return cls(w.model, entry.name, prep, opts.device, opts.precision, source=w.source, licence=w.licence)

    @torch.inference_mode()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, size, size] float32 (normalised) -> [B, D] float32 on the CPU."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"image batch must be [B, 3, H, W], got {tuple(x.shape)}")
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            y = _image_output(self.model(pixel_values=x))
        self.calls += 1
        self.items += int(x.shape[0])
        return y.float().cpu()

    def load(self, path: str | Path) -> torch.Tensor:
        """One image file -> input [3, size, size] (raises ``InputError`` when unusable)."""
        return load_image(path, self.prep)


class TorchvisionBackbone(nn.Module):
    """A torchvision classifier without its head, called like a transformers model: ``pixel_values``
    [B, 3, H, W] -> [B, D]."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values)


def random_resnet34(seed: int = 0) -> nn.Module:
    """transformers ``ResNetModel`` with the ResNet34 architecture (21.3 M parameters), seeded random weights."""
    return seeded(seed, resnet34_architecture)


def _from_pretrained(name: str) -> nn.Module:
    """``AutoModel.from_pretrained(name)`` through ``hub.hub_load`` (a local folder or cached model without the
    network; one line, not a retry loop, when the hub cannot be reached); ``ValueError`` naming the registered
    image encoders otherwise."""
    try:
        return hub_load(name, name, "image", transformers.AutoModel.from_pretrained)
    except HubUnreachableError:
        raise
    except (OSError, ValueError) as e:  # missing files; an unknown model type or a malformed hub id
        names = [entry.name for entry in list_encoders("image")]
        raise ValueError(
            f"image encoder {name!r} is neither a registered name ({names}) nor a model that transformers can "
            f"load from the hub or a local folder: {e}"
        ) from e


def resnet34_config() -> transformers.ResNetConfig:
    """microsoft/resnet-34's architecture (its config.json, less the classifier's labels)."""
    return transformers.ResNetConfig(
        embedding_size=64,
        hidden_sizes=[64, 128, 256, 512],
        depths=[3, 4, 6, 3],
        layer_type="basic",
        hidden_act="relu",
        downsample_in_first_stage=False,
    )


def resnet34_architecture() -> nn.Module:
    """transformers ``ResNetModel`` with microsoft/resnet-34's architecture, freshly initialised."""
    return transformers.ResNetModel(resnet34_config())


@dataclass(frozen=True)
class ImageOptions:
    """What an image builder is given besides its entry. ``size``: input resolution (None: the entry's own,
    224 for ResNet34 and unregistered models). ``pretrained=False``: the entry's architecture with random
    weights seeded by ``seed`` (recorded as source ``random`` and ``init`` in the preprocessing). ``pooling``:
    one of the entry's poolings (None: its first)."""

    size: int | None = None
    seed: int = 0
    pretrained: bool = True
    device: str | torch.device = "auto"
    precision: str = "auto"
    pooling: str | None = None


def image_pooling(entry: EncoderEntry, opts: ImageOptions) -> str:
    """``opts.pooling`` (None: the entry's first), checked against the entry's poolings."""
    pooling = opts.pooling or entry.poolings[0]
    if pooling not in entry.poolings:
        raise ValueError(f"image encoder {entry.name!r} has no pooling {pooling!r}; it has {list(entry.poolings)}")
    return pooling


def prep_record(prep: ImagePreprocess, pooling: str) -> dict[str, object]:
    """The preprocessing an entry declares: its ``prep`` and its default ``pooling``."""
    return {**prep.as_dict(), "pooling": pooling}


ImageBuilder = Callable[[EncoderEntry, ImageOptions], ImageEncoder]


def register_image(
    name: str,
    *,
    source: str,
    licence: str,
    prep: ImagePreprocess,
    output_shapes: dict[str, tuple[int | str, ...]],
    aliases: tuple[str, ...] = (),
) -> Callable[[ImageBuilder], ImageBuilder]:
    """``register_encoder`` for an image entry at its authors' preprocessing ``prep``: the recorded
    preprocessing is ``prep`` with the default (first) pooling of ``output_shapes``."""
    return register_encoder(
        name,
        family="image",
        source=source,
        licence=licence,
        output_shapes=output_shapes,
        preprocessing=prep_record(prep, next(iter(output_shapes))),
        aliases=aliases,
    )


def entry_image_encoder(
    entry: EncoderEntry,
    opts: ImageOptions,
    prep: ImagePreprocess,
    make: Callable[[str], nn.Module],
    make_random: Callable[[str], nn.Module],
) -> ImageEncoder:
    """What a registered image entry's builder does: the pooling of ``opts`` checked (``image_pooling``), the
    model ``make(pooling)`` (pretrained) or ``make_random(pooling)`` (seeded random weights, ``entry_weights``),
    and its encoder at the authors' preprocessing ``prep`` (``ImageEncoder.for_entry``)."""
    pooling = image_pooling(entry, opts)
    w = entry_weights(
        entry, lambda: make(pooling), lambda: make_random(pooling), pretrained=opts.pretrained, seed=opts.seed
    )
    return ImageEncoder.for_entry(entry, w, prep, opts, pooling)


def _imagenet_encoder(entry: EncoderEntry, w: Weights[nn.Module], opts: ImageOptions) -> ImageEncoder:
    """An ImageNet-normalised entry's encoder at ``opts.size`` px (``init`` recorded for random weights)."""
    image_pooling(entry, opts)
    prep = replace(IMAGENET_PREP, size=opts.size or DEFAULT_IMAGE_SIZE, extra=dict(w.init))
    return ImageEncoder(w.model, entry.name, prep, opts.device, opts.precision, source=w.source, licence=w.licence)


def register_resnet34(name: str, *, source: str, licence: str) -> Callable[[ImageBuilder], ImageBuilder]:
    """``register_encoder`` for a ResNet34 image entry: output [512], ImageNet normalisation at 224 px (random
    weights add ``init``); the description is the builder's docstring's first line."""
    prep = IMAGENET_PREP.as_dict() if source != RANDOM_SOURCE else {**IMAGENET_PREP.as_dict(), **random_init_note(0)}
    return register_encoder(
        name, family="image", source=source, licence=licence, output_shapes=RESNET34_SHAPES, preprocessing=prep
    )


@register_resnet34(DEFAULT_IMAGE_ENCODER, source="microsoft/resnet-34", licence="Apache-2.0 (model card)")
def microsoft_resnet34(entry: EncoderEntry, opts: ImageOptions) -> ImageEncoder:
    """ResNet34 trained on ImageNet-1k, transformers weights (the paper's image encoder).

    With ``pretrained=False`` the same architecture with seeded random weights."""
    w = entry_weights(
        entry, lambda: _from_pretrained(entry.source), resnet34_architecture, pretrained=opts.pretrained, seed=opts.seed
    )
    return _imagenet_encoder(entry, w, opts)


@register_resnet34("random:resnet34", source=RANDOM_SOURCE, licence=RANDOM_LICENCE)
def random_resnet34_encoder(entry: EncoderEntry, opts: ImageOptions) -> ImageEncoder:
    """The ResNet34 architecture with seeded random weights (tests, offline machines).

    Random weights whatever ``opts.pretrained`` says, seeded by ``opts.seed``."""
    return _imagenet_encoder(
        entry, entry_weights(entry, None, resnet34_architecture, pretrained=False, seed=opts.seed), opts
    )


def torchvision_resnet34(pretrained: bool) -> nn.Module:
    """torchvision's ResNet34 without its classifier: ImageNet weights (``IMAGENET1K_V1``) or random ones.

    torchvision is optional (``omnifuse[gpu]``) and imported here only: ``ImportError`` without a working one.
    """
    try:
        from torchvision.models import ResNet34_Weights, resnet34
    except Exception as e:  # torchvision fails to import on some CPU builds with more than ImportError
        raise ImportError(f"torchvision:resnet34 needs a working torchvision ({type(e).__name__}: {e})") from e
    net = resnet34(weights=ResNet34_Weights.IMAGENET1K_V1 if pretrained else None)
    net.fc = nn.Identity()
    return TorchvisionBackbone(net)


@register_resnet34(
    "torchvision:resnet34", source="torchvision ResNet34_Weights.IMAGENET1K_V1", licence="BSD-3-Clause (torchvision)"
)
def torchvision_resnet34_encoder(entry: EncoderEntry, opts: ImageOptions) -> ImageEncoder:
    """torchvision's ResNet34 trained on ImageNet-1k (needs torchvision: pip install 'omnifuse[gpu]').

    With ``pretrained=False`` the same architecture with seeded random weights."""
    w = entry_weights(
        entry,
        lambda: torchvision_resnet34(True),
        lambda: torchvision_resnet34(False),
        pretrained=opts.pretrained,
        seed=opts.seed,
    )
    return _imagenet_encoder(entry, w, opts)


def _hf_image_prep(name: str, size: int) -> ImagePreprocess:
    """Mean and std from the model's image processor config when it has one, else ImageNet. The config comes
    from a local folder, the local Hugging Face cache or the hub (``hub.hub_load``); when none can say whether
    it exists (offline, never downloaded), ``HubUnreachableError``: guessing ImageNet there would give another
    normalisation than the same command online."""
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    processor = "preprocessor_config.json"
    if not is_local(name) and cache_state(name, processor) == "absent":
        log.info("%s has no image processor config; using ImageNet normalisation", name)
        return ImagePreprocess(size=size, mean=mean, std=std)
    try:
        proc = hub_load(name, name, "image", transformers.AutoImageProcessor.from_pretrained, processor)
        m, s = getattr(proc, "image_mean", None), getattr(proc, "image_std", None)
        if m is not None and s is not None and len(m) == 3 and len(s) == 3:
            mean = (float(m[0]), float(m[1]), float(m[2]))
            std = (float(s[0]), float(s[1]), float(s[2]))
    except HubUnreachableError:
        raise
    except (OSError, ValueError, KeyError) as e:
        log.info("no image processor config for %s (%s); using ImageNet normalisation", name, type(e).__name__)
    return ImagePreprocess(size=size, mean=mean, std=std)


def hub_image_encoder(entry: EncoderEntry, opts: ImageOptions) -> ImageEncoder:
    """The builder of unregistered names: any image backbone transformers loads by hub id or local folder (a
    chest X-ray foundation model...), normalised as its image processor config says. Pretrained only."""
    if not opts.pretrained:
        raise ValueError(f"image encoder {entry.name!r} is not registered: only registered ones build random")
    if opts.pooling is not None:
        raise ValueError(f"image encoder {entry.name!r} is not registered: its pooling is its model's own")
    model = _from_pretrained(entry.source)
    prep = _hf_image_prep(entry.source, opts.size or DEFAULT_IMAGE_SIZE)
    return ImageEncoder(
        model, entry.name, prep, opts.device, opts.precision, source=entry.source, licence=entry.licence
    )


def build_image_encoder(
    name: str = DEFAULT_IMAGE_ENCODER,
    device: str | torch.device = "auto",
    precision: str = "auto",
    size: int | None = None,
    seed: int = 0,
    pretrained: bool = True,
    pooling: str | None = None,
) -> ImageEncoder:
    """An image encoder by registered name or alias (``omnifuse encoders --family image`` lists them), or any
    transformers hub id / local folder. ``size``: input resolution (None: the entry's authors' size).
    ``pretrained=False`` builds a registered encoder's architecture with random weights seeded by ``seed``
    (tests, offline machines). ``pooling``: one of the entry's poolings (None: its default)."""
    entry = entry_for(name, "image", hub_image_encoder)
    enc = entry.builder(entry, ImageOptions(size, seed, pretrained, device, precision, pooling))
    if not isinstance(enc, ImageEncoder):
        raise TypeError(f"the builder of image encoder {entry.name!r} returned {type(enc).__name__}")
    return enc
