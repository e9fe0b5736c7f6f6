"""Run a student in LAMMPS from Python: input scripts and a single-point evaluation that
returns ASE's quantities (what the tests compare with the ASE calculator).

>>> from orbdistill.lammps.runner import evaluate          # doctest: +SKIP
>>> out = evaluate(atoms, "model_lammps_float64.pt", nprocs=2)
>>> out["energy"], out["forces"].shape, out["stress"]      # eV, [N, 3] eV/Å, Voigt eV/Å^3
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from . import ghost_cutoff, plugin_path, run_lammps

#: LAMMPS metal units: pressure in bar = eV/Å^3 * NKTV2P (LAMMPS' force->nktv2p)
NKTV2P_METAL = 1.6021765e6


def species_order(atoms, model_file) -> list:
    """Element symbols for LAMMPS' atom types 1..n: the structure's elements in the order of
    the model's species (so one model file gives one type numbering)."""
    import json

    from ase.data import chemical_symbols

    from orbdistill.export.files import read_torchscript_metadata

    species = json.loads(read_torchscript_metadata(model_file)["species"])
    present = set(atoms.get_chemical_symbols())
    unknown = sorted(present - {chemical_symbols[z] for z in species})
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: not among the elements this student was trained on "
                         f"({', '.join(chemical_symbols[z] for z in species)})")
    return [chemical_symbols[z] for z in species if chemical_symbols[z] in present]


def write_data(atoms, path, elements: Sequence[str], velocities: bool = False):
    """LAMMPS data file of ``atoms`` (metal units, atomic style; with ``velocities`` the
    atoms' momenta too), rotated into LAMMPS' lower-triangular frame; returns the
    :class:`ase.calculators.lammps.Prism` that rotates results back."""
    from ase.calculators.lammps import Prism
    from ase.io import write

    if not atoms.cell.rank == 3:
        raise ValueError("LAMMPS needs a cell with three lattice vectors (add vacuum along non-periodic axes)")
    write(path, atoms, format="lammps-data", specorder=list(elements), masses=True, units="metal",
          atom_style="atomic", velocities=velocities)
    return Prism(np.asarray(atoms.get_cell()), pbc=atoms.pbc)


def setup_lines(model_file, elements: Sequence[str], data_file="data.lmp", pbc=(True, True, True),
                skin: float = 1.0, plugin: Optional[Path] = None, pair_args: str = "") -> list:
    """The input lines that read a data file and set up ``pair_style orbdistill``.

    The ghost cutoff is what several ranks need; one rank ignores the shell in the model
    (the ghosts are only carried by LAMMPS' communication, not evaluated)."""
    boundary = " ".join("p" if p else "f" for p in pbc)
    return [
        "units metal",
        "atom_style atomic",
        "atom_modify map yes",
        f"boundary {boundary}",
        f"read_data {data_file}",
        f"plugin load {plugin or plugin_path()}",
        f"pair_style orbdistill {pair_args}".rstrip(),
        f"pair_coeff * * {Path(model_file).resolve()} {' '.join(elements)}",
        f"neighbor {skin} bin",
        f"comm_modify cutoff {ghost_cutoff(model_file, skin):.6f}",
    ]


def evaluate(atoms, model_file, nprocs: int = 1, threads: int = 1, workdir=None, pair_args: str = "") -> dict:
    """Energy, forces, stress and per-atom energies of ``atoms`` computed by LAMMPS with
    ``pair_style orbdistill`` on ``nprocs`` MPI ranks, in ASE's frame and conventions.

    Returns a dict: ``energy`` (eV), ``forces`` [N, 3] (eV/Å), ``energies`` [N] (eV),
    ``stress`` [6] (Voigt xx yy zz yz xz xy, eV/Å^3, ASE sign; only for periodic cells).
    """
    own = workdir is None
    tmp = tempfile.TemporaryDirectory(prefix="orbdistill-lammps-") if own else None
    work = Path(tmp.name if own else workdir)
    try:
        elements = species_order(atoms, model_file)
        prism = write_data(atoms, work / "data.lmp", elements)
        lines = setup_lines(model_file, elements, pbc=atoms.pbc, pair_args=pair_args) + [
            "compute peatom all pe/atom",
            "dump forces all custom 1 forces.dump id fx fy fz c_peatom",
            "dump_modify forces sort id format float %.17g",
            "run 0",
            'print "$(pe:%.17g) $(pxx:%.17g) $(pyy:%.17g) $(pzz:%.17g) $(pxy:%.17g) $(pxz:%.17g) $(pyz:%.17g)" '
            "file result.txt screen no",
        ]
        run_lammps("\n".join(lines) + "\n", work, nprocs=nprocs, threads=threads)
        values = [float(v) for v in (work / "result.txt").read_text().split()]
        rows = np.loadtxt(work / "forces.dump", skiprows=9, ndmin=2)
        rows = rows[np.argsort(rows[:, 0])]
        forces = prism.vector_to_ase(rows[:, 1:4])
        out = {"energy": values[0], "forces": forces, "energies": rows[:, 4]}
        if all(atoms.pbc):
            pxx, pyy, pzz, pxy, pxz, pyz = values[1:]
            p_lmp = np.array([[pxx, pxy, pxz], [pxy, pyy, pyz], [pxz, pyz, pzz]])
            sigma = prism.tensor2_to_ase(-p_lmp / NKTV2P_METAL)
            out["stress"] = np.array([sigma[0, 0], sigma[1, 1], sigma[2, 2], sigma[1, 2], sigma[0, 2], sigma[0, 1]])
        return out
    finally:
        if tmp is not None:
            tmp.cleanup()
