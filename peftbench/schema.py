"""Typed, validated config sections built from plain YAML data; errors name the file and key."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

from peftbench.errors import PeftbenchError


def build(cls: type, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from ``data``; ``where`` is e.g. ``"suites/demo.yaml: train"``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PeftbenchError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(fields)}"
            raise PeftbenchError(f"{where}.{key}: unknown key{hint}")
    values = {}
    for name, field in fields.items():
        if name in data:
            values[name] = check_type(data[name], hints[name], f"{where}.{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise PeftbenchError(f"{where}.{name}: required key is missing")
    try:
        return cls(**values)
    except (PeftbenchError, TypeError, ValueError) as err:  # a range check in __post_init__: add file and key
        raise PeftbenchError(f"{where}: {err}") from err


def check_type(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return check_type(value, arg, where)
            except PeftbenchError as err:
                errors.append(str(err))
        raise PeftbenchError(errors[0] if len(errors) == 1 else f"{where}: {value!r} has the wrong type "
                             f"(expected {_name(hint)})")
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise PeftbenchError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [check_type(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise PeftbenchError(f"{where}: expected a mapping, got {value!r}")
        inner = args[1] if len(args) == 2 else Any
        return {k: check_type(v, inner, f"{where}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not (isinstance(value, hint) and
                                                 not (hint is int and isinstance(value, bool))):
        raise PeftbenchError(f"{where}: expected {hint.__name__}, got {value!r} ({type(value).__name__})")
    return value


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
