"""A mapping read from YAML, converted to typed dataclasses: unknown keys and wrong types are a
`UserError` naming the key, with a "did you mean" for near misses."""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import math
import types
import typing
from typing import Any

from regimen.core.errors import UserError


def fields_of(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    """A dataclass's fields with their resolved annotations."""
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


def convert(value: Any, hint: Any, key: str, source: str) -> Any:
    """Convert a YAML value to the annotated type (dataclasses, Optional, lists, dicts, bool, int,
    float, str), or raise a UserError naming `source` and the dotted `key`."""
    where = f"{source}: {key or 'top level'}"
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise UserError(f"{where} = {value!r}: expected a section (a mapping of keys)")
        known = {f.name: h for f, h in fields_of(hint)}
        for name in value:
            if name not in known:
                hint = did_you_mean(str(name), list(known), prefix=key)
                raise UserError(f"{source}: unknown key '{join(key, name)}'{hint}")
        kwargs = {name: convert(value[name], known[name], join(key, name), source)
                  for name in value}
        return hint(**kwargs)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # Optional[X]
        if value is None:
            return None
        return convert(value, next(a for a in args if a is not type(None)), key, source)
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{where} = {value!r}: expected a list of {args[0].__name__}")
        return [convert(item, args[0], f"{key}[{i}]", source) for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where} = {value!r}: expected a mapping")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where} = {value!r}: expected true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where} = {value!r}: expected an integer")
        return value
    if hint is float:
        # PyYAML reads `1e-3` (no dot) as a string: accept any number written as text.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where} = {value!r}: expected a number")
        try:
            value = float(value)
        except OverflowError:  # an integer beyond any float
            raise UserError(f"{where}: expected a finite number, got an integer of {len(str(value))} digits") from None
        if not math.isfinite(value):
            raise UserError(f"{where} = {value!r}: expected a finite number")
        return value
    if hint is str:
        if isinstance(value, (datetime.date, datetime.datetime)):  # YAML reads 2019-06-01 as a date
            return value.isoformat()
        if not isinstance(value, str):
            raise UserError(f"{where} = {value!r}: expected a string")
        return value
    raise TypeError(f"unsupported config annotation {hint!r} for {key}")


def shown(value: Any, limit: int = 80) -> str:
    """A value's repr for a one-line message, cut when long."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 20]}... ({len(text)} characters)"


def join(prefix: str, name: Any) -> str:
    """A dotted key: `prefix.name`, or `name` at the top level."""
    return f"{prefix}.{name}" if prefix else str(name)


def did_you_mean(word: str, options: list[str], prefix: str = "") -> str:
    """"; did you mean 'X'?" for the nearest option, or "" when none is near."""
    close = difflib.get_close_matches(word, options, n=1)
    return f"; did you mean '{join(prefix, close[0])}'?" if close else ""
