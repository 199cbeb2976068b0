"""Text batching (``pipeline.text_batches``): each distinct text encoded once, in order of token length, with the
embeddings of encoding the texts in their own order; with the real bundled MiniLM."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from omnifuse.extract.encoders import build_text_encoder
from omnifuse.extract.pipeline import text_batches, text_lengths

LINES = [
    "Neurologic / GCS / Verbal / 5",
    "Cardiovascular / Heart Rate Current: 98",
    "Admission diagnosis: Sepsis, pulmonary",
    "Pulmonary / COPD / COPD - moderate",
    "Past history: hypertension requiring treatment",
    "pneumothorax",
    "cavoatrial",
    "Respiratory / Respiration Rate / Resp Current: 22",
]


def _texts(n: int = 24, seed: int = 0) -> list[str]:
    """Texts of 1 to 16 lines of eICU-like entries (characters and tokens disagree: "a / b / 5" is many tokens
    for its characters), every fourth one a repeat of an earlier one."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    for i in range(n):
        if i % 4 == 3:
            out.append(out[int(rng.integers(0, i))])
        else:
            out.append("\n".join(rng.choice(LINES, size=int(rng.integers(1, 17)))))
    return out


def _input_order(enc, texts, b):
    """The embeddings of batches in the texts' own order, each padded to its longest (no sorting)."""
    xs, ms = [], []
    for a in range(0, len(texts), b):
        x, m = enc.encode(texts[a : a + b])
        xs.append(x)
        ms.append(m)
    return torch.cat(xs), None if ms[0] is None else torch.cat(ms)


def _by_text_batches(enc, texts, b):
    x = [None] * len(texts)
    m = [None] * len(texts)
    for rows, bx, bm in text_batches(enc, texts, b):
        for j, group in enumerate(rows):
            for i in group:
                x[i] = bx[j]
                m[i] = None if bm is None else bm[j]
    assert all(t is not None for t in x)  # every position filled
    return torch.stack(x), None if m[0] is None else torch.stack(m)


def _minilm(path: str, pooling: str):
    return build_text_encoder(path, pooling=pooling, max_words=150, max_tokens=96, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def minilm_tokens(minilm_path):
    return _minilm(minilm_path, "tokens")


@pytest.fixture(scope="module")
def minilm_mean(minilm_path):
    return _minilm(minilm_path, "mean")


@pytest.mark.parametrize("pooling", ["tokens", "mean"])
def test_sorted_and_deduplicated_batches_give_the_input_order_embeddings(pooling, request):
    minilm = request.getfixturevalue(f"minilm_{pooling}")
    texts = [minilm.prepare(t) for t in _texts()]
    ref, ref_mask = _input_order(minilm, texts, 6)
    items = minilm.items
    got, mask = _by_text_batches(minilm, texts, 6)
    assert minilm.items - items == len(set(texts)) < len(texts)  # each distinct text encoded once
    per_row = (got - ref).abs().reshape(len(texts), -1).max(1).values
    assert float(per_row.max()) < 1e-5, per_row
    if ref_mask is not None:
        assert torch.equal(mask, ref_mask)
    assert float(ref.abs().max()) > 0.1  # embeddings, not zeros


def test_batches_go_by_token_length_which_is_what_encode_pads(minilm_tokens):
    minilm = minilm_tokens
    texts = [minilm.prepare(t) for t in _texts(seed=1)]
    lengths = text_lengths(minilm, texts)
    _, mask = minilm.encode(texts[:4])  # the lengths are the tokens encode gives the model
    assert mask.sum(1).tolist() == lengths[:4] and max(lengths) == minilm.max_tokens > min(lengths)
    calls: list[list[str]] = []

    def encode(batch):  # the real tokenizer, no forward: only the order is looked at here
        calls.append(batch)
        return torch.zeros(len(batch), 2), None

    enc = types.SimpleNamespace(tokenizer=minilm.tokenizer, max_tokens=minilm.max_tokens, encode=encode)
    rows = [group for groups, _, _ in text_batches(enc, texts, 5) for group in groups]
    assert [len(c) for c in calls] == [5] * (len(calls) - 1) + [len(calls[-1])] and len(calls[-1]) <= 5
    flat = [lengths[group[0]] for group in rows]
    assert flat == sorted(flat)  # non-decreasing token length across and within batches
    assert sorted(i for group in rows for i in group) == list(range(len(texts)))  # every position once
    assert all(len({texts[i] for i in group}) == 1 for group in rows)  # a group is one text's positions
    # characters would have ordered them otherwise: these texts are where the two disagree
    distinct = list(dict.fromkeys(texts))
    by_chars = sorted(range(len(distinct)), key=lambda k: len(distinct[k]))
    assert [text_lengths(minilm, [distinct[k]])[0] for k in by_chars] != flat


def test_lengths_fall_back_to_characters_when_the_tokenizer_cannot_say():
    def broken(*a, **k):
        raise TypeError("not a transformers tokenizer")

    enc = types.SimpleNamespace(tokenizer=broken, max_tokens=16)
    assert text_lengths(enc, ["ab", "abcd"]) == [2, 4]  # type: ignore[arg-type]
