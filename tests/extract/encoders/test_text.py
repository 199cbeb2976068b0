"""The text encoder: first words, token masks and truncation, mean and CLS pooling against
sentence-transformers, empty reports, and the tokenizer that transformers 5 builds nearly empty."""

from __future__ import annotations

import pytest
import torch
from transformers import BertTokenizerFast

from omnifuse.extract.encoders import TextEncoder, first_words
from omnifuse.extract.images import InputError
from tests.helpers import MAX_TOKENS


def test_text_tokens_mask_and_truncation(text_encoder):
    long = " ".join(f"word{i}" for i in range(100))
    assert first_words(long, 20).split() == [f"word{i}" for i in range(20)]
    texts = [text_encoder.prepare("Heart size normal."), text_encoder.prepare(long)]
    x, tm = text_encoder.encode(texts)
    assert x.shape == (2, MAX_TOKENS, 384) and tm.shape == (2, MAX_TOKENS)
    n0 = len(text_encoder.tokenizer("Heart size normal.")["input_ids"])
    assert int(tm[0].sum()) == n0  # CLS, wordpieces, SEP
    assert int(tm[1].sum()) == MAX_TOKENS  # capped
    assert torch.all(x[0, n0:] == 0)  # padding is zero
    # alone or in a batch: the same vectors on the valid tokens
    x0, _ = text_encoder.encode(texts[:1])
    torch.testing.assert_close(x0[0, :n0], x[0, :n0], rtol=1e-4, atol=1e-4)


def test_text_pooling_mean_and_cls(minilm_path, text_encoder):
    mean = TextEncoder(
        text_encoder.model,
        text_encoder.tokenizer,
        minilm_path,
        pooling="mean",
        max_words=20,
        max_tokens=MAX_TOKENS,
        device="cpu",
        precision="fp32",
    )
    cls = TextEncoder(
        text_encoder.model,
        text_encoder.tokenizer,
        minilm_path,
        pooling="cls",
        max_words=20,
        max_tokens=MAX_TOKENS,
        device="cpu",
        precision="fp32",
    )
    texts = ["no acute process", "small left effusion with atelectasis at the base"]
    tok, tm = text_encoder.encode(texts)
    m, _ = mean.encode(texts)
    c, _ = cls.encode(texts)
    assert m.shape == (2, 384) and mean.shape == (384,)
    ref = (tok * tm[..., None]).sum(1) / tm.sum(1, keepdim=True)
    torch.testing.assert_close(m, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(c, tok[:, 0], rtol=1e-4, atol=1e-5)
    assert mean.weights_hash == text_encoder.weights_hash
    # known answer: sentence-transformers' own pipeline for this model (mean pooling, then L2 norm); imported
    # here, as it takes seconds to import
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(minilm_path, device="cpu").encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(torch.nn.functional.normalize(m, dim=1), st.float().cpu(), rtol=1e-3, atol=1e-4)


def test_text_bad_inputs_and_tokenizer_trap(text_encoder, minilm_path):
    with pytest.raises(InputError, match="empty report"):
        text_encoder.prepare("  \n\t ")
    with pytest.raises(InputError):
        text_encoder.prepare(None)
    bad_tok = BertTokenizerFast(vocab_file=f"{minilm_path}/vocab.txt")
    if len(bad_tok) < 100:  # transformers 5 builds a near-empty vocabulary here
        with pytest.raises(ValueError, match="AutoTokenizer"):
            TextEncoder(text_encoder.model, bad_tok, "x", device="cpu")
