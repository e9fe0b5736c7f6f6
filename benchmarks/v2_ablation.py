"""Measurements behind the v2 design: what each replaced operation costs.

Times one model step (graph construction, energy, forces, stress) on 256-atom Cu fcc for
variants that differ in one operation at a time, at equal width (64):

* Orb-style interaction (edge MLP on concatenated [e, h_i, h_j], persistent edge states,
  attention gates, RMSNorm) vs v2's factorised message, both 3 steps, 5 Å;
* harmonics up to l = 3 vs l = 1 on the Orb-style edges;
* cutoff 6 Å vs 5 Å (and a 120-neighbour cap) for v2;
* v2 with and without vector (l = 1) states.

    python benchmarks/v2_ablation.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from orbdistill.graph import build_graph
from orbdistill.models import build_student
from orbdistill.validation.throughput import cu_fcc

VARIANTS = {
    "orb-style 64 wide, l<=3, 5 Å": ("v1", dict(latent_dim=64, encoder_hidden=64, node_encoder_hidden=64, step_hidden=[64] * 3,
                                              node_step_hidden=[64] * 3, head_hidden=32, lmax=3, cutoff=5.0, max_neighbors=None)),
    "orb-style 64 wide, l<=1, 5 Å": ("v1", dict(latent_dim=64, encoder_hidden=64, node_encoder_hidden=64, step_hidden=[64] * 3,
                                              node_step_hidden=[64] * 3, head_hidden=32, lmax=1, cutoff=5.0, max_neighbors=None)),
    "v2 64 wide, 5 Å (default)": ("v2", dict()),
    "v2 64 wide, 6 Å": ("v2", dict(cutoff=6.0)),
    "v2 64 wide, 6 Å, 120-neighbour cap": ("v2", dict(cutoff=6.0, max_neighbors=120)),
    "v2 64 wide, 5 Å, no vector states": ("v2", dict(use_vectors=False)),
    "v2 32 wide (8 vector channels), 5 Å": ("v2", dict(num_features=32, num_vector_features=8)),
}


def time_model(model, atoms, repeats):
    times = []
    for k in range(repeats + 1):
        t0 = time.perf_counter()
        g = build_graph(atoms, model.cutoff, model.max_neighbors)
        model.predict(g)
        if k:
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times), g.num_edges


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-atoms", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="benchmarks/results/v2_ablation.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    atoms = cu_fcc(args.n_atoms)
    rows = []
    for name, (kind, over) in VARIANTS.items():
        torch.manual_seed(0)
        m = build_student(kind, [29], **over)
        ms, edges = time_model(m, atoms, args.repeats)
        rows.append({"variant": name, "ms_per_step": round(ms, 2), "edges": edges, "params": m.num_parameters()})
        print(f"{name:45s} {ms:8.2f} ms  {edges:6d} edges  {m.num_parameters():9,d} params")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"threads": args.threads, "n_atoms": len(atoms), "statistic": f"median of {args.repeats}",
                                          "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
