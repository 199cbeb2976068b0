"""The fusion-method registry (timm style): entries by name, each a network builder with its defaults.

Method modules register themselves with :func:`register_method` (a decorator on the method's class, or on
any builder ``fn(info: ModelInfo, **params) -> FusionMethod``) and :func:`register_variant` (a named set of
parameters on top of a registered method, e.g. ``dwfuse_only``). :mod:`omnifuse.fuse.methods` imports every
method module explicitly and exports this module's API: import it from there, so the registry is full.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from omnifuse.fuse.base import FusionMethod, ModelInfo

EntryKind = Literal["method", "variant", "reference"]
Builder = TypeVar("Builder", bound=Callable[..., FusionMethod])


@dataclass(frozen=True)
class MethodEntry:
    """One registry entry.

    ``build(info, **params)`` makes the network; ``defaults`` are every parameter the entry sets (a variant:
    its base's defaults, then its own ``params``); ``base`` is the registered method whose network it builds
    (its own name for a method); ``kind`` is ``"method"`` or ``"variant"``; ``params`` are a variant's own
    parameters on top of the base's defaults (empty for a method).
    """

    name: str
    build: Callable[..., Any]
    description: str
    paper: str
    defaults: dict[str, Any]
    base: str
    kind: EntryKind
    params: dict[str, Any]


METHODS: dict[str, MethodEntry] = {}


def _add(entry: MethodEntry) -> None:
    if entry.name in METHODS:
        raise ValueError(f"fusion method {entry.name!r} is registered twice")
    METHODS[entry.name] = entry


def register_method(
    name: str, *, description: str, paper: str, defaults: dict[str, Any] | None = None
) -> Callable[[Builder], Builder]:
    """Register a builder (a :class:`FusionMethod` subclass or ``fn(info, **params)``) under ``name``;
    returns it unchanged. ``defaults`` are the parameters ``build_method`` passes unless overridden."""

    def deco(build: Builder) -> Builder:
        _add(MethodEntry(name, build, description, paper, dict(defaults or {}), name, "method", {}))
        return build

    return deco


def register_reference(name: str, build: Callable[..., Any], *, description: str, paper: str) -> MethodEntry:
    """Register a reference learner (not a network: ``build(info, **params)`` returns an object with
    ``fit(data, rows, normalizer)`` and ``predict_proba(data, rows, normalizer, mask)``, see
    :mod:`omnifuse.fuse.reference`). Reference learners run on the same folds, rows and masks as the methods
    (:func:`omnifuse.fuse.fold.run_fold`), so every table treats them alike."""
    entry = MethodEntry(name, build, description, paper, {}, name, "reference", {})
    _add(entry)
    return entry


def register_variant(
    name: str, base: str, params: dict[str, Any], *, description: str, paper: str | None = None
) -> MethodEntry:
    """Register ``name`` as ``base`` (a registered entry) with ``params`` on top of its defaults. The variant
    builds its base's network (a variant of a variant: the same network, both sets of parameters);
    ``paper`` defaults to the base's. A parameter the network does not take raises when it is built."""
    if base not in METHODS:
        raise KeyError(f"variant {name!r}: base method {base!r} is not registered (register it first)")
    b = METHODS[base]
    own = {**b.params, **params}
    entry = MethodEntry(
        name, b.build, description, b.paper if paper is None else paper, {**b.defaults, **own}, b.base, "variant", own
    )
    _add(entry)
    return entry


def get_method(name: str) -> MethodEntry:
    """The entry registered under ``name`` (a method or a variant); ``KeyError`` naming the known ones."""
    if name not in METHODS:
        raise KeyError(f"unknown fusion method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def method_parameters(name: str) -> list[str] | None:
    """The parameter names entry ``name``'s builder takes (None when it takes any keyword)."""
    sig = inspect.signature(get_method(name).build)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return [p for p in sig.parameters if p not in ("self", "info")]


def check_params(name: str, params: dict[str, Any]) -> None:
    """``ValueError`` naming the parameters of ``params`` that entry ``name`` does not take, and its own."""
    known = method_parameters(name)
    unknown = sorted(set(params) - set(known)) if known is not None else []
    if unknown:
        raise ValueError(
            f"fusion method {name!r} has no parameter {', '.join(map(repr, unknown))}; "
            f"its parameters: {', '.join(known or [])}"
        )


def build_method(name: str, info: ModelInfo, **params: Any) -> FusionMethod:
    """The network of entry ``name`` for ``info``: its defaults, then ``params`` (an unknown parameter raises
    ``ValueError`` naming it and the known ones)."""
    entry = get_method(name)
    check_params(name, params)
    return entry.build(info, **{**entry.defaults, **params})


def list_methods(kind: EntryKind | None = None) -> list[str]:
    """Registered names, sorted; only those of ``kind`` (``"method"``, ``"variant"`` or ``"reference"``) when
    given."""
    return sorted(n for n, e in METHODS.items() if kind is None or e.kind == kind)
