"""Image encoders that transformers builds natively: RAD-DINO (``Dinov2Model``) and MedSigLIP's vision tower
(``SiglipVisionModel``). Pretrained weights load with ``from_pretrained`` through ``hub.hub_load``; with
``pretrained=False`` the architecture is built from the config written here (the model cards' numbers) with
seeded random weights.

RAD-DINO (microsoft/rad-dino; Pérez-García et al., Nat. Mach. Intell. 2025): DINOv2 ViT-B/14, 12 x 768,
518 px (a 37 x 37 patch grid). Preprocessing from its ``preprocessor_config.json`` (transformers
``BitImageProcessor``): RGB, shorter side to 518 (bicubic), centre crop 518, rescale 1/255, mean 0.5307 and std
0.2583 on every channel. Embeddings as in its model card: ``cls`` is ``outputs.pooler_output`` (the CLS token
after the final LayerNorm, [B, 768]); ``patch_mean`` is the mean of ``last_hidden_state[:, 1:]``, the 1369
patch tokens. Licence: the card said MSRLA (research licence) from August 2024 and MIT since its
"Use MIT license (#9)" commit; it is shared for research only, not for clinical use.

MedSigLIP (google/medsiglip-448; Sellergren et al., MedGemma technical report 2025): SigLIP's 400M vision
encoder (so400m: 27 x 1152, 16 heads, MLP 4304, patch 14) at 448 px. Preprocessing as its
``SiglipImageProcessor``: resize to 448 x 448 without keeping the aspect ratio (bilinear), rescale 1/255, mean
and std 0.5 (values in [-1, 1]); Google's serving code (medsiglip ``python/serving/predictor.py``,
``_InputImageIter._pre_process``) first pads the image with zeros to a square, which the shared loader does not
do. Embeddings: ``map`` is ``pooler_output`` (the attention-pooling head, [B, 1152]; SiglipModel L2-normalises
it as ``image_embeds``, which is not done here), ``mean`` the mean of the 1024 patch tokens. The model is gated
on the hub under the Health AI Developer Foundations terms (:data:`MEDSIGLIP_ACCESS`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import transformers
from torch import nn

from omnifuse.extract.encoders.hub import HubUnreachableError, gated_refusal, hub_load, is_gated_error
from omnifuse.extract.encoders.image import ImageEncoder, ImageOptions, entry_image_encoder, register_image
from omnifuse.extract.encoders.registry import EncoderEntry
from omnifuse.extract.images import ImagePreprocess

RAD_DINO = "microsoft/rad-dino"
RAD_DINO_PREP = ImagePreprocess(
    interpolation="bicubic",
    arithmetic="transformers",
    size=518,
    mean=(0.5307, 0.5307, 0.5307),
    std=(0.2583, 0.2583, 0.2583),
    extra={
        "reference": "microsoft/rad-dino preprocessor_config.json (BitImageProcessor)",
    },
)
RAD_DINO_LICENCE = "MIT (model card since its #9; MSRLA before); research use only"
MEDSIGLIP = "google/medsiglip-448"
MEDSIGLIP_LICENCE = "Health AI Developer Foundations terms (gated: accept them on the hub)"
MEDSIGLIP_PREP = ImagePreprocess(
    size=448,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    resize="squash",
    extra={
        "reference": "google/medsiglip-448 SiglipImageProcessor (448 x 448, bilinear); the authors' serving code "
        "zero-pads to a square first (not done here)",
    },
)
MEDSIGLIP_ACCESS = (
    "log in at https://huggingface.co/google/medsiglip-448, accept the Health AI Developer Foundations terms of "
    "use (granted at once), then `hf auth login` or set HF_TOKEN on this machine; or download the model where "
    "you have access and give its folder with --image-encoder PATH"
)


def rad_dino_config() -> transformers.Dinov2Config:
    """microsoft/rad-dino's architecture (its config.json, as dinov2-base): ViT-B/14 at 518 px."""
    return transformers.Dinov2Config(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        mlp_ratio=4,
        patch_size=14,
        image_size=518,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
        hidden_act="gelu",
        qkv_bias=True,
        use_swiglu_ffn=False,
    )


def medsiglip_config() -> transformers.SiglipVisionConfig:
    """MedSigLIP-448's vision tower: SigLIP so400m/14 (27 x 1152, 16 heads, MLP 4304) at 448 px."""
    return transformers.SiglipVisionConfig(
        hidden_size=1152,
        intermediate_size=4304,
        num_hidden_layers=27,
        num_attention_heads=16,
        patch_size=14,
        image_size=448,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6,
    )


class PooledBackbone(nn.Module):
    """A transformers vision model called as ``pixel_values`` [B, 3, S, S] -> [B, D], pooled as ``pooling``:
    ``cls`` / ``map`` (``pooler_output``), ``patch_mean`` (mean of the tokens after the first, the CLS token)
    or ``mean`` (mean of all tokens: SigLIP has no CLS token). ``native``: the resolution of the learned
    position embeddings; another size interpolates them."""

    def __init__(self, model: nn.Module, pooling: str, native: int) -> None:
        super().__init__()
        self.model = model
        self.pooling = pooling
        self.native = native

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        kwargs = {} if pixel_values.shape[-1] == self.native else {"interpolate_pos_encoding": True}
        if isinstance(self.model, transformers.Dinov2Model):
            kwargs = {}  # DINOv2 always interpolates its position embeddings
        out = self.model(pixel_values=pixel_values, **kwargs)
        if self.pooling in ("cls", "map"):
            return out.pooler_output
        tokens = out.last_hidden_state
        return tokens[:, 1:].mean(1) if self.pooling == "patch_mean" else tokens.mean(1)


def _pretrained(entry: EncoderEntry, cls: Callable[..., nn.Module], access: str = "") -> nn.Module:
    """``cls.from_pretrained(entry.source)`` through ``hub.hub_load``; a gated repository this machine has no
    access to, or a failed load, is refused in one line naming the entry."""
    try:
        return hub_load(entry.name, entry.source, "image", cls)
    except HubUnreachableError:
        raise
    except (OSError, ValueError) as e:
        if access and is_gated_error(e):
            raise gated_refusal(entry.name, "image", entry.source, access) from e
        raise ValueError(f"image encoder {entry.name!r} cannot be loaded from {entry.source}: {e}") from e


@register_image(
    "rad-dino",
    source=RAD_DINO,
    licence=RAD_DINO_LICENCE,
    prep=RAD_DINO_PREP,
    output_shapes={"cls": (768,), "patch_mean": (768,)},
    aliases=(RAD_DINO,),
)
def rad_dino(entry: EncoderEntry, opts: ImageOptions) -> ImageEncoder:
    """RAD-DINO: DINOv2 ViT-B/14 trained on chest X-rays (518 px; CLS token or mean of the patch tokens).

    ``pretrained=False``: the same architecture with seeded random weights (no hub access)."""
    return entry_image_encoder(
        entry,
        opts,
        RAD_DINO_PREP,
        lambda pooling: PooledBackbone(_pretrained(entry, transformers.Dinov2Model.from_pretrained), pooling, 518),
        lambda pooling: PooledBackbone(transformers.Dinov2Model(rad_dino_config()), pooling, 518),
    )


@register_image(
    "medsiglip",
    source=MEDSIGLIP,
    licence=MEDSIGLIP_LICENCE,
    prep=MEDSIGLIP_PREP,
    output_shapes={"map": (1152,), "mean": (1152,)},
    aliases=(MEDSIGLIP, "medsiglip-448"),
)
def medsiglip(entry: EncoderEntry, opts: ImageOptions) -> ImageEncoder:
    """MedSigLIP-448's vision tower (SigLIP 400M; 448 px; attention-pooled or mean of the patch tokens).

    Gated: see ``MEDSIGLIP_ACCESS``. ``pretrained=False``: the same architecture with seeded random weights."""
    return entry_image_encoder(
        entry,
        opts,
        MEDSIGLIP_PREP,
        lambda pooling: PooledBackbone(
            _pretrained(entry, transformers.SiglipVisionModel.from_pretrained, MEDSIGLIP_ACCESS), pooling, 448
        ),
        lambda pooling: PooledBackbone(transformers.SiglipVisionModel(medsiglip_config()), pooling, 448),
    )
