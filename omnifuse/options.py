"""Options declared once: a configuration is a dataclass, and its fields carry their help, flag and choices.

One declaration gives the defaults, the TOML file's keys, the command-line flags with their help, the type
checks and the JSON saved with what the configuration produced::

    from dataclasses import dataclass
    from omnifuse.options import option, resolve, cli_options, to_json

    @dataclass
    class ExampleConfig:
        \"\"\"Options of an example command.\"\"\"
        task: str = option("mortality", help="Task in the cache.", short="-t")
        folds: int = option(5, help="Patient-grouped folds.")
        device: str = option("auto", help="Where to compute.", choices=("auto", "cpu", "cuda"))
        modalities: list[str] | None = option(None, help="Modalities to use (repeat).", flag="--modality")
        params: dict[str, Any] = option({}, help="Free-form table (file only).", cli=False)

        def __post_init__(self) -> None:          # checks across fields go here
            if self.folds < 1:
                raise ValueError(f"folds must be >= 1, got {self.folds}")

    cfg = resolve(ExampleConfig, "run.toml", folds=3)        # defaults < file < overrides
    cfg = resolve(ExampleConfig, {"folds": 3})               # or a dict, or an ExampleConfig, or None
    json.dumps(to_json(cfg))                                 # JSON-safe: Path -> str, tuple -> list

    @app.command()
    @cli_options(ExampleConfig)                              # below @app.command()
    def example(out: Path = typer.Option(...), **options: Any) -> None:
        cfg = resolve(ExampleConfig, options.pop("config"), **options)

``resolve`` rules: overrides whose value is ``None`` are ignored (a flag not given); unknown keys raise
``ValueError`` naming them and the known ones; values are coerced to the field's type (``int``, ``float``,
``bool``, ``str``, ``Path``, ``list[...]``, ``tuple[...]``, ``dict``, ``X | None``) and checked against
``choices``; a field declared ``required=True`` must end up not ``None``; ``dict`` fields merge key by key
(file, then overrides). The dataclass's own ``__post_init__`` runs last, for checks that span fields.

``cli_options(cls)`` rewrites the command's signature (``__signature__``): the function keeps its own
parameters, and every field with ``cli=True`` (the default; ``dict`` fields are never flags) becomes a
``typer.Option`` named after the field (``--field-name`` unless ``flag=`` says otherwise), defaulting to
``None`` so that a flag not given leaves the file's value; booleans get ``--x/--no-x``; ``list`` fields are
repeatable. With ``config_file=True`` (default) a ``--config FILE.toml`` option arrives as ``config``. The
function receives the flags through ``**options``. ``cli_parameter`` builds one such parameter, and
``with_parameters`` adds parameters built elsewhere (the dataset registry's options, for instance).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import json
import operator
import tomllib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, Union

import typer

T = TypeVar("T")
CommandT = TypeVar("CommandT", bound=Callable[..., Any])

_META_KEY = "omnifuse.option"


@dataclasses.dataclass(frozen=True)
class OptionInfo:
    """What ``option`` attaches to a field: its help, flags, choices, whether it is a flag at all, and
    whether it must be given."""

    help: str
    flag: str | None = None
    short: str | None = None
    choices: tuple[Any, ...] | None = None
    cli: bool = True
    required: bool = False


@dataclasses.dataclass(frozen=True)
class Declared:
    """One option of a configuration class, as ``declared(cls)`` lists it."""

    name: str
    type: Any  # the resolved annotation, e.g. int, Path | None, list[str] | None
    default: Any
    info: OptionInfo

    @property
    def flag(self) -> str:
        return self.info.flag or "--" + self.name.replace("_", "-")


def option(
    default: Any = None,
    *,
    help: str,
    flag: str | None = None,
    short: str | None = None,
    choices: Sequence[Any] | None = None,
    cli: bool = True,
    required: bool = False,
) -> Any:
    """A dataclass field with its option metadata. Mutable defaults (list, dict, set) are copied per instance.

    ``flag`` overrides the flag name (default ``--field-name``), ``short`` adds e.g. ``-t``, ``choices``
    restricts the values, ``cli=False`` keeps it out of the command line (file and overrides only) and
    ``required=True`` makes ``resolve`` fail when it is still ``None``."""
    info = OptionInfo(
        help=help,
        flag=flag,
        short=short,
        choices=tuple(choices) if choices is not None else None,
        cli=cli,
        required=required,
    )
    meta = {_META_KEY: info}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=functools.partial(copy.copy, default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def declared(cls: type) -> list[Declared]:
    """Every field of the configuration class ``cls`` with its resolved type, default and ``OptionInfo``
    (fields declared without ``option`` get an empty help and stay off the command line)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        info = f.metadata.get(_META_KEY) or OptionInfo(help="", cli=False)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        out.append(Declared(f.name, hints[f.name], default, info))
    return out


# ---------------------------------------------------------------------------------------------- resolving


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML configuration file into a dict."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {p} does not exist")
    with p.open("rb") as fh:
        try:
            return tomllib.load(fh)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"config file {p}: {e}") from e


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _split_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (tp, False)."""
    if _is_union(tp):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) < len(typing.get_args(tp)):
            return functools.reduce(operator.or_, args), True
    return tp, False


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise TypeError


def _to_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError
    if isinstance(value, float):
        if not value.is_integer():
            raise TypeError
        return int(value)
    return int(value)


def _to_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError
    return float(value)


def _to_str(value: Any) -> str:
    if not isinstance(value, (str, Path)):
        raise TypeError
    return str(value)


def _to_path(value: Any) -> Path:
    if not isinstance(value, (str, Path)):
        raise TypeError
    return Path(value)


_SCALARS: dict[Any, Callable[[Any], Any]] = {
    bool: _to_bool,
    int: _to_int,
    float: _to_float,
    str: _to_str,
    Path: _to_path,
}


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """``value`` converted to the type ``tp`` of option ``key``; ``ValueError`` naming the key otherwise."""
    inner, optional = _split_optional(tp)
    if value is None:
        if optional or tp is Any:
            return None
        raise ValueError(f"option {key!r} may not be empty (None)")
    origin, args = typing.get_origin(inner), typing.get_args(inner)
    bad = ValueError(f"option {key!r} expects {getattr(inner, '__name__', inner)}, got {value!r}")
    if inner in _SCALARS:
        try:
            return _SCALARS[inner](value)
        except (TypeError, ValueError):
            raise bad from None
    if origin in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise bad
        if origin is tuple and args and args[-1] is not Ellipsis:  # fixed length: tuple[float, float]
            if len(value) != len(args):
                raise ValueError(f"option {key!r} expects {len(args)} values, got {value!r}")
            return tuple(_coerce(f"{key}[{i}]", v, t) for i, (v, t) in enumerate(zip(value, args, strict=True)))
        items = [_coerce(f"{key}[{i}]", v, args[0] if args else Any) for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if _is_union(inner):  # the first member that takes the value: Path | dict reads "a.toml" as a Path
        for member in args:
            try:
                return _coerce(key, value, member)
            except ValueError:
                continue
        raise bad
    if origin is dict or inner is dict:
        if not isinstance(value, Mapping):
            raise bad
        return dict(value)
    if origin is typing.Literal and value not in args:
        raise ValueError(f"option {key!r} must be one of {list(args)}, got {value!r}")
    return value


def _as_dict(config: Any, cls: type) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, cls):
        return {f.name: getattr(config, f.name) for f in dataclasses.fields(cls)}
    if isinstance(config, (str, Path)):
        return load_toml(config)
    if isinstance(config, Mapping):
        return dict(config)
    raise TypeError(f"config must be None, a path, a dict or a {cls.__name__}, got {type(config).__name__}")


def resolve(cls: type[T], config: Any = None, **overrides: Any) -> T:
    """The configuration ``cls`` from defaults < ``config`` (None, a TOML path, a dict or an instance) <
    ``overrides`` (``None`` values ignored). Raises ``ValueError`` for unknown keys, values of the wrong type,
    values outside ``choices`` and required options left empty."""
    decl = {d.name: d for d in declared(cls)}
    base = _as_dict(config, cls)
    over = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted((set(base) | set(over)) - set(decl))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} option(s): {', '.join(unknown)}; known: {', '.join(sorted(decl))}")
    merged: dict[str, Any] = {}
    for name, d in decl.items():
        if name in base and name in over and isinstance(base[name], Mapping) and isinstance(over[name], Mapping):
            value: Any = {**base[name], **over[name]}
        else:
            value = over.get(name, base.get(name, d.default))
        value = _coerce(name, value, d.type)
        if d.info.choices is not None and value is not None and value not in d.info.choices:
            raise ValueError(f"option {name!r} must be one of {', '.join(map(str, d.info.choices))}, got {value!r}")
        if d.info.required and value is None:
            raise ValueError(f"option {name!r} ({d.flag}) is required")
        merged[name] = value
    return cls(**merged)


def to_json(value: Any) -> Any:
    """A configuration (or any nesting of dataclasses, dicts, lists, paths) as JSON-safe values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_json(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def save(config: Any, path: str | Path) -> Path:
    """Write ``to_json(config)`` to ``path`` (indented JSON); returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(to_json(config), indent=2) + "\n")
    return p


# ---------------------------------------------------------------------------------------------- command line


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or "none"
    return str(value)


def cli_help(help: str, default: Any = None, choices: Sequence[Any] | None = None) -> str:
    """The help of a generated flag: the declared help, the choices and the default (in parentheses:
    typer renders square brackets as markup)."""
    parts = [help.rstrip()]
    if choices:
        parts.append(f"One of: {', '.join(map(str, choices))}.")
    if default is not None and default != [] and default != ():
        parts.append(f"(default: {_show(default)})")
    return " ".join(p for p in parts if p)


def cli_parameter(
    name: str, tp: Any, help: str, flag: str | None = None, short: str | None = None
) -> inspect.Parameter:
    """A keyword-only parameter whose default is a ``typer.Option(None, ...)`` for an option of type ``tp``:
    ``bool`` becomes ``--x/--no-x``, ``list[X]`` a repeatable option, ``tuple[X, Y]`` an option taking two
    values, a union its first member (``Path | dict`` -> a path), anything else ``X | None``."""
    inner, _ = _split_optional(tp)
    while _is_union(inner):
        inner = typing.get_args(inner)[0]
    decl = flag or "--" + name.replace("_", "-")
    decls = [f"{decl}/--no-{decl.lstrip('-')}"] if inner is bool else [decl]
    if short:
        decls.append(short)
    origin, args = typing.get_origin(inner), typing.get_args(inner)
    if origin is list or (origin is tuple and (not args or args[-1] is Ellipsis)):
        annotation: Any = list[args[0] if args else str] | None  # type: ignore[misc]
    else:
        annotation = inner | None
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        annotation=annotation,
        default=typer.Option(None, *decls, help=help, show_default=False),
    )


def cli_parameters(cls: type, exclude: Sequence[str] = ()) -> list[inspect.Parameter]:
    """The command-line parameters of the configuration class ``cls`` (fields with ``cli=True`` that are not
    ``dict`` fields and not in ``exclude``)."""
    out = []
    for d in declared(cls):
        inner, _ = _split_optional(d.type)
        if not d.info.cli or d.name in exclude or inner is dict or typing.get_origin(inner) is dict:
            continue
        out.append(
            cli_parameter(d.name, d.type, cli_help(d.info.help, d.default, d.info.choices), d.info.flag, d.info.short)
        )
    return out


CONFIG_HELP = "TOML file of options (keys are the option names with underscores); flags override it."


def with_parameters(params: Sequence[inspect.Parameter], config_file: bool = False) -> Callable[[CommandT], CommandT]:
    """Decorator: the function's signature gains ``params`` (passed to it through its ``**kwargs``), and with
    ``config_file`` a ``--config`` option named ``config`` unless the function declares one."""

    def deco(fn: CommandT) -> CommandT:
        sig = inspect.signature(fn)
        own = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        if len(own) == len(sig.parameters):
            raise TypeError(f"{fn.__name__} needs **kwargs to receive the generated options")
        names = {p.name for p in own}
        extra = list(params)
        if config_file and "config" not in names:
            extra.insert(0, cli_parameter("config", Path | None, CONFIG_HELP, "--config"))
        clash = sorted(names & {p.name for p in extra})
        if clash:
            raise TypeError(f"{fn.__name__} declares {clash} itself and also receives them as generated options")
        fn.__signature__ = sig.replace(parameters=[*own, *extra])  # type: ignore[attr-defined]
        return fn

    return deco


def cli_options(cls: type, exclude: Sequence[str] = (), config_file: bool = True) -> Callable[[CommandT], CommandT]:
    """Decorator for a typer command: every command-line field of ``cls`` becomes a flag (see the module
    docstring); place it below ``@app.command()``."""
    return with_parameters(cli_parameters(cls, exclude), config_file=config_file)
