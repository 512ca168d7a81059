"""The generic machinery of typed, frozen, documented config dataclasses: field declaration with its doc, checked
coercion from YAML / ``--set`` values with errors that name the field, deep merges and ``--help`` rows.

Every config section (``scaling.model.config``, ``scaling.config``, sweep files) is built on this module, which
imports nothing from the project.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import field, fields
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


def _f(default: Any, doc: str, **kw: Any) -> Any:
    """A dataclass field with its documentation (the one place a field is described; ``--help`` prints it)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"doc": doc, **kw})
    return field(default=default, metadata={"doc": doc, **kw})


def _positive(obj: Any, where: str, *names: str) -> None:
    for name in names:
        v = getattr(obj, name)
        if not v > 0:
            raise ConfigError(f"{where}.{name} must be > 0, got {v}")


def not_allowed(where: str, value: Any, allowed) -> ConfigError:
    """The error for a value outside a fixed set (a Literal field, a registry's names)."""
    return ConfigError(f"{where}: {value!r} is not allowed; allowed values: {', '.join(repr(a) for a in allowed)}")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert it (ints to floats, dicts to dataclasses)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise not_allowed(where, value, allowed)
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping (section), got {value!r}")
        return from_dict(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, float) and value.is_integer():  # 1e6 in YAML
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
            if f.is_integer():
                return int(f)
        if not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, str):  # YAML reads "3e-4" as a string
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return list(value)
    if tp is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Build the frozen dataclass ``cls`` from a plain dict, naming the offending field on any error."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    data = dict(data)
    unknown = sorted(set(data) - known)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown field {prefix}{unknown[0]}; allowed fields{' of ' + where if where else ''}: {', '.join(sorted(known))}"
        )
    kwargs = {}
    for f in fields(cls):
        if f.name in data:
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], f"{where}.{f.name}" if where else f.name)
    return cls(**kwargs)


def load_yaml_file(path: Any, what: str) -> Any:
    """The YAML document in ``path``; ``ConfigError`` naming ``what`` (e.g. 'config file') and the path when the file
    is missing, unreadable or not YAML (an empty file reads as ``{}``)."""
    from pathlib import Path

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{what} {str(p)!r} does not exist")
    try:
        return yaml.safe_load(p.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what} {str(p)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    except OSError as e:
        raise ConfigError(f"{what} {str(p)!r} cannot be read: {e.strerror or e}") from None


def set_by_path(tree: dict, dotted: str, value: Any) -> None:
    """``set_by_path(d, 'train.lr', 1e-3)``: set a nested dict entry, creating sections as needed."""
    parts = dotted.split(".")
    node = tree
    if not isinstance(tree, dict):
        raise ConfigError(f"--set {dotted}: the config is not a mapping")
    for p in parts[:-1]:
        if node.get(p) is None:
            node[p] = {}
        if not isinstance(node[p], dict):
            raise ConfigError(f"--set {dotted}: {p!r} is not a section")
        node = node[p]
    node[parts[-1]] = value


def parse_overrides(items: list[str] | None) -> list[tuple[str, Any]]:
    out = []
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value (e.g. train.lr=1e-3), got {item!r}")
        k, v = item.split("=", 1)
        out.append((k.strip(), yaml.safe_load(v)))
    return out


def _deepcopy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d


def merge_dicts(a: dict, b: dict | None) -> dict:
    """Deep merge: ``b``'s entries override ``a``'s, nested sections merged; neither input is modified."""
    out = _deepcopy(a)
    for k, v in (b or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_dicts(out[k], v)
        else:
            out[k] = _deepcopy(v)
    return out


def describe_fields(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted name, type and default, doc) for every field, sections expanded: the source of the --help text."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        tp = hints[f.name]
        name = f"{prefix}{f.name}"
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        sub = tp if dataclasses.is_dataclass(tp) else (inner[0] if inner else None)
        if sub is not None:
            rows.append((name, "section", f.metadata.get("doc", "")))
            rows.extend(describe_fields(sub, name + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        rows.append((name, f"{_type_name(tp)} = {default!r}", f.metadata.get("doc", "")))
    return rows


