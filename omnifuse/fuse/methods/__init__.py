"""The fusion-method registry: importing this package registers every method module present.

OmniFuse lives here; the baselines (concat, sum, se_gate, gblend, ogm_ge, pmr, medfuse, mdrop) are added by
their own modules and imported when their file exists.
"""

from __future__ import annotations

import importlib
import importlib.util

from omnifuse.fuse.base import METHODS, build_method, get_method, register_method

METHOD_MODULES = ("omnifuse", "concat", "sum", "se_gate", "gblend", "ogm_ge", "pmr", "medfuse", "mdrop")

for _name in METHOD_MODULES:
    if importlib.util.find_spec(f"{__name__}.{_name}") is not None:
        importlib.import_module(f"{__name__}.{_name}")

__all__ = ["METHODS", "METHOD_MODULES", "build_method", "get_method", "register_method"]
