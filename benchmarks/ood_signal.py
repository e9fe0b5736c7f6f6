"""Does the out-of-domain signal flag the structures where a student is wrong?

    python benchmarks/ood_signal.py --package cu-sevennet-v2 --teacher sevennet-0 \
        [--n-in-domain 60] [--probes auto|cu|generic] [--tag SUFFIX] [--out benchmarks/results]

Probe frames the student never saw, labelled by the teacher. For a Cu package (``--probes
cu``): low-index slabs (100), (110), (111) (rattled), clusters (13, 55, 147-atom icosahedra
and a 38-atom octahedron), vacancies and interstitials in bulk, hot bulk beyond the training
temperatures, compressed and expanded cells beyond the strain range. For any other package
(``--probes generic``) the same kinds built from its recipe's seed crystal: slabs of every
facet up to Miller index 2 (polar ones too) and of the primitive cell's (100), off-centre
clusters of 10, 30 and 60 atoms, every point defect of the composition. In-domain frames: fresh trajectories of the
package's own recipe run with another random seed, one of each protocol (seen neither by
the domain fit, which uses the training frames, nor by its calibration, which uses the
validation and test frames); rattled bulk for a package without a recipe.

For each frame: the student's force MAE against the teacher, the largest per-atom
uncertainty and, for packages calibrated with a force-error model, the estimated force MAE
(``mean_force_error``). A frame is flagged as the calculator flags it (either signal over
its bar: :func:`orbdistill.models.domain.domain_flags`). A frame is *bad* when its force
MAE exceeds 3x the card's held-out force MAE. Reports the share of bad frames flagged (goal
>= 90 %) and of in-domain frames flagged (goal <= 5 %), per kind, and for each signal on
its own; the in-domain frames that are themselves bad are counted apart (flagging those is
right, not a false alarm). Writes ``ood_<package>.json`` and ``ood_<package>.png`` (error
against uncertainty, and against the estimate).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def hot_and_volume_probes(cell, hot_scale: float = 1.0):
    """Hot rattles of a melt-like amplitude (0.25 and 0.35 Å times ``hot_scale``) and the cell
    compressed and expanded beyond the strain range (0.88-1.12 of its lattice vectors)."""
    out = []
    for k, sigma in enumerate((0.25, 0.35)):
        h = cell.copy()
        h.rattle(sigma * hot_scale, seed=100 + k)
        out.append(("hot", h))
    for scale in (0.88, 0.92, 1.08, 1.12):
        s = cell.copy()
        s.set_cell(s.cell.array * scale, scale_atoms=True)
        s.rattle(0.03, seed=7)
        out.append(("compressed" if scale < 1 else "expanded", s))
    return out


def probe_frames(a0: float, seed: int = 0):
    """(kind, atoms) pairs: structures a bulk-trained Cu student has not seen."""
    from ase.build import bulk, fcc100, fcc110, fcc111
    from ase.cluster import Icosahedron, Octahedron

    rng = np.random.default_rng(seed)
    out = []
    for name, builder in (("slab(100)", fcc100), ("slab(110)", fcc110), ("slab(111)", fcc111)):
        for k in range(4):
            s = builder("Cu", (3, 3, 5), a=a0, vacuum=8.0)
            s.rattle(0.02 + 0.02 * k, seed=int(rng.integers(1 << 30)))
            out.append((name, s))
    for n in (2, 3, 4):  # 13, 55, 147 atoms
        for k in range(2):
            c = Icosahedron("Cu", n, latticeconstant=a0)
            c.rattle(0.03, seed=int(rng.integers(1 << 30)))
            out.append(("cluster", c))
    o = Octahedron("Cu", 4, cutoff=1, latticeconstant=a0)  # 38 atoms
    o.rattle(0.03, seed=1)
    out.append(("cluster", o))
    cell = bulk("Cu", "fcc", a=a0, cubic=True).repeat(3)
    for k in range(4):
        v = cell.copy()
        del v[int(rng.integers(len(v)))]
        v.rattle(0.03, seed=int(rng.integers(1 << 30)))
        out.append(("vacancy", v))
        i = cell.copy()
        i.append("Cu")
        i.positions[-1] = np.array([0.5, 0.5, 0.0]) * a0 + [0.0, 0.0, a0 / 2]  # octahedral site
        i.rattle(0.03, seed=int(rng.integers(1 << 30)))
        out.append(("interstitial", i))
    return out + hot_and_volume_probes(cell)


def generic_probe_frames(seed, seed_index: int = 0, target_atoms: int = 64, rng_seed: int = 0):
    """(kind, atoms) probes for any seed crystal, built with the library's own coverage
    builders but with other sizes, cuts and facets than a recipe's defaults: slabs of every
    facet with Miller indices up to 2 (including polar ones, tagged ``slab(hkl)``), the
    "(100)" slab of the *primitive* cell (in rock salt or fcc a {111} slab: the cut a user
    who reaches for ``ase.build.surface`` on the primitive cell gets), clusters of 10, 30 and
    60 atoms cut off-centre, every point defect of the composition, hot rattles, and cells
    compressed and expanded beyond the strain range. A molecular seed gets only clusters of
    whole molecules, hot rattles and volume changes (its slabs are liquid interfaces).
    """
    from ase.build import surface

    from orbdistill.data.coverage import (conventional_cell, defect_kinds_for, make_cluster, make_defect,
                                          make_slab, seed_kind)
    from orbdistill.structures import supercell

    rng = np.random.default_rng(rng_seed)
    kind = seed_kind(seed)
    cell = supercell(seed, target_atoms, at_least=True)
    out = []
    if kind == "bulk":
        millers = [(1, 0, 0), (1, 1, 0), (1, 1, 1), (2, 1, 0), (2, 1, 1), (2, 2, 1)]
        for m in millers:
            slab = make_slab(seed, m, target_atoms)
            for amp in (0.02, 0.05):
                s = slab.copy()
                s.rattle(amp, seed=int(rng.integers(1 << 30)))
                out.append((f"slab({''.join(map(str, m))})", s))
        prim = surface(primitive_cell(seed), (1, 0, 0), 4, vacuum=6.0, periodic=True)
        prim = prim.repeat((max(1, round((target_atoms / len(prim)) ** 0.5)),) * 2 + (1,))
        for amp in (0.02, 0.05):
            s = prim.copy()
            s.rattle(amp, seed=int(rng.integers(1 << 30)))
            out.append(("slab(primitive 100)", s))
        for d in defect_kinds_for(cell, ("vacancy", "interstitial", "antisite")):
            v = make_defect(cell, d, rng)
            v.rattle(0.03, seed=int(rng.integers(1 << 30)))
            out.append((d, v))
    for n in (10, 30, 60):
        c = make_cluster(conventional_cell(seed) if kind == "bulk" else seed, n, molecular=kind == "molecular", rng=rng)
        c.rattle(0.03, seed=int(rng.integers(1 << 30)))
        out.append(("cluster", c))
    return out + hot_and_volume_probes(cell, 1.0 if kind == "bulk" else 0.5)


def primitive_cell(atoms):
    """The primitive cell of a crystal (spglib), whatever cell it was given in."""
    import spglib
    from ase import Atoms

    lattice, positions, numbers = spglib.standardize_cell(
        (atoms.cell.array, atoms.get_scaled_positions(), atoms.numbers), to_primitive=True, symprec=1e-3)
    return Atoms(numbers=numbers, scaled_positions=positions, cell=lattice, pbc=True)


def package_seed(package: Path):
    """The first seed structure of a package's recipe (``config.json``), or None."""
    from orbdistill.data.seeds import load_seeds

    cfg = package / "config.json"
    if not cfg.exists():
        return None
    seeds = json.loads(cfg.read_text())["generate"].get("seeds") or []
    if not seeds or not isinstance(seeds[0], str):
        return None
    repo = Path(__file__).resolve().parents[1]
    path = seeds[0] if Path(seeds[0]).exists() else str(repo / "data" / "structures" / Path(seeds[0]).name)
    return load_seeds([path])[0]


def fresh_in_domain_frames(package: Path, teacher, n: int, seed_offset: int = 1000):
    """``n`` frames of trajectories the package never met: its own recipe (the ``generate``
    section of its ``config.json``) with another random seed, one task of each protocol,
    evenly spaced frames of each, labelled by the teacher. Neither the domain fit (training
    frames) nor the calibration (validation and test frames) has seen them."""
    from orbdistill.data.generate import GenerateConfig, accept_frame, plan_tasks, run_task
    from orbdistill.data.seeds import load_seeds

    g = dict(json.loads((package / "config.json").read_text())["generate"])
    repo = Path(__file__).resolve().parents[1]
    g["seeds"] = [s if not isinstance(s, str) or "/" not in s or Path(s).exists()
                  else str(repo / "data" / "structures" / Path(s).name) for s in g["seeds"]]
    g["seed"] = int(g.get("seed", 0)) + seed_offset
    cfg = GenerateConfig.from_dict(g)
    seeds = load_seeds(cfg.seeds)
    tasks = plan_tasks(cfg, seeds)
    rng = np.random.default_rng(seed_offset)
    # only the protocols the package was trained on: a recipe written before a protocol
    # existed plans it now by default, and its frames are not in that package's domain
    trained_on = set(json.loads((package / "card.json").read_text()).get("data", {}).get("protocols") or [])
    by_protocol = {}
    for t in tasks:
        if not trained_on or t["protocol"] in trained_on:
            by_protocol.setdefault(t["protocol"], []).append(t)
    per = max(1, n // len(by_protocol))
    out = []
    for proto, ts in sorted(by_protocol.items()):
        task = ts[int(rng.integers(len(ts)))]
        frames = [f for f in run_task(task, seeds, cfg, teacher) if accept_frame(f, cfg)]
        for i in np.unique(np.linspace(0, len(frames) - 1, min(per, len(frames))).round().astype(int)):
            out.append((f"in-domain ({proto})", frames[i]))
    return out


def rattled_bulk_frames(n: int, a0: float):
    """In-domain frames for a package without a recipe: rattled fcc bulk."""
    from ase.build import bulk

    out = []
    for k in range(n):
        b = bulk("Cu", "fcc", a=a0, cubic=True).repeat(2)
        b.rattle(0.05, seed=k)
        out.append(("in-domain (rattled bulk)", b))
    return out


def plot(rows, summary, path):
    """Error against the uncertainty (and against the estimated force MAE, when the package has one)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    threshold, bad_mae = summary["threshold"], summary["bad_force_mae_ev_a"]
    fe_bar = summary.get("force_error_bar_ev_a")
    bad = summary["bad_frames"]
    with_est = fe_bar is not None and all(r["mean_force_error_ev_a"] is not None for r in rows)
    fig, axes = plt.subplots(1, 2 if with_est else 1, figsize=(12.0 if with_est else 6.4, 4.8), squeeze=False)
    kinds = sorted({r["kind"] for r in rows})
    panels = [("max_uncertainty", threshold, "largest per-atom uncertainty of the frame")]
    if with_est:
        panels.append(("mean_force_error_ev_a", fe_bar, "estimated force MAE of the frame (meV/Å)"))
    for ax, (key, bar, label) in zip(axes[0], panels):
        scale = 1e3 if key.endswith("_ev_a") else 1.0
        bar = scale * bar
        for k, kind in enumerate(kinds):
            rs = [r for r in rows if r["kind"] == kind]
            ax.scatter([scale * r[key] for r in rs], [1e3 * r["force_mae_ev_a"] for r in rs], s=18,
                       label=kind, marker="o" if kind.startswith("in-domain") else "^", color=plt.cm.tab20(k % 20))
        ax.axvline(bar, color="k", ls="--", lw=1, label=f"bar {bar:.3g}")
        ax.axhline(1e3 * bad_mae, color="r", ls=":", lw=1, label="3x card force MAE")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("student force MAE vs teacher (meV/Å)")
    def pct(x):
        return "n/a" if x is None else f"{x:.0%}"

    axes[0][0].set_title(f"{summary['package']}: flagged {pct(summary['bad_flagged_share'] if bad else None)} of bad frames, "
                         f"{pct(summary['in_domain_flagged_share'])} of in-domain", fontsize=9)
    axes[0][0].legend(fontsize=7, loc="upper left")
    if with_est:
        axes[0][1].set_title(f"bad frames flagged: {pct(summary['bad_flagged_share'])} (distance alone "
                             f"{pct(summary['bad_flagged_share_by_distance'])}); good in-domain flagged: "
                             f"{pct(summary['in_domain_good_flagged_share'])}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--package", default="cu-sevennet-v2")
    p.add_argument("--teacher", default="sevennet-0")
    p.add_argument("--n-in-domain", type=int, default=60,
                   help="in-domain frames, from fresh trajectories of the package's own recipe (0: probes only)")
    p.add_argument("--a0", type=float, default=3.61)
    p.add_argument("--probes", choices=("auto", "cu", "generic"), default="auto",
                   help="probe structures: 'cu' the fcc Cu set (slabs from fcc100/110/111, icosahedra...), "
                        "'generic' built from the package's seed crystal (every facet up to Miller index 2, "
                        "the primitive cell's (100) slab, off-centre clusters, every point defect); "
                        "'auto': 'cu' for a Cu-only package, else 'generic'")
    p.add_argument("--tag", default="", help="suffix of the output files")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--replot", metavar="JSON", help="only redraw the plot of an earlier run's ood_<package>.json")
    args = p.parse_args(argv)
    if args.replot:
        d = json.loads(Path(args.replot).read_text())
        plot(d["frames"], d["summary"], Path(args.replot).with_suffix(".png"))
        return
    import torch

    torch.set_num_threads(args.threads)
    from orbdistill import StudentCalculator, load_teacher
    from orbdistill.packages import find_package, read_card

    pkg = find_package(args.package)
    card = read_card(pkg)
    threshold = card["domain"]["ood"]["threshold"]
    fe_bar = (card["domain"]["ood"].get("force_error") or {}).get("threshold_ev_a", np.inf)
    bad_mae = 3 * card["metrics"]["force_mae_mev_a"] / 1e3
    teacher = load_teacher(args.teacher)
    student = StudentCalculator(pkg, on_extrapolation="ignore")
    rows = []
    t0 = time.perf_counter()
    fresh = (pkg / "config.json").exists()
    probes = args.probes
    if probes == "auto":
        probes = "cu" if card.get("species") == ["Cu"] else "generic"
    if probes == "generic":
        seed = package_seed(pkg)
        if seed is None:
            raise SystemExit(f"{pkg}: no seed structure in config.json; generic probes need one (use --probes cu)")
        probe = generic_probe_frames(seed)
    else:
        probe = probe_frames(args.a0)
    if not fresh and probes != "cu":
        raise SystemExit(f"{pkg}: no recipe (config.json) to draw in-domain frames from")
    if args.n_in_domain == 0:
        frames = probe  # probes only: the in-domain shares are left out
    else:
        frames = (fresh_in_domain_frames(pkg, teacher, args.n_in_domain) if fresh
                  else rattled_bulk_frames(args.n_in_domain, args.a0)) + probe
    for kind, atoms in frames:
        a = atoms.copy()
        if fresh and kind.startswith("in-domain") and atoms.calc is not None:
            f_ref, e_ref = atoms.get_forces(), atoms.get_potential_energy()
        else:
            (pred,) = teacher.predict([a])
            f_ref, e_ref = pred.forces, pred.energy
        a.calc = student
        f = a.get_forces()
        e_err = 1e3 * (a.get_potential_energy() - float(e_ref)) / len(a)
        u = a.calc.results["max_uncertainty"]
        est = a.calc.results.get("mean_force_error")
        rows.append({"kind": kind, "n_atoms": len(a), "force_mae_ev_a": float(np.abs(f - f_ref).mean()),
                     "energy_error_mev_atom": float(e_err),
                     "max_uncertainty": float(u), "mean_force_error_ev_a": est,
                     "flagged": bool(a.calc.out_of_domain), "flagged_by_distance": bool(u > threshold),
                     "flagged_by_force_error": bool(est is not None and est > fe_bar)})
    seconds = time.perf_counter() - t0
    rows_in = [r for r in rows if r["kind"].startswith("in-domain")]
    rows_out = [r for r in rows if not r["kind"].startswith("in-domain")]
    bad = [r for r in rows if r["force_mae_ev_a"] > bad_mae]
    good_in = [r for r in rows_in if r["force_mae_ev_a"] <= bad_mae]

    def share(rs, key="flagged"):
        return float(np.mean([r[key] for r in rs])) if rs else None

    summary = {
        "package": pkg.name, "teacher": args.teacher, "threshold": threshold, "bad_force_mae_ev_a": bad_mae,
        "bad_frames": len(bad), "bad_flagged_share": float(np.mean([r["flagged"] for r in bad])) if bad else None,
        "in_domain_frames": len(rows_in), "in_domain_flagged_share": share(rows_in),
        "probe_frames": len(rows_out), "probe_flagged_share": float(np.mean([r["flagged"] for r in rows_out])),
        "force_error_bar_ev_a": None if not np.isfinite(fe_bar) else float(fe_bar),
        "bad_flagged_share_by_distance": share(bad, "flagged_by_distance"),
        "bad_flagged_share_by_force_error": share(bad, "flagged_by_force_error"),
        "in_domain_bad_frames": len(rows_in) - len(good_in),
        "in_domain_good_frames": len(good_in), "in_domain_good_flagged_share": share(good_in),
        "per_kind": {}, "seconds": seconds, "threads": args.threads, "probes": probes,
    }
    for kind in sorted({r["kind"] for r in rows}):
        rs = [r for r in rows if r["kind"] == kind]
        summary["per_kind"][kind] = {"frames": len(rs), "force_mae_ev_a_median": float(np.median([r["force_mae_ev_a"] for r in rs])),
                                     "max_uncertainty_median": float(np.median([r["max_uncertainty"] for r in rs])),
                                     "energy_error_mev_atom_median_abs": float(np.median([abs(r["energy_error_mev_atom"]) for r in rs])),
                                     "flagged_share": float(np.mean([r["flagged"] for r in rs])),
                                     "bad_share": float(np.mean([r["force_mae_ev_a"] > bad_mae for r in rs]))}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"ood_{pkg.name}{args.tag}.json").write_text(json.dumps({"summary": summary, "frames": rows}, indent=1))
    plot(rows, summary, out / f"ood_{pkg.name}{args.tag}.png")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
