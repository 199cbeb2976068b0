"""Reading the authors' weight files without the authors' libraries, and loading them under a key mapping.

``read_state_dict(path)`` returns ``{name: tensor}`` from

- a ``.safetensors`` file;
- a state dict saved with ``torch.save`` (open_clip's ``open_clip_pytorch_model.bin``), read with
  ``torch.load(weights_only=True)``;
- a whole pickled module (torchxrayvision's ``*-densenet121-*.pt`` files, which torchxrayvision itself reads with
  ``weights_only=False`` and ``savedmodel.state_dict()`` in ``models.DenseNet.__init__``). These reference the
  classes of the code that saved them (``torchxrayvision.models.DenseNet``, torchvision's DenseNet layers),
  which need torchvision, and unpickling runs whatever the file names. :class:`RestrictedUnpickler` reads them
  without either: it resolves only torch's own module classes, tensor rebuilders, storages, ``OrderedDict`` and
  a few builtins; a class of the packages in :data:`STUB_PACKAGES` becomes a bare ``nn.Module`` whose
  parameters and buffers are read like any other; any other global (``os.system``...) is refused.

A wrapper such as ``{"state_dict": {...}}`` or ``{"model": {...}}`` is unwrapped, and a ``module.`` prefix that
every key carries (``DataParallel``) is removed. ``load_mapped(model, state, what)`` then loads a state dict
strictly: every model key present, no key left over, apart from the keys the caller names as optional or
ignorable; otherwise one ``ValueError`` naming the file and the first keys.
"""

from __future__ import annotations

import importlib
import pickle
import types
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

STUB_PACKAGES = frozenset({"torchxrayvision", "torchvision", "__main__"})
"""Packages whose classes a pickled module may reference: read as bare ``nn.Module``s (their code is not run)."""

_BUILTINS = frozenset({"set", "frozenset", "dict", "list", "tuple", "int", "float", "bool", "str", "slice"})
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}
_NUMPY = frozenset(
    {
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
    }
)


class PickledModule(nn.Module):
    """Stands for a module class of the code that saved a checkpoint (``torchxrayvision.models.DenseNet``...):
    unpickling sets its ``__dict__`` (``_modules``, ``_parameters``, ``_buffers``) and nothing of that code runs,
    so ``state_dict()`` gives the saved tensors."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if "_non_persistent_buffers_set" not in self.__dict__:  # modules pickled by torch < 1.6
            self._non_persistent_buffers_set: set[str] = set()

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - never called
        raise RuntimeError("a module read from a pickled checkpoint only holds its tensors")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only what a pickled torch module needs (see the module docstring)."""

    def find_class(self, module: str, name: str) -> Any:
        module = _PY2_MODULES.get(module, module)  # protocol-2 pickles name builtins as Python 2 did
        root = module.split(".")[0]
        if root in STUB_PACKAGES:
            return types.new_class(name, (PickledModule,), exec_body=lambda ns: ns.update({"__module__": module}))
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "builtins" and name in _BUILTINS:
            return super().find_class(module, name)
        if (module, name) in _NUMPY:
            return super().find_class(module, name)
        if module == "torch._utils" and name.startswith("_rebuild_"):
            return super().find_class(module, name)
        if module == "torch.nn.parameter" and name == "Parameter":
            return nn.Parameter
        if module == "torch" and (name in ("Size", "device") or isinstance(getattr(torch, name, None), torch.dtype)):
            return getattr(torch, name)
        if module.startswith("torch.nn.modules."):
            obj = getattr(importlib.import_module(module), name, None)
            if isinstance(obj, type) and issubclass(obj, nn.Module):
                return obj
        raise pickle.UnpicklingError(f"refused global {module}.{name}: only torch modules and tensors are read")


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


# the ``pickle_module`` given to torch.load: its Unpickler (zip and legacy formats) and load (legacy headers)
RESTRICTED_PICKLE = types.ModuleType("omnifuse_restricted_pickle")
RESTRICTED_PICKLE.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
RESTRICTED_PICKLE.load = _restricted_load  # type: ignore[attr-defined]


def _tensors(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """A loaded checkpoint -> ``{name: tensor}``: a module's state dict, a state dict, or one under a
    ``state_dict`` / ``model`` key."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        out = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if out and len(out) == len(obj):
            return out
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, (Mapping, nn.Module)):
                return _tensors(inner, path)
        if out:
            return out
    raise ValueError(f"{path}: holds no state dict of tensors (found {type(obj).__name__})")


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """``state`` without ``prefix`` on its keys when every key carries it (``module.`` of ``DataParallel``)."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weight file (safetensors, a saved state dict, or a pickled module), on the CPU.

    A pickled module is read by :class:`RestrictedUnpickler`: torchvision and torchxrayvision need not be
    installed and no code of theirs, nor anything else the file names, runs. Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: weight file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return strip_prefix(load_file(str(path)), "module.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # a pickled module: weights_only refuses its classes
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=RESTRICTED_PICKLE)
        except pickle.UnpicklingError as e:
            raise ValueError(f"{path}: {e}") from e
    except (RuntimeError, EOFError, OSError) as e:
        raise ValueError(f"{path}: unreadable weight file ({type(e).__name__}: {e})") from e
    return strip_prefix(_tensors(obj, path), "module.")


def _first(keys: Iterable[str], n: int = 5) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_mapped(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    what: str,
    *,
    optional: Callable[[str], bool] = lambda key: False,
    ignored: Callable[[str], bool] = lambda key: False,
) -> None:
    """Load ``state`` (already in ``model``'s key names) into ``model`` strictly.

    ``optional(key)``: a model key the file may lack (BatchNorm's ``num_batches_tracked`` in files saved before
    torch 0.4.1; it keeps its initial value). ``ignored(key)``: a file key that is not the model's (the other
    tower of a CLIP checkpoint, ``logit_scale``). Anything else missing or left over, or a shape that differs,
    raises one ``ValueError`` naming ``what`` (the file) and the first keys."""
    kept = {k: v for k, v in state.items() if not ignored(k)}
    own = model.state_dict()
    missing = [k for k in own if k not in kept and not optional(k)]
    unexpected = [k for k in kept if k not in own]
    if missing or unexpected:
        parts = [f"missing {len(missing)} keys ({_first(missing)})"] if missing else []
        parts += [f"{len(unexpected)} unexpected keys ({_first(unexpected)})"] if unexpected else []
        raise ValueError(f"{what}: does not match the architecture: {'; '.join(parts)}")
    wrong = [f"{k} {tuple(v.shape)} != {tuple(own[k].shape)}" for k, v in kept.items() if v.shape != own[k].shape]
    if wrong:
        raise ValueError(f"{what}: shapes differ from the architecture: {_first(wrong, 3)}")
    model.load_state_dict(kept, strict=False)
