"""On-policy rounds from a deliberately small, bulk-only start: do they take a student that
fails on surfaces and clusters to one that passes?

    python benchmarks/onpolicy_rounds.py --threads 2            # SevenNet-0 teacher, Cu
    python benchmarks/onpolicy_rounds.py --teacher emt --threads 1

1. ``distill`` a v2 student on a small bulk-only data set (the quickstart recipe with no
   coverage protocols: NVT, strain and rattle-relax of a 32-atom cell).
2. ``run_onpolicy``: each round the student runs its own NVT on a bulk cell, a (111) slab,
   a vacancy cell and a 38-atom cluster at 300 and 900 K; flagged frames and the frames
   before a divergence are labelled by the teacher and the student is retrained.
3. Every student (the start and each round's) is checked the same way:

   * **stable**: its own NVT runs (the round's exploration, and one more for the last
     student) do not diverge;
   * **in the domain**: at most 5 % of the frames of those runs are flagged (the uncertainty
     above its threshold, or the estimated force error above its bar);
   * **accurate off the bulk**: on probe frames the teacher labels once (rattled (111) and
     (100) slabs, a 55-atom icosahedron, a vacancy cell; none of them in any training set),
     the force MAE is within 3x the student's held-out bulk MAE.

Writes ``results/onpolicy_rounds_<teacher>.json`` and ``.png`` (the rounds' curves). The
work folder keeps every step, so a rerun resumes (data, training and rounds alike).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def start_config(teacher: str, work: Path, rounds: int, facets=((1, 1, 1),), cluster_sizes=(38,),
                 audit_frames: int = 0) -> dict:
    cfg = json.loads((ROOT / "workflows" / "quickstart_cu_sevennet.json").read_text())
    cfg["name"] = f"cu-{teacher}-onpolicy"
    cfg["teacher"] = {"name": teacher}
    g = cfg["generate"]
    g["seeds"] = [str(ROOT / "data" / "structures" / "Cu_fcc.cif")]
    g["coverage"] = []  # bulk only: the deliberately small start
    cfg["onpolicy"] = {"rounds": rounds, "temperatures_k": [300.0, 900.0], "steps": 400, "sample_interval": 10,
                       "max_new_frames": 120, "epochs": 15, "lr": 1e-3,
                       "surface_millers": [list(f) for f in facets], "cluster_sizes": list(cluster_sizes),
                       "audit_frames": audit_frames}
    cfg["work_dir"], cfg["package_dir"] = str(work), str(work / "package")
    return cfg


def probe_frames(teacher, path: Path, a0: float = 3.61):
    """Teacher-labelled frames off the bulk (made once, then read back)."""
    from ase.io import read, write

    if path.exists():
        return read(path, index=":")
    from ase.build import bulk, fcc100, fcc111
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.cluster import Icosahedron

    rng = np.random.default_rng(7)
    frames = []
    for kind, make in (("slab(111)", lambda: fcc111("Cu", (3, 3, 5), a=a0, vacuum=8.0)),
                       ("slab(100)", lambda: fcc100("Cu", (3, 3, 5), a=a0, vacuum=8.0)),
                       ("cluster", lambda: Icosahedron("Cu", 3, latticeconstant=a0)),
                       ("vacancy", lambda: bulk("Cu", "fcc", a=a0, cubic=True).repeat(3))):
        for k in range(3):
            a = make()
            if kind == "vacancy":
                del a[int(rng.integers(len(a)))]
            if kind == "cluster":
                a.center(vacuum=8.0)
            a.rattle(0.05 + 0.03 * k, seed=int(rng.integers(1 << 30)))
            a.info["kind"] = kind
            frames.append(a)
    (preds) = teacher.predict(frames)
    for a, p in zip(frames, preds):
        a.calc = SinglePointCalculator(a, energy=p.energy, forces=p.forces)
    write(path, frames)
    return frames


def probe_errors(package: Path, probes) -> dict:
    from orbdistill import StudentCalculator

    calc = StudentCalculator(package, on_extrapolation="ignore")
    out = {}
    for p in probes:
        a = p.copy()
        a.calc = calc
        err = float(np.abs(a.get_forces() - p.get_forces()).mean()) * 1e3
        flagged = bool(calc.out_of_domain)  # either signal over its bar
        out.setdefault(p.info["kind"], {"force_mae": [], "flagged": []})
        out[p.info["kind"]]["force_mae"].append(err)
        out[p.info["kind"]]["flagged"].append(flagged)
    return {k: {"force_mae_mev_a": float(np.mean(v["force_mae"])), "flagged_share": float(np.mean(v["flagged"]))}
            for k, v in out.items()}


def final_exploration(package: Path, cfg: dict) -> dict:
    """The last student's own runs, as a round's exploration would make them."""
    from orbdistill import StudentCalculator
    from orbdistill.data.generate import GenerateConfig
    from orbdistill.data.seeds import load_seeds
    from orbdistill.onpolicy import OnPolicyConfig, explore, flagged_fraction, start_structures

    oc = OnPolicyConfig.from_dict(cfg["onpolicy"])
    gcfg = GenerateConfig.from_dict(cfg["generate"])
    calc = StudentCalculator(package, on_extrapolation="ignore", min_distance=0.3)
    runs = {}
    for name, atoms in start_structures(load_seeds(gcfg.seeds), oc, vacuum=gcfg.vacuum).items():
        for T in oc.temperatures_k:
            res = explore(calc, atoms, T, oc, seed=oc.seed + 99_000 + int(T))
            runs[f"{name}@{T:g}K"] = {"steps_completed": res["steps_completed"], "failed": res["failed"],
                                      "flagged_fraction": flagged_fraction(res, calc.ood_threshold,
                                                                           calc.force_error_bar)}
    return runs


def checks(runs: dict, probes: dict, bulk_mae: float) -> dict:
    worst = max(v["force_mae_mev_a"] for v in probes.values())
    flagged = float(np.mean([v["flagged_fraction"] for v in runs.values()]))
    out = {"stable": not any(v["failed"] for v in runs.values()), "md_flagged_share": flagged,
           "in_domain": flagged <= 0.05, "worst_probe_force_mae_mev_a": worst,
           "bulk_force_mae_mev_a": bulk_mae, "accurate_off_bulk": worst <= 3 * bulk_mae}
    out["pass"] = out["stable"] and out["in_domain"] and out["accurate_off_bulk"]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default="sevennet-0")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--work", default=None, help="work folder (default runs/onpolicy-<teacher>)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--facets", type=int, nargs="+", default=[1, 1, 1], metavar="H K L",
                   help="slab starts of the rounds, three integers per facet (default 1 1 1)")
    p.add_argument("--cluster-sizes", type=int, nargs="+", default=[38], help="cluster starts of the rounds (38)")
    p.add_argument("--audit-frames", type=int, default=0,
                   help="teacher-checked frames per run the signal left alone (onpolicy.audit_frames; 0)")
    p.add_argument("--tag", default="", help="suffix of the result files, e.g. _all-starts")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from orbdistill import distill, load_teacher
    from orbdistill.onpolicy import run_onpolicy
    from orbdistill.packages import read_card

    work = Path(args.work or ROOT / "runs" / f"onpolicy-{args.teacher}")
    if len(args.facets) % 3:
        p.error("--facets takes three integers per facet")
    facets = [tuple(args.facets[i:i + 3]) for i in range(0, len(args.facets), 3)]
    cfg = start_config(args.teacher, work, args.rounds, facets, args.cluster_sizes, args.audit_frames)
    work.mkdir(parents=True, exist_ok=True)
    cfg_path = work / "onpolicy_benchmark.json"
    cfg_path.write_text(json.dumps(cfg, indent=1))
    teacher = load_teacher(args.teacher)
    t0 = time.perf_counter()
    start_pkg = work / "start-package"
    if not (start_pkg / "model.pt").exists():
        # distill alone (it would run the rounds itself when onpolicy.rounds > 0)
        distill(dict(cfg, onpolicy=dict(cfg["onpolicy"], rounds=0)), progress=False)
        import shutil

        shutil.copytree(work / "package", start_pkg)  # the rounds replace the package; keep the start
    elif not (work / "onpolicy" / "state.json").exists():  # the rounds start from the distilled student
        import shutil

        shutil.rmtree(work / "package", ignore_errors=True)
        shutil.copytree(start_pkg, work / "package")
    t_distill = time.perf_counter() - t0
    probes = probe_frames(teacher, work / "probes.extxyz")
    t1 = time.perf_counter()
    state = run_onpolicy(str(cfg_path), progress=False, teacher=teacher)
    t_rounds = time.perf_counter() - t1

    students = [("start", start_pkg, read_card(start_pkg)["metrics"])]
    for e in state["rounds"]:
        if e.get("package"):
            students.append((f"round {e['round']}", Path(e["package"]), e["held_out"]))
    rows = []
    for k, (name, pkg, metrics) in enumerate(students):
        # the exploration of round k+1 ran student k; the last student gets one more
        nxt = state["rounds"][k] if k < len(state["rounds"]) else None
        runs = nxt["runs"] if nxt else final_exploration(pkg, cfg)
        pe = probe_errors(pkg, probes)
        bulk = metrics.get("by_group", {}).get("bulk", metrics)["force_mae_mev_a"]
        rows.append({"student": name, "package": str(pkg), "runs": runs, "probes": pe,
                     "labelled_next": nxt["labelled"] if nxt else None,
                     "errors_new_frames": ({"before": nxt["new_frame_errors_before"]["force_mae_mev_a"],
                                            "after": nxt["new_frame_errors_after"]["force_mae_mev_a"]}
                                           if nxt and nxt.get("new_frame_errors_before") else None),
                     "checks": checks(runs, pe, bulk)})
        print(f"{name}: {rows[-1]['checks']}")
    result = {"teacher": args.teacher, "threads": args.threads, "onpolicy": cfg["onpolicy"], "rounds_run": len(state["rounds"]),
              "converged": bool(state.get("converged")), "seconds_distill": t_distill, "seconds_rounds": t_rounds,
              "students": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"onpolicy_rounds_{args.teacher}{args.tag}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
    plot(result, stem.with_suffix(".png"))
    print(f"wrote {stem}.json and .png")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["students"]
    x = np.arange(len(rows))
    names = [r["student"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    ax = axes[0]
    for kind in rows[0]["probes"]:
        ax.plot(x, [r["probes"][kind]["force_mae_mev_a"] for r in rows], "o-", label=kind)
    ax.plot(x, [r["checks"]["bulk_force_mae_mev_a"] for r in rows], "k--", label="held-out bulk")
    ax.plot(x, [3 * r["checks"]["bulk_force_mae_mev_a"] for r in rows], "k:", label="3x bulk (check)")
    ax.set_yscale("log")
    ax.set_ylabel("force MAE against the teacher (meV/Å)")
    ax.set_title("probe frames (never trained on)")
    ax.legend(fontsize=7)
    ax = axes[1]
    starts = sorted({k.split("@")[0] for k in rows[0]["runs"]})
    for s in starts:
        ax.plot(x, [100 * np.mean([v["flagged_fraction"] for k, v in r["runs"].items() if k.startswith(s)]) for r in rows],
                "o-", label=s.split("-")[-1])
    diverged = [sum(1 for v in r["runs"].values() if v["failed"]) for r in rows]
    for xi, d in zip(x, diverged):
        if d:
            ax.annotate(f"{d} diverged", (xi, 100), ha="center", fontsize=7, color="crimson")
    ax.axhline(5, color="k", ls=":", lw=1)
    ax.set_ylabel("student's own MD frames flagged (%)")
    ax.set_title("the student's own NVT (300, 900 K)")
    ax.legend(fontsize=7)
    ax = axes[2]
    lab = [r["labelled_next"] or 0 for r in rows]
    ax.bar(x, np.cumsum([0] + lab[:-1]), color="tab:gray", label="on-policy frames in training")
    ax.set_ylabel("frames")
    ax2 = ax.twinx()
    ne = [(k, r["errors_new_frames"]) for k, r in enumerate(rows) if r["errors_new_frames"]]
    if ne:
        ax2.plot([k + 1 for k, _ in ne], [e["before"] for _, e in ne], "v-", color="crimson", label="new frames, before")
        ax2.plot([k + 1 for k, _ in ne], [e["after"] for _, e in ne], "^-", color="tab:green", label="new frames, after")
        ax2.set_ylabel("force MAE on the round's new frames (meV/Å)")
        ax2.set_yscale("log")
        ax2.legend(fontsize=7, loc="upper right")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("what each round labelled and learned")
    for ax in axes:
        ax.set_xticks(x, names, fontsize=8)
    fig.suptitle(f"On-policy rounds from a bulk-only start ({result['teacher']}, Cu)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
