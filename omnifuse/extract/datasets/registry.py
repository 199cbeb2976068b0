"""Adapters by name, for ``omnifuse extract --dataset NAME``.

Modules register their adapters with ``@register_adapter("name")``. ``build_adapter`` imports the known
adapter modules lazily (``manifest``, ``eicu``, ``mimic``): a module whose file does not exist is passed
over; one that exists but fails to import raises its error.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Callable

_ADAPTERS: dict[str, Callable[..., Any]] = {}
ADAPTER_MODULES = ("manifest", "eicu", "mimic")


def register_adapter(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: ``factory(**options) -> Adapter`` becomes available as ``build_adapter(name, **options)``."""

    def deco(factory: Callable[..., Any]) -> Callable[..., Any]:
        if name in _ADAPTERS and _ADAPTERS[name] is not factory:
            raise ValueError(f"adapter {name!r} is already registered by {_ADAPTERS[name]!r}")
        _ADAPTERS[name] = factory
        return factory

    return deco


def _load_modules() -> None:
    for mod in ADAPTER_MODULES:
        full = f"omnifuse.extract.datasets.{mod}"
        if importlib.util.find_spec(full) is None:  # not written (yet): nothing to register
            continue
        importlib.import_module(full)


def list_adapters() -> list[str]:
    """Names that ``build_adapter`` accepts."""
    _load_modules()
    return sorted(_ADAPTERS)


def build_adapter(name: str, **options: Any) -> Any:
    """The adapter registered as ``name``, built with ``options`` (e.g. ``manifest=..., spec=...``)."""
    _load_modules()
    if name not in _ADAPTERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(_ADAPTERS)) or 'none'}")
    return _ADAPTERS[name](**options)
