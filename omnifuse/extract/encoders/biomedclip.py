"""BiomedCLIP (microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224): both towers without open_clip or timm.

open_clip builds BiomedCLIP from its ``open_clip_config.json`` (quoted in open_clip ``factory.py``,
``create_model``): ``embed_dim`` 512; the image tower is timm's ``vit_base_patch16_224`` (``timm_pool`` "",
``timm_proj`` "linear": open_clip ``timm_model.py``, ``TimmModel``, keeps the trunk's own CLS-token pooling and
adds ``head.proj = Linear(768, 512, bias=False)``); the text tower is BiomedBERT-base-uncased-abstract
(``hf_model_name`` microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract) with ``cls_last_hidden_state_pooler``
and ``hf_proj_type`` "mlp" (open_clip ``hf_model.py``, ``HFTextEncoder``: ``proj = Linear(768, 640, bias=False),
GELU, Linear(640, 512, bias=False)``), context length 256. Image preprocessing (open_clip ``transform.py``,
``PreprocessCfg`` and ``image_transform``): RGB, shorter side resized to 224 (bicubic), centre crop 224,
OpenAI CLIP mean and std.

Here the ViT-B/16 is written in plain torch (``VisionTransformer``) under timm's module names (timm
``vision_transformer.py``: ``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.N.norm1``,
``blocks.N.attn.qkv`` (q, k, v stacked in that order), ``blocks.N.attn.proj``, ``blocks.N.norm2``,
``blocks.N.mlp.fc1/fc2``, ``norm``; LayerNorm eps 1e-6, exact GELU, pre-norm blocks), so the checkpoint's
``visual.trunk.*`` keys load after removing that prefix; the text tower is transformers' ``BertModel``
(without its pooler, as open_clip builds it) and the ``text.transformer.*`` keys load as they are. Neither
timm nor open_clip (both import torchvision) is needed, so no extra dependency.

Entries: ``biomedclip`` (image; ``proj``: the 512-d CLIP embedding, default, or ``cls``: the trunk's 768-d CLS
token) and ``biomedclip-text`` (text; ``tokens`` / ``mean`` / ``cls`` over the 768-d hidden states, or ``proj``:
the 512-d CLIP embedding of the CLS token). Both load ``open_clip_pytorch_model.bin`` (from the local Hugging
Face cache or the hub, ``hub.hub_file``) and record the MIT licence of the model card.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from torch import nn

from omnifuse.extract.encoders.checkpoints import load_mapped, read_state_dict
from omnifuse.extract.encoders.hub import HubUnreachableError, hub_file, hub_load
from omnifuse.extract.encoders.image import ImageEncoder, ImageOptions, entry_image_encoder, register_image
from omnifuse.extract.encoders.registry import EncoderEntry, Weights, entry_weights
from omnifuse.extract.encoders.text import (
    TextEncoder,
    TextOptions,
    register_text,
    standin_tokenizer,
    text_encoder_from,
)
from omnifuse.extract.images import ImagePreprocess

BIOMEDCLIP = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
BIOMEDCLIP_FILE = "open_clip_pytorch_model.bin"
BIOMEDCLIP_TOKENIZER = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"  # open_clip_config hf_tokenizer_name
BIOMEDCLIP_LICENCE = "MIT (model card; intended for research use)"
EMBED_DIM = 512
CONTEXT_LENGTH = 256
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip constants.OPENAI_DATASET_MEAN
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)  # open_clip constants.OPENAI_DATASET_STD
BIOMEDCLIP_PREP = ImagePreprocess(
    interpolation="bicubic",
    arithmetic="torchvision",
    size=224,
    mean=OPENAI_MEAN,
    std=OPENAI_STD,
    extra={
        "reference": "open_clip transform.py image_transform (PreprocessCfg: shortest, bicubic, OpenAI mean/std)",
    },
)


class Attention(nn.Module):
    """timm ``Attention``: ``qkv`` Linear(d, 3 d) (q, k, v stacked, heads contiguous), scaled dot-product
    attention, ``proj`` Linear(d, d). [B, N, d] -> [B, N, d]."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v)  # [B, heads, N, d / heads]
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """timm ``Mlp``: fc1, exact GELU, fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """timm ``Block`` (pre-norm): x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """timm ``PatchEmbed``: ``proj`` Conv2d(3, d, p, stride p); [B, 3, H, W] -> [B, H W / p^2, d]."""

    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """timm ``VisionTransformer`` as BiomedCLIP uses it (class token, learned absolute positions including the
    class token, pre-norm blocks, final ``norm``, no head): [B, 3, S, S] -> tokens [B, 1 + (S/p)^2, d].

    ViT-B/16 at 224 px (the defaults): d 768, 12 blocks of 12 heads, MLP 3072, 197 tokens."""

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 16,
        dim: int = 768,
        depth: int = 12,
        heads: int = 12,
        mlp_ratio: float = 4.0,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.grid = image_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + self.grid**2, dim) * 0.02)
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_ratio, eps) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=eps)
        nn.init.normal_(self.cls_token, std=1e-6)

    def _pos(self, h: int, w: int) -> torch.Tensor:
        """Position embeddings for an (h, w) patch grid: the learned ones, or (another resolution) the grid part
        bicubically resized, as timm's ``resample_abs_pos_embed`` does."""
        if (h, w) == (self.grid, self.grid):
            return self.pos_embed
        cls, grid = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        d = grid.shape[-1]
        grid = grid.reshape(1, self.grid, self.grid, d).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
        return torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(1, h * w, d)], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self._pos(h, w)
        return self.norm(self.blocks(x))


class BiomedCLIPVision(nn.Module):
    """BiomedCLIP's image tower: ``trunk`` (ViT-B/16) and ``head.proj`` (768 -> 512, no bias), open_clip
    ``TimmModel`` names. ``pixel_values`` [B, 3, 224, 224] -> [B, 512] (``proj``) or the trunk's CLS token
    [B, 768] (``cls``)."""

    def __init__(self, pooling: str = "proj", depth: int = 12) -> None:
        super().__init__()
        self.pooling = pooling
        self.trunk = VisionTransformer(depth=depth)
        self.head = nn.Sequential()
        self.head.add_module("proj", nn.Linear(768, EMBED_DIM, bias=False))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        cls = self.trunk(pixel_values)[:, 0]
        return self.head(cls) if self.pooling == "proj" else cls


class TextTowerOutput:
    """What ``BiomedCLIPText`` returns: ``last_hidden_state`` [B, L, 768] (``TextEncoder`` reads it)."""

    def __init__(self, last_hidden_state: torch.Tensor) -> None:
        self.last_hidden_state = last_hidden_state


class BiomedCLIPText(nn.Module):
    """BiomedCLIP's text tower: ``transformer`` (BERT-base, no pooler) and ``proj`` (768 -> 640 -> 512 MLP, no
    biases), open_clip ``HFTextEncoder`` names. Called like a transformers model; ``project(cls)`` maps CLS
    states [B, 768] to the CLIP embedding [B, 512] (``TextEncoder``'s ``proj`` pooling)."""

    def __init__(self, config: transformers.BertConfig) -> None:
        super().__init__()
        self.transformer = transformers.BertModel(config, add_pooling_layer=False)
        self.config = config
        d = config.hidden_size
        hidden = (d + EMBED_DIM) // 2
        self.proj = nn.Sequential(nn.Linear(d, hidden, bias=False), nn.GELU(), nn.Linear(hidden, EMBED_DIM, bias=False))
        self.proj_dim = EMBED_DIM

    def forward(self, **inputs: torch.Tensor) -> TextTowerOutput:
        return TextTowerOutput(self.transformer(**inputs).last_hidden_state)

    def project(self, cls: torch.Tensor) -> torch.Tensor:
        return self.proj(cls)


def biomedbert_config() -> transformers.BertConfig:
    """BiomedBERT-base-uncased-abstract's architecture: BERT-base (12 x 768, 12 heads, 3072) with its own
    30,522-token uncased vocabulary and 512 positions."""
    return transformers.BertConfig(vocab_size=30522)


def vision_state(ckpt: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip BiomedCLIP keys -> ``BiomedCLIPVision`` keys: ``visual.trunk.X`` -> ``trunk.X``,
    ``visual.head.proj.weight`` -> ``head.proj.weight``; the text tower and ``logit_scale`` are dropped."""
    return {k[len("visual.") :]: v for k, v in ckpt.items() if k.startswith("visual.")}


def text_state(ckpt: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip BiomedCLIP keys -> ``BiomedCLIPText`` keys: ``text.X`` -> ``X``; the image tower and
    ``logit_scale`` are dropped."""
    return {k[len("text.") :]: v for k, v in ckpt.items() if k.startswith("text.")}


def _text_ignored(key: str) -> bool:
    """Checkpoint keys that are not weights of the tower as open_clip runs it: BERT's pooler (unused by the
    CLS-last-hidden-state pooler) and the ``position_ids`` buffer older transformers saved."""
    return key.startswith("transformer.pooler.") or key.endswith("embeddings.position_ids")


def load_biomedclip_vision(model: BiomedCLIPVision, path: str | Path) -> BiomedCLIPVision:
    load_mapped(model, vision_state(read_state_dict(path)), str(path))
    return model


def load_biomedclip_text(model: BiomedCLIPText, path: str | Path) -> BiomedCLIPText:
    load_mapped(model, text_state(read_state_dict(path)), str(path), ignored=_text_ignored)
    return model


def biomedclip_file(name: str, family: str) -> str:
    """``open_clip_pytorch_model.bin`` of BiomedCLIP: from the local Hugging Face cache or the hub."""
    return hub_file(name, BIOMEDCLIP, BIOMEDCLIP_FILE, family)


@register_image(
    "biomedclip",
    source=BIOMEDCLIP,
    licence=BIOMEDCLIP_LICENCE,
    prep=BIOMEDCLIP_PREP,
    output_shapes={"proj": (EMBED_DIM,), "cls": (768,)},
    aliases=("biomedclip-vision",),
)
def biomedclip_vision(entry: EncoderEntry, opts: ImageOptions) -> ImageEncoder:
    """BiomedCLIP's ViT-B/16 image tower (PMC-15M figure-caption pairs), 224 px, 512-d CLIP embedding.

    ``pretrained=False``: the same architecture with seeded random weights (no hub access)."""
    return entry_image_encoder(
        entry,
        opts,
        BIOMEDCLIP_PREP,
        lambda pooling: load_biomedclip_vision(BiomedCLIPVision(pooling), biomedclip_file(entry.name, "image")),
        BiomedCLIPVision,
    )


@register_text("biomedclip-text", source=BIOMEDCLIP, licence=BIOMEDCLIP_LICENCE, extra_shapes={"proj": (EMBED_DIM,)})
def biomedclip_text(entry: EncoderEntry, opts: TextOptions) -> TextEncoder:
    """BiomedCLIP's PubMedBERT text tower: per-token or pooled 768-d states, or the 512-d CLIP embedding.

    Tokenizer: BiomedBERT-abstract's (open_clip_config ``hf_tokenizer_name``). ``pretrained=False``: the same
    architecture with seeded random weights and a stand-in tokenizer of the same vocabulary size."""
    config = biomedbert_config()
    w: Weights[nn.Module] = entry_weights(
        entry,
        lambda: load_biomedclip_text(BiomedCLIPText(config), biomedclip_file(entry.name, "text")),
        lambda: BiomedCLIPText(config),
        pretrained=opts.pretrained,
        seed=opts.seed,
    )
    if opts.pretrained:
        try:
            tokenizer = hub_load(
                entry.name, BIOMEDCLIP_TOKENIZER, "text", transformers.AutoTokenizer.from_pretrained, "vocab.txt"
            )
        except HubUnreachableError:
            raise
        except (OSError, ValueError) as e:
            raise ValueError(
                f"text encoder {entry.name!r}: cannot load its tokenizer {BIOMEDCLIP_TOKENIZER}: {e}"
            ) from e
        return text_encoder_from(entry.name, w, tokenizer, opts)
    standin, note = standin_tokenizer(config.vocab_size)
    return text_encoder_from(entry.name, Weights(w.model, w.source, w.licence, {**w.init, **note}), standin, opts)
