"""Time per MD step (energy, forces, stress through the ASE calculator) and atom-steps/s of
teachers and students on Cu fcc from 32 to about 2,000 atoms, all in one run.

    python benchmarks/student_speed.py --threads 2

Orb teachers and untrained students use random weights (speed does not depend on the
weights). Writes benchmarks/results/student_speed.json and .png and prints the table and
the target ratios at 256 atoms.
"""

from __future__ import annotations

import argparse
import json
import platform

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


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 108, 256, 500, 864, 2048])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-step-seconds", type=float, default=30.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip-teachers", action="store_true")
    p.add_argument("--out", default="benchmarks/results/student_speed")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
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
