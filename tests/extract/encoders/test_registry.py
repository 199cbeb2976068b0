"""The encoder registry: every entry builds offline and matches its declared shapes, preprocessing, source and
licence; unregistered names build on the fly; ``omnifuse encoders`` lists every entry. (That the source and
licence reach the cache attributes: ``tests/extract/test_pipeline.py``.)"""

from __future__ import annotations

import functools

import pytest
import torch
import transformers
from typer.testing import CliRunner

from omnifuse.cli import app
from omnifuse.extract.encoders import (
    MINILM,
    RANDOM_LICENCE,
    RANDOM_SOURCE,
    UNKNOWN_LICENCE,
    Encoder,
    EncoderEntry,
    ImageEncoder,
    TextEncoder,
    biomedclip,
    build_image_encoder,
    build_text_encoder,
    build_volume_encoder,
    clinical_text,
    get_encoder_entry,
    list_encoders,
    vision_hub,
)
from omnifuse.extract.encoders.registry import add_encoder
from tests.helpers import IMAGE_SIZE

IMAGE_NAMES = [
    "biomedclip",
    "medsiglip",
    "microsoft/resnet-34",
    "rad-dino",
    "random:resnet34",
    "torchvision:resnet34",
    "xrv-densenet121",
]
TEXT_NAMES = [
    "bert-base-uncased",
    "bio-clinicalbert",
    "biomedbert",
    "biomedclip-text",
    "cxr-bert",
    "cxr-bert:trust-remote-code",
    "minilm",
]
NAMES = [*IMAGE_NAMES, *TEXT_NAMES, "slices"]
RESNETS = {"microsoft/resnet-34", "random:resnet34", "torchvision:resnet34"}
# entries whose weights ship offline build pretrained; the others build their architecture with random weights
OFFLINE = {"random:resnet34", "minilm", "slices"}
TEXTS = ["no acute process", "small left effusion with adjacent atelectasis at the right lung base"]


def test_registry_names_aliases_and_families():
    assert [e.name for e in list_encoders()] == NAMES  # by family, then name
    assert [e.name for e in list_encoders("text")] == TEXT_NAMES
    for alias in ("minilm", "all-MiniLM-L6-v2", MINILM, MINILM.upper()):
        assert get_encoder_entry(alias).name == "minilm"
    assert get_encoder_entry("volume").name == "slices"
    with pytest.raises(KeyError, match="not registered"):
        get_encoder_entry("resnet-1000")
    with pytest.raises(ValueError, match="family must be one of"):
        list_encoders("audio")
    minilm = get_encoder_entry("minilm")
    assert minilm.output_shape("tokens", max_tokens=32) == (32, 384) and minilm.output_shape("cls") == (384,)
    with pytest.raises(ValueError, match="give the size 'max_tokens'"):
        minilm.output_shape()
    with pytest.raises(ValueError, match="no pooling 'max'"):
        minilm.output_shape("max")
    clash = EncoderEntry(
        name="another",
        family="text",
        source="x",
        licence="x",
        builder=minilm.builder,
        output_shapes={"mean": (4,)},
        aliases=("All-MiniLM-L6-v2",),
    )
    with pytest.raises(ValueError, match="already registered for 'minilm'"):
        add_encoder(clash)
    assert get_encoder_entry("all-minilm-l6-v2").name == "minilm" and "another" not in [e.name for e in list_encoders()]
    with pytest.raises(ValueError, match="'minilm' is a text encoder; the registered image encoders"):
        build_image_encoder("minilm", device="cpu")


def _check_declared(entry: EncoderEntry, enc: Encoder, source: str, licence: str) -> None:
    """The declared preprocessing against what the built encoder reports, with its source and licence."""
    prep = enc.preprocessing()
    for key, value in entry.preprocessing.items():
        assert prep[key] == value, (entry.name, key)
    assert (prep["source"], prep["licence"]) == (enc.source, enc.licence) == (source, licence)


def _provenance(entry: EncoderEntry, pretrained: bool) -> tuple[str, str]:
    return (entry.source, entry.licence) if pretrained else (RANDOM_SOURCE, RANDOM_LICENCE)


def _check_image(entry: EncoderEntry) -> None:
    pretrained = entry.name in OFFLINE
    if entry.name == "torchvision:resnet34":
        try:
            import torchvision  # noqa: F401 - optional; where it does not import, the entry says so
        except Exception:
            with pytest.raises(ImportError, match="needs a working torchvision"):
                build_image_encoder(entry.name, device="cpu", pretrained=False)
            return
    enc = build_image_encoder(entry.name, device="cpu", precision="fp32", pretrained=pretrained)
    _check_declared(entry, enc, *_provenance(entry, pretrained))
    assert enc.name == entry.name
    assert enc.shape == entry.output_shape()
    if entry.name in RESNETS:  # the others' sizes: test_xrv, test_biomedclip, test_vision_hub
        n_params = sum(p.numel() for p in enc.model.parameters())
        assert 21.0e6 < n_params < 21.6e6  # ResNet34 without its classifier
    size = enc.preprocessing()["image_size"]
    assert enc.encode(torch.randn(1, 3, size, size)).shape == (1, *entry.output_shape())
    if not pretrained and entry.name == "microsoft/resnet-34":  # the same architecture as random:resnet34
        assert enc.weights_hash == build_image_encoder("random:resnet34", device="cpu", size=IMAGE_SIZE).weights_hash


def _check_text(entry: EncoderEntry) -> None:
    pretrained = entry.name in OFFLINE
    enc = build_text_encoder(entry.name, device="cpu", precision="fp32", pretrained=pretrained)
    _check_declared(entry, enc, *_provenance(entry, pretrained))
    assert enc.name in (entry.name, *entry.aliases)  # minilm is recorded under its hub id, as before
    # bert-base-uncased's WordPiece ids, whichever copy of the vocabulary the tokenizer came from
    assert enc.tokenizer("hello world")["input_ids"] == [101, 7592, 2088, 102]  # type: ignore[operator]
    assert enc.pooling == entry.poolings[0]
    for pooling in entry.poolings:
        pooled = (
            enc
            if pooling == enc.pooling
            else TextEncoder(enc.model, enc.tokenizer, enc.name, pooling, enc.max_words, enc.max_tokens, "cpu", "fp32")
        )
        want = entry.output_shape(pooling, max_tokens=enc.max_tokens)
        assert pooled.shape == want
        x, tokens_mask = pooled.encode(TEXTS)
        assert x.shape == (2, *want) and x.dtype == torch.float32
        assert (tokens_mask is not None) == (len(want) == 2)


def _check_volume(entry: EncoderEntry, image_encoder: ImageEncoder) -> None:
    slices = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE)
    for pooling in entry.poolings:
        enc = build_volume_encoder(image_encoder, entry.name, pooling=pooling)
        if pooling == entry.poolings[0]:  # name, weights, source and licence are the image encoder's
            _check_declared(entry, enc, image_encoder.source, image_encoder.licence)
            assert (enc.name, enc.weights_hash) == (image_encoder.name, image_encoder.weights_hash)
        want = entry.output_shape(pooling, max_slices=enc.max_slices, image_dim=image_encoder.dim)
        assert enc.shape == want
        x, slice_mask = enc.encode_volume(slices)
        assert x.shape == want and (slice_mask is not None) == (len(want) == 2)


def _one_layer(make):
    def build():
        config = make()
        config.num_hidden_layers = 1
        return config

    return build


@pytest.fixture()
def one_layer(monkeypatch):
    """The transformer entries at one layer, to stay quick (their full-depth sizes are checked in
    test_biomedclip, test_vision_hub and test_clinical_text); nothing else of theirs changes."""
    for name in ("rad_dino_config", "medsiglip_config"):
        monkeypatch.setattr(vision_hub, name, _one_layer(getattr(vision_hub, name)))
    monkeypatch.setattr(
        clinical_text, "bert_config", lambda v: transformers.BertConfig(vocab_size=v, num_hidden_layers=1)
    )
    monkeypatch.setattr(biomedclip, "biomedbert_config", _one_layer(biomedclip.biomedbert_config))
    monkeypatch.setattr(biomedclip, "BiomedCLIPVision", functools.partial(biomedclip.BiomedCLIPVision, depth=1))


@pytest.mark.parametrize("name", NAMES)
def test_every_entry_builds_offline_and_matches_its_declaration(name, image_encoder, one_layer):
    """Entries that do not ship offline build their real architecture with random weights (no hub access)."""
    entry = get_encoder_entry(name)
    assert entry.registered and entry.poolings
    if entry.family == "image":
        _check_image(entry)
    elif entry.family == "text":
        _check_text(entry)
    else:
        _check_volume(entry, image_encoder)


def test_unregistered_names_build_on_the_fly(text_encoder, minilm_path, tmp_path):
    # a local folder: built as today, source the folder, licence unknown
    assert text_encoder.name == minilm_path and text_encoder.source == minilm_path
    assert text_encoder.licence == UNKNOWN_LICENCE and text_encoder.preprocessing()["licence"] == UNKNOWN_LICENCE
    for missing in (tmp_path, tmp_path / "absent"):  # an empty folder, a path that is not there
        with pytest.raises(ValueError, match="neither a registered name"):
            build_image_encoder(str(missing), device="cpu")
    with pytest.raises(ValueError, match="cannot be loaded by transformers"):
        build_text_encoder(str(tmp_path), device="cpu")
    with pytest.raises(ValueError, match="only registered ones build random"):
        build_text_encoder(minilm_path, device="cpu", pretrained=False)


def test_cli_encoders_lists_every_entry():
    runner = CliRunner()
    res = runner.invoke(app, ["encoders"], env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    rows = {line.split("│")[1].strip(): line for line in res.output.splitlines() if line.startswith("│")}
    assert sorted(rows) == sorted(NAMES)
    for entry in list_encoders():
        row = rows[entry.name]
        for text in (entry.family, entry.source, entry.shape_text(), entry.licence, *entry.aliases):
            assert text in row, (entry.name, text)
    only = runner.invoke(app, ["encoders", "--family", "volume"], env={"COLUMNS": "400"})
    assert only.exit_code == 0 and "slices" in only.output and "minilm" not in only.output
    bad = runner.invoke(app, ["encoders", "--family", "audio"])
    assert bad.exit_code == 2 and "family must be one of" in bad.output
