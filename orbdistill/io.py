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
    try:
        out = read(path, index=index)
    except Exception as ase_exc:
        try:
            from pymatgen.core import Structure
            from pymatgen.io.ase import AseAtomsAdaptor

            out = [AseAtomsAdaptor.get_atoms(Structure.from_file(path))]
        except Exception:
            raise ValueError(f"Cannot read a structure from {path!r}: {ase_exc}") from ase_exc
    if not isinstance(out, list):
        out = [out]
    if not out:
        raise ValueError(f"{path!r} contains no structure.")
    return out


def read_structure(path):
    """The first structure in ``path``."""
    return read_structures(path, index=0)[0]
