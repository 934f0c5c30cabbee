"""Typed configs: YAML recipes validated against dataclasses, ``a.b=value`` overrides, clear errors.

Every component owns a ``@dataclass`` config with its defaults (in the component's own file); this module only
reads, validates and writes them. An unknown key is rejected with its full path, the valid keys and the closest
match; a value of the wrong type names the expected type. Values are parsed with a YAML SafeLoader, never ``eval``.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Union

import re

import yaml


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 scalars: ``1e-4`` is a float (YAML 1.1 needs a dot, and a learning rate silently
    read as the string "1e-4" is a classic recipe bug), and only true/false are booleans (YAML 1.1 also reads
    yes/no/on/off, so ``mixed_precision: no`` would arrive as False)."""


# copy the resolver table before editing it: SafeLoader's own table must stay as it is
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def safe_load(text: str, source: str = "YAML text") -> Any:
    """Parse YAML without ever constructing Python objects (no eval, no tags). Invalid YAML, and tags such as
    ``!!python/object`` (which SafeLoader refuses to build), raise a one-line :class:`ConfigError` naming ``source``
    and the line/column."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.constructor.ConstructorError as err:
        raise ConfigError(f"{source}: {_yaml_where(err)}YAML tag {_tag_of(err)} is not allowed; recipes hold plain "
                          "mappings, lists, numbers and strings only (tags that build Python objects are refused)"
                          ) from None
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{source}: invalid YAML: {_yaml_where(err)}{problem}; check brackets, quotes and "
                          "indentation (quote a value that holds ': ' or starts with '[', '{', '!' or '&')") from None


def _yaml_where(err: Exception) -> str:
    mark = getattr(err, "problem_mark", None)
    return f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""


def _tag_of(err: Exception) -> str:
    found = re.search(r"tag '([^']*)'", str(getattr(err, "problem", "")))
    return repr(found.group(1)) if found else "(unknown)"


class ConfigError(ValueError):
    """A recipe or override that does not fit the configs; the message says what is wrong and how to fix it."""


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def unknown_key_error(path: str, key: str, valid: list[str]) -> ConfigError:
    where = f"{path}.{key}" if path else key
    return ConfigError(f"unknown key {where!r}.{_suggest(key, valid)} Valid keys here: {', '.join(sorted(valid))}")


@dataclasses.dataclass(frozen=True)
class Section:
    """A validated registry section of a recipe: the entry's name (model kind, method or dataset name) and its typed
    config dataclass. Recipes are validated once into sections; everything downstream builds from them."""

    name: str
    config: Any


def registry_entry(table: Mapping[str, tuple[str, str, str]], selector: str, name: str, path: str) -> tuple[type, Any]:
    """(config class, factory) of entry ``name`` in a lazy registry ``{name: (module, config class, factory)}``.

    Modules are imported on use, so optional dependencies (diffusers, ...) load only for the entries a recipe names.
    An unknown name raises the unknown-key error listing ``selector=<name>`` for every entry.
    """
    if name not in table:
        raise unknown_key_error(path, f"{selector}={name}", [f"{selector}={k}" for k in table])
    module, cfg_name, factory = table[name]
    mod = importlib.import_module(module)
    return getattr(mod, cfg_name), getattr(mod, factory)


def typed_section(table: Mapping[str, tuple[str, str, str]], selector: str, spec: Any, path: str) -> tuple[str, Any]:
    """Validate a ``{<selector>: name, **fields}`` recipe section against its registry; returns (name, config)."""
    if not isinstance(spec, dict) or selector not in spec:
        raise ConfigError(f"{path} needs a `{selector}`: one of {', '.join(table)}")
    cfg_cls, _ = registry_entry(table, selector, spec[selector], path)
    return spec[selector], from_dict(cfg_cls, {k: v for k, v in spec.items() if k != selector}, path)


def from_dict(cls: type, data: Mapping[str, Any] | None, path: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, validating keys and types recursively."""
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or cls.__name__} must be a mapping of keys to values, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise unknown_key_error(path, str(key), names)
        kwargs[key] = coerce(value, hints[key], f"{path}.{key}" if path else str(key))
    missing = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{path or cls.__name__}: missing required key(s) {', '.join(missing)}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:      # a config's own __post_init__ check
        raise ConfigError(f"{path or cls.__name__}: {err}") from None


def coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against type ``tp`` (converting int -> float and lists -> tuples where declared)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else from_dict(tp, value, path)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return coerce(value, option, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {value!r} fits none of {tp}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {', '.join(repr(a) for a in args)}.{_suggest(str(value), [str(a) for a in args])}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ConfigError(f"{path}: expected {len(args)} values, got {len(value)}")
            return tuple(coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        key_t, val_t = args or (Any, Any)
        return {coerce(k, key_t, path): coerce(v, val_t, f"{path}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{path}: expected {tp.__name__}, got {value!r}")
    return value


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain dict/list/scalars (YAML- and JSON-safe)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {str(path)!r} does not exist; `diffdistill ls` lists the shipped recipes")
    data = safe_load(path.read_text(), f"recipe {str(path)!r}") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {str(path)!r} must be a YAML mapping at the top level")
    return data


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["trainer.max_steps=2", "method.lr=1e-4"]`` -> nested dict; values parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value (e.g. trainer.max_steps=100)")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"override {item!r} has an empty key")
        value = safe_load(raw, f"override {item!r}") if raw.strip() else ""
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {part!r}")
        node[parts[-1]] = value
    return out


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``overrides`` into ``base`` (new dict; mappings merge, everything else replaces)."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def dump_yaml(data: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(data), sort_keys=False))
