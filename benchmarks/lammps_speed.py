"""Cost per atom-step of a student in LAMMPS (pair_style orbdistill) on 1 and 2 MPI ranks,
against the same student in ASE and LAMMPS' own EAM, on fcc Cu from 256 to 32,000 atoms.

    python benchmarks/lammps_speed.py                      # 2 cores: the default sizes
    python benchmarks/lammps_speed.py --cells 4 8 --steps-scale 0.5

Every run is NVE MD at 300 K with a 1 fs step: LAMMPS' time is its own "Loop time" of the
timed run after a 2-step warm-up (setup excluded), ASE's the wall time of velocity Verlet
steps after 2 warm-up steps with the calculator's neighbour-list skin (1 Å, as in MD).
Ratios to EAM are within this one run. Writes benchmarks/results/lammps_speed.json and .png.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orbdistill.lammps import build_plugin, ghost_cutoff, lammps_paths, run_lammps  # noqa: E402

LOOP = re.compile(r"Loop time of ([0-9.eE+-]+) on (\d+) procs for (\d+) steps with (\d+) atoms")


def lattice_lines(cells: int) -> list:
    return ["units metal", "atom_style atomic", "boundary p p p", "lattice fcc 3.615",
            f"region box block 0 {cells} 0 {cells} 0 {cells}", "create_box 1 box", "create_atoms 1 box",
            "mass 1 63.546"]


def md_lines(steps: int) -> list:
    return ["velocity all create 300 4928459 mom yes rot yes dist gaussian", "timestep 0.001", "fix md all nve",
            "thermo 1000", "run 2", f"run {steps}"]


def lammps_cost(work: Path, pair_lines: list, cells: int, steps: int, nprocs: int, threads: int) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    run_lammps("\n".join(lattice_lines(cells) + pair_lines + md_lines(steps)) + "\n", work, nprocs=nprocs,
               threads=threads, timeout=3600)
    seconds, procs, n_steps, n_atoms = LOOP.findall((work / "log.lammps").read_text())[-1]
    seconds, n_steps, n_atoms = float(seconds), int(n_steps), int(n_atoms)
    return {"n_atoms": n_atoms, "steps": n_steps, "seconds": seconds,
            "us_per_atom_step": 1e6 * seconds / (n_steps * n_atoms), "ranks": nprocs, "threads_per_rank": threads}


def ase_cost(package: Path, dtype: str, cells: int, steps: int, threads: int) -> dict:
    from ase import units
    from ase.build import bulk
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    from orbdistill import StudentCalculator

    atoms = bulk("Cu", "fcc", a=3.615, cubic=True).repeat(cells)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    atoms.calc = StudentCalculator(package, dtype=dtype, skin=1.0, num_threads=threads, on_extrapolation="ignore")
    dyn = VelocityVerlet(atoms, timestep=1 * units.fs)
    dyn.run(2)
    t0 = time.perf_counter()
    dyn.run(steps)
    seconds = time.perf_counter() - t0
    return {"n_atoms": len(atoms), "steps": steps, "seconds": seconds,
            "us_per_atom_step": 1e6 * seconds / (steps * len(atoms)), "ranks": 1, "threads_per_rank": threads}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--package", default=str(ROOT / "calculators" / "cu-sevennet-v2"))
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--cells", type=int, nargs="+", default=[4, 8, 13, 20], help="box edge in conventional cells "
                   "(4 atoms each): 4, 8, 13, 20 give 256, 2,048, 8,788 and 32,000 atoms")
    p.add_argument("--steps-scale", type=float, default=1.0, help="multiply the timed steps per size")
    p.add_argument("--threads", type=int, default=2, help="cores: threads of one rank, or the number of ranks")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lammps_speed"))
    args = p.parse_args()

    package = Path(args.package)
    model_file = package / f"model_{args.dtype}.lammps.pt"
    plugin = build_plugin()
    eam = Path(lammps_paths()["lmp"]).parent / "share" / "lammps" / "potentials" / "Cu_u3.eam"
    skin = 1.0
    student_pairs = [f"plugin load {plugin}", f"pair_style orbdistill threads {{threads}}",
                     f"pair_coeff * * {model_file.resolve()} Cu", f"neighbor {skin} bin",
                     f"comm_modify cutoff {ghost_cutoff(model_file, skin):.3f}"]
    eam_pairs = ["pair_style eam", f"pair_coeff 1 1 {eam}", "neighbor 1.0 bin"]
    cores = args.threads
    configs = [
        ("EAM (LAMMPS), 1 rank", "eam", 1, 1),
        (f"EAM (LAMMPS), {cores} ranks", "eam", cores, 1),
        (f"student (LAMMPS), 1 rank x {cores} threads", "student", 1, cores),
        (f"student (LAMMPS), {cores} ranks x 1 thread", "student", cores, 1),
        (f"student (ASE calculator), {cores} threads", "ase", 1, cores),
    ]
    rows = []
    with tempfile.TemporaryDirectory(prefix="orbdistill-bench-") as tmp:
        for cells in args.cells:
            n_atoms = 4 * cells ** 3
            steps = max(3, int(args.steps_scale * min(40, 1e5 / n_atoms)))
            for name, what, ranks, threads in configs:
                t0 = time.perf_counter()
                if what == "ase":
                    row = ase_cost(package, args.dtype, cells, steps, threads)
                else:
                    lines = eam_pairs if what == "eam" else [s.format(threads=threads) for s in student_pairs]
                    eam_steps = steps * 20 if what == "eam" else steps  # EAM is fast: time more steps
                    row = lammps_cost(Path(tmp) / f"{what}-{cells}-{ranks}", lines, cells, eam_steps, ranks, threads)
                row.update(model=name, wall_s=round(time.perf_counter() - t0, 1))
                rows.append(row)
                print(f"{name:48s} {row['n_atoms']:6d} atoms  {row['us_per_atom_step']:9.2f} us/atom-step "
                      f"({row['steps']} steps, {row['seconds']:.2f} s)", flush=True)

    by = {(r["model"], r["n_atoms"]): r["us_per_atom_step"] for r in rows}
    for r in rows:
        base = by.get((f"EAM (LAMMPS), {r['ranks']} rank" + ("s" if r["ranks"] > 1 else ""), r["n_atoms"]))
        r["x_eam_same_ranks"] = round(r["us_per_atom_step"] / base, 1) if base else None
    result = {
        "package": package.name, "dtype": args.dtype, "threads": cores, "rows": rows,
        "machine": {"cpu_count": torch.get_num_threads(), "platform": platform.platform(),
                    "torch": torch.__version__, "lammps": lammps_paths()["version"]},
        "protocol": "NVE 300 K, 1 fs, fcc Cu; LAMMPS Loop time of the timed run after 2 warm-up steps; "
                    "ASE velocity Verlet wall time after 2 warm-up steps, skin 1 Å",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    print(markdown(rows))
    plot(rows, out.with_suffix(".png"))


def markdown(rows) -> str:
    sizes = sorted({r["n_atoms"] for r in rows})
    models = list(dict.fromkeys(r["model"] for r in rows))
    by = {(r["model"], r["n_atoms"]): r for r in rows}
    lines = ["| µs per atom-step | " + " | ".join(f"{n:,} atoms" for n in sizes) + " |",
             "|---|" + "---|" * len(sizes)]
    for m in models:
        cells = []
        for n in sizes:
            r = by.get((m, n))
            cells.append("-" if r is None else f"{r['us_per_atom_step']:.2f}" +
                         (f" ({r['x_eam_same_ranks']}x EAM)" if r.get("x_eam_same_ranks") and "EAM" not in m else ""))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in dict.fromkeys(r["model"] for r in rows):
        pts = sorted((r["n_atoms"], r["us_per_atom_step"]) for r in rows if r["model"] == m)
        ax.loglog(*zip(*pts), "o-" if "student" in m else "s--", label=m)
    ax.set_xlabel("atoms")
    ax.set_ylabel("µs per atom-step (wall)")
    ax.set_title("fcc Cu, NVE: student in LAMMPS and ASE against EAM")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
