"""Memory of one MD step: the one place where orbdistill measures it.

* :func:`step_increase` — in this process: the extra memory one energy+forces+stress call
  needs (CUDA: ``torch.cuda.max_memory_allocated``; Linux CPU: the resident-set high-water
  mark after resetting it through ``/proc/self/clear_refs``, minus the resident set before).
* :func:`probe` — the same in a fresh Python process (what a user's MD script pays, with no
  memory left over from other models), for an analyser target or an ASE calculator::

      python -m orbdistill.profiling.memory --target orb-v3-conservative-20-omat [--n-atoms 256]
      python -m orbdistill.profiling.memory --calculator package:PATH:BACKEND --structure FILE

  Calculator specs: ``teacher:NAME[:WEIGHTS]``, ``package:PATH[:BACKEND]`` or ``emt``. The
  process runs one warm-up step, then measures a second one; it prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from typing import Callable, Optional


def _maxrss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 if sys.platform != "darwin" else kb / 2**20


def _status_mb(key: str):
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the kernel's high-water mark (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def step_increase(step: Callable[[], object], device: str = "cpu") -> dict:
    """Extra memory (MB) that ``step()`` needs on top of what is already allocated."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return {"peak_step_mb": (torch.cuda.max_memory_allocated() - base) / 2**20, "method": "cuda max_memory_allocated"}
    if _reset_peak() and _status_mb("VmRSS") is not None:
        base = _status_mb("VmRSS")
        step()
        peak = _status_mb("VmHWM")
        return {"rss_before_step_mb": round(base, 1), "peak_rss_mb": round(max(peak, base), 1),
                "peak_step_mb": round(max(0.0, peak - base), 1),
                "method": "VmHWM after resetting it (Linux clear_refs) minus VmRSS before the step"}
    base = _maxrss_mb()  # other systems: the process high-water mark, construction included
    step()
    peak = _maxrss_mb()
    return {"rss_before_step_mb": round(base, 1), "peak_rss_mb": round(peak, 1),
            "peak_step_mb": round(max(0.0, peak - base), 1), "method": "ru_maxrss (includes model construction)"}


def md_step(atoms, shift: float = 1e-4) -> None:
    """What one MD step asks of a calculator: move the atoms, energy, forces, stress."""
    atoms.positions = atoms.positions + shift
    atoms.get_potential_energy()
    atoms.get_forces()
    if all(atoms.pbc):
        atoms.get_stress()


def calculator_step_memory(calc, atoms) -> dict:
    """:func:`step_increase` of one MD step of ``calc`` on ``atoms`` (in this process)."""
    at = atoms.copy()
    at.calc = calc
    return step_increase(lambda: md_step(at), device=str(getattr(calc, "device", "cpu")))


def calculator_from_spec(spec: str, device: str = "cpu", dtype: str = "float32"):
    """An ASE calculator from a probe spec (see the module docstring)."""
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

        path, sep, backend = rest.rpartition(":")
        if not sep:
            path, backend = rest, "torch"
        return StudentCalculator.from_package(path, backend=backend or "torch", device=device, dtype=dtype)
    raise ValueError(f"Unknown calculator spec {spec!r}: use teacher:NAME, package:PATH:BACKEND or emt.")


def probe(structure_file: Optional[str] = None, target: Optional[str] = None, calculator: Optional[str] = None,
          n_atoms: int = 256, threads: Optional[int] = None, dtype: str = "float32", timeout: float = 1800.0) -> dict:
    """Run :func:`main` in a fresh process; returns its JSON, or ``{"error": ...}``."""
    cmd = [sys.executable, "-m", "orbdistill.profiling.memory", "--n-atoms", str(n_atoms), "--dtype", dtype]
    cmd += ["--target", target] if target else ["--calculator", calculator]
    if structure_file:
        cmd += ["--structure", str(structure_file)]
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


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m orbdistill.profiling.memory")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--target", help="an analyser target: teacher name, student kind, package")
    which.add_argument("--calculator", help="teacher:NAME[:WEIGHTS], package:PATH[:BACKEND] or emt")
    p.add_argument("--structure", default=None)
    p.add_argument("--n-atoms", type=int, default=256)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--dtype", default="float32", help="students' precision (calculators)")
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from orbdistill.structures import cu_fcc

    if args.structure:
        from ase.io import read

        atoms = read(args.structure)
    else:
        atoms = cu_fcc(args.n_atoms, rattle=0.01)
    process_peak = _maxrss_mb()
    if args.target:
        from orbdistill.profiling.targets import resolve_target

        tgt = resolve_target(args.target, device="cpu")
        inputs = tgt.make_inputs(atoms)
        out = step_increase(lambda: tgt.step(inputs))
    else:
        atoms.calc = calculator_from_spec(args.calculator, dtype=args.dtype)
        md_step(atoms)  # warm-up
        out = step_increase(lambda: md_step(atoms))
    out["process_peak_before_step_mb"] = round(process_peak, 1)
    out["method"] = "fresh process; " + out["method"]
    out["step_increase_mb"] = out["peak_step_mb"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
