"""Configuration dataclasses: one way to build them from dictionaries, rejecting unknown keys."""

from __future__ import annotations

import dataclasses


def dataclass_from_dict(cls, d: dict, what: str = None):
    """``cls(**d)``, with an error naming unknown keys and listing the valid ones."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"Unknown {what or cls.__name__} keys {unknown}; valid keys: {sorted(names)}")
    return cls(**d)
