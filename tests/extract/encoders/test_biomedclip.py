"""BiomedCLIP without open_clip or timm: the ViT-B/16 against timm's published size and a hand-written timm
forward, open_clip's checkpoint (timm and transformers key names) loaded key for key into both towers, the
preprocessing against open_clip's numbers, and the text tower's CLIP projection."""

from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from PIL import Image

from omnifuse.extract.encoders import TextEncoder, biomedclip, build_image_encoder, build_text_encoder
from omnifuse.extract.encoders.biomedclip import (
    BiomedCLIPText,
    BiomedCLIPVision,
    VisionTransformer,
    load_biomedclip_text,
    load_biomedclip_vision,
)

TIMM_VIT_B16_PARAMS = 86_567_656  # timm vit_base_patch16_224 with its 1000-class head (model card: 86.6 M)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip constants.py
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def timm_vit_keys(depth: int, dim: int = 768, patch: int = 16, tokens: int = 197) -> dict[str, tuple[int, ...]]:
    """timm ``VisionTransformer``'s state-dict names and shapes (vision_transformer.py: ``cls_token``,
    ``pos_embed``, ``patch_embed.proj``, ``blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``,
    ``norm``), without its head (open_clip resets it)."""
    keys = {
        "cls_token": (1, 1, dim),
        "pos_embed": (1, tokens, dim),
        "patch_embed.proj.weight": (dim, 3, patch, patch),
        "patch_embed.proj.bias": (dim,),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        for norm in ("norm1", "norm2"):
            keys |= {f"{b}{norm}.weight": (dim,), f"{b}{norm}.bias": (dim,)}
        keys |= {f"{b}attn.qkv.weight": (3 * dim, dim), f"{b}attn.qkv.bias": (3 * dim,)}
        keys |= {f"{b}attn.proj.weight": (dim, dim), f"{b}attn.proj.bias": (dim,)}
        keys |= {f"{b}mlp.fc1.weight": (4 * dim, dim), f"{b}mlp.fc1.bias": (4 * dim,)}
        keys |= {f"{b}mlp.fc2.weight": (dim, 4 * dim), f"{b}mlp.fc2.bias": (dim,)}
    return keys | {"norm.weight": (dim,), "norm.bias": (dim,)}


def timm_vit_cls(sd: dict[str, torch.Tensor], x: torch.Tensor, depth: int, heads: int = 12) -> torch.Tensor:
    """timm's ViT forward written out from its state dict (``_pos_embed``, ``Block``, ``Attention``: q, k, v
    stacked in qkv's rows; pool 'token'): [B, 3, 224, 224] -> the CLS token after ``norm``, [B, 768]."""
    d = sd["cls_token"].shape[-1]
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=16).flatten(2).transpose(1, 2)
    t = torch.cat([sd["cls_token"].expand(len(x), -1, -1), t], 1) + sd["pos_embed"]
    b, n, _ = t.shape
    for i in range(depth):
        p = f"blocks.{i}."
        h = F.layer_norm(t, (d,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-6)
        q, k, v = (h @ sd[p + "attn.qkv.weight"].T + sd[p + "attn.qkv.bias"]).split(d, -1)
        q, k, v = (z.reshape(b, n, heads, d // heads).transpose(1, 2) for z in (q, k, v))
        a = torch.softmax(q @ k.transpose(-1, -2) / (d // heads) ** 0.5, -1) @ v
        t = t + a.transpose(1, 2).reshape(b, n, d) @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
        h = F.layer_norm(t, (d,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-6)
        h = F.gelu(h @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"])
        t = t + h @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
    return F.layer_norm(t, (d,), sd["norm.weight"], sd["norm.bias"], 1e-6)[:, 0]


def small_bert() -> transformers.BertConfig:
    return transformers.BertConfig(vocab_size=30522, num_hidden_layers=2)


def open_clip_checkpoint(depth: int, bert: transformers.BertConfig) -> dict[str, torch.Tensor]:
    """A BiomedCLIP ``open_clip_pytorch_model.bin`` state dict with random values: ``visual.trunk.`` + timm's
    names, ``visual.head.proj.weight`` (TimmModel, proj 'linear'), ``text.transformer.`` + transformers
    BertModel's names (HFTextEncoder builds it with ``AutoModel.from_config``; older open_clip kept BERT's pooler
    and transformers saved ``position_ids``), ``text.proj.0/2.weight`` (proj 'mlp'), ``logit_scale``."""
    g = torch.Generator().manual_seed(0)
    ck = {f"visual.trunk.{k}": torch.randn(s, generator=g) * 0.02 for k, s in timm_vit_keys(depth).items()}
    ck["visual.head.proj.weight"] = torch.randn(512, 768, generator=g) * 0.02
    with torch.device("meta"):
        names = {
            k: tuple(v.shape) for k, v in transformers.BertModel(bert, add_pooling_layer=True).state_dict().items()
        }
    ck |= {f"text.transformer.{k}": torch.randn(s, generator=g) * 0.02 for k, s in names.items()}
    ck["text.transformer.embeddings.position_ids"] = torch.arange(512)[None]
    ck["text.proj.0.weight"] = torch.randn(640, 768, generator=g) * 0.02
    ck["text.proj.2.weight"] = torch.randn(512, 640, generator=g) * 0.02
    ck["logit_scale"] = torch.tensor(4.6052)
    return ck


def test_vit_b16_has_timms_size_and_names():
    with torch.device("meta"):
        trunk = VisionTransformer()
        tower = BiomedCLIPVision()
    n_trunk = sum(p.numel() for p in trunk.parameters())
    assert n_trunk + 768 * 1000 + 1000 == TIMM_VIT_B16_PARAMS
    assert sum(p.numel() for p in tower.parameters()) == n_trunk + 768 * 512  # + head.proj, no bias
    assert {k: tuple(v.shape) for k, v in trunk.state_dict().items()} == timm_vit_keys(12)


def test_forward_matches_timms_computation_written_out():
    torch.manual_seed(0)
    tower = BiomedCLIPVision("cls", depth=2).eval()
    x = torch.randn(2, 3, 224, 224)
    sd = {k[len("trunk.") :]: v for k, v in tower.state_dict().items() if k.startswith("trunk.")}
    with torch.inference_mode():
        ref = timm_vit_cls(sd, x, depth=2)
        torch.testing.assert_close(tower(x), ref, rtol=1e-4, atol=1e-4)
        tower.pooling = "proj"
        torch.testing.assert_close(tower(x), ref @ tower.head.proj.weight.T, rtol=1e-4, atol=1e-4)


def test_open_clip_checkpoint_loads_both_towers_key_for_key(tmp_path):
    bert = small_bert()
    ck = open_clip_checkpoint(2, bert)
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(ck, path)
    vision = load_biomedclip_vision(BiomedCLIPVision(depth=2), path)
    for k, v in vision.state_dict().items():
        assert torch.equal(v, ck[f"visual.{k}"]), k
    text = load_biomedclip_text(BiomedCLIPText(bert), path)
    for k, v in text.state_dict().items():
        assert torch.equal(v, ck[f"text.{k}"]), k
    del ck["text.proj.2.weight"]
    torch.save(ck, path)
    with pytest.raises(ValueError, match=r"open_clip_pytorch_model\.bin: .*missing 1 keys \(proj\.2\.weight\)"):
        load_biomedclip_text(BiomedCLIPText(bert), path)
    with pytest.raises(ValueError, match=r"shapes differ.*trunk\.pos_embed \(1, 197, 768\) != \(1, 50, 768\)"):
        m = BiomedCLIPVision(depth=2)
        m.trunk.pos_embed = torch.nn.Parameter(torch.zeros(1, 50, 768))
        load_biomedclip_vision(m, path)


@pytest.fixture()
def small_towers(monkeypatch, tmp_path):
    """The entries' builders at 2 layers, loading a random open_clip checkpoint (no hub) and the bundled
    bert-base-uncased vocabulary as tokenizer (the same 30,522 size as BiomedBERT's)."""
    bert = small_bert()
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(open_clip_checkpoint(2, bert), path)
    monkeypatch.setattr(biomedclip, "biomedbert_config", lambda: bert)
    monkeypatch.setattr(biomedclip, "BiomedCLIPVision", functools.partial(BiomedCLIPVision, depth=2))
    monkeypatch.setattr(biomedclip, "biomedclip_file", lambda name, family: str(path))
    from tests.helpers import minilm_dir

    tok = transformers.AutoTokenizer.from_pretrained(minilm_dir())
    monkeypatch.setattr(biomedclip, "hub_load", lambda *a, **k: tok)
    return path


def test_image_entry_preprocessing_and_poolings(small_towers, tmp_path):
    enc = build_image_encoder("biomedclip", device="cpu", precision="fp32")
    prep = enc.preprocessing()
    assert (prep["image_size"], prep["resize"], prep["pooling"]) == (224, "shorter_side_center_crop", "proj")
    assert prep["mean"] == list(OPENAI_MEAN) and prep["std"] == list(OPENAI_STD)
    assert prep["licence"] == "MIT (model card; intended for research use)" and prep["source"] == biomedclip.BIOMEDCLIP
    assert "init" not in prep  # the checkpoint's weights
    Image.fromarray(np.full((200, 300, 3), (40, 120, 200), np.uint8), mode="RGB").save(tmp_path / "c.png")
    x = enc.load(tmp_path / "c.png")
    assert x.shape == (3, 224, 224)
    for c, v in enumerate((40, 120, 200)):  # open_clip: ToTensor, then Normalize(OPENAI mean, std)
        torch.testing.assert_close(x[c], torch.full((224, 224), (v / 255 - OPENAI_MEAN[c]) / OPENAI_STD[c]))
    y = enc.encode(x[None])
    cls = build_image_encoder("biomedclip", device="cpu", precision="fp32", pooling="cls")
    assert y.shape == (1, 512) and cls.shape == (768,) and cls.weights_hash == enc.weights_hash
    torch.testing.assert_close(y, cls.encode(x[None]) @ enc.model.head.proj.weight.T, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="has no pooling 'mean'; it has \\['proj', 'cls'\\]"):
        build_image_encoder("biomedclip", device="cpu", pooling="mean")


def test_text_entry_tokens_and_clip_projection(small_towers):
    texts = ["no acute cardiopulmonary process", "small left effusion"]
    proj = build_text_encoder("biomedclip-text", pooling="proj", max_tokens=32, device="cpu", precision="fp32")
    assert proj.shape == (512,) and proj.preprocessing()["pooling"] == "proj" and proj.max_tokens == 32
    cls = TextEncoder(proj.model, proj.tokenizer, proj.name, "cls", 150, 32, "cpu", "fp32")
    p, none = proj.encode(texts)
    c, _ = cls.encode(texts)
    assert none is None and p.shape == (2, 512) and c.shape == (2, 768)
    w0, w2 = proj.model.proj[0].weight, proj.model.proj[2].weight  # open_clip's mlp: Linear, GELU, Linear
    torch.testing.assert_close(p, F.gelu(c @ w0.T) @ w2.T, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="'minilm' has no pooling 'proj'"):
        build_text_encoder("minilm", pooling="proj", device="cpu")


def open_clip_transform(img: Image.Image, size: int = 224) -> torch.Tensor:
    """open_clip's BiomedCLIP preprocessing (``transform.image_transform``, resize_mode ``shortest``) written
    out without torchvision: ``Resize(size, BICUBIC)`` on a PIL image is PIL's resize to the short side ``size``
    and the long side ``int(size * long / short)`` (``_compute_resized_output_size``); ``CenterCrop(size)``
    crops at ``int(round((n - size) / 2.0))`` (``F.center_crop``); RGB, ``ToTensor``, ``Normalize``."""
    w, h = img.size
    nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    img = img.convert("RGB").resize((nw, nh), Image.Resampling.BICUBIC)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    x = torch.from_numpy(np.asarray(img.crop((left, top, left + size, top + size)), np.float32) / 255).permute(2, 0, 1)
    return (x - torch.tensor(OPENAI_MEAN).view(3, 1, 1)) / torch.tensor(OPENAI_STD).view(3, 1, 1)


@pytest.mark.parametrize("shape", [(300, 200), (227, 224), (231, 300), (401, 399), (224, 224)])
def test_image_preprocessing_is_open_clips(shape):
    """``BIOMEDCLIP_PREP`` against open_clip's transform written out (above) on grey noise: within 1e-5 after
    normalisation (float32 rounding; a grey level is 0.015). The shapes reach torchvision's half-to-even crop
    (227 -> top 2, not 1; 231 -> 4, not 3) and a truncated long side (399 -> 224.56); bilinear resizing or our
    default arithmetic miss by several grey levels there."""
    h, w = shape
    img = Image.fromarray(np.random.default_rng(h * w).integers(0, 256, (h, w), dtype=np.uint8), mode="L")
    ref = open_clip_transform(img)
    prep = biomedclip.BIOMEDCLIP_PREP
    assert (prep.interpolation, prep.arithmetic) == ("bicubic", "torchvision")
    torch.testing.assert_close(prep.from_pil8(img), ref, rtol=0, atol=1e-5)
    if shape != (224, 224):
        for other in (replace(prep, interpolation="bilinear"), replace(prep, arithmetic="omnifuse")):
            same_filter = other.interpolation == "bicubic" or prep._geometry(h, w)[:2] == tuple(img.size[::-1])
            if other._geometry(h, w) == prep._geometry(h, w) and same_filter:
                continue  # 224 * 300 / 200 = 336 exactly: the arithmetics agree
            assert float((other.from_pil8(img) - ref).abs().max()) > 5 / 255 / max(OPENAI_STD)
