"""Harmonic phonons with phonopy: band structure along the standard path of the primitive
cell, density of states on a mesh, and teacher-against-student frequency errors.

Finite displacements (phonopy's default 0.01 Å, symmetry-reduced) in a supercell at least
``min_length`` Å wide in every direction; forces from any ASE calculator. Distilled
students are used for thermal properties, and a student that reproduces forces near
equilibrium on average can still get the curvature of the energy surface wrong: the
phonon frequencies test exactly that curvature.

Example::

    from ase.build import bulk
    from ase.calculators.emt import EMT
    ph = phonons(EMT(), bulk("Cu", "fcc", a=3.59), min_length=8.0)
    ph["frequencies_thz"].max()   # about 7.7 THz for EMT copper
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np


def _diagonal_supercell(atoms, min_length: float) -> np.ndarray:
    """Repetitions of each cell vector so that every perpendicular width is >= min_length."""
    cell = atoms.cell.array
    vol = abs(np.linalg.det(cell))
    widths = np.array([vol / np.linalg.norm(np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3])) for i in range(3)])
    return np.diag([max(1, math.ceil(min_length / w - 1e-9)) for w in widths])


def phonons(calc, atoms, min_length: float = 10.0, displacement: float = 0.01, mesh: int = 12,
            band_points: int = 60, dos_sigma_thz: float = 0.15, qpoints_cartesian=None) -> Dict:
    """Phonons of ``atoms`` (a relaxed, periodic crystal) with the forces of ``calc``.

    Returns a dict with ``supercell`` (repetitions), ``n_displacements``, ``mesh``,
    ``frequencies_thz`` [q, bands] on the mesh, ``band`` (``distances``, ``frequencies_thz``
    [points, bands], ``labels``, ``label_distances``, ``path``) along the primitive cell's
    standard path, ``dos`` (``frequency_thz``, ``dos``), and ``min_frequency_thz`` (negative
    for an unstable, imaginary mode). With ``qpoints_cartesian`` ([n, 3], in 1/Å without the
    2π), also ``qpoint_frequencies_thz`` [n, bands] at those wave vectors.
    """
    from phonopy import Phonopy
    from phonopy.structure.atoms import PhonopyAtoms

    if not np.all(atoms.pbc) or atoms.cell.rank < 3:
        raise ValueError("Phonons need a crystal periodic in three dimensions.")
    unit = PhonopyAtoms(symbols=atoms.get_chemical_symbols(), cell=atoms.cell.array,
                        scaled_positions=atoms.get_scaled_positions())
    sc = _diagonal_supercell(atoms, min_length)
    import warnings

    with warnings.catch_warnings():  # phonopy 4 warns that "auto" is its new default
        warnings.simplefilter("ignore")
        # a loose symmetry tolerance: a relaxed student crystal is symmetric to ~1e-4 Å
        ph = Phonopy(unit, supercell_matrix=sc, primitive_matrix="auto", symprec=1e-3)
    ph.generate_displacements(distance=displacement)
    forces = []
    from ase import Atoms

    for s in ph.supercells_with_displacements:
        a = Atoms(s.symbols, cell=s.cell, scaled_positions=s.scaled_positions, pbc=True)
        a.calc = calc
        f = np.array(a.get_forces(), dtype=np.float64)
        forces.append(f - f.mean(axis=0))  # remove the net force (drift) of the displaced cell
    ph.forces = np.array(forces)
    ph.produce_force_constants()
    ph.symmetrize_force_constants()

    # the full grid (no symmetry reduction): every model's frequencies at the same q-points
    ph.run_mesh([mesh] * 3, with_eigenvectors=False, is_gamma_center=True, is_mesh_symmetry=False)
    mesh_dict = ph.get_mesh_dict()
    freqs = np.asarray(mesh_dict["frequencies"])
    ph.run_total_dos(sigma=dos_sigma_thz)
    dos = ph.get_total_dos_dict()

    prim = ph.primitive
    prim_atoms = Atoms(prim.symbols, cell=prim.cell, scaled_positions=prim.scaled_positions, pbc=True)
    path = prim_atoms.cell.bandpath(npoints=band_points)
    # one q-point list for the whole path; a break in it (",") is a zero-length jump on the axis
    x, special_x, labels = path.get_linear_kpoint_axis()
    ph.run_band_structure([path.kpts])
    band = ph.get_band_structure_dict()
    extra = {}
    if qpoints_cartesian is not None:
        q_red = np.asarray(qpoints_cartesian, dtype=float) @ np.asarray(prim.cell).T
        extra["qpoint_frequencies_thz"] = np.array([ph.get_frequencies(q) for q in q_red])
    return {
        **extra,
        "supercell": np.diag(sc).tolist(),
        "n_atoms_supercell": int(len(ph.supercell)),
        "n_displacements": len(forces),
        "mesh": [mesh] * 3,
        "frequencies_thz": freqs,
        "min_frequency_thz": float(freqs.min()),
        "max_frequency_thz": float(freqs.max()),
        "band": {"distances": np.asarray(x), "frequencies_thz": np.asarray(band["frequencies"][0]),
                 "labels": list(labels), "label_distances": np.asarray(special_x).tolist(), "path": path.path},
        "dos": {"frequency_thz": np.asarray(dos["frequency_points"]), "dos": np.asarray(dos["total_dos"])},
    }


def compare_phonons(reference: Dict, other: Dict) -> Dict:
    """Frequency errors of ``other`` against ``reference`` on the same mesh (THz): MAE and
    largest error over all modes, MAE of the largest frequency, and the overlap of the two
    densities of states (1 = identical)."""
    fr, fo = np.asarray(reference["frequencies_thz"]), np.asarray(other["frequencies_thz"])
    if fr.shape != fo.shape:
        raise ValueError(f"Phonon meshes differ: {fr.shape} vs {fo.shape}.")
    # arrays, or lists when the results come back from a resumed report.json
    d_ref, d_oth = ({k: np.asarray(v) for k, v in r["dos"].items()} for r in (reference, other))
    grid = np.linspace(min(d_ref["frequency_thz"].min(), d_oth["frequency_thz"].min()),
                       max(d_ref["frequency_thz"].max(), d_oth["frequency_thz"].max()), 400)
    g1 = np.interp(grid, d_ref["frequency_thz"], d_ref["dos"], left=0, right=0)
    g2 = np.interp(grid, d_oth["frequency_thz"], d_oth["dos"], left=0, right=0)
    overlap = float(np.trapezoid(np.minimum(g1, g2), grid) / max(np.trapezoid(g1, grid), 1e-12))
    return {
        "frequency_mae_thz": float(np.abs(fo - fr).mean()),
        "frequency_max_error_thz": float(np.abs(fo - fr).max()),
        "max_frequency_error_thz": float(fo.max() - fr.max()),
        "dos_overlap": overlap,
    }


def plot_phonons(results: Dict[str, Dict], path, title: str = "", reference: Optional[str] = None) -> None:
    """Band structures and DOS of several models on one figure (the reference in black)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, r in results.items() if r and not r.get("failed")]
    if not names:
        return
    fig, (ax, axd) = plt.subplots(1, 2, figsize=(9, 4.2), gridspec_kw={"width_ratios": [3, 1]}, sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, name in enumerate(names):
        r = results[name]
        colour = "k" if name == reference else colours[k % len(colours)]
        b = r["band"]
        lines = ax.plot(b["distances"], b["frequencies_thz"], color=colour, lw=1.0 if name == reference else 0.9,
                        ls="-" if name == reference else "--")
        lines[0].set_label(name)
        axd.plot(r["dos"]["dos"], r["dos"]["frequency_thz"], color=colour, ls="-" if name == reference else "--",
                 lw=1.0)
    first = results[names[0]]["band"]
    for xd in first["label_distances"]:
        ax.axvline(xd, color="0.7", lw=0.6)
    ax.set_xticks(first["label_distances"])
    ax.set_xticklabels(["Γ" if lab == "G" else lab for lab in first["labels"]])
    ax.set_xlim(first["distances"][0], first["distances"][-1])
    ax.axhline(0, color="0.5", lw=0.5)
    ax.set_ylabel("frequency (THz)")
    ax.legend(fontsize=8, loc="lower right")
    axd.set_xlabel("DOS")
    axd.set_xticks([])
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
