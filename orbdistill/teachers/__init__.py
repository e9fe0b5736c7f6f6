"""Teachers: the models whose physics students learn.

>>> from orbdistill.teachers import load_teacher
>>> t = load_teacher("emt")
>>> t.describe()["name"]
'emt'
"""

from __future__ import annotations

from typing import Optional

from .ase_calculators import EMT_SPECIES, load_emt_teacher, teacher_from_calculator
from .base import Prediction, Teacher
from .chgnet import CHGNET_NAMES, load_chgnet_teacher
from .orb import ORB_NAMES, load_orb_teacher
from .sevennet import SEVENNET_NAMES, load_sevennet_teacher

__all__ = ["load_teacher", "available_teachers", "Teacher", "Prediction", "ORB_NAMES", "SEVENNET_NAMES", "CHGNET_NAMES"]


def available_teachers() -> list:
    """Names accepted by :func:`load_teacher`."""
    sevennet = sorted(n for n in SEVENNET_NAMES if n.startswith("sevennet"))
    return sorted(ORB_NAMES) + sevennet + ["chgnet", "chgnet-r2scan", "emt"]


def load_teacher(name, device=None, weights: Optional[str] = None, **kwargs) -> Teacher:
    """Load a teacher by name, or wrap an ASE calculator object.

    Args:
        name: an Orb name (``orb-v3-conservative-inf-omat``, ...), a SevenNet name
            (``sevennet-0``, ``sevennet-l3i5``, ``sevennet-mf-0``, ``sevennet-0-22may2024``),
            ``chgnet``, ``chgnet-r2scan``, ``emt``, or an ASE calculator instance
        device: torch device ("cpu", "cuda"); default: CUDA when available
        weights: Orb only: None downloads the published checkpoint, a path loads a local
            checkpoint, "random" builds the architecture with random weights
        **kwargs: passed to the family loader (``precision`` for Orb, ``modal`` for
            ``sevennet-mf-0``: "PBE" or "R2SCAN")
    Returns:
        Teacher
    """
    if not isinstance(name, str):
        return teacher_from_calculator(name, **kwargs)
    key = name.strip().lower()
    if key in ORB_NAMES:
        teacher = load_orb_teacher(key, weights=weights, device=device, **kwargs)
    elif weights is not None:
        raise ValueError(f"weights= applies to Orb teachers only, not {name!r}.")
    elif key in SEVENNET_NAMES:
        teacher = load_sevennet_teacher(key, device=device, **kwargs)
    elif key in CHGNET_NAMES:
        if kwargs:
            raise ValueError(f"{name} takes no options, got {sorted(kwargs)}")
        teacher = load_chgnet_teacher(key, device=device)
    elif key == "emt":
        teacher = load_emt_teacher()
    else:
        raise ValueError(f"Unknown teacher {name!r}. Valid names: {', '.join(available_teachers())}.")
    teacher.spec = {"name": key, "weights": weights, **kwargs}  # the device is each worker's own
    return teacher
