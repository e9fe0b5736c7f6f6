"""Time per MD step of each deployment backend (eager PyTorch, torch.compile, TorchScript,
ONNX Runtime)
for each student, from 32 to about 2,000 atoms, through the ASE calculator.

    python benchmarks/backend_speed.py --threads 2

Uses the packaged v2 student (calculators/cu-sevennet-v2) and a default-size v1 student
with random weights (speed does not depend on the weights); exports them first if needed.
Writes benchmarks/results/backend_speed.json and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import torch

from orbdistill.calculator import StudentCalculator
from orbdistill.packages import exported_file
from orbdistill.export import export_package, write_package
from orbdistill.models import build_student
from orbdistill.validation.throughput import run_speed_table, speed_table_markdown, write_speed_results


def ensure_exports(pkg: Path, dtype="float32"):
    dt = getattr(torch, dtype)
    missing = [f for f in ("torchscript", "onnx") if not exported_file(pkg, f, str(dt).replace('torch.', '')).exists()]
    if missing:
        export_package(pkg, formats=tuple(missing), dtypes=(dtype,))


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 108, 256, 500, 864, 2048])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backends", nargs="+", default=["torch", "compile", "torchscript", "onnx"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--v2-package", default="calculators/cu-sevennet-v2")
    p.add_argument("--out", default="benchmarks/results/backend_speed")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    packages = {"v2": Path(args.v2_package)}
    tmp = Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    write_package(build_student("v1", [29]), tmp / "v1", {"teacher": {"name": "none (random weights)"}})
    packages["v1"] = tmp / "v1"
    factories = {}
    for name, pkg in packages.items():
        ensure_exports(pkg)
        for backend in args.backends:
            factories[f"{name} {backend}"] = (lambda pkg=pkg, b=backend: StudentCalculator.from_package(
                pkg, backend=b, device=args.device, dtype="float32", num_threads=args.threads if b == "onnx" else None))
    # 3 warm-up calls per size: compile compiles on its first call, TorchScript optimises on its second
    rows = run_speed_table(factories, args.sizes, repeats=args.repeats, warmup=3, max_step_seconds=30.0)
    meta = {"threads": args.threads, "device": args.device, "torch": torch.__version__, "dtype": "float32",
            "statistic": "median", "repeats": args.repeats, "warmup_calls_per_size": 3, "structure": "Cu fcc a=3.61 Å, rattled 0.05 Å",
            "cpu": platform.processor()}
    fastest = {}
    for n in sorted({r["n_atoms"] for r in rows}):
        for model in packages:
            cand = [r for r in rows if r["n_atoms"] == n and r["model"].startswith(model + " ") and "ms_per_step" in r]
            if cand:
                best = min(cand, key=lambda r: r["ms_per_step"])
                fastest[f"{model} @ {n}"] = best["model"].split(" ", 1)[1]
    meta["fastest"] = fastest
    write_speed_results(rows, meta, args.out + ".json", args.out + ".png", title="backends")
    print(speed_table_markdown(rows))
    print(json.dumps(fastest, indent=1))


if __name__ == "__main__":
    main()
