"""How much of a student-teacher RDF gap is sampling noise?

A validation report compares the student's RDFs with the teacher's from one NVT run each.
Two runs of the *same* model from different seeds also differ, the more so the shorter
the runs and the fewer the atoms of a pair (64 O atoms give a noisy O-O g(r)). This script
measures that floor for a package against a finished validation report:

* the student reruns the report's MD protocol (start, temperatures, steps, masses) with
  ``--seeds`` seeds: overlaps between its own runs (the noise floor) and with the
  teacher's stored RDFs;
* with ``--long-steps`` it also runs the student that much longer, twice: the overlap of
  two long runs shows how far the noise falls with length, and the long run against the
  teacher's short one bounds what the short teacher run can confirm.

Writes ``results/rdf_sampling_noise_<package>.json`` and a plot of the overlaps.

Example (the water package, 2 threads, a few minutes)::

    python benchmarks/rdf_sampling_noise.py --package calculators/water-chgnet-v2 \\
        --report docs/validation/water-chgnet --seeds 0 1 2 --long-steps 3000 --threads 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--package", required=True)
    ap.add_argument("--report", required=True, help="a validation folder holding report.json and the MD start")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--long-steps", type=int, default=0, help="also two runs this many production steps long")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)

    import torch
    from ase.io import read

    from orbdistill import StudentCalculator
    from orbdistill.structures import supercell
    from orbdistill.validation import md as mdv

    torch.set_num_threads(args.threads)
    report = Path(args.report)
    summary = json.loads((report / "report.json").read_text())
    cfg = summary["config"]
    teacher = summary["teacher"] if isinstance(summary["teacher"], str) else summary["teacher"]["name"]
    # the report's MD system: the teacher-relaxed structure (or the input, for protocols
    # without a relax section) repeated as validate does
    n_target = summary["md_system"]["n_atoms"]
    start_file = report / f"relaxed_{teacher}.extxyz"
    start = supercell(read(start_file), cfg["min_atoms"]) if start_file.exists() else None
    if start is None or len(start) != n_target:
        raise SystemExit(f"{report}: the MD system ({n_target} atoms, {summary['md_system']['from']}) cannot be "
                         f"rebuilt from {start_file.name}")
    calc = StudentCalculator.from_package(args.package, on_extrapolation="ignore")
    name = Path(args.package).name
    failures = []

    def one(T, seed, steps):
        t0 = time.perf_counter()
        r = mdv.run_nvt(calc, start, T, steps, cfg["md_equilibration_steps"], cfg["md_timestep_fs"],
                        cfg["md_sample_interval"], seed=seed, progress=False,
                        hydrogen_mass_amu=cfg.get("hydrogen_mass_amu"))
        if r["failed"]:
            # a student that breaks its own run: record where, and whether its out-of-domain
            # signal rose above the card's threshold on the frames sampled before the break
            tail = []
            for f in r["frames"][-5:]:
                f = f.copy()
                f.wrap()
                f.calc = calc
                f.get_potential_energy()
                tail.append(float(calc.results["max_uncertainty"]))
            failures.append({"temperature_k": T, "seed": seed, "steps": steps, "failed": r["failed"],
                             "frames_before": len(r["frames"]), "max_uncertainty_last_frames": tail,
                             "threshold": calc.ood_threshold})
            print(f"{name} at {T} K, seed {seed}: {r['failed']}; signal on the last frames {tail}")
            return None, time.perf_counter() - t0
        g = mdv.rdf(r["frames"], cfg["rdf_r_max"], cfg["rdf_bins"])
        return g, time.perf_counter() - t0

    results = {"package": name, "report": str(report), "n_atoms": len(start), "threads": args.threads,
               "machine": platform.processor() or platform.machine(), "protocol": {
                   k: cfg.get(k) for k in ("md_timestep_fs", "md_equilibration_steps", "md_steps", "md_sample_interval",
                                           "hydrogen_mass_amu", "rdf_r_max", "rdf_bins")}, "temperatures": {}}
    for key, entry in summary["md"].items():
        T = float(entry["temperature_k"])
        g_teacher = entry["models"][teacher]["rdf"]
        runs, seconds = {}, 0.0
        for seed in args.seeds:
            g, dt = one(T, seed, cfg["md_steps"])
            seconds += dt
            if g is not None:
                runs[seed] = g
        res = {"seeds": args.seeds,
               "student_vs_teacher": {str(s): mdv.rdf_overlaps(g_teacher, g) for s, g in runs.items()},
               "student_vs_student": {f"{a}-{b}": mdv.rdf_overlaps(runs[a], runs[b])
                                      for a, b in itertools.combinations(sorted(runs), 2)},
               "reported": {"total": entry["models"][name].get("rdf_overlap"),
                            **(entry["models"][name].get("rdf_overlap_partial") or {})},
               "seconds": seconds}
        if args.long_steps:
            long = [one(T, 100 + k, args.long_steps) for k in range(2)]
            done = [g for g, _ in long if g is not None]
            res["long"] = {"steps": args.long_steps, "completed": len(done),
                           "student_vs_student": mdv.rdf_overlaps(done[0], done[1]) if len(done) == 2 else None,
                           "student_vs_teacher": [mdv.rdf_overlaps(g_teacher, g) for g in done],
                           "seconds": sum(dt for _, dt in long)}
        results["temperatures"][key] = res
        results["failures"] = failures
        print(key, json.dumps({k: v for k, v in res.items() if k != "seeds"}, indent=None)[:2000])

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"rdf_sampling_noise_{name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(path)
    plot(results, out / f"rdf_sampling_noise_{name}.png")
    print("wrote", path)
    return results


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    temps = list(results["temperatures"])
    pairs = list(next(iter(results["temperatures"].values()))["reported"])
    fig, axes = plt.subplots(1, len(temps), figsize=(5.2 * len(temps), 4), squeeze=False)
    x = np.arange(len(pairs))
    for ax, key in zip(axes[0], temps):
        r = results["temperatures"][key]
        vt = np.array([[v[p] for p in pairs] for v in r["student_vs_teacher"].values()])
        vs = np.array([[v[p] for p in pairs] for v in r["student_vs_student"].values()])
        ax.scatter(np.repeat(x - 0.15, len(vt)), vt.ravel(order="F"), color="C0", label="student vs teacher (short runs)")
        ax.scatter(np.repeat(x + 0.15, len(vs)), vs.ravel(order="F"), color="C1", marker="s",
                   label="student vs student, other seed (short)")
        if r.get("long", {}).get("student_vs_student"):
            ax.scatter(x + 0.3, [r["long"]["student_vs_student"][p] for p in pairs], color="C2", marker="^",
                       label=f"student vs student ({r['long']['steps']} steps)")
        if r.get("long", {}).get("student_vs_teacher"):
            lt = np.array([[v[p] for p in pairs] for v in r["long"]["student_vs_teacher"]])
            ax.scatter(np.repeat(x, len(lt)), lt.ravel(order="F"), color="C3", marker="x",
                       label=f"long student vs short teacher")
        ax.axhline(0.95, color="k", lw=0.8, ls="--")
        ax.set_xticks(x, pairs)
        ax.set_ylabel("RDF overlap")
        ax.set_title(f"{results['package']}, {key}, {results['n_atoms']} atoms")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
