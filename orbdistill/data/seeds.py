"""Seed structures: read them (supercells come from :func:`orbdistill.structures.supercell`)."""

from __future__ import annotations

import os
from typing import List, Sequence, Union

from ase import Atoms


def parse_seed(spec) -> List[Atoms]:
    """Structures from one seed specification.

    Accepted: an ``ase.Atoms``; a pymatgen ``Structure``; a path to any file ASE or
    pymatgen reads (CIF, POSCAR, extxyz, ...; all frames); or a bulk shorthand
    ``"bulk:Cu:fcc:3.61"`` (element, lattice, a in Å) for ASE's ``bulk``.
    """
    if isinstance(spec, Atoms):
        return [spec.copy()]
    if type(spec).__name__ in ("Structure", "IStructure"):
        from pymatgen.io.ase import AseAtomsAdaptor

        return [AseAtomsAdaptor.get_atoms(spec)]
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        if text.startswith("bulk:"):
            from ase.build import bulk

            parts = text.split(":")
            if len(parts) < 3:
                raise ValueError(f"Bulk seed {text!r}: use 'bulk:ELEMENT:LATTICE[:A]', e.g. 'bulk:Cu:fcc:3.61'.")
            kwargs = {"crystalstructure": parts[2]}
            if len(parts) > 3 and parts[3]:
                kwargs["a"] = float(parts[3])
            try:
                return [bulk(parts[1], cubic=parts[2] in ("fcc", "bcc", "diamond", "zincblende", "rocksalt"), **kwargs)]
            except Exception as exc:
                raise ValueError(f"Cannot build bulk seed {text!r}: {exc}") from exc
        from orbdistill.io import read_structures

        return read_structures(text)
    raise TypeError(f"Cannot use {type(spec).__name__} as a seed structure.")


def load_seeds(specs: Union[Sequence, str, Atoms]) -> List[Atoms]:
    """All seed structures from a list of specifications (see :func:`parse_seed`)."""
    if isinstance(specs, (str, os.PathLike, Atoms)) or type(specs).__name__ == "Structure":
        specs = [specs]
    out = []
    for s in specs:
        out.extend(parse_seed(s))
    if not out:
        raise ValueError("No seed structures were given.")
    return out
