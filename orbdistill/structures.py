"""Structure builders shared by generation, validation, profiling and benchmarks.

One place for: the reference crystal of an element, the Cu fcc test cell of a given size,
and the supercell search. ``ase.build.find_optimal_cell_shape`` was considered for the
supercell: for atom counts that cannot form a cube it returns skewed cells (angles of
79-113 deg for 64 atoms of primitive fcc, 96-115 deg for 100 atoms of the cubic cell) and costs
0.3-0.9 s a call, so a search over
diagonal repetitions is used instead.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np


def reference_crystal(species: Sequence[str]):
    """ASE's reference crystal of a single element (the cubic cell where one exists)."""
    from ase.build import bulk

    if len(species) != 1:
        raise ValueError(f"The students cover several elements ({', '.join(species)}); pass a structure (--structure FILE).")
    try:
        return bulk(species[0], cubic=True)
    except Exception:
        try:
            return bulk(species[0])
        except Exception as exc:
            raise ValueError(f"ASE has no reference crystal for {species[0]}; pass a structure (--structure FILE).") from exc


def cu_fcc(n_atoms: int = 256, a: float = 3.61, rattle: float = 0.05, seed: int = 0):
    """Cu fcc cubic supercell with about ``n_atoms`` atoms (4 k^3), rattled by ``rattle`` Å
    (a small rattle breaks exact ties in k-nearest-neighbour graphs)."""
    from ase.build import bulk

    k = max(1, int(round((n_atoms / 4) ** (1 / 3))))
    atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat(k)
    if rattle:
        atoms.rattle(rattle, seed=seed)
    return atoms


def supercell(atoms, n_target: int, at_least: bool = True):
    """The most compact diagonal repetition of ``atoms`` with at least (``at_least``) or
    closest to ``n_target`` atoms.

    Repetitions keep the perpendicular widths of the supercell as equal as possible;
    non-periodic axes are never repeated (a molecule is returned as it is).
    """
    n0 = len(atoms)
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if not pbc.any():
        return atoms.copy()
    cell = atoms.cell.array
    vol = abs(np.linalg.det(cell))
    if pbc.all() and vol > 0:
        widths = np.array([vol / np.linalg.norm(np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3])) for i in range(3)])
    else:
        widths = np.linalg.norm(cell, axis=1)
    axes = np.flatnonzero(pbc)
    w = widths[axes]
    k = max(1.0, (n_target / n0) ** (1 / len(axes)))
    ideal = k * np.prod(w) ** (1 / len(axes)) / w
    best, best_key = None, None
    ranges = [range(max(1, int(np.floor(x)) - 1), int(np.ceil(x)) + 2) for x in ideal]
    for reps in itertools.product(*ranges):
        n = n0 * int(np.prod(reps))
        if at_least and n < n_target:
            continue
        ws = w * np.array(reps)
        key = (n / n_target if at_least else abs(np.log(n / n_target))) + 0.5 * (ws.max() / ws.min() - 1.0)
        if best_key is None or key < best_key:
            best, best_key = reps, key
    if best is None:
        best = tuple(int(np.ceil(x)) for x in ideal)
    full = [1, 1, 1]
    for ax, r in zip(axes, best):
        full[ax] = int(r)
    return atoms.repeat(full)


def molecular_liquid(molecule="H2O", n_molecules: int = 64, density_g_cm3: float = 1.0, seed: int = 0,
                     min_distance: float = 1.9, max_tries: int = 5000):
    """A cubic periodic box of ``n_molecules`` copies of ``molecule`` at ``density_g_cm3``.

    Molecules are inserted one at a time at a random centre with a random rotation; a
    placement whose atoms come closer than ``min_distance`` Å to another molecule's is drawn
    again (random sequential insertion, as packing tools do). The box is a start for MD, not
    an equilibrated liquid: run the model at temperature before sampling it.

    Args:
        molecule: a name known to ``ase.build.molecule`` or an ``ase.Atoms`` molecule
        n_molecules: number of molecules
        density_g_cm3: mass density of the box
        seed: seeds the centres and rotations (the same seed gives the same box)
        min_distance: the smallest distance allowed between atoms of different molecules (Å)
    Returns:
        ``ase.Atoms``, periodic, molecules whole and listed one after another.

    >>> box = molecular_liquid("H2O", 32, density_g_cm3=1.0)
    >>> len(box), round(float(box.get_masses().sum() / 0.602214 / box.get_volume()), 3)
    (96, 1.0)
    """
    from ase import Atoms
    from ase.build import molecule as ase_molecule
    from scipy.spatial.transform import Rotation

    if isinstance(molecule, str):
        try:
            mol = ase_molecule(molecule)
        except KeyError:
            raise ValueError(f"unknown molecule {molecule!r}: give a name of ase.build.molecule's G2 set "
                             f"(e.g. 'H2O', 'CH3OH', 'CO2') or an ase.Atoms molecule") from None
    else:
        mol = molecule.copy()
    if n_molecules < 1:
        raise ValueError(f"n_molecules must be at least 1, got {n_molecules}")
    if not density_g_cm3 > 0:
        raise ValueError(f"density_g_cm3 must be positive, got {density_g_cm3}")
    mass_g = float(mol.get_masses().sum()) * n_molecules / 6.02214076e23
    length = (mass_g / density_g_cm3 * 1e24) ** (1.0 / 3.0)  # Å
    body = mol.positions - mol.get_center_of_mass()
    rng = np.random.default_rng(seed)
    placed = np.zeros((0, 3))
    for i in range(n_molecules):
        for _ in range(max_tries):
            pos = rng.uniform(0.0, length, 3) + Rotation.random(random_state=rng).apply(body)
            if len(placed):
                d = pos[:, None, :] - placed[None, :, :]
                d -= length * np.round(d / length)
                if np.sqrt((d ** 2).sum(-1)).min() < min_distance:
                    continue
            placed = np.vstack([placed, pos])
            break
        else:
            raise RuntimeError(f"could not place molecule {i + 1} of {n_molecules} {min_distance} Å from the others "
                               f"after {max_tries} tries in a {length:.2f} Å box; lower the density or min_distance")
    cell = np.eye(3) * length
    return Atoms(list(mol.symbols) * n_molecules, positions=placed, cell=cell, pbc=True)
