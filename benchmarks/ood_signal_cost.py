"""What the out-of-domain signal costs an MD step: the packaged student with no signal, with
the distance only, and with the distance and the force-error estimate (the default).

    python benchmarks/ood_signal_cost.py --package cu-sevennet-v2 --threads 2 [--sizes 256 2048]

One velocity-Verlet step (energy, forces, stress) through ASE on rattled fcc Cu, float32,
the default backend; the three calculators are timed in turn, ``--rounds`` times per size
(median of the rounds' medians), so a slow spell of the machine hits them alike. Writes
``benchmarks/results/ood_signal_cost_<package>.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--package", default="cu-sevennet-v2")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 2048])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from student_speed import fcc_cu, md_step_ms

    from orbdistill import StudentCalculator
    from orbdistill.packages import find_package

    pkg = find_package(args.package)

    def calc(level):
        c = StudentCalculator(pkg, on_extrapolation="ignore")
        if level == "no signal":
            c.domain = None
        elif level == "distance only":
            c.force_error_model = None
        return c

    levels = ("no signal", "distance only", "distance and force-error estimate")
    calcs = {k: calc(k) for k in levels}
    rows = []
    for n in args.sizes:
        atoms = fcc_cu(n, rattle=0.05)
        times = {k: [] for k in levels}
        for _ in range(args.rounds):
            for k, c in calcs.items():
                times[k].append(md_step_ms(c, atoms, steps=args.steps)[0])
        med = {k: float(np.median(v)) for k, v in times.items()}
        rows.append({"n_atoms": n, "ms_per_step": med, "rounds_ms": times,
                     "default / no signal": med[levels[2]] / med[levels[0]],
                     "default / distance only": med[levels[2]] / med[levels[1]]})
        print(f"{n} atoms: " + ", ".join(f"{k} {v:.1f} ms" for k, v in med.items()), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"ood_signal_cost_{pkg.name}.json").write_text(json.dumps(
        {"package": pkg.name, "threads": args.threads, "rounds": args.rounds, "steps": args.steps, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
