"""Architecture levers of the v2 student, accuracy and speed together: a Pareto table.

Every variant differs from the default v2 (64 scalar features, 16 vector channels, 3 layers,
8 Bessel functions, 5 Å) in one lever, and all are trained the same way on the same
teacher-labelled data and split (same seed, epochs and schedule). Accuracy is the held-out
force MAE; speed is µs per atom-step of an MD step (energy, forces, stress) through the
ASE calculator with the default backend (fused CPU kernels), on fcc Cu, in one timing run
after all training.

    # the data: the quickstart recipe's generation step (SevenNet-0, ~7 min on 1 core)
    orbdistill generate --config workflows/quickstart_cu_sevennet.json
    python benchmarks/v2_pareto.py --data runs/cu-sevennet-quickstart --threads 2

Training resumes per variant (``--out``/<variant>/train); ``--time-only`` re-times trained
variants. Writes benchmarks/results/v2_pareto.{json,png} and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

#: name -> v2 overrides (one lever each; the default first)
VARIANTS = {
    "default (F64, Fv16, 3 layers, 8 radial, 5 Å)": {},
    "cutoff 4.5 Å": {"cutoff": 4.5},
    "cutoff 4.0 Å": {"cutoff": 4.0},
    "2 layers": {"num_layers": 2},
    "4 layers": {"num_layers": 4},
    "8 vector channels": {"num_vector_features": 8},
    "no vector channels": {"use_vectors": False},
    "6 radial functions": {"num_radial": 6},
    "F32, Fv8": {"num_features": 32, "num_vector_features": 8},
    "F96, Fv24": {"num_features": 96, "num_vector_features": 24},
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")[:40]


def train_variant(name, overrides, data_dir: Path, out: Path, epochs: int, seed: int):
    from orbdistill.pipeline import run_train
    from orbdistill.training.trainer import evaluate, evaluate_by_group

    work = out / slug(name)
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "data").exists():
        os.symlink(data_dir.resolve() / "data", work / "data")
    base = {"num_features": 64, "num_vector_features": 16, "num_layers": 3, "cutoff": 5.0}
    cfg = {
        "name": slug(name),
        "teacher": {"name": "sevennet-0"},
        "student": {"kind": "v2", "overrides": {**base, **overrides}},
        "train": {"epochs": epochs, "batch_size": 8, "lr": 0.003, "warmup_epochs": 1, "patience": epochs,
                  "seed": seed},
        "split": [0.7, 0.15, 0.15],
        "split_method": "stratified",
        "work_dir": str(work),
    }
    t0 = time.perf_counter()
    best, trainer, (train, val, test) = run_train(cfg, progress=False, log_fn=None)
    seconds = time.perf_counter() - t0
    best.save(work / "model.pt")
    m = evaluate(best, test)
    groups = {g: round(v["force_mae_mev_a"], 2) for g, v in evaluate_by_group(best, test).items()}
    return {"variant": name, "overrides": overrides, "params": best.num_parameters(),
            "force_mae_mev_a": round(m["force_mae_mev_a"], 2), "energy_mae_mev_atom": round(m["energy_mae_mev_atom"], 3),
            "stress_mae_gpa": round(m.get("stress_mae_gpa", float("nan")), 4), "force_mae_by_group_mev_a": groups,
            "test_frames": len(test), "epochs": trainer.epoch, "train_seconds": round(seconds, 1)}


def time_variant(model_file: Path, n_atoms: int, repeats: int) -> dict:
    from orbdistill.calculator import StudentCalculator
    from orbdistill.models import load_student
    from orbdistill.validation.throughput import cu_fcc, time_step

    atoms = cu_fcc(n_atoms)
    out = {}
    for label, fused in (("fused", True), ("eager", False)):
        calc = StudentCalculator(load_student(model_file), device="cpu", fused_kernels=fused)
        res = time_step(calc, atoms, repeats=repeats, warmup=2)
        out[f"us_per_atom_step_{label}"] = round(1e3 * res["ms_per_step"] / len(atoms), 2)
    out["n_atoms"] = len(atoms)
    return out


def pareto_front(rows):
    """Rows no other row beats on both force MAE and speed."""
    front = []
    for r in rows:
        dominated = any(o["force_mae_mev_a"] <= r["force_mae_mev_a"] and o["us_per_atom_step_fused"] <= r["us_per_atom_step_fused"]
                        and o is not r and (o["force_mae_mev_a"], o["us_per_atom_step_fused"]) != (r["force_mae_mev_a"], r["us_per_atom_step_fused"])
                        for o in rows)
        r["pareto"] = not dominated
        if not dominated:
            front.append(r)
    return front


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        ax.scatter(r["us_per_atom_step_fused"], r["force_mae_mev_a"], color="C3" if r["pareto"] else "C0", zorder=3)
        ax.annotate(r["variant"].split(" (")[0], (r["us_per_atom_step_fused"], r["force_mae_mev_a"]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["us_per_atom_step_fused"])
    ax.plot([r["us_per_atom_step_fused"] for r in front], [r["force_mae_mev_a"] for r in front], "C3--", lw=1)
    ax.set_xlabel(f"µs per atom-step (ASE calculator, fused kernels, {rows[0]['n_atoms']} atoms)")
    ax.set_ylabel("held-out force MAE (meV/Å)")
    ax.set_title("v2 architecture levers (red: Pareto front)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a work folder holding data/ (from orbdistill generate)")
    p.add_argument("--out", default="runs/v2-pareto")
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-atoms", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--variants", nargs="+", default=None, help="a subset of the names (default: all)")
    p.add_argument("--time-only", action="store_true", help="time the variants trained before")
    p.add_argument("--results", default="benchmarks/results/v2_pareto")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    names = args.variants or list(VARIANTS)
    rows_file = out / "accuracy.json"
    rows = json.loads(rows_file.read_text()) if rows_file.exists() else {}
    if not args.time_only:
        for name in names:
            if name in rows:
                continue
            print(f"training {name} ...", flush=True)
            rows[name] = train_variant(name, VARIANTS[name], Path(args.data), out, args.epochs, args.seed)
            tmp = rows_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(rows, indent=1))
            os.replace(tmp, rows_file)
            print(json.dumps(rows[name]), flush=True)
    table = []
    for name in names:
        if name not in rows:
            continue
        r = dict(rows[name])
        r.update(time_variant(out / slug(name) / "model.pt", args.n_atoms, args.repeats))
        table.append(r)
        print(f"{name}: {r['force_mae_mev_a']} meV/Å, {r['us_per_atom_step_fused']} µs/atom-step", flush=True)
    pareto_front(table)
    meta = {"threads": args.threads, "torch": torch.__version__, "timing": f"median of {args.repeats} steps, "
            f"fcc Cu {table[0]['n_atoms']} atoms, energy + forces + stress via StudentCalculator",
            "data": str(args.data), "epochs": sorted({r["epochs"] for r in table}), "seed": args.seed}
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results + ".json").write_text(json.dumps({"meta": meta, "rows": table}, indent=1))
    plot(table, args.results + ".png")
    print("| variant | params | force MAE (meV/Å) | energy MAE (meV/atom) | µs/atom-step fused | eager | Pareto |")
    print("|---|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['variant']} | {r['params']:,} | {r['force_mae_mev_a']} | {r['energy_mae_mev_atom']} | "
              f"{r['us_per_atom_step_fused']} | {r['us_per_atom_step_eager']} | {'yes' if r['pareto'] else ''} |")


if __name__ == "__main__":
    main()
