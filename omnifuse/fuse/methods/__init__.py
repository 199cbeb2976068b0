"""The fusion-method registry, full: every method module imported here, explicitly, registers its entries.

Entries (``omnifuse methods`` lists them): OmniFuse (``omnifuse``) with its variants (``dwfuse_only``,
``omnifuse_no_imp``, the ablation rows ``ablation_a`` .. ``ablation_f``) and the baselines (``concat``,
``sum``, ``se_gate``, ``gblend``, ``ogm_ge``, ``pmr``, ``medfuse``, ``mdrop``) and the missing-modality
methods (``drfuse``, ``shaspec``, ``m3care``, ``smil``, ``flexmoe``, ``healnet``, ``muse``, ``umse``). Import
the registry API from here: ``from omnifuse.fuse.methods import build_method, get_method, list_methods, METHODS``;
``parameter_count(name, info, **params)`` gives an entry's trainable parameters (total, encoders, fusion).
"""

from __future__ import annotations

from omnifuse.fuse import reference  # the reference learners logreg and gbm
from omnifuse.fuse.methods import (
    concat,
    drfuse,
    flexmoe,
    gblend,
    healnet,
    m3care,
    mdrop,
    medfuse,
    muse,
    ogm_ge,
    omnifuse,
    pmr,
    se_gate,
    shaspec,
    smil,
    sum,
    umse,
)
from omnifuse.fuse.methods.common import parameter_count
from omnifuse.fuse.registry import (
    METHODS,
    MethodEntry,
    build_method,
    check_params,
    get_method,
    list_methods,
    register_method,
    register_variant,
)

METHOD_MODULES = (
    reference,
    omnifuse,
    concat,
    sum,
    se_gate,
    gblend,
    ogm_ge,
    pmr,
    medfuse,
    mdrop,
    drfuse,
    shaspec,
    m3care,
    smil,
    flexmoe,
    healnet,
    muse,
    umse,
)
"""The modules that register the entries, in the order they are imported."""


__all__ = [
    "METHODS",
    "METHOD_MODULES",
    "MethodEntry",
    "build_method",
    "check_params",
    "get_method",
    "list_methods",
    "parameter_count",
    "register_method",
    "register_variant",
]
