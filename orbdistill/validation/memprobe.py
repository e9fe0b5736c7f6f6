"""Peak CPU memory of one MD step, measured in a fresh Python process.

    python -m orbdistill.validation.memprobe SPEC STRUCTURE_FILE [--threads N]

SPEC is ``teacher:NAME`` (optionally ``teacher:NAME:WEIGHTS``), ``package:PATH:BACKEND`` or
``emt``. The process loads the model, runs one warm-up step, resets the kernel's
resident-set high-water mark (Linux ``/proc/self/clear_refs``), runs one more step after
moving the atoms, and prints one JSON line: the resident set before the step, its peak
during the step, and their difference.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Optional

from orbdistill.profiling.memory import _reset_peak, _status_mb


def calculator_from_spec(spec: str, device: str = "cpu", dtype: str = "float32"):
    """An ASE calculator from a probe SPEC (see the module docstring)."""
    kind, _, rest = spec.partition(":")
    if kind == "emt":
        from ase.calculators.emt import EMT

        return EMT()
    if kind == "teacher":
        from orbdistill.teachers import load_teacher

        name, _, weights = rest.partition(":")
        return load_teacher(name, device=device, weights=weights or None).calculator()
    if kind == "package":
        from orbdistill.calculator import StudentCalculator

        path, _, backend = rest.rpartition(":")
        return StudentCalculator.from_package(path, backend=backend or "torch", device=device, dtype=dtype)
    raise ValueError(f"Unknown model spec {spec!r}: use teacher:NAME, package:PATH:BACKEND or emt.")


def _step(atoms, shift):
    atoms.positions = atoms.positions + shift
    atoms.get_potential_energy()
    atoms.get_forces()
    if all(atoms.pbc):
        atoms.get_stress()


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("spec")
    p.add_argument("structure")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--dtype", default="float32", help="students' precision")
    args = p.parse_args(argv)
    import torch
    from ase.io import read

    if args.threads:
        torch.set_num_threads(args.threads)
    atoms = read(args.structure)
    atoms.calc = calculator_from_spec(args.spec, dtype=args.dtype)
    _step(atoms, 1e-4)
    if not _reset_peak():
        print(json.dumps({"error": "cannot reset the high-water mark (/proc/self/clear_refs)"}))
        return
    before = _status_mb("VmRSS")
    _step(atoms, 1e-4)
    peak = _status_mb("VmHWM")
    print(json.dumps({"rss_before_step_mb": round(before, 1), "peak_rss_mb": round(peak, 1),
                      "peak_step_mb": round(max(0.0, peak - before), 1),
                      "method": "fresh process; VmHWM after resetting it minus VmRSS before the second step"}))


def probe(spec: str, structure_file: str, threads: Optional[int] = None, timeout: float = 900.0,
          dtype: str = "float32") -> dict:
    """Run the probe in a fresh process; returns its JSON (or ``{"error": ...}``)."""
    cmd = [sys.executable, "-m", "orbdistill.validation.memprobe", spec, str(structure_file), "--dtype", dtype]
    if threads:
        cmd += ["--threads", str(threads)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"memory probe timed out after {timeout:.0f} s"}
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        return {"error": (res.stderr or "no output")[-300:]}
    return json.loads(lines[-1])


if __name__ == "__main__":
    main()
