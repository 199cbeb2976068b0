"""Clinical and biomedical BERT text encoders: Bio_ClinicalBERT, BiomedBERT and CXR-BERT.

All three are BERT-base (12 x 768, 12 heads, MLP 3072, 512 positions) with their own WordPiece vocabularies,
loaded with their own tokenizers (``AutoTokenizer``) and encoded like the other text entries (the first
``max_words`` words, ``tokens`` / ``mean`` / ``cls`` over the last hidden states). With ``pretrained=False``
the architecture is transformers' ``BertModel`` at the vocabulary size written here, with seeded random
weights and ``text.standin_tokenizer`` (no hub access).

- ``bio-clinicalbert`` (emilyalsentzer/Bio_ClinicalBERT; Alsentzer et al., ClinicalNLP 2019): BioBERT
  v1.0 further trained on MIMIC-III notes; BioBERT's cased vocabulary of 28,996 tokens. MIT (model card).
- ``biomedbert`` (microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract-fulltext, formerly PubMedBERT;
  Gu et al., ACM HEALTH 2021): trained from scratch on PubMed abstracts and PMC full texts, its own uncased
  vocabulary of 30,522 tokens. MIT (model card).
- ``cxr-bert`` (microsoft/BiomedVLP-CXR-BERT-specialized; Boecking et al., ECCV 2022): a PubMed + MIMIC-III
  vocabulary of 30,522 tokens, trained on PubMed, MIMIC-III and MIMIC-CXR reports. Its hub repository ships its
  own model code (``modeling_cxrbert.py``, ``CXRBertModel``: BertForMaskedLM plus a 128-d projection head; its
  ``last_hidden_state`` is the BERT encoder's), which transformers runs only with ``trust_remote_code``. The
  entry therefore refuses the pretrained weights unless that is allowed explicitly: the registered name
  ``cxr-bert:trust-remote-code`` (``--text-encoder cxr-bert:trust-remote-code``, recorded as such in the cache)
  or ``build_text_encoder(..., trust_remote_code=True)``. MIT (model card).
"""

from __future__ import annotations

from collections.abc import Callable

import transformers
from torch import nn

from omnifuse.extract.encoders.registry import EncoderEntry, Weights, entry_weights
from omnifuse.extract.encoders.text import (
    TextBuilder,
    TextEncoder,
    TextOptions,
    load_model,
    load_tokenizer,
    register_text,
    standin_tokenizer,
    text_encoder_from,
)

BIO_CLINICALBERT = "emilyalsentzer/Bio_ClinicalBERT"
BIOMEDBERT = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract-fulltext"
CXR_BERT = "microsoft/BiomedVLP-CXR-BERT-specialized"
TRUST_NAME = "cxr-bert:trust-remote-code"
MIT = "MIT (model card)"
VOCAB_SIZES = {BIO_CLINICALBERT: 28996, BIOMEDBERT: 30522, CXR_BERT: 30522}


def bert_config(vocab_size: int) -> transformers.BertConfig:
    """BERT-base with ``vocab_size`` tokens (transformers' defaults are BERT-base's other numbers)."""
    return transformers.BertConfig(vocab_size=vocab_size)


def register_bert(name: str, hub_id: str, aliases: tuple[str, ...] = ()) -> Callable[[TextBuilder], TextBuilder]:
    """``register_text`` for a BERT-base entry of this module: 768-d, ``hub_id``'s weights, MIT (model card)."""
    return register_text(name, source=hub_id, licence=MIT, aliases=aliases)


def bert_family(entry: EncoderEntry, opts: TextOptions, hub_id: str, trust_remote_code: bool = False) -> TextEncoder:
    """A BERT-base entry: ``hub_id``'s weights and tokenizer, or (``pretrained=False``) ``BertModel`` at its
    vocabulary size with seeded random weights and a stand-in tokenizer."""
    config = bert_config(VOCAB_SIZES[hub_id])
    w: Weights[nn.Module] = entry_weights(
        entry,
        lambda: load_model(entry.name, hub_id, trust_remote_code),
        lambda: transformers.BertModel(config),
        pretrained=opts.pretrained,
        seed=opts.seed,
    )
    if opts.pretrained:
        return text_encoder_from(entry.name, w, load_tokenizer(entry.name, hub_id, trust_remote_code), opts)
    tokenizer, note = standin_tokenizer(config.vocab_size)
    return text_encoder_from(entry.name, Weights(w.model, w.source, w.licence, {**w.init, **note}), tokenizer, opts)


@register_bert("bio-clinicalbert", BIO_CLINICALBERT, aliases=(BIO_CLINICALBERT, "clinicalbert"))
def bio_clinicalbert(entry: EncoderEntry, opts: TextOptions) -> TextEncoder:
    """Bio_ClinicalBERT: BioBERT further trained on MIMIC-III clinical notes (cased vocabulary, 28,996)."""
    return bert_family(entry, opts, BIO_CLINICALBERT)


@register_bert("biomedbert", BIOMEDBERT, aliases=(BIOMEDBERT, "pubmedbert"))
def biomedbert(entry: EncoderEntry, opts: TextOptions) -> TextEncoder:
    """BiomedBERT (PubMedBERT): BERT-base trained from scratch on PubMed abstracts and PMC full texts."""
    return bert_family(entry, opts, BIOMEDBERT)


def _cxr_bert(entry: EncoderEntry, opts: TextOptions, trusted: bool) -> TextEncoder:
    if opts.pretrained and not (trusted or opts.trust_remote_code):
        raise ValueError(
            f"text encoder {entry.name!r} ({CXR_BERT}) runs model code from its hub repository "
            f"(trust_remote_code); allow it explicitly with --text-encoder {TRUST_NAME}"
        )
    return bert_family(entry, opts, CXR_BERT, trust_remote_code=True)


@register_bert("cxr-bert", CXR_BERT, aliases=(CXR_BERT, "cxr-bert-specialized"))
def cxr_bert(entry: EncoderEntry, opts: TextOptions) -> TextEncoder:
    """CXR-BERT-specialized (chest X-ray reports); pretrained only with trust_remote_code (see cxr-bert:trust-...).

    Without that permission the pretrained weights are refused in one line; ``pretrained=False`` builds the
    BERT encoder with seeded random weights and runs no remote code."""
    return _cxr_bert(entry, opts, trusted=False)


@register_bert(TRUST_NAME, CXR_BERT)
def cxr_bert_trusted(entry: EncoderEntry, opts: TextOptions) -> TextEncoder:
    """CXR-BERT-specialized with its repository's model code allowed to run (trust_remote_code=True)."""
    return _cxr_bert(entry, opts, trusted=True)
