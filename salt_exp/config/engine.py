"""Schema-agnostic checking of raw mappings (parsed YAML) against frozen dataclasses, and the YAML parser.

A schema is a dataclass whose fields are values (``bool``, ``int``, ``float``, ``str``, ``Any``, ``Literal``,
``X | None``, ``tuple[...]``, ``dict[K, V]``) or sections: a dataclass, an optional one (``S | None``), a
tagged union of dataclasses that each have a ``type: Literal["tag"]`` field, or a ``dict[str, S]``.
Bounds are field metadata (:func:`num`); fields without a default are required; a schema's ``extra_keys``
class attribute lists keys its files may also hold (read by the caller). :func:`check_mapping` returns the
keys a mapping holds, converted (sections as dicts), :func:`merge` deep-merges two such dicts and
:func:`build` makes the dataclass. Every problem is a one-line :class:`~salt_exp.errors.SaltError` naming
``where`` (a file, an override), the dotted key and what was expected: the valid keys, the type, the bounds.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import operator
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import yaml

from salt_exp.errors import SaltError

# ---------------------------------------------------------------- YAML (1e-4 is a float)


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` as a float (PyYAML's YAML 1.1 rules read it as a string) and refuses a
    key given twice in one mapping (PyYAML would keep the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *base' keys may be overridden, as YAML says
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, typing.Hashable):
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str, where: str) -> Any:
    """``text`` as YAML (``1e-4`` a float); invalid YAML is a one-line error naming ``where`` and the line."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise SaltError(f"{where}: invalid YAML{at}: {getattr(exc, 'problem', None) or exc}") from None


# ---------------------------------------------------------------- schemas


def num(default: Any, **bounds: float) -> Any:
    """A numeric field with bounds (``ge``, ``gt``, ``le``, ``lt``) checked on load, per element."""
    return dataclasses.field(default=default, metadata=bounds)


def fields_of(cls: type) -> dict[str, tuple[Any, dataclasses.Field[Any]]]:
    """Field name -> (resolved type, field) of the dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f) for f in dataclasses.fields(cls)}


def valid_keys(cls: type) -> list[str]:
    return list(fields_of(cls)) + list(getattr(cls, "extra_keys", ()))


def is_section(tp: Any) -> bool:
    """A plain section: one nested dataclass, merged key by key."""
    return dataclasses.is_dataclass(tp)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _variants(tp: Any) -> tuple[tuple[type, ...], bool] | None:
    """The dataclasses a section field may hold and whether it may be null; None for a value."""
    if dataclasses.is_dataclass(tp):
        return (tp,), False
    if not _is_union(tp):
        return None
    classes = tuple(a for a in typing.get_args(tp) if a is not type(None))
    if not all(dataclasses.is_dataclass(c) for c in classes):
        return None
    return classes, len(classes) < len(typing.get_args(tp))


def _tag(cls: type) -> str:
    return typing.get_args(fields_of(cls)["type"][0])[0]


def _default(fld: dataclasses.Field[Any] | None) -> Any:
    if fld is None or fld.default_factory is dataclasses.MISSING:
        return dataclasses.MISSING if fld is None else fld.default
    return fld.default_factory()


def describe(tp: Any) -> str:
    """A type in words: ``a list of int``, ``float or one of 'auto'``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    section = _variants(tp)
    if section:
        tags = ", ".join(repr(_tag(c)) for c in section[0]) if len(section[0]) > 1 else ""
        return f"a section with a type ({tags})" if tags else "a section"
    if tp is Any:
        return "any value"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if _is_union(tp):
        return " or ".join("null" if a is type(None) else describe(a) for a in args)
    if origin is tuple:
        count = "" if len(args) == 2 and args[1] is Ellipsis else f"{len(args)} "
        return f"a list of {count}{describe(args[0])}"
    if origin is dict:
        return f"a mapping of {describe(args[0])} to {describe(args[1])}"
    return getattr(tp, "__name__", str(tp))


# ---------------------------------------------------------------- values


class _Mismatch(Exception):
    pass


def _coerce_union(value: Any, args: tuple[Any, ...]) -> Any:
    if value is None and type(None) in args:
        return None
    for arg in args:
        if arg is not type(None):
            try:
                return _coerce(value, arg)
            except _Mismatch:
                pass
    raise _Mismatch


def _coerce_container(value: Any, origin: Any, args: tuple[Any, ...]) -> Any:
    if origin is dict:
        if not isinstance(value, Mapping) or not value:
            raise _Mismatch
        return {_coerce(k, args[0]): _coerce(v, args[1]) for k, v in value.items()}
    if not isinstance(value, (list, tuple)) or not value:
        raise _Mismatch
    variadic = len(args) == 2 and args[1] is Ellipsis
    if not variadic and len(value) != len(args):
        raise _Mismatch
    item_types = [args[0]] * len(value) if variadic else list(args)
    return tuple(_coerce(v, a) for v, a in zip(value, item_types, strict=True))


def _coerce(value: Any, tp: Any) -> Any:
    """``value`` as ``tp`` or _Mismatch: lists become tuples, ints pass as floats, lists and mappings are non-empty."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if isinstance(value, str) and value in args:
            return value
    elif _is_union(tp):
        return _coerce_union(value, args)
    elif origin in (tuple, dict):
        return _coerce_container(value, origin, args)
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str and isinstance(value, str):
        return value
    raise _Mismatch


def _numbers(value: Any) -> list[float]:
    if isinstance(value, (tuple, list)):
        return [x for v in value for x in _numbers(v)]
    if isinstance(value, dict):
        return _numbers(list(value.values()))
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


_BOUNDS = {"ge": (operator.ge, ">="), "gt": (operator.gt, ">"), "le": (operator.le, "<="), "lt": (operator.lt, "<")}


def _check_bounds(value: Any, bounds: Mapping[str, float], key: str, where: str) -> None:
    rule = " and ".join(f"{_BOUNDS[n][1]} {b}" for n, b in bounds.items())
    for x in _numbers(value):
        if bounds and not math.isfinite(x):  # .inf passes a lower bound, .nan every comparison
            raise SaltError(f"{where}: '{key}' must be a finite number {rule}, got {value!r}")
        for name, bound in bounds.items():
            if not _BOUNDS[name][0](x, bound):
                raise SaltError(f"{where}: '{key}' must be {rule}, got {value!r}")


def convert(value: Any, tp: Any, key: str, where: str, *, bounds: Mapping[str, float] | None = None) -> Any:
    """``value`` converted to the value type ``tp`` and checked against ``bounds`` (``ge``/``gt``/``le``/``lt``)."""
    try:
        out = _coerce(value, tp)
    except _Mismatch:
        raise SaltError(f"{where}: '{key}' expects {describe(tp)}, got {value!r}") from None
    _check_bounds(out, bounds or {}, key, where)
    return out


# ---------------------------------------------------------------- mappings and sections


def unknown_key(key: str, prefix: str, valid: Sequence[str], where: str) -> SaltError:
    """The error for ``key`` under ``prefix`` (``"optim."``, or ``""`` at top level), listing ``valid``."""
    scope = f"in '{prefix.rstrip('.')}'" if prefix else "at top level"
    return SaltError(f"{where}: unknown key '{prefix}{key}'; valid keys {scope}: {', '.join(valid)}")


def check_mapping(raw: Any, cls: type, where: str, prefix: str = "") -> dict[str, Any]:
    """The keys present in ``raw`` checked against the dataclass ``cls`` and converted, sections as dicts (a
    tagged one with its ``type``); ``prefix`` is the dotted path of ``raw`` (``"optim."``)."""
    if not isinstance(raw, Mapping):
        name = prefix.rstrip(".")
        what = f"'{name}' must be" if name else "expected"
        raise SaltError(f"{where}: {what} a mapping with keys {', '.join(fields_of(cls))}, got {raw!r}")
    schema, out = fields_of(cls), {}
    for key, value in raw.items():
        if key not in schema:
            raise unknown_key(str(key), prefix, valid_keys(cls), where)
        tp, fld = schema[key]
        out[key] = check_value(value, tp, f"{prefix}{key}", where, fld=fld)
    for key, (_, fld) in schema.items():
        if key not in out and fld.default is fld.default_factory is dataclasses.MISSING:
            raise SaltError(f"{where}: '{prefix}{key}' is required")
    return out


def check_value(value: Any, tp: Any, key: str, where: str, *, fld: dataclasses.Field[Any] | None = None) -> Any:
    """One value of type ``tp`` at dotted ``key``: a section as its checked dict, a value converted."""
    section = _variants(tp)
    if section is not None:
        classes, nullable = section
        if value is None and nullable:
            return None
        if len(classes) == 1:
            return check_mapping(value, classes[0], where, f"{key}.")
        return _check_tagged(value, classes, key, where, default=_default(fld))
    args = typing.get_args(tp)
    if typing.get_origin(tp) is dict and _variants(args[1]) is not None:
        if not isinstance(value, Mapping) or not value:
            raise SaltError(f"{where}: '{key}' expects {describe(tp)}, got {value!r}")
        return {convert(k, args[0], key, where): check_value(v, args[1], f"{key}.{k}", where) for k, v in value.items()}
    return convert(value, tp, key, where, bounds=fld.metadata if fld is not None else None)


def _check_tagged(value: Any, classes: tuple[type, ...], key: str, where: str, *, default: Any) -> dict[str, Any]:
    """A section whose ``type`` picks its dataclass (the bare type is short for ``{type: ...}``); without
    one the field default's applies, and where there is no default (a dict entry) it is required."""
    tags = {_tag(c): c for c in classes}
    value = {"type": value} if isinstance(value, str) else value
    if not isinstance(value, Mapping):
        names = ", ".join(repr(t) for t in tags)
        raise SaltError(f"{where}: '{key}' must be a mapping with a type ({names}) or just the type, got {value!r}")
    tag = value.get("type", _tag(type(default)) if dataclasses.is_dataclass(default) else None)
    convert(tag, Literal[tuple(tags)], f"{key}.type", where)
    return check_mapping({"type": tag, **value}, tags[tag], where, f"{key}.")


def merge(base: Mapping[str, Any], over: Mapping[str, Any], cls: type) -> dict[str, Any]:
    """Deep-merge checked dicts: plain sections merge key by key, every other value is replaced."""
    schema, out = fields_of(cls), dict(base)
    for key, value in over.items():
        tp = schema[key][0]
        out[key] = merge(out.get(key, {}), value, tp) if is_section(tp) else value
    return out


def build(cls: type, checked: Mapping[str, Any]) -> Any:
    """The dataclass ``cls`` from :func:`check_mapping` output (merged or not); defaults fill the rest."""
    schema = fields_of(cls)
    return cls(**{key: _build_value(schema[key][0], value) for key, value in checked.items()})


def _build_value(tp: Any, value: Any) -> Any:
    section = _variants(tp)
    if section is not None and value is not None:
        classes = section[0]
        target = classes[0] if len(classes) == 1 else {_tag(c): c for c in classes}[value["type"]]
        return build(target, value)
    args = typing.get_args(tp)
    if typing.get_origin(tp) is dict and _variants(args[1]) is not None:
        return {k: _build_value(args[1], v) for k, v in value.items()}
    return copy.deepcopy(value)


def from_mapping(raw: Any, cls: type, where: str, prefix: str = "") -> Any:
    """:func:`check_mapping` then :func:`build`: the dataclass ``cls`` from a raw mapping."""
    return build(cls, check_mapping(raw, cls, where, prefix))
