"""How packages behave where atoms meet: dimers, one pair pushed together in the crystal,
and hot rattles, against their teacher.

    python benchmarks/short_range.py --package calculators/cu-sevennet-v2 [--package ...] \
        --teacher sevennet-0 [--threads 1] [--tag SUFFIX] [--out benchmarks/results]

For every element pair of a package's seed crystal (its recipe's first seed), with
``d`` the pair's shortest distance in that crystal:

* **dimer**: two isolated atoms from 0.45 d to 1.6 d (energy and the force along the bond);
* **pushed pair**: the seed supercell (~64 atoms) with one pair moved together from d down
  to 0.45 d, energy relative to the unpushed cell;
* **hot rattle**: the supercell rattled with sigma 0.1-0.4 Å (three draws each): energy error
  per atom and force MAE, with the shortest distance each draw reached.

The short-range protocol of ``generate`` labels pairs from 0.6 d (its default), so points
below it are extrapolation for every student; they show whether the energy keeps rising
(the ZBL term) or turns over. Reported per package: the largest energy error (eV/atom) and
the share of points whose bond force has the teacher's sign, in and below the data range,
and the rattle errors. Writes ``short_range<tag>.json`` and ``short_range<tag>.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

DIMER = np.linspace(0.45, 1.6, 24)
PUSHED = np.linspace(0.45, 1.0, 12)
SIGMAS = (0.1, 0.2, 0.25, 0.3, 0.35, 0.4)
DATA_FROM = 0.6


def scans(seed, n_atoms: int = 64):
    """{pair: {"d": d, "dimer": [Atoms], "pushed": [Atoms]}} and the rattles [(sigma, Atoms)]."""
    from orbdistill.data.coverage import element_pairs, make_dimer, pair_distances, push_pair
    from orbdistill.structures import supercell

    cell = supercell(seed, n_atoms, at_least=False)
    ref = pair_distances(seed)
    out = {}
    for pair in element_pairs(seed):
        d = ref[pair]
        pushed = []
        for f in PUSHED:
            # the same atom pair each time (a fresh generator with one seed), pushed further
            pushed.append(push_pair(cell, pair, f * d, np.random.default_rng(0)))
        out[pair] = {"d": d, "dimer": [make_dimer(pair, f * d) for f in DIMER], "pushed": pushed, "cell": cell}
    rattles = []
    for sigma in SIGMAS:
        for k in range(3):
            r = cell.copy()
            r.rattle(sigma, seed=1000 + 10 * k + int(100 * sigma))
            rattles.append((sigma, r))
    return out, rattles


def evaluate(calc, atoms):
    a = atoms.copy()
    a.calc = calc
    return float(a.get_potential_energy()), np.array(a.get_forces())


def bond_force(forces, atoms):
    """The force along the bond on the second atom of a dimer (positive: apart)."""
    u = atoms.positions[1] - atoms.positions[0]
    return float(forces[1] @ (u / np.linalg.norm(u)))


def run_package(pkg, teacher_calc, teacher_cache, seed):
    from orbdistill import StudentCalculator

    student = StudentCalculator(pkg, on_extrapolation="ignore")
    pairs, rattles = scans(seed)
    res = {"package": str(pkg), "pairs": {}, "rattle": []}

    def teacher_eval(key, atoms):
        if key not in teacher_cache:
            teacher_cache[key] = evaluate(teacher_calc, atoms)
        return teacher_cache[key]

    for pair, s in pairs.items():
        rows = []
        for f, a in zip(DIMER, s["dimer"]):
            et, ft = teacher_eval(("dimer", pair, round(f, 4)), a)
            es, fs = evaluate(student, a)
            rows.append({"factor": float(f), "r": float(f * s["d"]), "teacher_e": et, "student_e": es,
                         "teacher_f": bond_force(ft, a), "student_f": bond_force(fs, a)})
        e0t, _ = teacher_eval(("cell", pair), s["cell"])
        e0s, _ = evaluate(student, s["cell"])
        pushed = []
        for f, a in zip(PUSHED, s["pushed"]):
            et, _ = teacher_eval(("pushed", pair, round(f, 4)), a)
            es, _ = evaluate(student, a)
            pushed.append({"factor": float(f), "r": float(a.info["pair_distance"]), "teacher_de": et - e0t,
                           "student_de": es - e0s})
        res["pairs"][pair] = {"d": s["d"], "dimer": rows, "pushed": pushed}
    for k, (sigma, a) in enumerate(rattles):
        et, ft = teacher_eval(("rattle", k), a)
        es, fs = evaluate(student, a)
        d = a.get_all_distances(mic=True) + 99 * np.eye(len(a))
        res["rattle"].append({"sigma": sigma, "min_distance": float(d.min()), "energy_error_ev_atom": (es - et) / len(a),
                              "force_mae_ev_a": float(np.abs(fs - ft).mean())})
    res["summary"] = summarise(res)
    return res


def summarise(res):
    out = {}
    for pair, p in res["pairs"].items():
        for where, test in (("in_data", lambda f: f >= DATA_FROM), ("below_data", lambda f: f < DATA_FROM)):
            dim = [r for r in p["dimer"] if test(r["factor"])]
            push = [r for r in p["pushed"] if test(r["factor"])]
            out[f"{pair} {where}"] = {
                "dimer_max_energy_error_ev_atom": max(abs(r["student_e"] - r["teacher_e"]) / 2 for r in dim) if dim else None,
                "dimer_force_sign_agrees": (float(np.mean([np.sign(r["student_f"]) == np.sign(r["teacher_f"]) for r in dim]))
                                            if dim else None),
                "pushed_max_energy_error_ev": max(abs(r["student_de"] - r["teacher_de"]) for r in push) if push else None,
            }
    for sigma in SIGMAS:
        rows = [r for r in res["rattle"] if r["sigma"] == sigma]
        out[f"rattle {sigma:g}"] = {"min_distance": min(r["min_distance"] for r in rows),
                                    "max_energy_error_ev_atom": max(abs(r["energy_error_ev_atom"]) for r in rows),
                                    "max_force_mae_ev_a": max(r["force_mae_ev_a"] for r in rows)}
    return out


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = list(results[0]["pairs"])
    fig, axes = plt.subplots(len(pairs) + 1, 2, figsize=(11, 3.6 * (len(pairs) + 1)), squeeze=False)
    for row, pair in enumerate(pairs):
        ax, bx = axes[row]
        first = results[0]["pairs"][pair]
        r = [x["r"] for x in first["dimer"]]
        ax.plot(r, [x["teacher_e"] / 2 for x in first["dimer"]], "k-", lw=2, label="teacher")
        bx.plot([x["r"] for x in first["pushed"]], [x["teacher_de"] for x in first["pushed"]], "k-", lw=2, label="teacher")
        for res in results:
            p = res["pairs"][pair]
            name = Path(res["package"]).name
            ax.plot(r, [x["student_e"] / 2 for x in p["dimer"]], "o--", ms=3, label=name)
            bx.plot([x["r"] for x in p["pushed"]], [x["student_de"] for x in p["pushed"]], "o--", ms=3, label=name)
        for a, title in ((ax, f"{pair} dimer"), (bx, f"{pair} pushed together in the crystal")):
            a.axvline(DATA_FROM * first["d"], color="grey", ls=":", lw=1)
            a.set_title(title + " (dotted: data start)")
            a.set_xlabel("pair distance (Å)")
            a.legend(fontsize=7)
        ax.set_ylabel("E / atom (eV)")
        bx.set_ylabel("E - E(crystal) (eV)")
        lo = min(x["teacher_e"] / 2 for x in first["dimer"])
        ax.set_ylim(lo - 1, lo + 12)
        bx.set_ylim(-1, max(x["teacher_de"] for x in first["pushed"]) * 1.5 + 1)
    ax, bx = axes[-1]
    for res in results:
        name = Path(res["package"]).name
        s = [x["sigma"] for x in res["rattle"]]
        ax.semilogy(s, [abs(x["energy_error_ev_atom"]) + 1e-6 for x in res["rattle"]], "o", label=name)
        bx.semilogy(s, [x["force_mae_ev_a"] for x in res["rattle"]], "o", label=name)
    ax.set_xlabel("rattle sigma (Å)")
    ax.set_ylabel("|energy error| (eV/atom)")
    bx.set_xlabel("rattle sigma (Å)")
    bx.set_ylabel("force MAE (eV/Å)")
    ax.legend(fontsize=7)
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--package", action="append", required=True, help="a package (repeat to compare several)")
    p.add_argument("--teacher", default="sevennet-0")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tag", default="")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from ood_signal import package_seed

    from orbdistill import load_teacher
    from orbdistill.packages import find_package

    pkgs = [find_package(x) for x in args.package]
    seed = package_seed(pkgs[0])
    if seed is None:
        raise SystemExit(f"{pkgs[0]}: no seed structure in its config.json")
    teacher = load_teacher(args.teacher).calculator()
    cache = {}
    t0 = time.perf_counter()
    results = [run_package(pkg, teacher, cache, seed) for pkg in pkgs]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"teacher": args.teacher, "threads": args.threads, "seconds": round(time.perf_counter() - t0, 1),
           "data_from_factor": DATA_FROM, "results": results}
    (out / f"short_range{args.tag}.json").write_text(json.dumps(doc, indent=1))
    plot(results, out / f"short_range{args.tag}.png")
    for res in results:
        print(res["package"])
        for key, row in res["summary"].items():
            print(f"  {key:24s}", "  ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    print(f"{doc['seconds']} s -> {out / f'short_range{args.tag}.json'}")


if __name__ == "__main__":
    main()
