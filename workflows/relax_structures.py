"""Relax every structure in a folder with a packaged student (positions and cell).

An ordinary ASE script: FIRE (or BFGS) on a FrechetCellFilter, one relaxed file per input
and a CSV summary. The only orbdistill line is the calculator.

    python workflows/relax_structures.py calculators/cu-sevennet-v2 data/structures --out relaxed
"""

import argparse
import csv
import os
from pathlib import Path

import numpy as np
from ase.filters import FrechetCellFilter
from ase.io import read, write
from ase.optimize import BFGS, FIRE

from orbdistill import StudentCalculator

PATTERNS = ("*.cif", "*.vasp", "POSCAR*", "*.xyz", "*.extxyz", "*.traj", "*.json")


def relax_one(atoms, calc, fmax, steps, optimizer, log):
    atoms.calc = calc
    cell = all(atoms.pbc)  # the cell relaxes only for fully periodic structures
    target = FrechetCellFilter(atoms) if cell else atoms
    opt = {"FIRE": FIRE, "BFGS": BFGS}[optimizer](target, logfile=log)
    converged = opt.run(fmax=fmax, steps=steps)
    return bool(converged), opt.nsteps


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("package", help="student package folder")
    p.add_argument("folder", help="folder of structure files (CIF, POSCAR, extxyz, ...)")
    p.add_argument("--out", default="relaxed", help="output folder")
    p.add_argument("--fmax", type=float, default=0.01, help="force criterion, eV/Å")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--optimizer", choices=["FIRE", "BFGS"], default="FIRE")
    args = p.parse_args(argv)

    files = sorted({f for pat in PATTERNS for f in Path(args.folder).glob(pat) if f.is_file()})
    if not files:
        raise SystemExit(f"no structure files ({', '.join(PATTERNS)}) in {args.folder}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    calc = StudentCalculator(args.package)  # <- the orbdistill line (a package name or folder)

    rows = []
    for f in files:
        row = {"file": f.name}
        try:
            atoms = read(f)
            e0 = atoms.copy()
            e0.calc = calc
            row["energy_start_ev_atom"] = e0.get_potential_energy() / len(atoms)
            converged, nsteps = relax_one(atoms, calc, args.fmax, args.steps, args.optimizer, str(out / f"{f.stem}.log"))
            a, b, c, alpha, beta, gamma = atoms.cell.cellpar()
            row.update(
                n_atoms=len(atoms), formula=atoms.get_chemical_formula(), converged=converged, steps=nsteps,
                energy_ev_atom=atoms.get_potential_energy() / len(atoms),
                max_force_ev_a=float(np.linalg.norm(atoms.get_forces(), axis=1).max()),
                volume_a3_atom=atoms.get_volume() / len(atoms) if all(atoms.pbc) else "",
                a=a, b=b, c=c, alpha=alpha, beta=beta, gamma=gamma, error="",
            )
            atoms.calc = None
            write(out / f"{f.stem}_relaxed.extxyz", atoms)
        except Exception as exc:  # e.g. an element the student was not trained on: record and go on
            row["error"] = f"{type(exc).__name__}: {exc}"
        rows.append(row)
        print(f"{f.name}: " + (row["error"] or f"{row['steps']} steps, E = {row['energy_ev_atom']:.4f} eV/atom, "
                                                f"converged {row['converged']}"))

    fields = ["file", "formula", "n_atoms", "converged", "steps", "energy_start_ev_atom", "energy_ev_atom",
              "max_force_ev_a", "volume_a3_atom", "a", "b", "c", "alpha", "beta", "gamma", "error"]
    tmp = out / "summary.csv.tmp"
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, out / "summary.csv")
    print(f"wrote {out / 'summary.csv'}")
    return rows


if __name__ == "__main__":
    main()
