"""MD agreement: radial distribution functions and mean-square displacements from NVT runs.

Teacher and student run the same thermostat, temperature, timestep, starting structure and
initial velocities; what is compared are the structural (RDF) and dynamical (MSD)
observables that users compute from their trajectories.
"""

from __future__ import annotations

import logging
import time
from typing import List, Optional, Sequence

import numpy as np

log = logging.getLogger(__name__)


def run_nvt(calc, atoms, temperature_k: float, steps: int, equilibration_steps: int = 0, timestep_fs: float = 2.0,
            sample_interval: int = 10, taut_fs: float = 100.0, seed: int = 0, progress: bool = True,
            label: str = "", hydrogen_mass_amu: Optional[float] = None) -> dict:
    """Bussi NVT run; returns sampled frames (unwrapped positions) and the temperature series.

    Args:
        calc: ASE calculator
        atoms: starting structure (copied)
        temperature_k: thermostat temperature (K)
        steps: production steps, sampled every ``sample_interval``
        equilibration_steps: steps run first and not sampled
        timestep_fs, taut_fs: timestep and thermostat time constant (fs)
        seed: seeds both the initial velocities and the thermostat
        hydrogen_mass_amu: run with hydrogen this heavy (same structures, slower dynamics; see
            :func:`orbdistill.data.generate.md_masses`)
    Returns:
        ``frames`` (list of ase.Atoms without calculator, positions unwrapped),
        ``time_ps`` [F], ``temperature_k`` [F], ``potential_ev`` [F], ``seconds``, ``failed``.
    """
    from ase import units
    from ase.md.bussi import Bussi
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from tqdm.auto import tqdm

    atoms = atoms.copy()
    atoms.calc = calc
    if hydrogen_mass_amu and (atoms.numbers == 1).any():
        from orbdistill.data.generate import md_masses

        atoms.set_masses(md_masses(atoms, hydrogen_mass_amu))
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_k, rng=rng)
    Stationary(atoms)
    dyn = Bussi(atoms, timestep=timestep_fs * units.fs, temperature_K=temperature_k, taut=taut_fs * units.fs, rng=rng)
    frames, times, temps, epots = [], [], [], []
    failed = None
    t0 = time.perf_counter()
    total = equilibration_steps + steps
    bar = tqdm(total=total, desc=f"NVT {label} {temperature_k:g} K".strip(), disable=not progress, leave=False)
    done = 0
    try:
        while done < equilibration_steps:
            chunk = min(sample_interval, equilibration_steps - done)
            dyn.run(chunk)
            done += chunk
            bar.update(chunk)
        for k in range(0, steps + 1, sample_interval):
            if k:
                dyn.run(sample_interval)
                done += sample_interval
                bar.update(sample_interval)
            snap = atoms.copy()
            snap.calc = None
            snap.arrays.pop("masses", None)
            frames.append(snap)
            times.append(k * timestep_fs / 1000.0)
            temps.append(float(atoms.get_temperature()))
            epots.append(float(atoms.get_potential_energy()))
            if not np.isfinite(epots[-1]):
                failed = f"non-finite energy at step {done}"
                break
    except Exception as exc:
        failed = f"{type(exc).__name__} within steps {done + 1}-{done + sample_interval}: {exc}"
        log.warning("NVT %s: %s", label, failed)
    finally:
        bar.close()
    return {"frames": frames, "time_ps": times, "temperature_k": temps, "potential_ev": epots,
            "seconds": time.perf_counter() - t0, "failed": failed, "steps_completed": done,
            "target_temperature_k": temperature_k, "timestep_fs": timestep_fs}


def rdf(frames: Sequence, r_max: float = 6.0, n_bins: int = 120) -> dict:
    """Total and partial (per element pair) radial distribution functions, averaged over frames.

    With ``n_ab(r)`` the number of ordered pairs (i of element a, j of element b) in the shell
    at r, averaged over frames, and ``V`` the mean volume:

    * g(r) = V n(r) / (N^2 4 pi r^2 dr) (all pairs);
    * g_ab(r) = V n_ab(r) / (N_a N_b 4 pi r^2 dr), so that g = sum_ab x_a x_b g_ab with
      x_a = N_a / N; g_ab = g_ba, and each unordered pair of elements is reported once, in the
      order the elements first appear (water: O-O, O-H, H-H).

    Periodic images are counted (any ``r_max`` is allowed, also larger than half the cell). For
    structures without volume, g is replaced by the normalised pair-distance density.

    Returns: ``r`` [n_bins] bin centres (Å), ``g`` [n_bins], ``coordination`` [n_bins] (running
    coordination number), ``r_max``, and for structures of more than one element ``partial``:
    ``{"A-B": {"g": [n_bins], "coordination": [n_bins]}}`` (running number of B atoms around an A).
    """
    from orbdistill.graph import neighbour_list

    if not frames:
        raise ValueError("rdf needs at least one frame")
    edges = np.linspace(0.0, r_max, n_bins + 1)
    numbers = np.asarray(frames[0].numbers)
    n = len(numbers)
    order = list(dict.fromkeys(numbers.tolist()))  # elements in order of first appearance
    pairs = [(za, zb) for k, za in enumerate(order) for zb in order[k:]] if len(order) > 1 else []
    hist = np.zeros(n_bins)
    hist_ab = {pair: np.zeros(n_bins) for pair in pairs}
    vol = []
    for at in frames:
        if len(at) != n or (np.asarray(at.numbers) != numbers).any():
            raise ValueError("rdf needs frames of the same atoms in the same order")
        i, j, _, d = neighbour_list(at.positions, at.cell.array, at.pbc, r_max)
        hist += np.histogram(d, bins=edges)[0]
        zi, zj = numbers[np.asarray(i)], numbers[np.asarray(j)]
        for za, zb in pairs:
            hist_ab[(za, zb)] += np.histogram(d[(zi == za) & (zj == zb)], bins=edges)[0]
        vol.append(abs(at.cell.volume) if all(at.pbc) else 0.0)
    hist /= len(frames)
    shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    r = 0.5 * (edges[1:] + edges[:-1])
    periodic = all(v > 0 for v in vol)

    def density(h, n_a, n_b):
        if periodic:
            return h * float(np.mean(vol)) / (n_a * n_b * shell)
        return h / max(h.sum(), 1) / (edges[1] - edges[0])

    from ase.data import chemical_symbols

    out = {"r": r.tolist(), "g": density(hist, n, n).tolist(), "coordination": (np.cumsum(hist) / n).tolist(),
           "r_max": r_max}
    if pairs:
        counts = {z: int((numbers == z).sum()) for z in order}
        out["partial"] = {}
        for (za, zb), h in hist_ab.items():
            h = h / len(frames)
            out["partial"][f"{chemical_symbols[za]}-{chemical_symbols[zb]}"] = {
                "g": density(h, counts[za], counts[zb]).tolist(), "coordination": (np.cumsum(h) / counts[za]).tolist()}
    return out


def rdf_overlap(g_a: Sequence[float], g_b: Sequence[float]) -> float:
    """Overlap of two RDFs on the same grid: sum(min(g_a, g_b)) / sum(max(g_a, g_b)).

    1 for identical curves and 0 for curves with no common support; a shift of a sharp
    peak by its own width roughly halves it. (The Ruzicka similarity of the two curves.)
    """
    a = np.asarray(g_a, dtype=float)
    b = np.asarray(g_b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"RDFs on different grids: {a.shape} vs {b.shape}")
    den = np.maximum(a, b).sum()
    return float(np.minimum(a, b).sum() / den) if den > 0 else 1.0


def rdf_overlaps(a: dict, b: dict) -> dict:
    """Overlaps of two :func:`rdf` results on the same grid: ``{"total": ..., "A-B": ...}``,
    one entry for every element pair both have."""
    out = {"total": rdf_overlap(a["g"], b["g"])}
    for pair, v in a.get("partial", {}).items():
        if pair in b.get("partial", {}):
            out[pair] = rdf_overlap(v["g"], b["partial"][pair]["g"])
    return out


def msd(frames: Sequence, time_ps: Sequence[float]) -> dict:
    """Mean-square displacement (Å^2) from unwrapped positions, centre-of-mass drift removed.

    ASE's integrators do not wrap positions, so displacements are continuous. Returns
    ``time_ps``, ``msd_a2`` and ``diffusion_cm2_s`` (slope of the second half / 6, an
    estimate meaningful only for liquids).
    """
    pos = np.stack([f.positions for f in frames])  # [F, N, 3]
    masses = frames[0].get_masses()
    com = (pos * masses[None, :, None]).sum(1) / masses.sum()
    disp = pos - com[:, None, :] - (pos[0] - com[0])[None]
    m = (disp ** 2).sum(-1).mean(-1)
    t = np.asarray(time_ps, dtype=float)
    half = len(t) // 2
    slope = float(np.polyfit(t[half:], m[half:], 1)[0]) if len(t) - half >= 2 else float("nan")
    return {"time_ps": t.tolist(), "msd_a2": m.tolist(), "diffusion_cm2_s": slope / 6.0 * 1e-4}


def parity_on_frames(teacher_calc, student_calc, frames: Sequence, stress: bool = True) -> dict:
    """Student against teacher on the same frames: MAEs and the raw pairs for parity plots.

    Returns ``energy_mae_mev_atom``, ``force_mae_mev_a``, ``stress_mae_gpa`` (None without
    volume) and ``pairs`` (per-atom energies, force components and stresses of both).
    """
    from ase import units

    e_t, e_s, f_t, f_s, s_t, s_s = [], [], [], [], [], []
    use_stress = stress and all(all(f.pbc) for f in frames)
    for f in frames:
        for calc, e, fo, s in ((teacher_calc, e_t, f_t, s_t), (student_calc, e_s, f_s, s_s)):
            at = f.copy()
            at.calc = calc
            e.append(at.get_potential_energy() / len(at))
            fo.append(at.get_forces().ravel())
            if use_stress:
                s.append(at.get_stress() / units.GPa)
    e_t, e_s = np.array(e_t), np.array(e_s)
    f_t, f_s = np.concatenate(f_t), np.concatenate(f_s)
    # energies per atom may differ by a constant reference; report both raw and shifted
    shift = float(np.mean(e_s - e_t))
    out = {
        "n_frames": len(frames),
        "energy_mae_mev_atom": float(np.abs(e_s - e_t).mean() * 1e3),
        "energy_mae_mev_atom_shift_removed": float(np.abs(e_s - e_t - shift).mean() * 1e3),
        "force_mae_mev_a": float(np.abs(f_s - f_t).mean() * 1e3),
        "force_rmse_mev_a": float(np.sqrt(((f_s - f_t) ** 2).mean()) * 1e3),
        "stress_mae_gpa": float(np.abs(np.array(s_s) - np.array(s_t)).mean()) if use_stress else None,
        "pairs": {"energy_per_atom_ev": [e_t.tolist(), e_s.tolist()], "force_ev_a": [f_t.tolist(), f_s.tolist()],
                  "stress_gpa": [np.ravel(s_t).tolist(), np.ravel(s_s).tolist()] if use_stress else None},
    }
    return out


def subsample(frames: List, k: int) -> List:
    """At most ``k`` frames evenly spaced over ``frames``."""
    if len(frames) <= k:
        return list(frames)
    idx = np.linspace(0, len(frames) - 1, k).round().astype(int)
    return [frames[i] for i in idx]
