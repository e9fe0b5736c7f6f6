"""Relaxations, equations of state and elastic constants through any ASE calculator.

Everything here takes a plain ASE calculator, so teacher and student go through exactly the
same code. Conventions: ASE stress (Voigt xx, yy, zz, yz, xz, xy; positive = tensile),
Voigt strains with engineering shear (e4 = 2 e_yz), elastic constants in GPa.
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np

log = logging.getLogger(__name__)

OPTIMIZERS = ("FIRE", "BFGS", "LBFGS")


def _optimizer(name: str):
    from ase import optimize

    if name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {name!r}; choose from {OPTIMIZERS}.")
    return getattr(optimize, name)


def relax(calc, atoms, fmax: float = 0.01, steps: int = 500, optimizer: str = "FIRE", relax_cell: bool = True,
          trajectory: Optional[str] = None) -> dict:
    """Relax positions (and the cell, through ``FrechetCellFilter``) until max force < ``fmax``.

    Args:
        calc: ASE calculator
        atoms: starting structure (copied)
        fmax: force criterion (eV/Å); with the cell filter it applies to the stress too
        steps: maximum optimiser steps
        optimizer: "FIRE", "BFGS" or "LBFGS"
        relax_cell: also relax the cell (only for fully periodic structures)
    Returns:
        ``atoms`` (relaxed copy, no calculator), ``energy_ev``, ``energy_per_atom_ev``,
        ``steps``, ``converged``, ``max_force_ev_a``, ``cell_lengths_a``, ``cell_angles_deg``,
        ``volume_per_atom_a3`` (None without volume).
    """
    from ase.filters import FrechetCellFilter

    atoms = atoms.copy()
    atoms.calc = calc
    cell = relax_cell and all(atoms.pbc)
    target = FrechetCellFilter(atoms) if cell else atoms
    opt = _optimizer(optimizer)(target, logfile=None, trajectory=trajectory)
    try:
        converged = bool(opt.run(fmax=fmax, steps=steps))
    except Exception as exc:
        raise RuntimeError(f"relaxation with {type(calc).__name__} failed: {exc}") from exc
    e = float(atoms.get_potential_energy())
    fm = float(np.linalg.norm(atoms.get_forces(), axis=1).max())
    out = atoms.copy()
    out.calc = None
    return {
        "atoms": out, "energy_ev": e, "energy_per_atom_ev": e / len(atoms), "steps": int(opt.nsteps),
        "converged": converged, "max_force_ev_a": fm,
        "cell_lengths_a": atoms.cell.cellpar()[:3].tolist(), "cell_angles_deg": atoms.cell.cellpar()[3:].tolist(),
        "volume_per_atom_a3": float(atoms.get_volume() / len(atoms)) if all(atoms.pbc) else None,
    }


def perturbed(atoms, rattle_a: float = 0.05, strain: float = 0.02, seed: int = 0):
    """A copy with positions rattled by ``rattle_a`` Å and the cell strained by a random
    symmetric strain with components up to ``strain``."""
    rng = np.random.default_rng(seed)
    out = atoms.copy()
    if all(out.pbc) and strain:
        e = rng.uniform(-strain, strain, size=(3, 3))
        e = 0.5 * (e + e.T)
        out.set_cell(out.cell.array @ (np.eye(3) + e), scale_atoms=True)
    out.positions = out.positions + rng.normal(scale=rattle_a, size=out.positions.shape)
    return out


def equation_of_state(calc, atoms, max_linear_strain: float = 0.02, points: int = 7, eos: str = "birchmurnaghan",
                      relax_ions: bool = False, fmax: float = 0.01) -> dict:
    """Energy-volume curve by isotropic scaling and its fit.

    Args:
        atoms: a (relaxed) periodic structure
        max_linear_strain: cells scaled by (1 + s) for s in [-max, +max]
        points: number of volumes
        eos: any ASE equation of state ("birchmurnaghan", "murnaghan", "sj", ...)
        relax_ions: relax positions at every volume (needed when atoms are not fixed by symmetry)
    Returns:
        ``volumes_a3``, ``energies_ev`` (per cell), ``v0_a3``, ``e0_ev``, ``bulk_modulus_gpa``.
    """
    from ase import units
    from ase.eos import EquationOfState

    if not all(atoms.pbc):
        raise ValueError("an equation of state needs a fully periodic structure")
    vols, ens = [], []
    for s in np.linspace(-max_linear_strain, max_linear_strain, points):
        at = atoms.copy()
        at.set_cell(atoms.cell.array * (1.0 + s), scale_atoms=True)
        if relax_ions:
            at = relax(calc, at, fmax=fmax, relax_cell=False)["atoms"]
        at.calc = calc
        vols.append(float(at.get_volume()))
        ens.append(float(at.get_potential_energy()))
    fit = EquationOfState(vols, ens, eos=eos)
    v0, e0, b = fit.fit()
    return {"volumes_a3": vols, "energies_ev": ens, "v0_a3": float(v0), "e0_ev": float(e0),
            "bulk_modulus_gpa": float(b / units.GPa), "eos": eos, "n_atoms": len(atoms)}


def voigt_strain_tensor(component: int, magnitude: float) -> np.ndarray:
    """Symmetric 3x3 strain for a Voigt component (0..5 = xx, yy, zz, yz, xz, xy) with
    engineering shear: component 3 with magnitude e gives e_yz = e_zy = e / 2."""
    pairs = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]
    i, j = pairs[component]
    eps = np.zeros((3, 3))
    if i == j:
        eps[i, i] = magnitude
    else:
        eps[i, j] = eps[j, i] = magnitude / 2.0
    return eps


def elastic_constants(calc, atoms, strain: float = 0.005, relax_ions: bool = False, fmax: float = 0.005) -> dict:
    """Elastic tensor C_ij (GPa, Voigt) from central differences of the stress.

    C_ij = (sigma_i(+e_j) - sigma_i(-e_j)) / (2 e), measured from ``atoms`` as the
    reference (it should be relaxed, so that the residual stress is small). Clamped-ion
    constants unless ``relax_ions``.

    Returns ``c_gpa`` [6][6], ``c11/c12/c44`` (cubic averages), ``bulk_modulus_voigt_gpa``,
    ``residual_stress_gpa`` and ``symmetry_error_gpa`` (largest |C_ij - C_ji|).
    """
    from ase import units

    if not all(atoms.pbc):
        raise ValueError("elastic constants need a fully periodic structure")
    ref = atoms.copy()
    ref.calc = calc
    s0 = ref.get_stress(voigt=True) / units.GPa
    c = np.zeros((6, 6))
    for j in range(6):
        sig = []
        for sgn in (+1, -1):
            at = atoms.copy()
            eps = voigt_strain_tensor(j, sgn * strain)
            at.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
            if relax_ions:
                at = relax(calc, at, fmax=fmax, relax_cell=False)["atoms"]
            at.calc = calc
            sig.append(at.get_stress(voigt=True) / units.GPa)
        c[:, j] = (sig[0] - sig[1]) / (2.0 * strain)
    c11 = float(np.mean([c[0, 0], c[1, 1], c[2, 2]]))
    c12 = float(np.mean([c[0, 1], c[0, 2], c[1, 2], c[1, 0], c[2, 0], c[2, 1]]))
    c44 = float(np.mean([c[3, 3], c[4, 4], c[5, 5]]))
    return {
        "c_gpa": c.tolist(), "c11_gpa": c11, "c12_gpa": c12, "c44_gpa": c44,
        "bulk_modulus_voigt_gpa": float((c[0, 0] + c[1, 1] + c[2, 2] + 2 * (c[0, 1] + c[0, 2] + c[1, 2])) / 9.0),
        "residual_stress_gpa": s0.tolist(), "symmetry_error_gpa": float(np.abs(c - c.T).max()),
        "strain": strain, "relax_ions": relax_ions,
    }
