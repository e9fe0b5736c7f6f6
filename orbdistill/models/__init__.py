"""Student models: build by name, save and load with their configuration.

>>> from orbdistill.models import build_student
>>> model = build_student("v2", species=[29], num_features=32)
>>> model.config.cutoff
5.0
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Sequence, Type

import torch

from .base import CHECKPOINT_FORMAT, StudentConfig, StudentModel, conservative_outputs
from .student_v1 import OrbStudentV1, V1Config
from .student_v2 import FastStudentV2, V2Config
from .student_v2_e3nn import E3nnStudentV2, V2E3nnConfig

#: kind -> model class (each class knows its config dataclass)
STUDENT_KINDS: Dict[str, Type[StudentModel]] = {
    "v1": OrbStudentV1,
    "v2": FastStudentV2,
    "v2-e3nn": E3nnStudentV2,
}

__all__ = [
    "build_student",
    "load_student",
    "safe_torch_load",
    "UnsafeCheckpointError",
    "v1_from_orb",
    "StudentModel",
    "StudentConfig",
    "STUDENT_KINDS",
    "conservative_outputs",
]


def build_student(kind: str, species: Sequence[int] = (29,), **overrides) -> StudentModel:
    """Build a student by kind with its default config, changed by ``overrides``.

    Args:
        kind: "v1" (parameter-reduced Orb), "v2" (operation-optimised), "v2-e3nn"
        species: atomic numbers (or symbols) the student covers
        **overrides: fields of the kind's config dataclass
    """
    if kind not in STUDENT_KINDS:
        raise ValueError(f"Unknown student kind {kind!r}; valid kinds: {sorted(STUDENT_KINDS)}")
    cls = STUDENT_KINDS[kind]
    from ase.data import atomic_numbers as _z

    zs = sorted({int(_z[s]) if isinstance(s, str) else int(s) for s in species})
    base = cls.config_cls().to_dict()
    unknown = sorted(set(overrides) - set(base))
    if unknown:
        raise ValueError(f"Unknown {kind} config fields {unknown}; valid fields: {sorted(base)}")
    base.update(overrides)
    base["species"] = zs
    base["kind"] = kind
    return cls(cls.config_cls.from_dict(base))


def model_from_checkpoint_dict(ckpt: dict, source: str = "checkpoint") -> StudentModel:
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{source} is not an orbdistill student checkpoint (format {ckpt.get('format') if isinstance(ckpt, dict) else type(ckpt).__name__!r}).")
    kind = ckpt.get("kind")
    if kind not in STUDENT_KINDS:
        raise ValueError(f"{source}: unknown student kind {kind!r}; this orbdistill knows {sorted(STUDENT_KINDS)}.")
    cls = STUDENT_KINDS[kind]
    model = cls(cls.config_cls.from_dict(ckpt["config"]))
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{source}: weights do not match the {kind} config stored with them: {exc}") from exc
    return model.eval()


class UnsafeCheckpointError(ValueError):
    """A checkpoint that only loads by running arbitrary Python code (a pickle of objects)."""


def safe_torch_load(path, map_location="cpu", what: str = "checkpoint"):
    """``torch.load(weights_only=True)``: tensors, numbers, strings, lists and dicts only.

    A file whose pickle asks for anything else (any class or function, which is how a
    malicious file runs code on load) is refused with :class:`UnsafeCheckpointError`; nothing
    in it is executed.
    """
    import pickle

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "weights_only" in text or "Unsupported global" in text or "Unsupported operand" in text:
            detail = text.split("Please file an issue")[0].strip().splitlines()
            reason = next((line.strip() for line in detail if "GLOBAL" in line or "Unsupported" in line), detail[-1] if detail else "")
            raise UnsafeCheckpointError(
                f"Refusing to load {what} {os.fspath(path)!r}: it holds Python objects that only load by running code "
                f"from the file ({reason[:200]}). orbdistill files hold tensors and plain data only; if you trust "
                "the file's origin, convert it with the orbdistill version that wrote it."
            ) from None
        raise ValueError(f"Cannot read {what} {os.fspath(path)!r}: corrupt or not a torch file ({text[:200]}).") from exc
    except Exception as exc:
        raise ValueError(f"Cannot read {what} {os.fspath(path)!r}: corrupt or not a torch file "
                         f"({type(exc).__name__}: {str(exc)[:200]}).") from exc


def load_student(path, map_location="cpu") -> StudentModel:
    """Rebuild a student from a file written by :meth:`StudentModel.save`, or from a package
    folder or name (its ``model.pt``). Loads with ``weights_only=True`` (see :func:`safe_torch_load`)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        from orbdistill.packages import find_package

        try:
            path = os.fspath(find_package(path))
        except FileNotFoundError:
            raise FileNotFoundError(f"Student checkpoint {path!r} does not exist (nor a package of that name).") from None
    if os.path.isdir(path):
        path = os.path.join(path, "model.pt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"Student checkpoint {path!r} does not exist.")
    ckpt = safe_torch_load(path, map_location=map_location, what="student checkpoint")
    return model_from_checkpoint_dict(ckpt, source=repr(path))


def v1_from_orb(orb_model, species=None, **overrides):
    """See :func:`orbdistill.models.orb_transfer.v1_from_orb`."""
    from .orb_transfer import v1_from_orb as _impl

    return _impl(orb_model, species=species, **overrides)
