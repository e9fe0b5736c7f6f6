"""Time per MD step (energy, forces, stress through the ASE calculator) and atom-steps/s of
teachers and students on Cu fcc from 32 to about 2,000 atoms, all in one run.

    python benchmarks/student_speed.py --threads 2
    python benchmarks/student_speed.py --threads 2 --goals-only   # the speed goals alone

Orb teachers and untrained students use random weights (speed does not depend on the
weights). Writes benchmarks/results/student_speed.json and .png and prints the table and
the target ratios at 256 atoms.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from orbdistill.calculator import StudentCalculator
from orbdistill.models import build_student
from orbdistill.teachers import load_teacher
from orbdistill.validation.throughput import run_speed_table, speed_table_markdown, write_speed_results


def ratios_at(rows, n_atoms=256):
    t = {r["model"]: r["ms_per_step"] for r in rows if r["n_atoms"] == n_atoms and "ms_per_step" in r}

    def ratio(a, b):
        return round(t[a] / t[b], 2) if a in t and b in t else None

    return {
        "n_atoms": n_atoms,
        "v1 speed-up over orb-v3-conservative-20-omat (target >= 3)": ratio("orb-v3-conservative-20-omat", "student v1"),
        "v2 speed-up over orb-v3-conservative-inf-omat (target >= 100)": ratio("orb-v3-conservative-inf-omat", "student v2"),
        "v2 speed-up over SevenNet-0 (target >= 30)": ratio("SevenNet-0", "student v2"),
        "v2 time / EMT time (target <= 4)": ratio("student v2", "EMT (ASE)"),
        "v2-e3nn speed-up over orb-v3-conservative-inf-omat": ratio("orb-v3-conservative-inf-omat", "student v2-e3nn"),
    }


def fcc_cu(n_atoms: int, rattle: float = 0.05):
    """fcc Cu with exactly ``n_atoms`` = 4 a b c atoms, the most cubic (a, b, c) box."""
    from ase.build import bulk

    cells = n_atoms // 4
    if 4 * cells != n_atoms:
        raise ValueError(f"fcc cells hold 4 atoms; {n_atoms} is not a multiple of 4")
    best = None
    for a in range(1, cells + 1):
        for b in range(a, cells // a + 1):
            if cells % (a * b) == 0:
                c = cells // (a * b)
                if c >= b and (best is None or c / a < best[2] / best[0]):
                    best = (a, b, c)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(best)
    atoms.rattle(rattle, seed=0)
    return atoms


def md_step_ms(calc, atoms, steps: int, warmup: int = 2, timestep_fs: float = 2.0):
    """Median wall time (ms) of a velocity-Verlet NVE step from 300 K (one force call per
    step, as ASE's integrators make), and the neighbour-list rebuilds per step where the
    calculator counts them."""
    import numpy as np
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    atoms = atoms.copy()
    atoms.calc = calc
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    md = VelocityVerlet(atoms, timestep=timestep_fs * units.fs)
    md.run(warmup)
    stats0 = getattr(calc, "neighbour_list_stats", None)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        md.run(1)
        if atoms.cell.rank == 3:
            atoms.get_stress()  # the step: energy, forces and stress (computed in the same call)
        times.append(1e3 * (time.perf_counter() - t0))
    builds = None
    if stats0 is not None:
        s1 = calc.neighbour_list_stats
        builds = round((s1["builds"] - stats0["builds"]) / max(s1["calls"] - stats0["calls"], 1), 3)
    return float(np.median(times)), builds


def speed_goals(sizes=(256, 2048, 8000), rounds: int = 3, repeats: int = 3, package="cu-sevennet-v2") -> dict:
    """The speed issue's goals: the packaged v2 student as a user gets it (fused kernels,
    out-of-domain signal) against ASE's EMT, per velocity-Verlet MD step (energy and forces;
    add stress for NPT), float32.
    Models are timed in turn, ``rounds`` times per size (median of medians), so that a
    slow spell of the machine hits them alike. Also the default path's agreement with the
    eager model (the accuracy goal)."""
    import numpy as np

    factories = {
        "EMT (ASE)": lambda: load_teacher("emt").calculator(),
        "v2 package (default: fused kernels)": lambda: StudentCalculator(package),
        "v2 package, skin 0.3 Å": lambda: StudentCalculator(package, skin=0.3),
        "v2 package, eager": lambda: StudentCalculator(package, fused_kernels=False),
    }
    calcs = {k: f() for k, f in factories.items()}
    rows = []
    for n in sizes:
        atoms = fcc_cu(n)
        times = {k: [] for k in calcs}
        builds = {}
        for _ in range(rounds):
            for k, c in calcs.items():
                ms, builds[k] = md_step_ms(c, atoms, steps=repeats)
                times[k].append(ms)
        for k in calcs:
            ms = float(np.median(times[k]))
            rows.append({"model": k, "n_atoms": n, "ms_per_step": round(ms, 2),
                         "us_per_atom_step": round(1e3 * ms / n, 2), "rounds_ms": [round(t, 2) for t in times[k]],
                         "neighbour_list_builds_per_step": builds[k]})
        print(f"{n} atoms: " + ", ".join(f"{k} {np.median(times[k]):.1f} ms" for k in calcs), flush=True)
    ratios = {}
    for n in sizes:
        t = {r["model"]: r["ms_per_step"] for r in rows if r["n_atoms"] == n}
        ratios[str(n)] = {
            "default / EMT (goal <= 1.0)": round(t["v2 package (default: fused kernels)"] / t["EMT (ASE)"], 2),
            "skin 0.3 / EMT": round(t["v2 package, skin 0.3 Å"] / t["EMT (ASE)"], 2),
            "eager / EMT": round(t["v2 package, eager"] / t["EMT (ASE)"], 2),
            "eager / default": round(t["v2 package, eager"] / t["v2 package (default: fused kernels)"], 2),
        }
    # accuracy: the default (fused) path against the eager model on the same structure
    agreement = {}
    atoms = fcc_cu(sizes[0], rattle=0.1)
    for dtype in ("float64", "float32"):
        out = {}
        for fused in (True, False):
            a = atoms.copy()
            a.calc = StudentCalculator(package, dtype=dtype, fused_kernels=fused)
            out[fused] = (a.get_potential_energy(), a.get_forces(), a.get_stress())
        agreement[dtype] = {"energy_per_atom_ev": float(abs(out[True][0] - out[False][0]) / len(atoms)),
                            "forces_max_ev_a": float(np.abs(out[True][1] - out[False][1]).max()),
                            "stress_max_ev_a3": float(np.abs(out[True][2] - out[False][2]).max())}
    return {"rows": rows, "ratios": ratios, "fused_vs_eager": agreement, "rounds": rounds, "repeats": repeats}


def lammps_goal(cells: int = 20, package="cu-sevennet-v2", dtype: str = "float32", ranks: int = 2) -> dict:
    """The LAMMPS goal: the student's cost per atom-step on ``ranks`` MPI ranks against EAM's
    (``Cu_u3.eam``) on as many ranks, at 4 cells^3 atoms (32,000 by default), NVE 300 K,
    LAMMPS' own loop time; one rank with ``ranks`` threads for reference."""
    import sys
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from lammps_speed import lammps_cost  # noqa: E402 (the LAMMPS benchmark's own runner)

    from orbdistill.lammps import build_plugin, ghost_cutoff, lammps_paths
    from orbdistill.packages import find_package

    model_file = find_package(package) / f"model_{dtype}.lammps.pt"
    plugin = build_plugin()
    eam = Path(lammps_paths()["lmp"]).parent / "share" / "lammps" / "potentials" / "Cu_u3.eam"
    student = [f"plugin load {plugin}", "pair_style orbdistill threads {threads}", f"pair_coeff * * {model_file} Cu",
               "neighbor 1.0 bin", f"comm_modify cutoff {ghost_cutoff(model_file, 1.0):.3f}"]
    n_atoms = 4 * cells ** 3
    steps = max(3, int(min(40, 1e5 / n_atoms)))
    out = {"n_atoms": n_atoms, "ranks": ranks, "dtype": dtype}
    with tempfile.TemporaryDirectory(prefix="orbdistill-goal-") as tmp:
        out["eam_us"] = lammps_cost(Path(tmp) / "eam", ["pair_style eam", f"pair_coeff 1 1 {eam}", "neighbor 1.0 bin"],
                                    cells, 20 * steps, ranks, 1)["us_per_atom_step"]
        out["student_us"] = lammps_cost(Path(tmp) / "student", [x.format(threads=1) for x in student], cells, steps,
                                        ranks, 1)["us_per_atom_step"]
        out["student_1_rank_us"] = lammps_cost(Path(tmp) / "student1", [x.format(threads=ranks) for x in student],
                                               cells, steps, 1, ranks)["us_per_atom_step"]
    out["student / EAM, same ranks (goal <= 20)"] = round(out["student_us"] / out["eam_us"], 1)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 108, 256, 500, 864, 2048])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-step-seconds", type=float, default=30.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip-teachers", action="store_true")
    p.add_argument("--out", default="benchmarks/results/student_speed")
    p.add_argument("--goals-only", action="store_true", help="only the speed goals (packaged v2 vs EMT at 256, "
                   "2,048 and 8,000 atoms), written to <out>_goals.json")
    p.add_argument("--goal-sizes", type=int, nargs="+", default=[256, 2048, 8000])
    p.add_argument("--lammps-cells", type=int, default=20, help="LAMMPS goal box: 4 cells^3 atoms (20: 32,000)")
    p.add_argument("--no-lammps", action="store_true", help="skip the LAMMPS goal")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    goals = speed_goals(tuple(args.goal_sizes))
    if not args.no_lammps:
        goals["lammps"] = lammps_goal(args.lammps_cells)
    goals["meta"] = {"threads": args.threads, "torch": torch.__version__, "cpu": platform.processor(),
                     "structure": "fcc Cu a = 3.61 Å, rattled 0.05 Å", "dtype": "float32",
                     "statistic": f"median over {goals['rounds']} interleaved rounds of medians of {goals['repeats']} steps"}
    Path(args.out + "_goals.json").write_text(json.dumps(goals, indent=1))
    print(json.dumps({"ratios": goals["ratios"], "fused_vs_eager": goals["fused_vs_eager"],
                      "lammps": goals.get("lammps")}, indent=1))
    if args.goals_only:
        return
    dev = args.device
    f = {"EMT (ASE)": lambda: load_teacher("emt").calculator()}
    if not args.skip_teachers:
        f["SevenNet-0"] = lambda: load_teacher("sevennet-0", device=dev).calculator()
        for n in ("orb-v3-conservative-inf-omat", "orb-v3-conservative-20-omat", "orb-v3-direct-20-omat"):
            f[n] = lambda n=n: load_teacher(n, weights="random", device=dev).calculator()
    for kind in ("v1", "v2", "v2-e3nn"):
        f[f"student {kind}"] = lambda kind=kind: StudentCalculator(build_student(kind, [29]), device=dev)
    rows = run_speed_table(f, args.sizes, repeats=args.repeats, max_step_seconds=args.max_step_seconds)
    meta = {"threads": args.threads, "device": dev, "torch": torch.__version__, "statistic": "median",
            "repeats": args.repeats, "structure": "Cu fcc a=3.61 Å, rattled 0.05 Å", "cpu": platform.processor(),
            "note": "Orb teachers and students with random weights; models whose step exceeds "
                    f"{args.max_step_seconds} s skip larger sizes"}
    meta["ratios"] = ratios_at(rows)
    write_speed_results(rows, meta, args.out + ".json", args.out + ".png", title="teachers and students")
    print(speed_table_markdown(rows))
    print(json.dumps(meta["ratios"], indent=1))


if __name__ == "__main__":
    main()
