"""Plain data -> typed config dataclasses: unknown keys name the closest valid one; every field is checked
against its annotation. Standard library only, so that reading a config (and `aiayn --help`) stays instant."""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Literal, get_args, get_type_hints

from aiayn.errors import ConfigError


def from_dict(cls: type, data: dict[str, Any], section: str | None = None):
    """Build the dataclass `cls` from `data`, refusing unknown keys with a 'did you mean' hint."""
    if not isinstance(data, dict):
        raise ConfigError(f"{section or cls.__name__}: expected a mapping of keys to values, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown key '{section + '.' if section else ''}{key}' in {cls.__name__}{hint}")
    return cls(**data)


def check_types(config: Any) -> None:
    """Check each field against its annotation: Literal choices, bool/int/float. Names field, value, allowed."""
    hints = get_type_hints(type(config))
    name_of = type(config).__name__
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        kind = hints[field.name]
        choices = get_args(kind) if getattr(kind, "__origin__", None) is Literal else None
        if choices is not None:
            if value not in choices:
                allowed = " | ".join(repr(c) for c in choices)
                raise ConfigError(f"{name_of}.{field.name}={value!r} is not one of {allowed}")
        elif kind is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{name_of}.{field.name}={value!r} must be true or false")
        elif kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name_of}.{field.name}={value!r} must be an integer")
        elif kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{name_of}.{field.name}={value!r} must be a number")
            setattr(config, field.name, float(value))


