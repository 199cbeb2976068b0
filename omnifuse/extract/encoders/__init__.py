"""Frozen stage-one encoders (the paper's section 3, stage one): images, report text and CT/PET volumes.

Every named encoder is an entry of the registry (``registry.py``, timm style): ``list_encoders(family)``,
``get_encoder_entry(name)``; ``omnifuse encoders`` prints them. The entries are declared with
``@register_encoder`` in ``image.py`` (ResNet34), ``xrv.py`` (torchxrayvision DenseNet-121), ``biomedclip.py``
(BiomedCLIP's image and text towers), ``vision_hub.py`` (RAD-DINO, MedSigLIP), ``text.py`` (BERT, MiniLM),
``clinical_text.py`` (Bio_ClinicalBERT, BiomedBERT, CXR-BERT) and ``volume.py``, all imported here; each
records its authors' preprocessing, output shapes and licence (``docs/encoders.md``). Weight files of the
authors' own formats are read by ``checkpoints.py`` without their libraries. Any transformers hub id or
local folder also builds, as an unregistered entry (licence ``UNKNOWN_LICENCE``).

Every built encoder carries a ``name`` (the cache's ``encoder``: hub id, local path or a registry name such as
``random:resnet34``), its per-row output ``shape``, a ``weights_hash`` (sha256 over the state dict: names,
dtypes, shapes and bytes, in sorted order) and ``preprocessing()``, which includes the weights' ``source`` and
``licence``; all of these go into the cache attributes.

- ``ImageEncoder``: [B, 3, size, size] -> [B, D] (ResNet34: ``pooler_output`` (B, 512, 1, 1) flattened).
- ``TextEncoder``: the first ``max_words`` words (150, the paper), per-token output [B, L, H] with a token
  mask, or a pooled vector [B, H] (mean over valid tokens, or the first/CLS token).
- ``VolumeEncoder``: slices along z through an ``ImageEncoder``: [B, S, D] with a slice mask, or pooled [B, D].

Models from the hub load through ``hub.hub_load``: a local folder or a model in the local Hugging Face cache
loads without the network; otherwise one quick check (``HF_HUB_OFFLINE``, then a 3 s ``HEAD`` to the hub)
refuses at once, naming the offline choices (the bundled ``minilm``, ``random:resnet34``, a local folder),
instead of transformers' retry loop.

All run in ``torch.inference_mode``, batched, on ``cuda`` when available (``device="auto"``), with bf16
autocast where the hardware computes bf16 natively (about 2x for ResNet34 and BERT on an AMX CPU; on a CPU
without it, bf16 is emulated and 5-6x slower than fp32, so ``auto`` keeps fp32) and channels_last for images.
"""

# the modules of the other registered entries: importing them registers them
from omnifuse.extract.encoders import biomedclip, clinical_text, vision_hub, xrv  # noqa: F401
from omnifuse.extract.encoders.base import (
    RANDOM_LICENCE,
    RANDOM_SOURCE,
    UNKNOWN_LICENCE,
    Encoder,
    FrozenEncoder,
    cpu_has_native_bf16,
    resolve_device,
    resolve_precision,
    weights_hash,
)
from omnifuse.extract.encoders.hub import OFFLINE_CHOICES, HubUnreachableError, hub_load
from omnifuse.extract.encoders.image import (
    DEFAULT_IMAGE_ENCODER,
    ImageEncoder,
    ImageOptions,
    build_image_encoder,
    random_resnet34,
)
from omnifuse.extract.encoders.registry import (
    ENCODERS,
    FAMILIES,
    EncoderEntry,
    get_encoder_entry,
    list_encoders,
    register_encoder,
)
from omnifuse.extract.encoders.text import (
    DEFAULT_TEXT_ENCODER,
    MINILM,
    TEXT_POOLINGS,
    TextEncoder,
    TextOptions,
    build_text_encoder,
    first_words,
)
from omnifuse.extract.encoders.volume import (
    DEFAULT_VOLUME_ENCODER,
    VOLUME_POOLINGS,
    VolumeEncoder,
    VolumeOptions,
    build_volume_encoder,
)

__all__ = [
    "DEFAULT_IMAGE_ENCODER",
    "DEFAULT_TEXT_ENCODER",
    "DEFAULT_VOLUME_ENCODER",
    "ENCODERS",
    "FAMILIES",
    "MINILM",
    "OFFLINE_CHOICES",
    "RANDOM_LICENCE",
    "RANDOM_SOURCE",
    "TEXT_POOLINGS",
    "UNKNOWN_LICENCE",
    "VOLUME_POOLINGS",
    "Encoder",
    "EncoderEntry",
    "FrozenEncoder",
    "HubUnreachableError",
    "ImageEncoder",
    "ImageOptions",
    "TextEncoder",
    "TextOptions",
    "VolumeEncoder",
    "VolumeOptions",
    "build_image_encoder",
    "build_text_encoder",
    "build_volume_encoder",
    "cpu_has_native_bf16",
    "first_words",
    "get_encoder_entry",
    "hub_load",
    "list_encoders",
    "random_resnet34",
    "register_encoder",
    "resolve_device",
    "resolve_precision",
    "weights_hash",
]
