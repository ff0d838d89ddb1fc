"""Typed construction of dataclasses from untrusted dicts (YAML configs, JSONL lines, API bodies).

One implementation serves configs and records alike so that every error names the key that is
wrong: an unknown key, a missing required key, or a value of the wrong type.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

from alignloop.errors import AlignloopError

T = TypeVar("T")


class SchemaError(AlignloopError):
    """A value does not fit its dataclass; ``field`` is the dotted path of the offending key."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"field '{field}': {message}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against annotation ``tp``; return it (ints are accepted for floats)."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except SchemaError as err:
                errors.append(err)
        raise SchemaError(path, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r:.60}")
    if origin is typing.Literal:
        if value not in args:
            raise SchemaError(path, f"must be one of {', '.join(map(repr, args))}, got {value!r:.60}")
        return value
    if origin in (list, tuple, typing.Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise SchemaError(path, f"expected a list, got {type(value).__name__}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise SchemaError(path, f"expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise SchemaError(path, f"expected a mapping, got {type(value).__name__}")
        if len(args) == 2:
            return {_coerce(k, args[0], path): _coerce(v, args[1], f"{path}.{k}") for k, v in value.items()}
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise SchemaError(path, f"expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return from_dict(tp, value, path)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SchemaError(path, f"expected a number, got {type(value).__name__} {value!r:.60}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(path, f"expected an integer, got {type(value).__name__} {value!r:.60}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise SchemaError(path, f"expected true/false, got {type(value).__name__} {value!r:.60}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise SchemaError(path, f"expected a string, got {type(value).__name__} {value!r:.60}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise SchemaError(path, f"expected {_type_name(tp)}, got {type(value).__name__}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], path: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types.

    ``path`` prefixes field names in errors (``"sft.lr"``) so nested configs say exactly where.
    A dataclass may define ``validate(self)`` raising ``ValueError``; its message is reported
    against the dataclass path.
    """
    if not isinstance(data, dict):
        raise SchemaError(path or cls.__name__, f"expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{path}.{unknown[0]}" if path else unknown[0]
        raise SchemaError(where, f"unknown key (known keys: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        sub = f"{path}.{name}" if path else name
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SchemaError(sub, "is required but missing")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as err:
            msg = str(err)
            field_name, _, rest = msg.partition(": ")
            if field_name in fields and rest:
                raise SchemaError(f"{path}.{field_name}" if path else field_name, rest) from None
            raise SchemaError(path or cls.__name__, msg) from None
    return obj


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain-dict form of a dataclass (for JSON/YAML output)."""
    return dataclasses.asdict(obj)
