"""The encoder registry, in the timm style: every named stage-one encoder is one ``EncoderEntry``, declared
with ``@register_encoder`` on its builder in the family's module (``image``, ``text``, ``volume``), which
``omnifuse.extract.encoders`` imports explicitly.

An entry states its name and aliases, family, source (hub id, local folder, ``random``...), the builder, the
per-row output shape for each pooling, the preprocessing at the default options and the licence of the
weights. A name that is not registered (any hub id or local folder transformers loads) still builds: the
family's ``build_*`` function makes an unregistered entry for it on the fly, with licence
``UNKNOWN_LICENCE``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from torch import nn

from omnifuse.extract.encoders.base import (
    RANDOM_LICENCE,
    RANDOM_SOURCE,
    UNKNOWN_LICENCE,
    Encoder,
    random_init_note,
    seeded,
)

FAMILIES = ("image", "text", "volume")
# the option each symbolic dimension of an output shape stands for
SHAPE_SIZES = {
    "max_tokens": "text tokens kept per report (--max-tokens, capped by the model's positions)",
    "max_slices": "slices kept per volume (--max-slices)",
    "image_dim": "output size of the image encoder the volume is sliced through",
}

Builder = Callable[..., Encoder]
BuilderT = TypeVar("BuilderT", bound=Builder)
ModuleT = TypeVar("ModuleT", bound=nn.Module)


@dataclass(frozen=True)
class EncoderEntry:
    """One encoder of the registry.

    ``output_shapes``: pooling -> per-row shape, whose items are sizes or names of ``SHAPE_SIZES`` (e.g. text
    ``{"tokens": ("max_tokens", 768), "mean": (768,), "cls": (768,)}``); the first pooling is the default.
    ``preprocessing``: the attributes the built encoder reports at the default options (a subset of its
    ``preprocessing()``). ``registered``: False for an entry made on the fly for an unregistered name.
    """

    name: str
    family: str
    source: str
    licence: str
    builder: Builder
    output_shapes: Mapping[str, tuple[int | str, ...]] = field(default_factory=dict)
    preprocessing: Mapping[str, object] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    description: str = ""
    registered: bool = True

    @property
    def poolings(self) -> tuple[str, ...]:
        """The poolings the encoder offers, the default first."""
        return tuple(self.output_shapes)

    def output_shape(self, pooling: str | None = None, **sizes: int) -> tuple[int, ...]:
        """The per-row shape for ``pooling`` (default: the first), symbolic sizes taken from ``sizes``.

        ``get_encoder_entry("minilm").output_shape("tokens", max_tokens=256)`` -> ``(256, 384)``.
        """
        if not self.output_shapes:
            raise ValueError(f"encoder {self.name!r} is not registered: its output shape is known once built")
        pooling = self.poolings[0] if pooling is None else pooling
        if pooling not in self.output_shapes:
            raise ValueError(f"encoder {self.name!r} has no pooling {pooling!r}; it has {list(self.poolings)}")
        out = []
        for d in self.output_shapes[pooling]:
            if isinstance(d, str):
                if d not in sizes:
                    raise ValueError(f"encoder {self.name!r}, pooling {pooling!r}: give the size {d!r}")
                out.append(int(sizes[d]))
            else:
                out.append(int(d))
        return tuple(out)

    def shape_text(self) -> str:
        """The output shapes for display: ``tokens: max_tokens x 768, mean: 768, cls: 768``."""
        if not self.output_shapes:
            return "known once built"
        shapes = {p: " x ".join(str(d) for d in s) for p, s in self.output_shapes.items()}
        if len(shapes) == 1:
            return next(iter(shapes.values()))
        return ", ".join(f"{p}: {s}" for p, s in shapes.items())


# name -> entry, and every name and alias (lower case) -> name
ENCODERS: dict[str, EncoderEntry] = {}
ENCODER_NAMES: dict[str, str] = {}


def add_encoder(entry: EncoderEntry) -> EncoderEntry:
    """Register ``entry``; its family must be one of ``FAMILIES`` and its name and aliases new."""
    if entry.family not in FAMILIES:
        raise ValueError(f"encoder {entry.name!r}: family must be one of {FAMILIES}, got {entry.family!r}")
    if not entry.output_shapes:
        raise ValueError(f"encoder {entry.name!r}: a registered encoder declares its output shapes")
    for shape in entry.output_shapes.values():
        unknown = [d for d in shape if isinstance(d, str) and d not in SHAPE_SIZES]
        if unknown:
            raise ValueError(f"encoder {entry.name!r}: unknown shape sizes {unknown}; known: {sorted(SHAPE_SIZES)}")
    for key in (entry.name, *entry.aliases):
        taken = ENCODER_NAMES.get(key.lower())
        if taken is not None and taken != entry.name:
            raise ValueError(f"encoder name {key!r} is already registered for {taken!r}")
    ENCODERS[entry.name] = entry
    for key in (entry.name, *entry.aliases):
        ENCODER_NAMES[key.lower()] = entry.name
    return entry


def register_encoder(
    name: str,
    *,
    family: str,
    source: str,
    licence: str,
    output_shapes: Mapping[str, tuple[int | str, ...]],
    preprocessing: Mapping[str, object],
    aliases: tuple[str, ...] = (),
    description: str = "",
) -> Callable[[BuilderT], BuilderT]:
    """Decorator registering the builder it wraps as the encoder ``name`` (see ``EncoderEntry``).

    The builder is called as ``builder(entry, options)`` with the family's options (``ImageOptions``,
    ``TextOptions``, ``VolumeOptions``). ``description`` defaults to the first line of its docstring.
    """

    def register(builder: BuilderT) -> BuilderT:
        add_encoder(
            EncoderEntry(
                name=name,
                family=family,
                source=source,
                licence=licence,
                builder=builder,
                output_shapes=dict(output_shapes),
                preprocessing=dict(preprocessing),
                aliases=tuple(aliases),
                description=description or (builder.__doc__ or "").strip().split("\n")[0],
            )
        )
        return builder

    return register


def find_encoder_entry(name: str) -> EncoderEntry | None:
    """The entry registered under ``name`` or one of its aliases (any case), else None."""
    key = ENCODER_NAMES.get(str(name).lower())
    return None if key is None else ENCODERS[key]


def get_encoder_entry(name: str) -> EncoderEntry:
    """The entry registered under ``name`` or one of its aliases (any case); ``KeyError`` otherwise."""
    entry = find_encoder_entry(name)
    if entry is None:
        raise KeyError(f"encoder {name!r} is not registered; registered: {sorted(ENCODERS)}")
    return entry


def list_encoders(family: str | None = None) -> list[EncoderEntry]:
    """Registered entries, by family then name; only ``family``'s when given."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"encoder family must be one of {FAMILIES}, got {family!r}")
    entries = [e for e in ENCODERS.values() if family is None or e.family == family]
    return sorted(entries, key=lambda e: (FAMILIES.index(e.family), e.name))


def entry_for(name: str, family: str, builder: Builder) -> EncoderEntry:
    """The registered ``family`` entry for ``name``, or an unregistered one built by ``builder`` (a hub id or
    local folder: source ``name``, licence ``UNKNOWN_LICENCE``). A name registered in another family raises."""
    entry = find_encoder_entry(name)
    if entry is None:
        return EncoderEntry(
            name=name, family=family, source=name, licence=UNKNOWN_LICENCE, builder=builder, registered=False
        )
    if entry.family != family:
        names = [e.name for e in list_encoders(family)]
        raise ValueError(f"encoder {name!r} is a {entry.family} encoder; the registered {family} encoders: {names}")
    return entry


@dataclass(frozen=True)
class Weights(Generic[ModuleT]):
    """A built model and where its weights came from: ``source``, ``licence`` and, for random weights, the
    preprocessing note ``{"init": "random(seed=N)"}`` (``init``, empty for pretrained weights)."""

    model: ModuleT
    source: str
    licence: str
    init: dict[str, str]


def entry_weights(
    entry: EncoderEntry,
    make: Callable[[], ModuleT] | None,
    make_random: Callable[[], ModuleT],
    *,
    pretrained: bool,
    seed: int,
) -> Weights[ModuleT]:
    """An entry's model: ``make()`` (its pretrained weights, from ``entry.source``) when ``pretrained`` and
    ``make`` is given, else ``make_random()`` (the same architecture) under ``torch.manual_seed(seed)``."""
    if pretrained and make is not None:
        return Weights(make(), entry.source, entry.licence, {})
    return Weights(seeded(seed, make_random), RANDOM_SOURCE, RANDOM_LICENCE, random_init_note(seed))
