"""Time per MD step (energy, forces, stress through the ASE calculator) of the teachers
on Cu fcc from 32 to about 1,000 atoms.

    python benchmarks/teacher_speed.py --threads 2

Orb models use random weights (speed does not depend on the weights). Writes
benchmarks/results/teacher_speed.json and .png, and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import platform

import torch

from orbdistill.teachers import load_teacher
from orbdistill.validation.throughput import run_speed_table, speed_table_markdown, write_speed_results

ORB = ["orb-v3-conservative-inf-omat", "orb-v3-conservative-20-omat", "orb-v3-direct-20-omat"]


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 108, 256, 500, 864])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="benchmarks/results/teacher_speed")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    factories = {
        "EMT (ASE)": lambda: load_teacher("emt").calculator(),
        "SevenNet-0": lambda: load_teacher("sevennet-0", device=args.device).calculator(),
    }
    for name in ORB:
        factories[f"{name} (random)"] = (lambda n=name: load_teacher(n, weights="random", device=args.device).calculator())
    rows = run_speed_table(factories, args.sizes, repeats=args.repeats)
    meta = {"threads": args.threads, "device": args.device, "torch": torch.__version__, "statistic": "median",
            "repeats": args.repeats, "structure": "Cu fcc a=3.61 Å, rattled 0.05 Å", "cpu": platform.processor()}
    write_speed_results(rows, meta, args.out + ".json", args.out + ".png", title="teachers")
    print(speed_table_markdown(rows))


if __name__ == "__main__":
    main()
