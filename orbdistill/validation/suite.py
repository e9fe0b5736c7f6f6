"""``orbdistill validate``: teacher against students on one system, in one command.

Sections (each can be switched off): energy conservation (NVE and a timestep sweep),
throughput against system size, MD agreement (RDF, MSD, force parity on teacher frames),
relaxation (lattice, energy, steps), equation of state and elastic constants. Results are
written to ``OUT/report.json`` (every number), ``OUT/report.md`` and PNG plots.

Example (a few minutes on 2 CPU cores)::

    from orbdistill.validation import ValidateConfig, validate
    summary = validate("emt", ["calculators/cu-sevennet-v2"], out="val", config=ValidateConfig.quick())
    summary["nve"]["cu-sevennet-v2"]["drift_mev_atom_ps"]
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Callable, Dict, List, Literal, Optional, Sequence, Tuple

import numpy as np
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt

from ase import units

from orbdistill.config import build_config, config_dataclass
from orbdistill.packages import file_sha256
from orbdistill.structures import reference_crystal, supercell
from orbdistill.utils import atomic_write_text

log = logging.getLogger(__name__)

SECTIONS = ("nve", "sweep", "throughput", "md", "relax", "eos", "elastic", "phonons", "surface", "defect")
REPORT_SCHEMA = 2  # bump when the content of a section changes: older reports are not resumed


@config_dataclass
class ValidateConfig:
    """What ``validate`` runs. Times in fs/ps, temperatures in K, sizes in atoms."""

    sections: Tuple[Literal[SECTIONS], ...] = SECTIONS
    min_atoms: PositiveInt = 64                      # MD system: smallest supercell with at least this many atoms
    # energy conservation (LAMBench-style protocol)
    nve_steps: Annotated[int, Field(ge=10)] = 10_000
    teacher_nve_steps: Optional[Annotated[int, Field(ge=10)]] = 2_000  # the teacher is slow on CPU; None = nve_steps
    nve_timestep_fs: PositiveFloat = 1.0
    nve_temperature_k: PositiveFloat = 300.0
    nve_log_interval: PositiveInt = 10
    sweep_timesteps_fs: Tuple[PositiveFloat, ...] = (0.5, 1.0, 2.0)
    sweep_ps: PositiveFloat = 0.5
    # throughput
    throughput_sizes: Tuple[PositiveInt, ...] = (32, 108, 256, 500, 864, 2048, 4000)
    throughput_repeats: PositiveInt = 3
    max_step_seconds: PositiveFloat = 30.0           # a model slower than this skips larger sizes
    backends: Tuple[Literal["torch", "compile", "torchscript", "onnx"], ...] = ("torch", "compile", "torchscript", "onnx")  # exported ones where the package has the file
    memory_probe: bool = True                # CPU: peak step memory in a fresh process per model and size
    include_emt: bool = True                 # ASE's EMT as the classical reference, where it has the elements
    # MD agreement
    md_temperatures_k: Tuple[PositiveFloat, ...] = (300.0, 900.0)
    md_timestep_fs: PositiveFloat = 2.0
    md_equilibration_steps: NonNegativeInt = 250
    md_steps: PositiveInt = 1_000
    md_sample_interval: PositiveInt = 10
    rdf_r_max: PositiveFloat = 6.0
    rdf_bins: PositiveInt = 120
    hydrogen_mass_amu: Optional[Annotated[float, Field(ge=1.0, le=20.0)]] = None  # MD agreement run with heavy hydrogen
    md_replica: bool = True   # each student runs again from another seed: the RDF overlap two runs of this length reach by chance
    parity_frames: PositiveInt = 20
    # relaxation and properties
    relax_starts: NonNegativeInt = 3                    # perturbed starting structures
    relax_fmax: PositiveFloat = 0.01
    relax_steps: PositiveInt = 500
    optimizer: Literal["FIRE", "BFGS"] = "FIRE"
    eos_points: Annotated[int, Field(ge=5)] = 7
    eos_max_strain: Annotated[float, Field(gt=0, lt=0.2)] = 0.02
    elastic_strain: Annotated[float, Field(gt=0, lt=0.05)] = 0.005
    relax_ions: bool = False                 # relaxed-ion EOS/elastic constants (needed for non-Bravais cells)
    # phonons (phonopy, finite displacements on each model's own relaxed crystal)
    phonon_min_length: PositiveFloat = 10.0  # supercell width, Å
    phonon_mesh: Annotated[int, Field(ge=2, le=40)] = 12
    # a slab of the MD crystal: surface energy and NVT, student against teacher
    surface_miller: Tuple[int, int, int] = (1, 1, 1)
    surface_atoms: PositiveInt = 64
    surface_vacuum: Annotated[float, Field(ge=6.0)] = 12.0
    surface_temperature_k: PositiveFloat = 600.0
    surface_steps: PositiveInt = 500
    # point defects in the MD supercell: formation energies, student against teacher
    defect_kinds: Tuple[Literal["vacancy", "interstitial", "antisite"], ...] = ("vacancy", "antisite")
    defect_fmax: PositiveFloat = 0.02
    defect_steps: PositiveInt = 300
    seed: NonNegativeInt = 0
    progress: bool = True

    @classmethod
    def quick(cls, **overrides) -> "ValidateConfig":
        """A reduced protocol for tests and a first look: minutes on 2 CPU cores."""
        base = dict(min_atoms=32, backends=("torch", "torchscript", "onnx"), nve_steps=400, teacher_nve_steps=None, sweep_ps=0.06, nve_log_interval=5,
                    throughput_sizes=(32, 108), throughput_repeats=2, md_temperatures_k=(600.0,),
                    md_equilibration_steps=40, md_steps=120, md_sample_interval=5, parity_frames=5,
                    relax_starts=1, relax_steps=200, eos_points=5, phonon_min_length=7.0, phonon_mesh=6,
                    surface_atoms=32, surface_steps=60)
        base.update(overrides)
        return build_config(cls, base, "validate")

    @classmethod
    def from_dict(cls, d: dict) -> "ValidateConfig":
        return build_config(cls, d, "validate")

    def check(self) -> None:
        """Types and ranges are checked when the config is built; kept for callers."""


# ----------------------------------------------------------------------------------------
# models under test

@dataclass
class Model:
    """One model under test: a name, its role and a factory for its ASE calculator."""

    name: str
    role: str                      # "teacher", "student" or "reference"
    factory: Callable[[], object]
    info: dict = field(default_factory=dict)
    _calc: object = None

    @property
    def calc(self):
        if self._calc is None:
            self._calc = self.factory()
        return self._calc


def _package_name(path) -> str:
    return Path(path).resolve().name


def build_models(teacher: str, students: Sequence, device: Optional[str] = None, dtype: str = "float32",
                 teacher_weights: Optional[str] = None) -> List[Model]:
    """The teacher (by name, see ``orbdistill teachers``) and the student packages."""
    from orbdistill.calculator import StudentCalculator
    from orbdistill.packages import find_package, read_card
    from orbdistill.teachers import load_teacher

    t = load_teacher(teacher, device=device, weights=teacher_weights)
    models = [Model(teacher, "teacher", t.calculator, info=t.describe())]
    models[0]._teacher = t
    models[0].info["probe_spec"] = f"teacher:{teacher}" + (f":{teacher_weights}" if teacher_weights else "")
    for p in students:
        p = str(find_package(p))
        card = read_card(p)
        models.append(Model(_package_name(p), "student",
                            (lambda p=p: StudentCalculator.from_package(p, device=device, dtype=dtype)),
                            info={"package": str(p), "probe_spec": f"package:{p}", "dtype": dtype, "kind": card.get("student", {}).get("kind"),
                                  "params": card.get("student", {}).get("params"), "species": card.get("species"),
                                  "card_metrics": card.get("metrics")}))
    return models


# ----------------------------------------------------------------------------------------
# the suite

def _species(atoms) -> List[str]:
    return sorted(set(atoms.get_chemical_symbols()))


def _emt_covers(atoms) -> bool:
    from ase.calculators.emt import parameters

    return set(atoms.get_chemical_symbols()) <= set(parameters)


def _strip(obj):
    """JSON-safe copy (numpy scalars and arrays to Python; Atoms dropped)."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in ("atoms", "frames")}
    if isinstance(obj, (list, tuple)):
        return [_strip(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


_NOT_IN_FINGERPRINT = ("sections", "progress", "throughput_sizes", "throughput_repeats", "max_step_seconds", "backends",
                       "memory_probe", "include_emt")


def _fingerprint(teacher, students, structure, cfg: ValidateConfig, dtype: str) -> str:
    """What must be equal for results in an existing report to be reused."""
    import hashlib

    conf = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_IN_FINGERPRINT}
    def identity(pkg):  # a retrained package at the same path must not reuse old results
        f = Path(pkg) / "model.pt"
        return [str(Path(pkg).resolve()), file_sha256(f)[:16] if f.exists() else None]

    payload = {"schema": REPORT_SCHEMA, "teacher": teacher, "students": [identity(s) for s in students], "dtype": dtype,
               "numbers": structure.numbers.tolist(), "positions": np.round(structure.positions, 6).tolist(),
               "cell": np.round(structure.cell.array, 6).tolist(), "pbc": structure.pbc.tolist(), "config": _strip(conf)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class ValidationRun:
    """What every section reads and writes: the models, the structures and the summary."""

    cfg: ValidateConfig
    models: List[Model]
    structure: object
    out: Path
    summary: dict
    device: Optional[str]
    relaxed: Dict[str, object] = field(default_factory=dict)
    system: object = None          # the MD system: a supercell of the teacher-relaxed structure
    md_start: object = None

    @property
    def teacher(self) -> Model:
        return self.models[0]

    def save(self) -> None:
        atomic_write_text(self.out / "report.json", json.dumps(_strip(self.summary), indent=1))

    @contextlib.contextmanager
    def timed(self, section: str):
        t0 = time.perf_counter()
        log.info("validate: %s", section)
        try:
            yield
        finally:
            self.summary["timing_s"][section] = time.perf_counter() - t0
            self.save()

    def pending(self, section: str) -> List[Model]:
        """Models whose result for ``section`` is not in the (resumed) summary yet."""
        return [m for m in self.models if m.name not in self.summary.get(section, {})]


def _prepare_structures(run: ValidationRun) -> None:
    """Relax every model's structure (its own minimum feeds EOS and elastic constants; the
    teacher's starts the MD of every model) and, with "relax" on, from perturbed starts."""
    from ase.io import read, write

    from . import relax as rv

    cfg, summary = run.cfg, run.summary
    files = {m.name: run.out / f"relaxed_{m.name}.extxyz" for m in run.models}
    if "relax" in summary and all(f.exists() for f in files.values()):
        run.relaxed = {name: read(f) for name, f in files.items()}
    else:
        with run.timed("relax"):
            res = {}
            for m in run.models:
                r0 = _guarded(rv.relax, m.calc, run.structure, fmax=cfg.relax_fmax, steps=cfg.relax_steps,
                              optimizer=cfg.optimizer)
                # a model that cannot relax the input still gets EOS/elastic/MD from the input itself
                run.relaxed[m.name] = r0.get("atoms", run.structure)
                write(files[m.name].with_suffix(".tmp.extxyz"), run.relaxed[m.name])
                os.replace(files[m.name].with_suffix(".tmp.extxyz"), files[m.name])
                starts = []
                if "relax" in cfg.sections:
                    for k in range(cfg.relax_starts):
                        start = rv.perturbed(run.structure, seed=cfg.seed + k)
                        starts.append(_guarded(rv.relax, m.calc, start, fmax=cfg.relax_fmax, steps=cfg.relax_steps,
                                               optimizer=cfg.optimizer))
                res[m.name] = {"from_input": r0, "from_perturbed": starts}
            summary["relax"] = _relax_comparison(res, run.teacher.name)
    run.md_start = run.relaxed.get(run.teacher.name, run.structure)
    run.system = supercell(run.md_start, cfg.min_atoms)
    summary["md_system"] = {"formula": run.system.get_chemical_formula(), "n_atoms": len(run.system),
                            "cell": run.system.cell.array.tolist(),
                            "from": "teacher-relaxed structure" if run.relaxed else "input"}


def _material_property(run: ValidationRun, section: str, fn, keys, **kwargs) -> None:
    """A property of each model's own relaxed crystal (EOS, elastic constants), compared
    with the teacher's; only for fully periodic structures."""
    if not all(run.structure.pbc) or section in run.summary:
        return
    with run.timed(section):
        per_model = {m.name: _guarded(fn, m.calc, run.relaxed[m.name], relax_ions=run.cfg.relax_ions, **kwargs)
                     for m in run.models}
        run.summary[section] = _compare(per_model, run.teacher.name, keys, relative=True)


def _section_eos(run: ValidationRun) -> None:
    from . import relax as rv

    _material_property(run, "eos", rv.equation_of_state, ("bulk_modulus_gpa", "v0_a3"),
                       max_linear_strain=run.cfg.eos_max_strain, points=run.cfg.eos_points)


def _section_elastic(run: ValidationRun) -> None:
    from . import relax as rv

    _material_property(run, "elastic", rv.elastic_constants, ("c11_gpa", "c12_gpa", "c44_gpa", "bulk_modulus_voigt_gpa"),
                       strain=run.cfg.elastic_strain)


def _per_model(run: ValidationRun, section: str, fn) -> None:
    """``fn(model)`` for every model without a result yet, saving after each (resumable)."""
    if not run.pending(section):
        return
    with run.timed(section):
        results = dict(run.summary.get(section, {}))
        for m in run.pending(section):
            results[m.name] = fn(m)
            run.summary[section] = results
            run.save()


def _section_nve(run: ValidationRun) -> None:
    from . import nve as nvev

    cfg = run.cfg

    def one(m):
        steps = cfg.teacher_nve_steps if (m.role == "teacher" and cfg.teacher_nve_steps) else cfg.nve_steps
        return nvev.run_nve(m.calc, run.system, steps=steps, timestep_fs=cfg.nve_timestep_fs,
                            temperature_k=cfg.nve_temperature_k, seed=cfg.seed, log_interval=cfg.nve_log_interval,
                            progress=cfg.progress, label=m.name)

    _per_model(run, "nve", one)


def _section_sweep(run: ValidationRun) -> None:
    from . import nve as nvev

    cfg = run.cfg
    _per_model(run, "sweep", lambda m: nvev.timestep_sweep(
        m.calc, run.system, cfg.sweep_timesteps_fs, cfg.sweep_ps, label=m.name, temperature_k=cfg.nve_temperature_k,
        seed=cfg.seed, progress=cfg.progress))


def _section_md(run: ValidationRun) -> None:
    from . import md as mdv

    cfg, system, tname = run.cfg, run.system, run.teacher.name
    todo = [T for T in cfg.md_temperatures_k if f"{T:g}K" not in run.summary.get("md", {})]
    if not todo:
        return
    with run.timed("md"):
        md = dict(run.summary.get("md", {}))
        for T in todo:
            runs = {m.name: mdv.run_nvt(m.calc, system, T, cfg.md_steps, cfg.md_equilibration_steps,
                                        cfg.md_timestep_fs, cfg.md_sample_interval, seed=cfg.seed,
                                        progress=cfg.progress, label=m.name, hydrogen_mass_amu=cfg.hydrogen_mass_amu)
                    for m in run.models}
            rdfs = {k: mdv.rdf(r["frames"], cfg.rdf_r_max, cfg.rdf_bins) for k, r in runs.items() if r["frames"]}
            msds = {k: mdv.msd(r["frames"], r["time_ps"]) for k, r in runs.items() if r["frames"]}
            teacher_frames = mdv.subsample(runs[tname]["frames"][1:], cfg.parity_frames)
            entry = {"temperature_k": T, "models": {}}
            for m in run.models:
                r = runs[m.name]
                e = {"mean_temperature_k": float(np.mean(r["temperature_k"])) if r["temperature_k"] else None,
                     "mean_potential_ev_atom": float(np.mean(r["potential_ev"]) / len(system)) if r["potential_ev"] else None,
                     "failed": r["failed"], "seconds": r["seconds"], "rdf": rdfs.get(m.name), "msd": msds.get(m.name)}
                if m.role != "teacher" and m.name in rdfs:
                    overlaps = mdv.rdf_overlaps(rdfs[tname], rdfs[m.name])
                    e["rdf_overlap"] = overlaps.pop("total")
                    if overlaps:
                        e["rdf_overlap_partial"] = overlaps
                    e["msd_final_ratio"] = float(msds[m.name]["msd_a2"][-1] / max(msds[tname]["msd_a2"][-1], 1e-12))
                    if cfg.md_replica:
                        e.update(_replica_overlaps(m, system, T, cfg, rdfs[m.name], rdfs[tname]))
                    e["parity_on_teacher_frames"] = _guarded(mdv.parity_on_frames, run.teacher.calc, m.calc, teacher_frames)
                entry["models"][m.name] = e
            md[f"{T:g}K"] = entry
            run.summary["md"] = md
            run.save()


def _replica_overlaps(model: Model, system, temperature_k: float, cfg: ValidateConfig, rdf_first: dict,
                      rdf_teacher: dict) -> dict:
    """The sampling noise of the RDF overlap at this run length: the student runs the same
    protocol again from another seed (velocities and thermostat), and its two RDFs are
    compared like a student's with its teacher's. Two runs of one model differ only by
    chance, so a student-teacher overlap near this one cannot be told from sampling noise,
    and a target missed by no more than it says the runs are too short, not the model off.

    The main runs of teacher and student share their seed, so over short runs their
    trajectories stay correlated and their overlap is higher than chance allows two
    independent runs (seen: 0.964 against 0.91-0.92 for other seeds, MgO, 160 steps). The
    noise test therefore compares like with like: this replica against the teacher (other
    seeds) and against the student's first run (other seeds)."""
    from . import md as mdv

    r = mdv.run_nvt(model.calc, system, temperature_k, cfg.md_steps, cfg.md_equilibration_steps, cfg.md_timestep_fs,
                    cfg.md_sample_interval, seed=cfg.seed + 1, progress=cfg.progress, label=f"{model.name} (seed {cfg.seed + 1})",
                    hydrogen_mass_amu=cfg.hydrogen_mass_amu)
    if not r["frames"] or r["failed"]:
        return {"replica_failed": r["failed"] or "no frames"}
    g = mdv.rdf(r["frames"], cfg.rdf_r_max, cfg.rdf_bins)
    out = {"replica_seed": cfg.seed + 1, "replica_seconds": r["seconds"]}
    for key, other in (("rdf_overlap_replica", rdf_first), ("rdf_overlap_replica_teacher", rdf_teacher)):
        overlaps = mdv.rdf_overlaps(other, g)
        out[key] = overlaps.pop("total")
        if overlaps:
            out[f"{key}_partial"] = overlaps
    return out


def within_sampling_noise(overlap_teacher: float, overlap_replica: float, factor: float = 1.5) -> bool:
    """Whether a student-teacher RDF overlap is as close as chance allows at this run length:
    its shortfall from 1 at most ``factor`` times that of two runs of the student from
    different seeds (a single replica estimates the noise roughly, hence the margin).

    >>> within_sampling_noise(0.91, 0.93), within_sampling_noise(0.80, 0.97)
    (True, False)
    """
    return (1.0 - overlap_teacher) <= factor * (1.0 - overlap_replica)


def _section_throughput(run: ValidationRun) -> None:
    from .throughput import time_step

    with run.timed("throughput"):
        run.summary["throughput"] = _throughput(run.models, run.md_start, run.cfg, run.device, time_step, run.out)


def _section_phonons(run: ValidationRun) -> None:
    """Harmonic phonons of each model's own relaxed crystal, and the frequency errors."""
    from . import phonons as phv

    if not all(run.structure.pbc):
        return
    cfg = run.cfg
    _per_model(run, "phonons", lambda m: _guarded(phv.phonons, m.calc, run.relaxed[m.name],
                                                   min_length=cfg.phonon_min_length, mesh=cfg.phonon_mesh))
    ph = run.summary["phonons"]
    ref = ph.get(run.teacher.name, {})
    for name, r in ph.items():
        if name != run.teacher.name and not r.get("failed") and not ref.get("failed"):
            r["vs_teacher"] = _guarded(phv.compare_phonons, ref, r)
    run.save()


EV_A2_TO_J_M2 = units._e * 1e20  # 1 eV/Å² in J/m² (16.02)


def surface_energy(calc, bulk, slab, fmax: float = 0.02, steps: int = 300) -> dict:
    """Surface energy of ``slab`` (two equal faces, a cell vector pair in-plane) against the
    bulk energy per atom of ``bulk`` (same composition), both with ``calc``: unrelaxed and
    relaxed at fixed cell (FIRE to ``fmax``). Returns J/m² values and ``relax_converged``.

    >>> from ase.build import bulk, fcc111
    >>> from ase.calculators.emt import EMT
    >>> g = surface_energy(EMT(), bulk("Cu", "fcc", a=3.59), fcc111("Cu", (1, 1, 6), a=3.59, vacuum=6, periodic=True))
    >>> 0.5 < g["surface_energy_j_m2"] < 1.5
    True
    """
    from ase.optimize import FIRE

    b = bulk.copy()
    b.calc = calc
    e_bulk = b.get_potential_energy() / len(b)
    area = float(np.linalg.norm(np.cross(slab.cell[0], slab.cell[1])))
    a = slab.copy()
    a.calc = calc
    unrelaxed = (a.get_potential_energy() - len(a) * e_bulk) / (2 * area)
    converged = FIRE(a, logfile=None).run(fmax=fmax, steps=steps)
    relaxed = (a.get_potential_energy() - len(a) * e_bulk) / (2 * area)
    return {"surface_energy_j_m2": float(relaxed * EV_A2_TO_J_M2),
            "surface_energy_unrelaxed_j_m2": float(unrelaxed * EV_A2_TO_J_M2), "relax_converged": bool(converged)}


def _section_surface(run: ValidationRun) -> None:
    """A slab of the teacher-relaxed crystal: each model's surface energy (its own bulk
    energy, slab relaxed at fixed cell) and an NVT run, with the student evaluated on the
    teacher's slab frames and the out-of-domain signal recorded."""
    from orbdistill.data.coverage import make_slab

    from . import md as mdv

    if not all(run.structure.pbc) or not run.pending("surface"):
        return
    cfg = run.cfg
    slab = make_slab(run.md_start, cfg.surface_miller, cfg.surface_atoms, vacuum=cfg.surface_vacuum)
    z = slab.positions[:, 2]
    area = float(np.linalg.norm(np.cross(slab.cell[0], slab.cell[1])))

    def one(m):
        gam = surface_energy(m.calc, run.relaxed[m.name], slab)
        res = mdv.run_nvt(m.calc, slab, cfg.surface_temperature_k, cfg.surface_steps, 0, cfg.md_timestep_fs,
                          max(1, cfg.surface_steps // 20), seed=cfg.seed, progress=cfg.progress, label=f"{m.name} slab")
        out = {"facet": slab.info["facet"], "n_atoms": len(slab), "area_a2": area, "thickness_a": float(np.ptp(z)),
               **gam, "md_failed": res["failed"], "md_seconds": res["seconds"],
               "mean_potential_ev_atom": float(np.mean(res["potential_ev"]) / len(slab)) if res["potential_ev"] else None,
               "frames": res["frames"]}
        if m.role == "student" and getattr(m.calc, "ood_threshold", None) is not None and res["frames"]:
            scores, errors, flagged = [], [], []
            for f in mdv.subsample(res["frames"], 10):
                f = f.copy()
                f.calc = m.calc
                f.get_potential_energy()
                scores.append(float(f.calc.results.get("max_uncertainty", np.nan)))
                errors.append(float(f.calc.results.get("mean_force_error", np.nan)))
                flagged.append(bool(m.calc.out_of_domain))  # either signal over its bar, as the calculator decides
            out["max_uncertainty"] = scores
            out["threshold"] = m.calc.ood_threshold
            if m.calc.force_error_bar is not None:
                out["mean_force_error_ev_a"] = errors
                out["force_error_bar_ev_a"] = m.calc.force_error_bar
            out["flagged_fraction"] = float(np.mean(flagged))
        return out

    _per_model(run, "surface", one)
    surf = run.summary["surface"]
    teacher_frames = surf[run.teacher.name].pop("frames", [])
    frames = mdv.subsample(teacher_frames[1:], cfg.parity_frames)
    ref_gamma = surf[run.teacher.name]["surface_energy_j_m2"]
    for m in run.models:
        e = surf[m.name]
        e.pop("frames", None)
        if m.role == "student" and frames:
            e["parity_on_teacher_frames"] = _guarded(mdv.parity_on_frames, run.teacher.calc, m.calc, frames)
            e["surface_energy_rel_error"] = (e["surface_energy_j_m2"] - ref_gamma) / abs(ref_gamma)
    run.save()


def point_defect_energies(calc, cell, defects: Dict[str, object], fmax: float = 0.02, steps: int = 300) -> dict:
    """Formation energies of point defects in ``cell`` with ``calc``, unrelaxed and relaxed
    at fixed cell (FIRE to ``fmax``).

    ``defects`` maps a name (``vacancy:X``, ``interstitial:X``, ``antisite:X-Y``, see
    :func:`orbdistill.data.coverage.make_defect`) to the defect cell. An atom removed or
    added is referred to the model's own bulk energy per atom, ``mu = E_bulk / N``: the
    elemental convention, and for compounds a fixed reference (not a chemical potential)
    that makes two models' values comparable. Antisites need none. Energies in eV.

    >>> from ase.build import bulk
    >>> from ase.calculators.emt import EMT
    >>> cell = bulk("Cu", "fcc", a=3.59, cubic=True).repeat(2)
    >>> vac = cell.copy(); del vac[0]
    >>> e = point_defect_energies(EMT(), cell, {"vacancy:Cu": vac})
    >>> 0.8 < e["vacancy:Cu"]["formation_energy_ev"] < 1.4     # EMT's Cu vacancy
    True
    """
    from ase.optimize import FIRE

    b = cell.copy()
    b.calc = calc
    e_bulk = float(b.get_potential_energy())
    mu = e_bulk / len(b)
    out = {"bulk_energy_ev": e_bulk}
    for name, d in defects.items():
        a = d.copy()
        a.calc = calc
        ref = e_bulk + (len(a) - len(b)) * mu
        unrelaxed = float(a.get_potential_energy()) - ref
        converged = FIRE(a, logfile=None).run(fmax=fmax, steps=steps)
        entry = {"formation_energy_ev": float(a.get_potential_energy()) - ref, "unrelaxed_ev": unrelaxed,
                 "relax_converged": bool(converged), "n_atoms": len(a),
                 "max_displacement_a": float(np.linalg.norm(a.positions - d.positions, axis=1).max())}
        if "max_uncertainty" in getattr(a.calc, "results", {}):
            entry["max_uncertainty"] = float(a.calc.results["max_uncertainty"])
        out[name] = entry
    return out


def _section_defect(run: ValidationRun) -> None:
    """Point defects (``defect_kinds``: vacancies, interstitials, antisites) in the MD
    supercell of the teacher-relaxed crystal, made once and relaxed by every model at the
    same cell: formation energies against the teacher's. Vacancies and antisites are chosen
    deterministically (an antisite swaps nearest neighbours), so reruns compare alike."""
    from orbdistill.data.coverage import defect_kinds_for, make_defect

    if not all(run.structure.pbc) or not run.pending("defect"):
        return
    cfg = run.cfg
    cell = run.system
    rng = np.random.default_rng(cfg.seed)
    defects = {}
    for kind in defect_kinds_for(cell, cfg.defect_kinds):
        try:
            defects[kind] = make_defect(cell, kind, rng, nearest=True)
        except ValueError as exc:  # e.g. a vacancy of an element with one atom in the cell
            log.info("defect %s skipped: %s", kind, exc)
    if not defects:
        return
    _per_model(run, "defect", lambda m: _guarded(point_defect_energies, m.calc, cell, defects,
                                                 fmax=cfg.defect_fmax, steps=cfg.defect_steps))
    ref = run.summary["defect"].get(run.teacher.name, {})
    for m in run.models:
        e = run.summary["defect"][m.name]
        if m.role != "student" or e.get("failed") or ref.get("failed"):
            continue
        e["vs_teacher"] = {k: e[k]["formation_energy_ev"] - ref[k]["formation_energy_ev"] for k in defects
                           if k in e and k in ref}
    run.save()


#: section name -> what runs it, in the order they run (relaxation always runs first: its
#: structures start every other section; "relax" in the config adds the perturbed starts)
SECTION_RUNNERS: Dict[str, Callable[[ValidationRun], None]] = {
    "relax": lambda run: None,
    "eos": _section_eos,
    "elastic": _section_elastic,
    "nve": _section_nve,
    "sweep": _section_sweep,
    "md": _section_md,
    "throughput": _section_throughput,
    "phonons": _section_phonons,
    "surface": _section_surface,
    "defect": _section_defect,
}
assert set(SECTION_RUNNERS) == set(SECTIONS)


def validate(teacher: str, students: Sequence, out, structure=None, config: Optional[ValidateConfig] = None,
             device: Optional[str] = None, teacher_weights: Optional[str] = None, threads: Optional[int] = None,
             resume: bool = True, dtype: str = "float32") -> dict:
    """Run the validation suite and write ``out/report.json``, ``out/report.md`` and plots.

    Args:
        teacher: teacher name (``orbdistill teachers`` lists them), e.g. "sevennet-0"
        students: student packages (folders or names)
        out: output folder (created once the teacher and students have loaded)
        structure: ``ase.Atoms`` or a file; default: the ASE reference crystal when the
            students cover a single element
        config: a :class:`ValidateConfig` (default: the full protocol)
        device: "cpu" or "cuda" (default: CUDA when available)
        threads: torch CPU threads (recorded in the report)
        dtype: the students' precision, "float32" (default, what users run) or "float64"
        resume: reuse finished sections (and finished models within a section) of an
            existing ``out/report.json`` made with the same teacher, students, structure and
            protocol; sections run later are merged into the same report
    Returns:
        the summary written to ``report.json``.
    """
    import torch

    from .report import write_report

    cfg = config or ValidateConfig()
    cfg.check()
    if threads:
        torch.set_num_threads(int(threads))
    if not students:
        raise ValueError("validate needs at least one student package")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    models = build_models(teacher, students, device=device, dtype=dtype, teacher_weights=teacher_weights)
    tmodel = models[0]
    if structure is None:
        species = sorted({s for m in models[1:] for s in (m.info.get("species") or [])})
        structure = reference_crystal(species)
    elif isinstance(structure, (str, os.PathLike)):
        from orbdistill.io import read_structure

        structure = read_structure(structure)
    structure = structure.copy()
    structure.calc = None
    # fail early, with the model's own message, on elements a model does not know
    tmodel._teacher.check_species(structure)
    for m in models[1:]:
        m.calc.check_species(structure)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)  # only now: a bad input leaves no empty folder

    dev = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    fingerprint = _fingerprint(teacher, [m.info["package"] for m in models[1:]], structure, cfg, dtype)
    prev = {}
    if resume and (out / "report.json").exists():
        try:
            prev = json.loads((out / "report.json").read_text())
        except ValueError:
            log.warning("%s is unreadable; starting afresh", out / "report.json")
        if prev.get("fingerprint") != fingerprint:
            if prev:
                log.warning("%s was made with another teacher, student set, structure or protocol; starting afresh",
                            out / "report.json")
            prev = {}
    summary = {
        "fingerprint": fingerprint,
        "teacher": tmodel.name, "students": [m.name for m in models[1:]],
        "models": {m.name: {"role": m.role, **_strip(m.info)} for m in models},
        "structure": {"formula": structure.get_chemical_formula(), "n_atoms": len(structure),
                      "pbc": structure.pbc.tolist(), "cell": structure.cell.array.tolist()},
        "config": _strip(dataclasses.asdict(cfg)),
        "environment": {"device": dev, "student_dtype": dtype, "threads": torch.get_num_threads(), "torch": torch.__version__,
                        "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                        "gpu": torch.cuda.get_device_name() if dev.startswith("cuda") else None,
                        "started": time.strftime("%Y-%m-%d %H:%M:%S")},
        "timing_s": dict(prev.get("timing_s", {})),
    }
    for key in list(SECTIONS) + ["md_system"]:
        if key in prev:
            summary[key] = prev[key]
    run = ValidationRun(cfg=cfg, models=models, structure=structure, out=out, summary=summary, device=device)
    _prepare_structures(run)
    for name, section in SECTION_RUNNERS.items():
        if name in cfg.sections:
            section(run)
    summary["targets"] = _targets(summary, tmodel.name)
    summary["environment"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    run.save()
    write_report(summary, out)
    return _strip(summary)


def _guarded(fn, *args, **kwargs) -> dict:
    """``fn(...)``, or ``{"failed": reason}`` when the model raises (reported, not fatal:
    a student far outside its training data may collapse a structure)."""
    try:
        out = fn(*args, **kwargs)
        out.setdefault("failed", None)
        return out
    except Exception as exc:
        log.warning("%s failed: %s", getattr(fn, "__name__", fn), exc)
        return {"failed": f"{type(exc).__name__}: {str(exc)[:300]}"}


def _compare(per_model: dict, teacher: str, keys, relative: bool = True) -> dict:
    ref = per_model[teacher]
    out = {"models": per_model, "relative_error": {}}
    for name, v in per_model.items():
        if name == teacher or v.get("failed") or ref.get("failed"):
            continue
        out["relative_error"][name] = {k: (v[k] - ref[k]) / ref[k] if ref[k] else None for k in keys}
    return out


def _relax_comparison(res: dict, teacher: str) -> dict:
    ref = res[teacher]
    out = {"models": {}, "vs_teacher": {}}
    for name, r in res.items():
        rows = [r["from_input"]] + r["from_perturbed"]
        ok = [x for x in rows if not x.get("failed")]
        out["models"][name] = {
            "from_input": {k: v for k, v in r["from_input"].items() if k != "atoms"},
            "from_perturbed": [{k: v for k, v in x.items() if k != "atoms"} for x in r["from_perturbed"]],
            "mean_steps": float(np.mean([x["steps"] for x in ok])) if ok else None,
            "all_converged": bool(len(ok) == len(rows) and all(x["converged"] for x in ok)),
            "failed": sum(1 for x in rows if x.get("failed")),
        }
        if name == teacher:
            continue
        cmp_rows = []
        for a, b in zip([ref["from_input"]] + ref["from_perturbed"], rows):
            if a.get("failed") or b.get("failed"):
                cmp_rows.append({"failed": b.get("failed") or f"teacher: {a['failed']}"})
                continue
            la, lb = np.array(a["cell_lengths_a"]), np.array(b["cell_lengths_a"])
            d = b["atoms"].positions - a["atoms"].positions
            cmp_rows.append({
                "lattice_rel_error_max": float(np.abs(lb / la - 1).max()),
                "volume_rel_error": (b["volume_per_atom_a3"] / a["volume_per_atom_a3"] - 1) if a["volume_per_atom_a3"] else None,
                "energy_diff_mev_atom": 1e3 * (b["energy_per_atom_ev"] - a["energy_per_atom_ev"]),
                "angle_diff_max_deg": float(np.abs(np.array(b["cell_angles_deg"]) - np.array(a["cell_angles_deg"])).max()),
                "position_rmsd_a": float(np.sqrt((d ** 2).sum(1).mean())),
                "steps_teacher": a["steps"], "steps_student": b["steps"],
            })
        good = [c for c in cmp_rows if "failed" not in c]
        out["vs_teacher"][name] = {
            "rows": cmp_rows,
            "failed": len(cmp_rows) - len(good),
            "lattice_rel_error_max": max(c["lattice_rel_error_max"] for c in good) if good else None,
            "position_rmsd_max_a": max(c["position_rmsd_a"] for c in good) if good else None,
            "lattice_rel_error_from_input": good[0]["lattice_rel_error_max"] if good and "failed" not in cmp_rows[0] else None,
        }
    return out


def _available_backends(model: "Model", cfg: ValidateConfig) -> List[str]:
    from orbdistill.packages import exported_file

    import torch

    pkg = model.info.get("package")
    dt = model.info.get("dtype", "float32")
    out = []
    for b in cfg.backends:
        if b in ("torch", "compile") or (pkg and exported_file(pkg, b, dt).exists()):
            out.append(b)
    return out


def _throughput(models, structure, cfg: ValidateConfig, device, time_step, workdir: Path) -> dict:
    import tempfile

    import torch
    from ase.io import write
    from tqdm.auto import tqdm

    from orbdistill.calculator import StudentCalculator

    from orbdistill.profiling.memory import calculator_step_memory, probe

    entries: List[Tuple[str, str, Callable, Optional[str]]] = []
    for m in models:
        if m.role == "student":
            for b in _available_backends(m, cfg):
                spec = f"{m.info['probe_spec']}:{b}"
                if b == "torch":
                    entries.append((m.name, "torch", lambda m=m: m.calc, spec))
                else:
                    entries.append((f"{m.name} [{b}]", b, lambda m=m, b=b: StudentCalculator.from_package(
                        m.info["package"], backend=b, device=device, dtype=m.info["dtype"]), spec))
        else:
            entries.append((m.name, "ase", lambda m=m: m.calc, m.info.get("probe_spec")))
    if cfg.include_emt and _emt_covers(structure) and models[0].name != "emt":
        from ase.calculators.emt import EMT

        entries.append(("EMT (classical)", "ase", EMT, "emt"))
    cuda = str(device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    rows = []
    # supercells make the sizes; a structure without periodic axes keeps its own size
    sizes = list(cfg.throughput_sizes) if any(structure.pbc) else [len(structure)]
    for name, backend, factory, spec in entries:
        calc = factory()
        for n in tqdm(sizes, desc=f"throughput {name}", disable=not cfg.progress, leave=False):
            atoms = supercell(structure, n, at_least=False)
            atoms.rattle(0.02, seed=cfg.seed)
            try:
                # 3 warm-up calls: TorchScript's profiling executor optimises on its second call
                res = time_step(calc, atoms, repeats=cfg.throughput_repeats, warmup=3)
                if backend == "compile" and not cuda:  # a fresh process would spend its time recompiling
                    mem = {"peak_step_mb": None, "method": "not measured for compile on CPU"}
                elif cuda or not cfg.memory_probe or spec is None:
                    mem = calculator_step_memory(calc, atoms)
                else:
                    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
                        f = Path(tmp) / "structure.extxyz"
                        write(f, atoms)
                        mem = probe(str(f), calculator=spec, threads=torch.get_num_threads(),
                                    dtype=models[-1].info.get("dtype", "float32"))
            except Exception as exc:
                log.warning("throughput %s at %d atoms failed: %s", name, len(atoms), exc)
                rows.append({"model": name, "backend": backend, "n_atoms": len(atoms), "error": str(exc)[:300]})
                break
            rows.append({"model": name, "backend": backend, "n_atoms": len(atoms), **res, **mem})
            if res["ms_per_step"] > 1e3 * cfg.max_step_seconds:
                log.info("%s: %.1f s per step at %d atoms; larger sizes skipped", name, res["ms_per_step"] / 1e3, len(atoms))
                break
    teacher = models[0].name
    speedups = []
    for r in rows:
        if r["model"] == teacher or "ms_per_step" not in r:
            continue
        t = next((x for x in rows if x["model"] == teacher and x["n_atoms"] == r["n_atoms"] and "ms_per_step" in x), None)
        if t:
            speedups.append({"model": r["model"], "n_atoms": r["n_atoms"], "speedup_over_teacher": t["ms_per_step"] / r["ms_per_step"]})
    return {"rows": rows, "speedups": speedups, "repeats": cfg.throughput_repeats,
            "protocol": "median of repeats of one energy+forces+stress call after a position change, after 3 warm-up calls"}


def _bulk_force_mae_at(summary: dict, name: str, temperature_k: float) -> Optional[float]:
    """The student's bulk force MAE (meV/Å) at ``temperature_k``: the MD section's parity
    values interpolated linearly in temperature (held constant beyond the MD temperatures;
    force errors grow with temperature, so comparing a 600 K slab with the 900 K bulk
    would be lenient), or the card's held-out MAE when the MD section did not run."""
    points = sorted((float(e["temperature_k"]), e["models"][name]["parity_on_teacher_frames"]["force_mae_mev_a"])
                    for e in summary.get("md", {}).values()
                    if "parity_on_teacher_frames" in e["models"].get(name, {})
                    and not e["models"][name]["parity_on_teacher_frames"].get("failed"))
    if points:
        t, f = zip(*points)
        return float(np.interp(temperature_k, t, f))
    card = summary["models"][name].get("card_metrics") or {}
    return card.get("force_mae_mev_a")


def _within_bulk(summary: dict, name: str, value: float, temperature_k: float) -> bool:
    """``value`` (meV/Å) within 2x of the student's bulk force MAE at the same temperature."""
    bulk = _bulk_force_mae_at(summary, name, temperature_k)
    return bulk is not None and value <= 2 * bulk


def _targets(summary: dict, teacher: str) -> list:
    """The issue's acceptance targets, evaluated for every student."""
    rows = []
    for name in summary["students"]:
        nve = summary.get("nve", {}).get(name)
        if nve:
            rows.append({"model": name, "target": "NVE drift < 0.05 meV/atom/ps",
                         "value": nve["abs_drift_mev_atom_ps"],
                         "pass": nve["failed"] is None and nve["abs_drift_mev_atom_ps"] < 0.05,
                         "detail": f"{nve['steps_completed']} of {nve['steps']} steps at {nve['timestep_fs']:g} fs"
                                   + (f"; failed: {nve['failed'][:100]}" if nve["failed"] else "")})
        rel = summary.get("relax", {}).get("vs_teacher", {}).get(name)
        if rel and all(summary["structure"]["pbc"]):
            if rel.get("failed") or rel.get("lattice_rel_error_max") is None:
                rows.append({"model": name, "target": "lattice within 0.3 % of the teacher", "value": None, "pass": False,
                             "detail": f"{rel.get('failed')} relaxation(s) failed"})
            else:
                rows.append({"model": name, "target": "lattice within 0.3 % of the teacher",
                             "value": 100 * rel["lattice_rel_error_max"], "pass": rel["lattice_rel_error_max"] < 0.003,
                             "detail": "largest relative cell-length difference, %, over all relaxations"})
        eos = summary.get("eos", {}).get("relative_error", {}).get(name)
        if "eos" in summary and eos is None:
            rows.append({"model": name, "target": "bulk modulus within 5 % of the teacher", "value": None, "pass": False,
                         "detail": "equation of state failed"})
        if eos:
            rows.append({"model": name, "target": "bulk modulus within 5 % of the teacher",
                         "value": 100 * eos["bulk_modulus_gpa"], "pass": abs(eos["bulk_modulus_gpa"]) < 0.05,
                         "detail": "relative difference, % (equation of state fit)"})
        ph = summary.get("phonons", {}).get(name, {}).get("vs_teacher")
        if ph and ph.get("failed"):
            rows.append({"model": name, "target": "phonon frequency MAE < 0.2 THz", "value": None, "pass": False,
                         "detail": f"comparison failed: {ph['failed'][:100]}"})
        elif ph:
            rows.append({"model": name, "target": "phonon frequency MAE < 0.2 THz", "value": ph["frequency_mae_thz"],
                         "pass": ph["frequency_mae_thz"] < 0.2, "detail": "all modes on the mesh, each model's own crystal"})
        surf = summary.get("surface", {}).get(name, {})
        if surf and not surf.get("failed"):
            rows.append({"model": name, "target": f"slab {surf['facet']} NVT completes", "value": None,
                         "pass": surf["md_failed"] is None, "detail": surf["md_failed"] or
                         f"{summary['config']['surface_steps']} steps at {summary['config']['surface_temperature_k']:g} K"})
        if "parity_on_teacher_frames" in surf and not surf["parity_on_teacher_frames"].get("failed"):
            par = surf["parity_on_teacher_frames"]
            t_slab = float(summary["config"]["surface_temperature_k"])
            bulk = _bulk_force_mae_at(summary, name, t_slab)
            rows.append({"model": name, "target": f"slab {surf['facet']} force MAE within 2x of bulk MD",
                         "value": par["force_mae_mev_a"],
                         "pass": _within_bulk(summary, name, par["force_mae_mev_a"], t_slab),
                         "detail": "meV/Å on the teacher's slab NVT frames, against "
                                   + ("-" if bulk is None else f"{bulk:.1f} meV/Å")
                                   + (f" of bulk MD at {t_slab:g} K (interpolated between the MD temperatures)"
                                      if summary.get("md") else ", the card's held-out MAE (no MD section)")})
            rows.append({"model": name, "target": "surface energy within 10 % of the teacher",
                         "value": 100 * surf["surface_energy_rel_error"], "pass": abs(surf["surface_energy_rel_error"]) < 0.1,
                         "detail": "relative difference, % (relaxed slab, each model's own bulk energy)"})
        dfc = summary.get("defect", {})
        ref = dfc.get(teacher, {})
        for kind, diff in dfc.get(name, {}).get("vs_teacher", {}).items():
            e_ref = ref[kind]["formation_energy_ev"]
            tol = max(0.1, 0.1 * abs(e_ref))
            rows.append({"model": name, "target": f"{kind} formation energy within 0.1 eV or 10 % of the teacher",
                         "value": diff, "pass": abs(diff) <= tol,
                         "detail": f"eV; teacher {e_ref:.3f} eV, student {dfc[name][kind]['formation_energy_ev']:.3f} eV "
                                   f"(relaxed at the teacher's cell, {ref[kind]['n_atoms']} atoms)"})
        for key, entry in summary.get("md", {}).items():
            e = entry["models"].get(name, {})
            replica = e.get("rdf_overlap_replica_partial", {})
            if e.get("replica_failed"):
                rows.append({"model": name, "target": f"NVT from a second seed completes ({key})", "value": None,
                             "pass": False, "detail": f"the sampling-noise replica failed: {e['replica_failed']}"})
            if "rdf_overlap" in e:
                noise = (f"; two runs of the student from different seeds: {e['rdf_overlap_replica']:.3f}"
                         if "rdf_overlap_replica" in e else "")
                rows.append({"model": name, "target": f"RDF overlap > 0.95 ({key})", "value": e["rdf_overlap"],
                             "pass": e["rdf_overlap"] > 0.95, "detail": "sum min(g) / sum max(g)" + noise})
            for pair, value in e.get("rdf_overlap_partial", {}).items():
                noise = f"; two runs of the student from different seeds: {replica[pair]:.3f}" if pair in replica else ""
                rows.append({"model": name, "target": f"RDF overlap > 0.95 ({pair}, {key})", "value": value,
                             "pass": value > 0.95, "detail": "partial g_ab(r), sum min(g) / sum max(g)" + noise})
            indep = e.get("rdf_overlap_replica_teacher_partial", {})
            pairs = ([("total", e["rdf_overlap"], e["rdf_overlap_replica_teacher"], e["rdf_overlap_replica"])]
                     if "rdf_overlap_replica_teacher" in e else []) + \
                [(pair, v, indep[pair], replica[pair]) for pair, v in e.get("rdf_overlap_partial", {}).items()
                 if pair in replica and pair in indep]
            for pair, value, vs_teacher, rep in pairs:
                if value <= 0.95:  # only a missed target needs telling apart from chance
                    rows.append({"model": name, "target": f"RDF gap to the teacher within sampling noise ({pair}, {key})",
                                 "value": 1.0 - vs_teacher, "pass": within_sampling_noise(vs_teacher, rep),
                                 "detail": f"1 - overlap of the student's second-seed run with the teacher's; the "
                                           f"student's two seeds give 1 - overlap {1.0 - rep:.3f}, allowed x1.5: a pass "
                                           "means the runs are too short to tell student and teacher apart"})
    return rows
