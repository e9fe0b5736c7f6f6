"""Energy conservation in NVE molecular dynamics.

The protocol follows the field's usual test (LAMBench's energy-conservation task): velocity
Verlet at a fixed timestep, Maxwell-Boltzmann velocities at 300 K with zero net momentum
and zero angular momentum, the first 20 % of the run discarded, and the least-squares slope
of the total energy reported in meV/atom/ps. A conservative model integrated with a stable
timestep shows no systematic drift; its total energy only fluctuates, by an amount that
grows as the timestep squared (velocity Verlet is a second-order integrator).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from typing import Optional, Sequence

import numpy as np

log = logging.getLogger(__name__)


def drift_statistics(time_ps: np.ndarray, total_energy_ev: np.ndarray, n_atoms: int,
                     drop_fraction: float = 0.2) -> dict:
    """Least-squares drift and fluctuation of a total-energy series.

    Args:
        time_ps: [T] simulation times (ps)
        total_energy_ev: [T] total energies (eV) of the whole system
        n_atoms: atoms in the system (energies are reported per atom)
        drop_fraction: leading fraction of the series discarded as equilibration
    Returns:
        ``drift_mev_atom_ps`` (slope), ``abs_drift_mev_atom_ps``, ``fluctuation_mev_atom``
        (standard deviation about the linear fit), ``max_deviation_mev_atom`` (largest
        excursion from the first kept value) and ``points`` (samples used).
    """
    t = np.asarray(time_ps, dtype=float)
    e = np.asarray(total_energy_ev, dtype=float) / n_atoms * 1e3  # meV/atom
    if t.shape != e.shape or t.ndim != 1:
        raise ValueError("time_ps and total_energy_ev must be one-dimensional and of equal length")
    start = int(math.floor(drop_fraction * len(t)))
    t, e = t[start:], e[start:]
    if len(t) < 3:
        return {"drift_mev_atom_ps": float("nan"), "abs_drift_mev_atom_ps": float("nan"),
                "fluctuation_mev_atom": float("nan"), "max_deviation_mev_atom": float("nan"), "points": int(len(t))}
    slope, intercept = np.polyfit(t, e, 1)
    resid = e - (slope * t + intercept)
    return {
        "drift_mev_atom_ps": float(slope),
        "abs_drift_mev_atom_ps": float(abs(slope)),
        "fluctuation_mev_atom": float(resid.std()),
        "max_deviation_mev_atom": float(np.abs(e - e[0]).max()),
        "points": int(len(t)),
    }


def run_nve(
    calc,
    atoms,
    steps: int = 10_000,
    timestep_fs: float = 1.0,
    temperature_k: float = 300.0,
    seed: int = 0,
    log_interval: int = 10,
    drop_fraction: float = 0.2,
    max_energy_change_ev_atom: float = 1.0,
    progress: bool = True,
    label: str = "",
) -> dict:
    """Velocity-Verlet NVE run; returns the energy series and its drift statistics.

    Args:
        calc: an ASE calculator (teacher or student)
        atoms: the starting structure (copied; not modified)
        steps: MD steps
        timestep_fs: integration timestep (fs)
        temperature_k: initial Maxwell-Boltzmann temperature (K)
        seed: seed of the initial velocities (the same seed gives every model the same start)
        log_interval: record energies every this many steps
        drop_fraction: leading fraction discarded before fitting the drift
        max_energy_change_ev_atom: the run counts as failed when the total energy moves by
            more than this from its start, or becomes non-finite, or the calculator raises
        progress: show a progress bar
    Returns:
        a dict with the series (``time_ps``, ``total_ev``, ``potential_ev``, ``kinetic_ev``,
        ``temperature_k``), ``steps_completed``, ``failed`` (reason or None),
        ``max_net_momentum_amu_a_per_fs``, ``seconds`` and the
        :func:`drift_statistics` fields.
    """
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
    from ase.md.verlet import VelocityVerlet
    from tqdm.auto import tqdm

    if steps < 1 or timestep_fs <= 0:
        raise ValueError(f"steps must be >= 1 and timestep_fs > 0, got {steps}, {timestep_fs}")
    atoms = atoms.copy()
    atoms.calc = calc
    n = len(atoms)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_k, rng=np.random.default_rng(seed))
    Stationary(atoms)
    with warnings.catch_warnings():  # ASE warns that the inertia tensor ignores periodic images
        warnings.simplefilter("ignore")
        ZeroRotation(atoms)  # the protocol removes it for bulk cells too
    dyn = VelocityVerlet(atoms, timestep=timestep_fs * units.fs)

    rec = {"step": [], "time_ps": [], "total_ev": [], "potential_ev": [], "kinetic_ev": [], "temperature_k": []}
    max_mom = 0.0

    def record(step):
        nonlocal max_mom
        epot = atoms.get_potential_energy()
        ekin = atoms.get_kinetic_energy()
        rec["step"].append(step)
        rec["time_ps"].append(step * timestep_fs / 1000.0)
        rec["potential_ev"].append(float(epot))
        rec["kinetic_ev"].append(float(ekin))
        rec["total_ev"].append(float(epot + ekin))
        rec["temperature_k"].append(float(atoms.get_temperature()))
        max_mom = max(max_mom, float(np.linalg.norm(atoms.get_momenta().sum(axis=0))))

    failed: Optional[str] = None
    done = 0
    t0 = time.perf_counter()
    record(0)
    e_start = rec["total_ev"][0]
    bar = tqdm(total=steps, desc=f"NVE {label} dt={timestep_fs:g} fs".strip(), disable=not progress, leave=False)
    try:
        while done < steps:
            chunk = min(log_interval, steps - done)
            dyn.run(chunk)
            done += chunk
            record(done)
            bar.update(chunk)
            e = rec["total_ev"][-1]
            if not np.isfinite(e) or not np.all(np.isfinite(atoms.positions)):
                failed = f"non-finite energy or positions at step {done}"
                break
            if abs(e - e_start) / n > max_energy_change_ev_atom:
                failed = f"total energy moved by {(e - e_start) / n:.3g} eV/atom by step {done}"
                break
    except Exception as exc:  # a calculator error ends the run; it is reported, not raised
        failed = f"{type(exc).__name__} at step {done + 1}: {exc}"
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    out = {k: np.asarray(v).tolist() for k, v in rec.items()}
    stats = drift_statistics(np.array(rec["time_ps"]), np.array(rec["total_ev"]), n, drop_fraction)
    out.update(stats)
    out.update({
        "label": label, "n_atoms": n, "steps": steps, "steps_completed": done,
        "timestep_fs": timestep_fs, "temperature_start_k": temperature_k, "seed": seed, "failed": failed,
        "max_net_momentum_amu_a_per_fs": max_mom * units.fs,
        "mean_temperature_k": float(np.mean(rec["temperature_k"][len(rec["temperature_k"]) // 5:])),
        "seconds": seconds, "ms_per_step": 1e3 * seconds / max(done, 1),
    })
    if failed:
        log.warning("NVE %s dt=%g fs: %s", label, timestep_fs, failed)
    return out


def timestep_sweep(calc, atoms, timesteps_fs: Sequence[float] = (0.5, 1.0, 2.0), simulated_ps: float = 2.0,
                   label: str = "", **kwargs) -> dict:
    """NVE runs of equal simulated time at several timesteps.

    Velocity Verlet's energy fluctuation scales as dt^2 for a smooth, conservative model;
    ``fluctuation_exponent`` is the least-squares slope of log(fluctuation) against log(dt)
    (2 expected). A much larger drift at the longest step marks the stability limit.
    """
    runs = []
    for dt in timesteps_fs:
        steps = max(10, int(round(simulated_ps * 1000.0 / dt)))
        runs.append(run_nve(calc, atoms, steps=steps, timestep_fs=dt, label=label,
                            log_interval=max(1, int(round(5.0 / dt))), **kwargs))
    fl = np.array([r["fluctuation_mev_atom"] for r in runs])
    dts = np.array(list(timesteps_fs), dtype=float)
    ok = np.isfinite(fl) & (fl > 0) & np.array([r["failed"] is None for r in runs])
    exponent = float(np.polyfit(np.log(dts[ok]), np.log(fl[ok]), 1)[0]) if ok.sum() >= 2 else float("nan")
    summary = [{k: r[k] for k in ("timestep_fs", "steps", "steps_completed", "failed", "drift_mev_atom_ps",
                                  "fluctuation_mev_atom", "max_deviation_mev_atom", "ms_per_step")} for r in runs]
    return {"label": label, "simulated_ps": simulated_ps, "runs": summary, "fluctuation_exponent": exponent,
            "series": [{"timestep_fs": r["timestep_fs"], "time_ps": r["time_ps"], "total_ev": r["total_ev"]} for r in runs]}
