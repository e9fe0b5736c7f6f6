"""An ordinary ASE MD script: the only orbdistill line is the calculator.

    python workflows/md_nvt.py calculators/cu-sevennet-v2 --steps 200 --temperature 600
    python workflows/md_nvt.py calculators/cu-sevennet-v2 --structure my_cell.cif --repeat 2
"""

import argparse

from ase import units
from ase.build import bulk
from ase.io import read, write
from ase.md.bussi import Bussi
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

from orbdistill import StudentCalculator


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("package")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--temperature", type=float, default=600.0)
    p.add_argument("--timestep-fs", type=float, default=2.0)
    p.add_argument("--structure", default=None, help="structure file (default: Cu fcc, a = 3.61 Å)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default="md.extxyz")
    args = p.parse_args(argv)

    unit = read(args.structure) if args.structure else bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms = unit.repeat(args.repeat)
    atoms.calc = StudentCalculator(args.package)  # <- the orbdistill line (a package name or folder)

    MaxwellBoltzmannDistribution(atoms, temperature_K=args.temperature)
    Stationary(atoms)
    dyn = Bussi(atoms, timestep=args.timestep_fs * units.fs, temperature_K=args.temperature, taut=100 * units.fs)
    frames = []
    dyn.attach(lambda: frames.append(atoms.copy()), interval=10)
    dyn.run(args.steps)
    write(args.out, frames)
    print(f"{args.steps} steps, final T = {atoms.get_temperature():.0f} K, "
          f"E_pot = {atoms.get_potential_energy() / len(atoms):.4f} eV/atom; wrote {args.out}")
    return atoms


if __name__ == "__main__":
    main()
