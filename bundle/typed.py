"""One strict typed parser for trees of frozen dataclasses read from JSON (the bundle card,
``fringelive.bundle.card``) and TOML (the daemon config, ``fringelive.daemon.config``).

Exact types: a bool is not an int, only an int becomes a float, strings stay strings; unknown
keys are refused with the known ones listed; every error is one line naming the key path. The
two documents differ only in wording and a few spellings, which a :class:`Dialect` holds:
JSON ``null`` for optional fields, TOML's relative paths, per-field spellings (``hook``), fields
that are not keys of the document (``exclude``), keys spelled flat that fill a nested dataclass
(``flat``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

__all__ = ["Dialect", "NOT_HANDLED", "parse", "type_hints"]

#: Returned by a :attr:`Dialect.hook` that leaves the value to the ordinary conversion.
NOT_HANDLED = object()

_HINTS: dict[type, dict[str, Any]] = {}


def type_hints(cls: type) -> dict[str, Any]:
    """``typing.get_type_hints(cls)``, cached."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


@dataclass(frozen=True)
class Dialect:
    """How one kind of document spells things.

    error: the exception raised (``CardError``, ``ConfigError``). toml: TOML wording (tables,
    ``unknown key(s) [full keys] in section``, unions tried in order, ``ValueError`` of a section's
    checks re-raised naming the key) instead of JSON's (objects, ``null`` for optional fields,
    required keys). hook: ``(cls, field name, value, key, dialect) -> value`` or :data:`NOT_HANDLED`, for
    per-field spellings. exclude: per dataclass, fields that are not keys of the document. flat:
    per dataclass, ``key -> (field, nested field)`` for keys that fill a nested dataclass field.
    base_dir: relative ``Path`` values resolve against it.
    """

    error: type[Exception]
    toml: bool = False
    hook: Callable[[type, str, Any, str, "Dialect"], Any] | None = None
    exclude: Mapping[type, frozenset[str]] = field(default_factory=dict)
    flat: Mapping[type, Mapping[str, tuple[str, str]]] = field(default_factory=dict)
    base_dir: Path | None = None


def _where(path: str, d: Dialect) -> str:
    if d.toml:
        return path or "config"
    return path or "card"


def _sub(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _parse_dataclass(cls: type, value: Any, path: str, d: Dialect) -> Any:
    if not isinstance(value, Mapping):
        raise d.error(f"{_where(path, d)} must be {'a table' if d.toml else 'an object'}, got {value!r}")
    excluded = d.exclude.get(cls, frozenset())
    flat = d.flat.get(cls, {})
    names = [f.name for f in dataclasses.fields(cls) if f.name not in excluded and f.name not in
             {outer for outer, _ in flat.values()}]
    keys = names + list(flat)
    unknown = sorted(set(value) - set(keys))
    if unknown:
        if d.toml:
            raise d.error(f"unknown key(s) {[_sub(path, k) for k in unknown]} in {_where(path, d)}; known: {keys}")
        raise d.error(f"{_where(path, d)}: unknown key(s) {unknown}; known: {sorted(keys)}")
    hints = type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in names:
            continue
        sub = _sub(path, f.name)
        if f.name not in value:
            if not d.toml and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise d.error(f"{sub} is required but missing")
            continue
        kwargs[f.name] = _parse_field(cls, f.name, hints[f.name], value[f.name], sub, d)
    nested: dict[str, dict[str, Any]] = {}
    for key, (outer, inner) in flat.items():
        if key in value:
            tp = type_hints(typing.cast(type, type_hints(cls)[outer]))[inner]
            nested.setdefault(outer, {})[inner] = _parse_field(cls, key, tp, value[key], _sub(path, key), d)
    try:
        for outer, inner_values in nested.items():  # a nested section's checks name its field
            kwargs[outer] = type_hints(cls)[outer](**inner_values)
        return cls(**kwargs)
    except d.error as e:
        if d.toml:
            raise
        raise d.error(f"{_where(path, d)}: {e}") from None
    except ValueError as e:
        if not d.toml:
            raise
        # a section's own checks name the field: prefix the section
        raise d.error(f"{path + '.' if path else ''}{e}") from None


def _parse_field(cls: type, name: str, tp: Any, value: Any, key: str, d: Dialect) -> Any:
    if d.hook is not None:
        out = d.hook(cls, name, value, key, d)
        if out is not NOT_HANDLED:
            return out
    return parse(tp, value, key, d)


def parse(tp: Any, value: Any, path: str, d: Dialect) -> Any:
    """``value`` (parsed JSON or TOML) as type ``tp``; ``path`` names it in errors."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if not d.toml:
            if value is None and type(None) in args:
                return None
            inner = [a for a in args if a is not type(None)]
            if len(inner) == 1:
                return parse(inner[0], value, path, d)
            raise d.error(f"{_where(path, d)}: unsupported union {tp!r}")  # pragma: no cover
        inner = [a for a in args if a is not type(None)]
        for a in inner:  # TOML has no null: try each type in order
            try:
                return parse(a, value, path, d)
            except d.error:
                continue
        want = " or ".join(_type_word(a) for a in inner)
        raise d.error(f"{path} must be {want}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return _parse_dataclass(typing.cast(type, tp), value, path, d)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise d.error(f"{_where(path, d)} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(parse(args[0], v, f"{path}[{i}]", d) for i, v in enumerate(value))
        if len(value) != len(args):
            raise d.error(f"{_where(path, d)} must have {len(args)} items, got {value!r}")
        return tuple(parse(a, v, f"{path}[{i}]", d) for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise d.error(f"{_where(path, d)} must be an object, got {value!r}")
        return {str(k): parse(args[1], v, f"{path}.{k}", d) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise d.error(f"{_where(path, d)} must be a list, got {value!r}")
        return [parse(args[0], v, f"{path}[{i}]", d) for i, v in enumerate(value)]
    where = _where(path, d)
    if tp is bool:
        if not isinstance(value, bool):
            raise d.error(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise d.error(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise d.error(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise d.error(f"{where} must be a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise d.error(f"{where} must be a path string, got {value!r}")
        p = Path(value).expanduser()
        return p if p.is_absolute() or d.base_dir is None else (d.base_dir / p)
    raise d.error(f"{where}: unsupported type {tp!r}")  # pragma: no cover


def _type_word(tp: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path string"}.get(
        tp, str(tp))
