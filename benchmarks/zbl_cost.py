"""What the ZBL term costs in a student's step: one package's weights with and without it,
alternated, on a rattled fcc Cu cell of 256 atoms (energy, forces and stress through ASE).

    python benchmarks/zbl_cost.py [--package calculators/cu-sevennet-v2] [--threads 2] [--runs 6]

Writes ``zbl_cost.json``: per run the median step time (ms) of 25 steps after 5 warm-up
ones (:func:`orbdistill.validation.throughput.time_step`), and the ratio of the medians over runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--package", default="calculators/cu-sevennet-v2")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=6)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    import torch
    from ase.build import bulk

    torch.set_num_threads(args.threads)
    from orbdistill import StudentCalculator
    from orbdistill.models import load_student
    from orbdistill.models.layers import ZBLRepulsion

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(4)
    atoms.rattle(0.05, seed=0)
    from orbdistill.validation.throughput import time_step

    times = {"without": [], "with": []}
    for name in ("without", "with") * args.runs:
        model = load_student(args.package)
        model.repulsion = ZBLRepulsion() if name == "with" else None
        times[name].append(time_step(StudentCalculator(model, device="cpu"), atoms, repeats=25, warmup=5)["ms_per_step"])
    out = {"package": args.package, "n_atoms": len(atoms), "threads": args.threads, "runs": args.runs,
           "step_ms": times, "ratio_of_medians": statistics.median(times["with"]) / statistics.median(times["without"])}
    path = Path(args.out) / "zbl_cost.json"
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
