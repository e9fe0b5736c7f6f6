"""Structures per second for a batch of small cells: torch-sim with the whole batch in one
graph against one ASE calculator, one structure at a time.

    python benchmarks/torchsim_batch.py --threads 2

The structures are 100 fcc Cu cells of 32 atoms with lattice constants from 3.55 to 3.70 Å
and rattled positions (every one different). Two tasks:

* single points (energy, forces, stress) of all 100;
* 20 NVE steps of each at 300 K (torch-sim's ``nve`` integrator on the batch; ASE's velocity
  Verlet, a structure at a time, with the calculator's MD skin of 1 Å).

Writes benchmarks/results/torchsim_batch.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def structures(n: int, repeat: int):
    from ase.build import bulk
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    out = []
    for k, a in enumerate(np.linspace(3.55, 3.70, n)):
        atoms = bulk("Cu", "fcc", a=float(a), cubic=True).repeat(repeat)
        atoms.rattle(0.03, seed=k)
        MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(k))
        out.append(atoms)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--package", default="cu-sevennet-v2")
    p.add_argument("--n", type=int, default=100, help="structures in the batch")
    p.add_argument("--repeat", type=int, default=2, help="conventional cells per edge (2: 32 atoms)")
    p.add_argument("--md-steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "torchsim_batch"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    import torch_sim as ts
    from ase import units
    from ase.md.verlet import VelocityVerlet

    from orbdistill import StudentCalculator
    from orbdistill.torchsim import StudentModel

    cells = structures(args.n, args.repeat)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    model = StudentModel(args.package, device=device, dtype=args.dtype)
    rows = []

    # single points
    calc = StudentCalculator(args.package, dtype=args.dtype, device=args.device, on_extrapolation="ignore")
    for atoms in cells[:2]:  # warm-up
        atoms.calc = calc
        atoms.get_forces()
    t0 = time.perf_counter()
    for atoms in cells:
        atoms.calc = calc
        atoms.get_forces()
        atoms.get_stress()
    ase_s = time.perf_counter() - t0
    state = ts.io.atoms_to_state(cells, device=device, dtype=dtype)
    model(state)  # warm-up
    t0 = time.perf_counter()
    model(state)
    batch_s = time.perf_counter() - t0
    rows.append({"task": "single points", "ase_structures_per_s": args.n / ase_s,
                 "torchsim_structures_per_s": args.n / batch_s, "speed_up": ase_s / batch_s})

    # MD steps
    t0 = time.perf_counter()
    for atoms in cells:
        a = atoms.copy()
        a.calc = StudentCalculator(args.package, dtype=args.dtype, device=args.device, skin=1.0,
                                   on_extrapolation="ignore")
        VelocityVerlet(a, timestep=1 * units.fs).run(args.md_steps)
    ase_s = time.perf_counter() - t0
    ts.integrate(system=cells, model=model, integrator=ts.nve, n_steps=2, temperature=300.0, timestep=0.001)
    t0 = time.perf_counter()
    ts.integrate(system=cells, model=model, integrator=ts.nve, n_steps=args.md_steps, temperature=300.0,
                 timestep=0.001)
    batch_s = time.perf_counter() - t0
    n = args.n * args.md_steps
    rows.append({"task": f"NVE steps ({args.md_steps} per structure)", "ase_structures_per_s": n / ase_s,
                 "torchsim_structures_per_s": n / batch_s, "speed_up": ase_s / batch_s})

    result = {"package": args.package, "n_structures": args.n, "atoms_each": len(cells[0]), "threads": args.threads,
              "device": args.device, "dtype": args.dtype, "rows": rows,
              "machine": {"platform": platform.platform(), "torch": torch.__version__}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    print(f"| {args.n} x {len(cells[0])}-atom Cu cells | ASE, one at a time | torch-sim batch | speed-up |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} (structures/s) | {r['ase_structures_per_s']:.1f} | {r['torchsim_structures_per_s']:.1f} "
              f"| {r['speed_up']:.1f}x |")


if __name__ == "__main__":
    main()
