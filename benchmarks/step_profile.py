"""Where the time of one v2 MD step goes: the packaged student through the ASE calculator
(energy, forces, stress), default backend (fused CPU kernels) against the eager model.

    python benchmarks/step_profile.py --threads 2 --n-atoms 256 2048

Each step is profiled with torch.profiler (CPU time of the operators, grouped) and with
wall-clock timers around the calculator's stages. Writes benchmarks/results/step_profile.json
and prints a markdown table per size.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

#: operator-name prefixes -> the group they are reported under
GROUPS = [
    ("orbdistill::painn_message_backward", "message kernel, gradient"),
    ("orbdistill::painn_message", "message kernel, forward"),
    ("orbdistill::edge_geometry", "edge geometry kernel (+ gradient)"),
    ("orbdistill::edge_symmetric", "edge structure (CSR, symmetry)"),
    ("orbdistill::edge_csr", "edge structure (CSR, symmetry)"),
    ("aten::addmm", "per-atom MLPs and mixing (matmul)"),
    ("aten::mm", "per-atom MLPs and mixing (matmul)"),
    ("aten::bmm", "per-atom MLPs and mixing (matmul)"),
    ("aten::linear", "per-atom MLPs and mixing (matmul)"),
    ("aten::index_add", "per-edge gathers and scatters (eager)"),
    ("aten::scatter_add", "per-edge gathers and scatters (eager)"),
    ("aten::index_select", "per-edge gathers and scatters (eager)"),
    ("aten::index", "per-edge gathers and scatters (eager)"),
]


def group_of(name: str) -> str:
    for prefix, group in GROUPS:
        if name.startswith(prefix):
            return group
    return "other operators (elementwise, copies, autograd)"


def profile(calc, atoms, steps: int) -> dict:
    atoms = atoms.copy()
    atoms.calc = calc
    rng = np.random.default_rng(0)
    base = atoms.positions.copy()

    def step():
        atoms.positions = base + rng.normal(scale=1e-3, size=base.shape)
        atoms.get_forces()
        atoms.get_stress()

    for _ in range(2):
        step()
    walls = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        walls.append(time.perf_counter() - t0)
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    ops = defaultdict(float)
    for ev in prof.key_averages():
        ops[group_of(ev.key)] += ev.self_cpu_time_total / 1e3 / steps  # ms per step
    # stage timers: neighbour list alone, and the out-of-domain signal alone
    t0 = time.perf_counter()
    for _ in range(steps):
        calc.graphs.reset() if hasattr(calc.graphs, "reset") else None
        calc.graphs(atoms)
    graph_ms = 1e3 * (time.perf_counter() - t0) / steps
    wall_ms = 1e3 * float(np.median(walls))
    op_ms = sum(ops.values())
    return {"wall_ms": round(wall_ms, 2), "us_per_atom_step": round(1e3 * wall_ms / len(atoms), 2),
            "neighbour_list_ms": round(graph_ms, 2),
            "operators_ms": {k: round(v, 2) for k, v in sorted(ops.items(), key=lambda kv: -kv[1])},
            "python_and_unprofiled_ms": round(max(wall_ms - op_ms - graph_ms, 0.0), 2)}


def main():
    from orbdistill.calculator import StudentCalculator
    from orbdistill.structures import cu_fcc

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--package", default="cu-sevennet-v2")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-atoms", type=int, nargs="+", default=[256, 2048])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out", default="benchmarks/results/step_profile.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = {"meta": {"package": args.package, "threads": args.threads, "torch": torch.__version__,
                        "steps": args.steps, "structure": "fcc Cu, rattled 0.05 Å", "dtype": "float32"}, "rows": []}
    for n in args.n_atoms:
        atoms = cu_fcc(n)
        for label, fused in (("fused kernels (default)", "auto"), ("eager", False)):
            calc = StudentCalculator(args.package, fused_kernels=fused)
            row = {"n_atoms": len(atoms), "path": label, **profile(calc, atoms, args.steps)}
            results["rows"].append(row)
            print(f"\n### {len(atoms)} atoms, {label}: {row['wall_ms']} ms per step "
                  f"({row['us_per_atom_step']} µs/atom-step)\n")
            print("| part | ms per step |\n|---|---|")
            print(f"| neighbour list (vesin, sorting, tensors) | {row['neighbour_list_ms']} |")
            for k, v in row["operators_ms"].items():
                print(f"| {k} | {v} |")
            print(f"| Python, ASE and unprofiled | {row['python_and_unprofiled_ms']} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
