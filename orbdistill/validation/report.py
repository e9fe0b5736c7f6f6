"""``report.md`` and PNG plots from a validation summary (see :mod:`orbdistill.validation.suite`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List

import numpy as np


def _fmt(x, spec=".3g"):
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return f"{x:,}"
    try:
        if not np.isfinite(x):
            return "-"
    except TypeError:
        return str(x)
    return format(x, spec)


def _table(header: List[str], rows: List[List]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    tmp = str(path) + ".tmp.png"
    fig.tight_layout()
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    _plt().close(fig)


def plot_nve(summary: dict, path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in summary["nve"].items():
        e = np.array(r["total_ev"]) / r["n_atoms"] * 1e3
        ax.plot(r["time_ps"], e - e[0], lw=0.8,
                label=f"{name}: {_fmt(r['drift_mev_atom_ps'])} meV/atom/ps" + (" (failed)" if r["failed"] else ""))
    ax.set_xlabel("time (ps)")
    ax.set_ylabel("total energy - start (meV/atom)")
    ax.set_title(f"NVE, {summary['md_system']['n_atoms']} atoms, velocity Verlet", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_sweep(summary: dict, path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, s in summary["sweep"].items():
        pts = [(r["timestep_fs"], r["fluctuation_mev_atom"]) for r in s["runs"] if r["failed"] is None]
        if pts:
            x, y = zip(*pts)
            ax.plot(x, y, "o-", label=f"{name} (slope {_fmt(s['fluctuation_exponent'], '.2f')})")
    xs = np.array(summary["config"]["sweep_timesteps_fs"], dtype=float)
    ys = [r["fluctuation_mev_atom"] for s in summary["sweep"].values() for r in s["runs"]
          if r["fluctuation_mev_atom"] is not None and r["timestep_fs"] == xs[0]]
    if ys:
        ax.plot(xs, ys[0] * (xs / xs[0]) ** 2, "k--", lw=0.8, label="dt^2")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("timestep (fs)")
    ax.set_ylabel("total-energy fluctuation (meV/atom)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    _save(fig, path)


def plot_throughput(summary: dict, path) -> None:
    plt = _plt()
    rows = summary["throughput"]["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for m in dict.fromkeys(r["model"] for r in rows):
        pts = [(r["n_atoms"], r["ms_per_step"], r.get("peak_step_mb")) for r in rows if r["model"] == m and "ms_per_step" in r]
        if not pts:
            continue
        x, y, mem = zip(*pts)
        axes[0].plot(x, y, "o-", label=m)
        if any(v is not None for v in mem):
            axes[1].plot(x, [v if v is not None else np.nan for v in mem], "o-", label=m)
    env = summary["environment"]
    where = env["gpu"] or f"CPU, {env['threads']} threads"
    for ax, lab in zip(axes, ("ms per MD step (energy, forces, stress)", "extra memory of one step (MB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("atoms")
        ax.set_ylabel(lab)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_title(f"time per step ({where})", fontsize=10)
    axes[1].set_title("peak step memory", fontsize=10)
    axes[0].legend(fontsize=7)
    _save(fig, path)


def _plot_per_temperature(summary: dict, path, key: str, x: str, y: str, xlabel: str, ylabel: str, overlap: bool) -> None:
    """One panel per NVT temperature, one curve per model."""
    plt = _plt()
    temps = list(summary["md"].keys())
    fig, axes = plt.subplots(1, len(temps), figsize=(6 * len(temps), 4.3), squeeze=False)
    for ax, t in zip(axes[0], temps):
        for name, e in summary["md"][t]["models"].items():
            if e.get(key):
                lab = name + (f" (overlap {e['rdf_overlap']:.3f})" if overlap and "rdf_overlap" in e else "")
                ax.plot(e[key][x], e[key][y], lw=1.0, label=lab)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(f"NVT {t}", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    _save(fig, path)


def plot_rdf(summary: dict, path) -> None:
    _plot_per_temperature(summary, path, "rdf", "r", "g", "r (Å)", "g(r)", overlap=True)


def plot_rdf_pairs(summary: dict, path) -> bool:
    """Partial RDFs: one row per NVT temperature, one panel per element pair, one curve per
    model. False (nothing drawn) for a one-element system."""
    temps = [t for t in summary["md"] if any((e.get("rdf") or {}).get("partial") for e in summary["md"][t]["models"].values())]
    if not temps:
        return False
    plt = _plt()
    pairs = list(next(e["rdf"]["partial"] for e in summary["md"][temps[0]]["models"].values() if (e.get("rdf") or {}).get("partial")))
    fig, axes = plt.subplots(len(temps), len(pairs), figsize=(4.5 * len(pairs), 3.6 * len(temps)), squeeze=False)
    for row, t in zip(axes, temps):
        for ax, pair in zip(row, pairs):
            for name, e in summary["md"][t]["models"].items():
                part = (e.get("rdf") or {}).get("partial", {}).get(pair)
                if part:
                    ov = e.get("rdf_overlap_partial", {}).get(pair)
                    ax.plot(e["rdf"]["r"], part["g"], lw=1.0, label=name + (f" (overlap {ov:.3f})" if ov is not None else ""))
            ax.set_xlabel("r (Å)")
            ax.set_ylabel(f"g$_{{{pair}}}$(r)")
            ax.set_title(f"{pair}, NVT {t}", fontsize=10)
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
    _save(fig, path)
    return True


def plot_msd(summary: dict, path) -> None:
    _plot_per_temperature(summary, path, "msd", "time_ps", "msd_a2", "time (ps)", "MSD (Å²)", overlap=False)


def plot_parity(summary: dict, path) -> bool:
    plt = _plt()
    items = [(key, name, e["parity_on_teacher_frames"]) for key, entry in summary["md"].items()
             for name, e in entry["models"].items()
             if e.get("parity_on_teacher_frames") and not e["parity_on_teacher_frames"].get("failed")]
    if not items:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    for key, name, p in items:
        et, es = p["pairs"]["energy_per_atom_ev"]
        ft, fs = p["pairs"]["force_ev_a"]
        axes[0].plot(et, es, ".", ms=4, label=f"{name} {key}: {p['energy_mae_mev_atom']:.2f} meV/atom")
        axes[1].plot(ft, fs, ".", ms=2, alpha=0.5, label=f"{name} {key}: {p['force_mae_mev_a']:.1f} meV/Å")
    for ax, lab in zip(axes, ("energy (eV/atom)", "force component (eV/Å)")):
        lo, hi = ax.get_xlim()
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.6)
        ax.set_xlabel(f"teacher {lab}")
        ax.set_ylabel(f"student {lab}")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("students on frames of the teacher's NVT runs", fontsize=10)
    _save(fig, path)
    return True


def plot_eos(summary: dict, path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, e in summary["eos"]["models"].items():
        if e.get("failed"):
            continue
        v = np.array(e["volumes_a3"]) / e["n_atoms"]
        en = np.array(e["energies_ev"]) / e["n_atoms"]
        ax.plot(v, en - en.min(), "o-", ms=4, label=f"{name}: B = {e['bulk_modulus_gpa']:.1f} GPa")
    ax.set_xlabel("volume (Å³/atom)")
    ax.set_ylabel("energy - minimum (eV/atom)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)


def write_report(summary: dict, out) -> dict:
    """Write ``report.md`` and the plots next to ``report.json``; returns their paths."""
    out = Path(out)
    env = summary["environment"]
    teacher = summary["teacher"]
    where = f"{env['gpu']} (CUDA)" if env.get("gpu") else f"CPU ({env['cpus']} cores), {env['threads']} torch threads"
    md = [f"# Validation: {', '.join(summary['students'])} against {teacher}", "",
          f"System: {summary['md_system']['formula']} ({summary['md_system']['n_atoms']} atoms, from the "
          f"{summary['md_system']['from']}); input {summary['structure']['formula']}. Device: {where}; torch {env['torch']}. "
          f"Run {env['started']} to {env.get('finished', '?')}.", ""]
    for name, info in summary["models"].items():
        bits = [info["role"]]
        for k in ("kind", "params", "family", "weights"):
            if info.get(k) is not None:
                bits.append(f"{k} {_fmt(info[k]) if k == 'params' else info[k]}")
        md.append(f"- **{name}**: " + ", ".join(str(b) for b in bits))
    md.append("")
    plots = {}

    if summary.get("targets"):
        md += ["## Targets", "", _table(["student", "target", "value", "pass", "detail"],
                                        [[r["model"], r["target"], _fmt(r["value"]), "yes" if r["pass"] else "**no**", r["detail"]]
                                         for r in summary["targets"]]), ""]

    if summary.get("throughput"):
        tp = summary["throughput"]
        rows = tp["rows"]
        sizes = sorted({r["n_atoms"] for r in rows})
        models = list(dict.fromkeys(r["model"] for r in rows))
        table = []
        for m in models:
            cells = []
            for n in sizes:
                r = next((r for r in rows if r["model"] == m and r["n_atoms"] == n), None)
                cells.append("-" if r is None or "ms_per_step" not in r else _fmt(r["ms_per_step"], ".4g"))
            table.append([m] + cells)
        md += ["## Throughput", "", f"ms per MD step (energy, forces, stress; {tp['protocol']}; {tp['repeats']} repeats), {where}.",
               "", _table(["model"] + [f"{n} atoms" for n in sizes], table), ""]
        if tp["speedups"]:
            sp_models = list(dict.fromkeys(s["model"] for s in tp["speedups"]))
            sp_sizes = sorted({s["n_atoms"] for s in tp["speedups"]})
            srows = []
            for m in sp_models:
                srows.append([m] + [_fmt(next((s["speedup_over_teacher"] for s in tp["speedups"]
                                                if s["model"] == m and s["n_atoms"] == n), None), ".3g") for n in sp_sizes])
            md += [f"**Speed-up over {teacher}** (teacher time / model time):", "",
                   _table(["model"] + [f"{n} atoms" for n in sp_sizes], srows), ""]
        big = {}
        for r in rows:
            if "atom_steps_per_s" in r:
                big[r["model"]] = r
        md += ["At the largest size each model ran (step memory: the extra resident memory of one step; process peak: "
               "the whole process, model and libraries included; both from a fresh process on CPU):", "",
               _table(["model", "atoms", "atom-steps/s", "step memory (MB)", "process peak (MB)"],
                      [[m, r["n_atoms"], _fmt(r["atom_steps_per_s"], ".3g"), _fmt(r.get("peak_step_mb"), ".4g"),
                        _fmt(r.get("peak_rss_mb"), ".4g")] for m, r in big.items()]), ""]
        plot_throughput(summary, out / "throughput.png")
        plots["throughput"] = "throughput.png"
        md += ["![throughput](throughput.png)", ""]

    if summary.get("nve"):
        rows = []
        for name, r in summary["nve"].items():
            rows.append([name, f"{r['steps_completed']:,}/{r['steps']:,}", _fmt(r["timestep_fs"]), _fmt(r["drift_mev_atom_ps"]),
                         _fmt(r["fluctuation_mev_atom"]), _fmt(r["max_deviation_mev_atom"]), _fmt(r["mean_temperature_k"], ".0f"),
                         _fmt(r["max_net_momentum_amu_a_per_fs"], ".2g"), _fmt(r["ms_per_step"], ".3g"), r["failed"] or "-"])
        md += ["## Energy conservation (NVE)", "",
               f"Velocity Verlet from {summary['config']['nve_temperature_k']:g} K Maxwell-Boltzmann velocities (no net momentum "
               "or rotation), first 20 % dropped, least-squares slope of the total energy.", "",
               _table(["model", "steps", "dt (fs)", "drift (meV/atom/ps)", "fluctuation (meV/atom)", "max |ΔE| (meV/atom)",
                       "mean T (K)", "max net momentum (amu Å/fs)", "ms/step", "failure"], rows), ""]
        plot_nve(summary, out / "nve_energy.png")
        plots["nve"] = "nve_energy.png"
        md += ["![NVE](nve_energy.png)", ""]
    if summary.get("sweep"):
        rows = []
        for name, s in summary["sweep"].items():
            for r in s["runs"]:
                rows.append([name, _fmt(r["timestep_fs"]), f"{r['steps_completed']:,}/{r['steps']:,}", _fmt(r["drift_mev_atom_ps"]),
                             _fmt(r["fluctuation_mev_atom"]), r["failed"] or "-"])
            rows.append([name, "exponent", "", "", _fmt(s["fluctuation_exponent"], ".2f"), ""])
        md += ["### Timestep sweep", "", f"{summary['config']['sweep_ps']:g} ps at each timestep; velocity Verlet's fluctuation should grow as dt² (exponent 2).",
               "", _table(["model", "dt (fs)", "steps", "drift (meV/atom/ps)", "fluctuation (meV/atom)", "failure"], rows), ""]
        plot_sweep(summary, out / "nve_timestep.png")
        plots["sweep"] = "nve_timestep.png"
        md += ["![timestep sweep](nve_timestep.png)", ""]

    if summary.get("md"):
        rows = []
        for key, entry in summary["md"].items():
            for name, e in entry["models"].items():
                p = e.get("parity_on_teacher_frames") or {}
                if p.get("failed"):
                    p = {}
                rows.append([key, name, _fmt(e["mean_temperature_k"], ".0f"), _fmt(e["mean_potential_ev_atom"], ".5g"),
                             _fmt(e.get("rdf_overlap"), ".4f"), _fmt(e["msd"]["msd_a2"][-1] if e.get("msd") else None),
                             _fmt(e.get("msd_final_ratio")), _fmt(p.get("energy_mae_mev_atom_shift_removed")),
                             _fmt(p.get("force_mae_mev_a")), _fmt(p.get("stress_mae_gpa")), e["failed"] or "-"])
        cfg = summary["config"]
        md += ["## MD agreement (NVT)", "",
               f"Bussi thermostat, {cfg['md_timestep_fs']:g} fs, {cfg['md_equilibration_steps']} equilibration + {cfg['md_steps']} "
               f"production steps, same start and seed for every model. RDF overlap = Σ min(g_teacher, g_student) / Σ max(...). "
               "Parity columns: the student evaluated on frames of the teacher's trajectory (energy MAE after removing the mean offset).", "",
               _table(["T", "model", "mean T (K)", "mean E_pot (eV/atom)", "RDF overlap", "final MSD (Å²)", "MSD ratio",
                       "E MAE (meV/atom)", "F MAE (meV/Å)", "stress MAE (GPa)", "failure"], rows), ""]
        plot_rdf(summary, out / "rdf.png")
        plot_msd(summary, out / "msd.png")
        plots.update({"rdf": "rdf.png", "msd": "msd.png"})
        md += ["![RDF](rdf.png)", ""]
        pair_rows = [[key, name] + [_fmt(v, ".4f") for v in e["rdf_overlap_partial"].values()]
                     for key, entry in summary["md"].items() for name, e in entry["models"].items() if e.get("rdf_overlap_partial")]
        if pair_rows and plot_rdf_pairs(summary, out / "rdf_pairs.png"):
            pairs = next(list(e["rdf_overlap_partial"]) for entry in summary["md"].values()
                         for e in entry["models"].values() if e.get("rdf_overlap_partial"))
            plots["rdf_pairs"] = "rdf_pairs.png"
            md += ["Partial RDFs g_ab(r) (V n_ab / (N_a N_b 4πr² dr); the total is Σ x_a x_b g_ab), overlap with the teacher's:", "",
                   _table(["T", "model"] + pairs, pair_rows), "", "![partial RDFs](rdf_pairs.png)", ""]
        rep_rows = []
        for key, entry in summary["md"].items():
            for name, e in entry["models"].items():
                if "rdf_overlap_replica" in e:
                    rep = e.get("rdf_overlap_replica_partial", {})
                    indep = e.get("rdf_overlap_replica_teacher_partial", {})
                    rep_rows.append([key, name, "total", _fmt(e["rdf_overlap"], ".4f"),
                                     _fmt(e.get("rdf_overlap_replica_teacher"), ".4f"), _fmt(e["rdf_overlap_replica"], ".4f")])
                    rep_rows += [[key, name, pair, _fmt(e.get("rdf_overlap_partial", {}).get(pair), ".4f"),
                                  _fmt(indep.get(pair), ".4f"), _fmt(v, ".4f")] for pair, v in rep.items()]
                elif e.get("replica_failed"):
                    rep_rows.append([key, name, "-", _fmt(e.get("rdf_overlap"), ".4f"), "-",
                                     f"replica failed: {e['replica_failed']}"])
        if rep_rows:
            md += ["Sampling noise: each student ran the same protocol again from the next seed. The teacher's run and "
                   "the student's first share a seed, which keeps short runs correlated; the second seed's run against "
                   "the teacher, and against the student's first run, are pairs of independent runs. When those two "
                   "columns agree, the gap to the teacher cannot be told from noise at this run length (run longer).", "",
                   _table(["T", "model", "pair", "with the teacher (same seed)", "with the teacher (other seed)",
                           "two student runs (other seeds)"], rep_rows), ""]
        if cfg.get("hydrogen_mass_amu"):
            md += [f"These runs give hydrogen a mass of {cfg['hydrogen_mass_amu']:g} amu: structures (RDFs) are those of "
                   "natural masses, dynamics (MSD) are those of the heavier isotope, for teacher and student alike.", ""]
        md += ["![MSD](msd.png)", ""]
        if plot_parity(summary, out / "parity.png"):
            plots["parity"] = "parity.png"
            md += ["![parity](parity.png)", ""]

    if summary.get("relax"):
        rel = summary["relax"]
        rows = []
        for name, m in rel["models"].items():
            r = m["from_input"]
            v = rel["vs_teacher"].get(name, {})
            lat = v.get("lattice_rel_error_max")
            if r.get("failed"):
                rows.append([name, f"failed: {r['failed'][:80]}", "-", "-", "-", _fmt(m["mean_steps"], ".3g"), "no", "-", "-"])
                continue
            rows.append([name, ", ".join(f"{x:.4f}" for x in r["cell_lengths_a"]), _fmt(r["volume_per_atom_a3"], ".5g"),
                         _fmt(r["energy_per_atom_ev"], ".6g"), r["steps"], _fmt(m["mean_steps"], ".3g"),
                         _fmt(m["all_converged"]) + (f" ({m['failed']} failed)" if m.get("failed") else ""),
                         _fmt(100 * lat, ".3f") if lat is not None else "-", _fmt(v.get("position_rmsd_max_a"), ".3g")])
        cfg = summary["config"]
        md += ["## Relaxation", "",
               f"{cfg['optimizer']} with FrechetCellFilter to fmax {cfg['relax_fmax']} eV/Å, from the input structure and "
               f"{cfg['relax_starts']} perturbed copies (rattle 0.05 Å, random strain up to 2 %).", "",
               _table(["model", "cell lengths (Å)", "V (Å³/atom)", "E (eV/atom)", "steps (input)", "mean steps", "converged",
                       "max lattice error vs teacher (%)", "max position RMSD vs teacher (Å)"], rows), ""]
    if summary.get("eos"):
        eos = summary["eos"]
        rows = [[n, f"failed: {e['failed'][:80]}", "-", "-"] if e.get("failed") else
                [n, _fmt(e["bulk_modulus_gpa"], ".4g"), _fmt(e["v0_a3"] / e["n_atoms"], ".5g"),
                 _fmt(100 * eos["relative_error"][n]["bulk_modulus_gpa"], ".2f") if n in eos["relative_error"] else "-"]
                for n, e in eos["models"].items()]
        md += ["## Equation of state", "", _table(["model", "B (GPa)", "V0 (Å³/atom)", "B error vs teacher (%)"], rows), ""]
        plot_eos(summary, out / "eos.png")
        plots["eos"] = "eos.png"
        md += ["![EOS](eos.png)", ""]
    if summary.get("elastic"):
        el = summary["elastic"]
        rows = []
        for n, e in el["models"].items():
            if e.get("failed"):
                rows.append([n, f"failed: {e['failed'][:80]}", "-", "-", "-", "-", "-"])
                continue
            err = el["relative_error"].get(n)
            rows.append([n, _fmt(e["c11_gpa"], ".4g"), _fmt(e["c12_gpa"], ".4g"), _fmt(e["c44_gpa"], ".4g"),
                         _fmt(e["bulk_modulus_voigt_gpa"], ".4g"), _fmt(e["symmetry_error_gpa"], ".2g"),
                         ", ".join(f"{100 * err[k]:.1f}" for k in ("c11_gpa", "c12_gpa", "c44_gpa")) if err else "-"])
        md += ["## Elastic constants", "",
               f"Central stress differences at ±{summary['config']['elastic_strain']:g} strain from each model's own minimum "
               f"({'relaxed' if summary['config']['relax_ions'] else 'clamped'} ions); C11, C12, C44 are cubic averages.", "",
               _table(["model", "C11 (GPa)", "C12 (GPa)", "C44 (GPa)", "B_Voigt (GPa)", "max |Cij - Cji|", "error vs teacher (%) C11, C12, C44"], rows), ""]
    if summary.get("phonons"):
        ph = summary["phonons"]
        rows = []
        for n, r in ph.items():
            if r.get("failed"):
                rows.append([n, f"failed: {r['failed'][:80]}", "-", "-", "-", "-"])
                continue
            v = r.get("vs_teacher") or {}
            rows.append([n, "x".join(str(x) for x in r["supercell"]), _fmt(r["max_frequency_thz"], ".3f"),
                         _fmt(r["min_frequency_thz"], ".3f"), _fmt(v.get("frequency_mae_thz"), ".3f"),
                         _fmt(v.get("dos_overlap"), ".3f")])
        cfg = summary["config"]
        md += ["## Phonons", "",
               f"Finite displacements (0.01 Å, phonopy) in a supercell at least {cfg['phonon_min_length']:g} Å wide, each "
               f"model's own relaxed crystal; frequencies on a Γ-centred {cfg['phonon_mesh']}³ mesh (all points). "
               "A negative minimum frequency is an imaginary (unstable) mode.", "",
               _table(["model", "supercell", "max ν (THz)", "min ν (THz)", "ν MAE vs teacher (THz)", "DOS overlap"], rows), ""]
        from .phonons import plot_phonons

        plot_phonons(ph, out / "phonons.png", title=f"{summary['structure']['formula']}: phonons",
                     reference=summary["teacher"])
        if (out / "phonons.png").exists():
            plots["phonons"] = "phonons.png"
            md += ["![phonons](phonons.png)", ""]
    if summary.get("surface"):
        sf = summary["surface"]
        rows = []
        for n, e in sf.items():
            if e.get("failed"):
                rows.append([n, f"failed: {e['failed'][:80]}"] + ["-"] * 6)
                continue
            par = e.get("parity_on_teacher_frames") or {}
            rows.append([n, _fmt(e["surface_energy_j_m2"], ".3f"),
                         _fmt(100 * e["surface_energy_rel_error"], ".1f") if "surface_energy_rel_error" in e else "-",
                         _fmt(e.get("mean_potential_ev_atom"), ".4f"), _fmt(par.get("force_mae_mev_a"), ".1f"),
                         _fmt(par.get("energy_mae_mev_atom"), ".2f"),
                         _fmt(e.get("flagged_fraction"), ".2f") if "flagged_fraction" in e else "-",
                         e.get("md_failed") or "-"])
        first = next(iter(sf.values()))
        cfg = summary["config"]
        md += [f"## Surface {first.get('facet', '')}", "",
               f"A {first.get('n_atoms')}-atom slab of the teacher-relaxed crystal ({first.get('thickness_a', 0):.1f} Å thick, "
               f"{cfg['surface_vacuum']:g} Å vacuum). Surface energy: slab relaxed at fixed cell (FIRE, 0.02 eV/Å) against "
               f"each model's own bulk energy. NVT at {cfg['surface_temperature_k']:g} K for {cfg['surface_steps']} steps; "
               "the student is evaluated on frames of the teacher's slab trajectory; 'flagged' is the share of the "
               "student's own slab frames it flags as out of its domain (the uncertainty over its threshold, or the "
               "estimated force error over its bar).", "",
               _table(["model", "γ (J/m²)", "γ error vs teacher (%)", "mean E_pot (eV/atom)", "F MAE on teacher frames (meV/Å)",
                       "E MAE (meV/atom)", "flagged", "MD failure"], rows), ""]
    if summary.get("defect"):
        dfc = summary["defect"]
        ref = dfc.get(summary["teacher"], {})
        kinds = [k for k in ref if isinstance(ref[k], dict)]
        rows = []
        for n, e in dfc.items():
            if e.get("failed"):
                rows.append([n, f"failed: {e['failed'][:80]}"] + ["-"] * 5)
                continue
            for k in kinds:
                if k not in e:
                    continue
                d = e[k]
                rows.append([n, k, _fmt(d["formation_energy_ev"], ".3f"), _fmt(d["unrelaxed_ev"], ".3f"),
                             _fmt(e.get("vs_teacher", {}).get(k), "+.3f") if "vs_teacher" in e else "-",
                             _fmt(d.get("max_displacement_a"), ".3f"),
                             _fmt(d.get("max_uncertainty"), ".2f") if "max_uncertainty" in d else "-"])
        n_atoms = summary.get("md_system", {}).get("n_atoms")
        md += ["## Point defects", "",
               f"One defect in the {n_atoms}-atom MD supercell of the teacher-relaxed crystal, the same start for every "
               "model, relaxed at fixed cell (FIRE, 0.02 eV/Å). Formation energy E_defect - E_bulk - Δn·E_bulk/N: an atom "
               "removed or added is referred to the model's own bulk energy per atom (for compounds a fixed reference, "
               "not a chemical potential, so that models compare).", "",
               _table(["model", "defect", "E_f relaxed (eV)", "E_f unrelaxed (eV)", "error vs teacher (eV)",
                       "largest relaxation (Å)", "largest uncertainty"], rows), ""]
    md += ["## Timing", "", ", ".join(f"{k} {v:.0f} s" for k, v in summary["timing_s"].items()), ""]
    path = out / "report.md"
    tmp = path.with_name("report.md.tmp")
    tmp.write_text("\n".join(md))
    os.replace(tmp, path)
    return {"markdown": str(path), **{k: str(out / v) for k, v in plots.items()}}
