"""Config building blocks: typed, range-checked dataclasses and one-line errors.

Config sections (``GenerateConfig``, ``TrainConfig``, ``ValidateConfig``) are pydantic
dataclasses made with :func:`config_dataclass`; :func:`build_config` turns a wrong type, a
value out of range or an unknown key into a :class:`ConfigError` whose lines each name the
key, the value and what is allowed::

    train.batch_size = 0: must be greater than 0
    generate.seeds = 'x.cif': must be a list (e.g. ['x.cif'])

The whole distillation config is checked by :mod:`orbdistill.distill_config`. Model configs
(``V1Config``, ...) stay plain dataclasses: loading a student needs no pydantic. This module
imports nothing else of orbdistill.
"""

from __future__ import annotations

import dataclasses
from typing import Any


class ConfigError(ValueError):
    """An invalid configuration; ``str()`` has one line per problem."""


def dataclass_from_dict(cls, d: dict, what: str = None):
    """``cls(**d)``, with an error naming unknown keys and listing the valid ones."""
    if not isinstance(d, dict):
        raise ConfigError(f"{what or cls.__name__} must be a mapping of keys to values, got {d!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"Unknown {what or cls.__name__} keys {unknown}; valid keys: {sorted(names)}")
    return cls(**d)


def config_dataclass(cls):
    """A pydantic dataclass that forbids unknown keys and checks assignments too."""
    from pydantic import ConfigDict
    from pydantic.dataclasses import dataclass

    return dataclass(config=ConfigDict(extra="forbid", validate_assignment=True))(cls)


_HINTS = {
    "list_type": "must be a list (e.g. [{value!r}])",
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "bool_parsing": "must be true or false",
    "dict_type": "must be a mapping",
    "string_type": "must be a string",
}


def _one_line(prefix: str, loc, value, message: str) -> str:
    key = ".".join(str(p) for p in loc if p != "__root__")
    head = f"{prefix}.{key}" if prefix and key else (prefix or key)
    return f"{head} = {value!r}: {message}"


def _format_pydantic(exc, prefix: str, cls=None) -> str:
    lines = []
    for err in exc.errors(include_url=False):
        value = err.get("input")
        kind = err.get("type", "")
        msg = err.get("msg", "invalid")
        if kind == "missing":
            lines.append(f"{prefix}.{'.'.join(map(str, err['loc']))}: required, missing")
            continue
        if kind in ("extra_forbidden", "unexpected_keyword_argument"):
            valid = sorted(f.name for f in dataclasses.fields(cls)) if cls is not None and dataclasses.is_dataclass(cls) else []
            lines.append(f"{prefix}.{'.'.join(map(str, err['loc']))}: unknown key" +
                         (f"; valid keys: {', '.join(valid)}" if valid else ""))
            continue
        hint = _HINTS.get(kind)
        if hint:
            msg = hint.format(value=value)
        elif kind.startswith(("greater_than", "less_than")) or kind in ("too_short", "literal_error", "string_pattern_mismatch"):
            msg = msg.replace("Input should be", "must be").replace("List should have", "must have")
        elif kind == "value_error":
            msg = msg.replace("Value error, ", "")
        lines.append(_one_line(prefix, err["loc"], value, msg))
    return "\n".join(lines)


def build_config(cls, values: Any, section: str):
    """``cls(**values)`` for a config dataclass, errors as one :class:`ConfigError`."""
    from pydantic import ValidationError

    if isinstance(values, cls):
        return values
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{section} = {values!r}: must be a mapping of keys to values")
    try:
        return cls(**values)
    except ValidationError as exc:
        raise ConfigError(_format_pydantic(exc, section, cls)) from None
    except TypeError as exc:  # unknown keyword
        raise ConfigError(f"{section}: {exc}") from None
