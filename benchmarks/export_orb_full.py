"""Try exporting v1 at the full Orb-v3 configuration (an exported Orb-v3 teacher).

    python benchmarks/export_orb_full.py --threads 2

Copies a random-weight orb-v3-conservative-20-omat into v1 (exact copy), exports it to
ONNX and TorchScript (float32), and compares energies and forces of every backend with
orb-models' own calculator on a 32-atom and a 108-atom Cu cell. Writes
benchmarks/results/export_orb_full.json. The exported files (~100 MB each) are deleted.
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from ase.build import bulk

from orbdistill.calculator import StudentCalculator
from orbdistill.export import export_package, write_package
from orbdistill.models import v1_from_orb
from orbdistill.teachers import load_teacher


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/export_orb_full.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    teacher = load_teacher("orb-v3-conservative-20-omat", weights="random", device="cpu")
    student = v1_from_orb(teacher.model)
    pkg = Path(tempfile.mkdtemp()) / "orb-v1-full"
    write_package(student, pkg, {"teacher": {k: v for k, v in teacher.describe().items() if k != "species"}})
    result = {"params": student.num_parameters(), "backends": {}}
    for fmt in ("torchscript", "onnx"):
        t0 = time.perf_counter()
        try:
            export_package(pkg, formats=(fmt,), dtypes=("float32",), progress=False)
            result["backends"][fmt] = {"export_s": round(time.perf_counter() - t0, 1),
                                       "file_mb": round(os.path.getsize(pkg / f"model_float32.{fmt}") / 2**20, 1)}
        except Exception as exc:  # record what does not work
            result["backends"][fmt] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    for n in (2, 3):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(n)
        atoms.rattle(0.03, seed=n)
        atoms.wrap()
        (ref,) = teacher.predict([atoms])
        for backend in ["torch"] + [f for f in ("torchscript", "onnx") if "error" not in result["backends"][f]]:
            a = atoms.copy()
            a.calc = StudentCalculator.from_package(pkg, backend=backend, dtype="float32")
            t0 = time.perf_counter()
            e, f = a.get_potential_energy(), a.get_forces()
            dt = time.perf_counter() - t0
            result.setdefault("agreement", []).append({
                "n_atoms": len(atoms), "backend": backend, "energy_diff_ev": abs(e - ref.energy),
                "force_max_diff_ev_a": float(np.abs(f - ref.forces).max()), "first_call_s": round(dt, 2)})
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    for f in pkg.glob("model_float32.*"):
        f.unlink()


if __name__ == "__main__":
    main()
