"""Reading structures: CIF, POSCAR, extxyz and anything ASE or pymatgen reads."""

from __future__ import annotations

import os
from typing import List


def read_structures(path, index=":") -> List:
    """All structures in ``path`` as ``ase.Atoms`` (ASE first, pymatgen as a fallback)."""
    from ase.io import read

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Structure file {path!r} does not exist.")
    def reason(exc):
        text = " ".join(str(exc).split())
        return f"{type(exc).__name__}: {text[:200]}" if text else f"{type(exc).__name__} (no message)"

    try:
        out = read(path, index=index)
    except Exception as ase_exc:
        try:
            from pymatgen.core import Structure
            from pymatgen.io.ase import AseAtomsAdaptor

            out = [AseAtomsAdaptor.get_atoms(Structure.from_file(path))]
        except ImportError:
            raise ValueError(f"Cannot read a structure from {path!r}: ASE says {reason(ase_exc)}") from ase_exc
        except Exception as pmg_exc:
            raise ValueError(f"Cannot read a structure from {path!r}: ASE says {reason(ase_exc)}; "
                             f"pymatgen says {reason(pmg_exc)}") from ase_exc
    if not isinstance(out, list):
        out = [out]
    if not out or not all(len(a) for a in out):
        raise ValueError(f"Cannot read a structure from {path!r}: it contains no atoms.")
    return out


def read_structure(path):
    """The first structure in ``path``."""
    return read_structures(path, index=0)[0]
