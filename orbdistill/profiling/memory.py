"""Peak memory of one MD step, measured in a fresh process (``ru_maxrss`` on CPU).

Run as ``python -m orbdistill.profiling.memory TARGET [--structure FILE]``; prints JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys


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


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("target")
    p.add_argument("--structure", default=None)
    p.add_argument("--n-atoms", type=int, default=256)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from orbdistill.profiling.analyzer import default_structure
    from orbdistill.profiling.targets import resolve_target

    if args.structure:
        from ase.io import read

        atoms = read(args.structure)
    else:
        atoms = default_structure(args.n_atoms)
    tgt = resolve_target(args.target, device="cpu")
    inputs = tgt.make_inputs(atoms)
    process_peak = _maxrss_mb()
    if _reset_peak() and _status_mb("VmRSS") is not None:
        base = _status_mb("VmRSS")
        tgt.step(inputs)
        peak = _status_mb("VmHWM")
        method = "VmHWM after resetting it (Linux clear_refs), fresh process"
    else:  # other systems: the high-water mark includes model construction
        base = process_peak
        tgt.step(inputs)
        peak = _maxrss_mb()
        method = "ru_maxrss, fresh process (includes model construction)"
    print(json.dumps({"rss_before_step_mb": round(base, 1), "peak_rss_mb": round(max(peak, base), 1),
                      "step_increase_mb": round(max(0.0, peak - base), 1),
                      "process_peak_before_step_mb": round(process_peak, 1), "method": method}))


if __name__ == "__main__":
    main()
