"""Bio_ClinicalBERT, BiomedBERT and CXR-BERT offline: BERT-base at each vocabulary size against the published
size, the stand-in tokenizer of random builds, and CXR-BERT's remote code allowed only when asked for."""

from __future__ import annotations

import pytest
import torch
import transformers

from omnifuse.extract.encoders import build_text_encoder, clinical_text, text
from tests.helpers import minilm_dir

BERT_BASE_PARAMS = 109_482_240  # bert-base-uncased, BertModel with pooler (30,522 tokens)


@pytest.mark.parametrize(
    ("hub_id", "vocab"),
    [(clinical_text.BIO_CLINICALBERT, 28996), (clinical_text.BIOMEDBERT, 30522), (clinical_text.CXR_BERT, 30522)],
)
def test_each_is_bert_base_at_its_vocabulary(hub_id, vocab):
    assert clinical_text.VOCAB_SIZES[hub_id] == vocab
    with torch.device("meta"):
        n = sum(p.numel() for p in transformers.BertModel(clinical_text.bert_config(vocab)).parameters())
    assert n == BERT_BASE_PARAMS - (30522 - vocab) * 768  # only the word embeddings differ


def test_random_build_uses_a_stand_in_tokenizer_that_fits_the_vocabulary(monkeypatch):
    monkeypatch.setattr(
        clinical_text, "bert_config", lambda v: transformers.BertConfig(vocab_size=v, num_hidden_layers=2)
    )
    enc = build_text_encoder("bio-clinicalbert", pooling="mean", max_tokens=32, device="cpu", pretrained=False)
    prep = enc.preprocessing()
    assert prep["tokenizer"] == "stand-in (random weights): bert-base-uncased WordPiece, first 28996 entries"
    assert (prep["source"], prep["init"]) == ("random", "random(seed=0)")
    tok = enc.tokenizer
    assert len(tok) == 28996 and tok("hello world")["input_ids"] == [101, 7592, 2088, 102]  # type: ignore[operator]
    full = transformers.AutoTokenizer.from_pretrained(minilm_dir())
    late = next(w for w, i in full.get_vocab().items() if i >= 28996 and w.isalpha())  # a word cut from the vocabulary
    ids = tok(f"effusion {late}")["input_ids"]  # type: ignore[operator]
    assert max(ids) < 28996 and full(late)["input_ids"][1] >= 28996
    x, none = enc.encode(["no acute process", f"small effusion {late}"])
    assert x.shape == (2, 768) and none is None


def _fake_loaders(monkeypatch, calls):
    small = transformers.BertModel(transformers.BertConfig(vocab_size=30522, num_hidden_layers=1))
    tok = transformers.AutoTokenizer.from_pretrained(minilm_dir())

    def model(name, source, trust_remote_code=False):
        calls.append(("model", name, source, trust_remote_code))
        return small

    def tokenizer(name, source, trust_remote_code=False):
        calls.append(("tokenizer", name, source, trust_remote_code))
        return tok

    monkeypatch.setattr(clinical_text, "load_model", model)
    monkeypatch.setattr(clinical_text, "load_tokenizer", tokenizer)


def test_cxr_bert_runs_remote_code_only_when_allowed(monkeypatch):
    calls: list = []
    _fake_loaders(monkeypatch, calls)
    with pytest.raises(ValueError) as err:
        build_text_encoder("microsoft/BiomedVLP-CXR-BERT-specialized", device="cpu")
    assert str(err.value) == (
        "text encoder 'cxr-bert' (microsoft/BiomedVLP-CXR-BERT-specialized) runs model code from its hub repository "
        "(trust_remote_code); allow it explicitly with --text-encoder cxr-bert:trust-remote-code"
    )
    assert calls == []  # refused before anything was loaded
    enc = build_text_encoder("cxr-bert:trust-remote-code", pooling="cls", max_tokens=32, device="cpu")
    assert enc.name == "cxr-bert:trust-remote-code" and enc.licence == "MIT (model card)"
    assert enc.source == clinical_text.CXR_BERT and "init" not in enc.preprocessing()
    assert calls == [
        ("model", enc.name, clinical_text.CXR_BERT, True),
        ("tokenizer", enc.name, clinical_text.CXR_BERT, True),
    ]
    calls.clear()
    build_text_encoder("cxr-bert", max_tokens=32, device="cpu", trust_remote_code=True)  # the Python API's switch
    assert {c[3] for c in calls} == {True}
    calls.clear()
    build_text_encoder("bio-clinicalbert", max_tokens=32, device="cpu")
    assert {c[3] for c in calls} == {False} and {c[2] for c in calls} == {clinical_text.BIO_CLINICALBERT}
    calls.clear()
    build_text_encoder("cxr-bert", max_tokens=32, device="cpu", pretrained=False)  # its architecture: no remote code
    assert calls == []


def test_trust_remote_code_reaches_from_pretrained(monkeypatch):
    seen = []
    monkeypatch.setattr(text, "hub_load", lambda name, source, family, load: seen.append(load) or "loaded")
    assert text.load_model("cxr-bert", clinical_text.CXR_BERT, trust_remote_code=True) == "loaded"
    assert text.load_tokenizer("biomedbert", clinical_text.BIOMEDBERT) == "loaded"
    assert seen[0].keywords == {"trust_remote_code": True}  # a partial of AutoModel.from_pretrained
    assert seen[0].func == transformers.AutoModel.from_pretrained
    assert seen[1] == transformers.AutoTokenizer.from_pretrained  # no remote code unless asked
