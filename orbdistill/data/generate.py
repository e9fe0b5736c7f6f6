"""Teacher-labelled training data: MD at several temperatures and pressures, strained and
rattled cells, rattle-and-relax paths and relaxation trajectories.

The work is a list of *tasks* fixed by the configuration (one trajectory each). A finished
task is written as one extxyz chunk, atomically (temporary file + rename), and recorded in
``manifest.json`` (also written atomically). Re-running with the same configuration skips
finished tasks, so an interrupted run resumes without losing or duplicating frames.

Every frame carries provenance in ``atoms.info``: ``traj_id``, ``protocol``,
``temperature_K``, ``pressure_GPa``, ``teacher``, ``rng_seed``, ``seed_kind`` and, where
they apply, ``facet``, ``defect``, ``cluster_size``, ``volume_scale``; the manifest records the
teacher's description (name, version, weights) and the configuration.

Protocols (the recipe follows published distillation work, see ../shared/REFERENCE.md:
MD at several temperatures, rattle-relax augmentation, strained cells for stress):

* ``nvt``: Maxwell-Boltzmann velocities (Stationary, ZeroRotation), Bussi (or Nose-Hoover
  chain) thermostat, equilibration, then a frame every ``nvt_interval_steps``;
* ``npt``: isotropic MTK barostat and thermostat (ASE ``IsotropicMTKNPT``) at each pressure;
* ``strain``: random symmetric strains up to ``strain_max`` plus a small rattle;
* ``rattle_relax``: rattle with sigma log-uniform in [0.01, 0.1] Å, then a few FIRE steps,
  each step a frame;
* ``relax``: strained and rattled structures relaxed with FIRE + ``FrechetCellFilter``.

Coverage protocols (``coverage``; each applies where it makes sense for the seed, see
:func:`orbdistill.data.coverage.seed_kind`), so that students see what users simulate:

* ``surface``: slabs of each facet in ``surface_millers`` cut from a bulk seed (a
  liquid-vapour interface for a molecular seed, the seed itself for a slab seed), with
  ``vacuum`` Å between images: NVT at ``surface_temperatures_k`` and rattle-relax;
* ``defect``: vacancies, interstitials (in the largest void) and antisites (multi-element
  seeds) in a bulk supercell: a few relaxation steps, then NVT at ``defect_temperatures_k``;
* ``cluster``: non-periodic clusters of ``cluster_sizes`` atoms cut from the bulk (whole
  molecules for a molecular seed): relaxation steps, then NVT at ``cluster_temperatures_k``;
* ``hot``: NVT at multiples of the melting point (``melting_point_k``, or an estimate from
  element data), melted first at twice the melting point when the target is above it;
* ``volume``: cells scaled isotropically by ``volume_scales`` (beyond the strain range;
  molecules are moved as rigid units), rattled: the short-range repulsion students miss.
* ``short_range``: for every element pair of a bulk seed, isolated dimers from
  ``short_range_min_factor`` to 1.6 times the pair's shortest distance in the seed, and
  bulk cells in which one such pair is pushed to between ``short_range_min_factor`` and
  0.92 times it (rattled); and bulk cells rattled hard (sigma 4-12 % of the shortest
  distance, many close pairs at once): where a hot or compressed simulation first meets the
  repulsion a student has otherwise never been shown (it then extrapolates, often with the
  wrong sign, and several close pairs together can drive it to absurd energies).

``keep_fraction`` < 1 keeps that share of each task's frames, chosen by farthest-point
sampling (:mod:`orbdistill.data.selection`), so near-duplicate MD frames do not dominate.

Frames with forces above ``reject_fmax`` or atoms closer than ``reject_min_distance`` are
rejected and counted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import field
from pathlib import Path
from typing import Annotated, Dict, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator
from tqdm.auto import tqdm

from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from orbdistill.config import build_config, config_dataclass
from orbdistill.graph import min_pair_distance
from orbdistill.utils import atomic_write_text

from orbdistill.structures import supercell

from .seeds import load_seeds

log = logging.getLogger(__name__)


BASE_PROTOCOLS = ("nvt", "npt", "strain", "rattle_relax", "relax")
COVERAGE = ("surface", "defect", "cluster", "hot", "volume", "reference", "short_range")
#: the coverage protocols on when a config does not list them ("reference" and "short_range"
#: are asked for: data folders made before them keep their configuration, and short_range
#: cost the MgO package energy accuracy when tried, see docs/domain.md)
DEFAULT_COVERAGE = ("surface", "defect", "cluster", "hot", "volume")
PROTOCOLS = BASE_PROTOCOLS + COVERAGE
# which coverage protocols apply to which kind of seed
APPLIES = {"bulk": COVERAGE, "molecular": ("surface", "cluster", "hot", "volume"),
           "slab": ("surface",), "molecule": ("hot",)}
# how held-out errors are grouped: the base protocols all sample the bulk crystal
PROTOCOL_GROUPS = {**{p: "bulk" for p in BASE_PROTOCOLS}, **{p: p for p in COVERAGE}}


def protocol_group(protocol: str) -> str:
    """The group a protocol's frames are reported and weighted in (bulk for the base
    protocols; other protocols, e.g. "onpolicy", are their own group)."""
    return PROTOCOL_GROUPS.get(protocol, protocol)

# provenance keys copied from a task into every frame's info
PROVENANCE = ("seed_kind", "facet", "defect", "cluster_size", "cluster_shape", "volume_scale", "element", "pair")


@config_dataclass
class GenerateConfig:
    """What data to generate (all fields saved in the manifest; types and ranges are
    checked when it is built, see :mod:`orbdistill.config`).

    Sizes are target atom counts of the supercells (``protocol_sizes`` overrides them per
    protocol, e.g. ``{"npt": [108]}``); temperatures in K, pressures in GPa, times in fs,
    lengths in Å, forces in eV/Å.
    """

    seeds: Annotated[List[str], Field(min_length=1)] = field(default_factory=lambda: ["bulk:Cu:fcc:3.61"])
    sizes: Annotated[List[PositiveInt], Field(min_length=1)] = field(default_factory=lambda: [32])
    protocol_sizes: Dict[Literal[PROTOCOLS], Annotated[List[PositiveInt], Field(min_length=1)]] = field(default_factory=dict)
    timestep_fs: Annotated[float, Field(gt=0, le=20)] = 4.0
    thermostat: Literal["bussi", "nose-hoover", "nosehoover", "nhc"] = "bussi"
    taut_fs: PositiveFloat = 100.0
    nvt_temperatures_k: List[PositiveFloat] = field(default_factory=lambda: [300.0, 600.0, 900.0, 1200.0])
    nvt_trajectories_per_temperature: NonNegativeInt = 1
    nvt_equilibration_steps: NonNegativeInt = 25
    nvt_interval_steps: PositiveInt = 3
    nvt_frames: NonNegativeInt = 40
    npt_pressures_gpa: List[Annotated[float, Field(allow_inf_nan=False)]] = field(default_factory=list)
    npt_temperature_k: PositiveFloat = 600.0
    npt_frames: NonNegativeInt = 30
    strain_frames: NonNegativeInt = 0
    strain_max: Annotated[float, Field(gt=0, lt=0.5)] = 0.05
    strain_rattle: NonNegativeFloat = 0.03
    strain_frames_per_task: PositiveInt = 50
    rattle_relax_frames: NonNegativeInt = 0
    rattle_relax_steps: NonNegativeInt = 3
    rattle_relax_per_task: PositiveInt = 10
    relax_trajectories: NonNegativeInt = 0
    relax_max_steps: PositiveInt = 25
    relax_fmax: PositiveFloat = 0.02
    coverage: List[Literal[COVERAGE]] = field(default_factory=lambda: list(DEFAULT_COVERAGE))
    surface_millers: List[Tuple[int, int, int]] = field(default_factory=lambda: [(1, 0, 0), (1, 1, 0), (1, 1, 1)])
    surface_min_thickness: PositiveFloat = 10.0
    vacuum: Annotated[float, Field(ge=6.0)] = 12.0
    surface_temperatures_k: List[PositiveFloat] = field(default_factory=lambda: [300.0, 900.0])
    surface_frames: NonNegativeInt = 25
    surface_rattle_relax_starts: NonNegativeInt = 4
    defect_kinds: List[Literal["vacancy", "interstitial", "antisite"]] = field(
        default_factory=lambda: ["vacancy", "interstitial", "antisite"])
    defect_temperatures_k: List[PositiveFloat] = field(default_factory=lambda: [300.0, 900.0])
    defect_frames: NonNegativeInt = 20
    defect_relax_steps: NonNegativeInt = 6
    cluster_sizes: List[Annotated[int, Field(ge=2)]] = field(default_factory=lambda: [13, 38, 55])
    cluster_temperatures_k: List[PositiveFloat] = field(default_factory=lambda: [300.0, 700.0])
    cluster_frames: NonNegativeInt = 20
    # cuts per size and temperature: the first centred on an atom, the others on random
    # points near it (irregular clusters; more cluster environments per size)
    cluster_shapes: PositiveInt = 1
    cluster_relax_steps: NonNegativeInt = 6
    melting_point_k: Optional[PositiveFloat] = None
    hot_temperature_factors: List[PositiveFloat] = field(default_factory=lambda: [0.8, 1.25])
    hot_frames: NonNegativeInt = 30
    hot_melt_steps: NonNegativeInt = 150
    hot_timestep_fs: Annotated[float, Field(gt=0, le=20)] = 2.0
    # MD of the data with hydrogen this heavy (2.014 = deuterium); labels are unaffected
    hydrogen_mass_amu: Optional[Annotated[float, Field(ge=1.0, le=20.0)]] = None
    volume_scales: List[Annotated[float, Field(gt=0.5, lt=1.5)]] = field(default_factory=lambda: [0.88, 0.92, 1.08, 1.12])
    volume_frames: NonNegativeInt = 8
    # per element pair: pushed-pair bulk frames (per size) and isolated dimers
    short_range_frames: NonNegativeInt = 30
    short_range_dimer_frames: NonNegativeInt = 12
    short_range_min_factor: Annotated[float, Field(ge=0.3, le=0.9)] = 0.6
    short_range_rattle_frames: NonNegativeInt = 30     # per size: hard rattles
    short_range_frames_per_task: PositiveInt = 5       # each kind is cut into tasks of this many frames
    reference_temperatures_k: List[PositiveFloat] = field(default_factory=lambda: [300.0, 900.0])
    reference_frames: NonNegativeInt = 15
    keep_fraction: Annotated[float, Field(gt=0, le=1)] = 1.0
    hvp: bool = False                                  # a teacher Hessian-vector product per frame (2 more calls)
    hvp_epsilon: Annotated[float, Field(gt=0, le=0.05)] = 0.01
    reject_fmax: PositiveFloat = 30.0
    reject_min_distance: NonNegativeFloat = 0.5
    seed: NonNegativeInt = 0

    @classmethod
    def from_dict(cls, d: dict) -> "GenerateConfig":
        return build_config(cls, d, "generate")


# --------------------------------------------------------------------------------------
# tasks
# --------------------------------------------------------------------------------------


def plan_tasks(cfg: GenerateConfig, seeds: Union[int, Sequence[Atoms]]) -> List[dict]:
    """The deterministic task list of a configuration for its seed structures (given as a
    count, the seeds are taken as bulk crystals and only the base protocols are planned)."""
    from .coverage import estimated_melting_point, seed_kind

    n_seeds = seeds if isinstance(seeds, int) else len(seeds)
    kinds = ["bulk"] * n_seeds if isinstance(seeds, int) else [seed_kind(a) for a in seeds]
    tasks = []

    def add(**kw):
        key = json.dumps(kw, sort_keys=True)
        kw["rng_seed"] = int(hashlib.sha256(f"{cfg.seed}:{key}".encode()).hexdigest()[:8], 16)
        kw["id"] = f"{kw['protocol']}-{len(tasks):04d}"
        tasks.append(kw)

    def sizes(proto):
        return cfg.protocol_sizes.get(proto, cfg.sizes)

    for s in range(n_seeds):
        for size in sizes("nvt"):
            for t in cfg.nvt_temperatures_k:
                for r in range(cfg.nvt_trajectories_per_temperature):
                    add(protocol="nvt", seed_index=s, size=size, temperature_K=float(t), repeat=r, n_frames=cfg.nvt_frames)
        for size in sizes("npt"):
            for p in cfg.npt_pressures_gpa:
                add(protocol="npt", seed_index=s, size=size, temperature_K=float(cfg.npt_temperature_k),
                    pressure_GPa=float(p), n_frames=cfg.npt_frames)
        for size in sizes("strain"):
            n_strain_tasks = math.ceil(cfg.strain_frames / cfg.strain_frames_per_task) if cfg.strain_frames else 0
            for k in range(n_strain_tasks):
                n = min(cfg.strain_frames_per_task, cfg.strain_frames - k * cfg.strain_frames_per_task)
                add(protocol="strain", seed_index=s, size=size, repeat=k, n_frames=n)
        for size in sizes("rattle_relax"):
            per = cfg.rattle_relax_per_task * (cfg.rattle_relax_steps + 1)
            n_rr = math.ceil(cfg.rattle_relax_frames / per) if cfg.rattle_relax_frames else 0
            for k in range(n_rr):
                add(protocol="rattle_relax", seed_index=s, size=size, repeat=k, n_starts=cfg.rattle_relax_per_task)
        for size in sizes("relax"):
            for k in range(cfg.relax_trajectories):
                add(protocol="relax", seed_index=s, size=size, repeat=k)
        if isinstance(seeds, int):
            continue
        kind = kinds[s]
        applies = [p for p in cfg.coverage if p in APPLIES[kind]]
        skipped = [p for p in cfg.coverage if p not in APPLIES[kind] and p not in DEFAULT_COVERAGE]
        if skipped:  # asked for by name (not a default), yet nothing planned: say so
            import warnings

            why = {"short_range": "its closest pairs are bonds inside molecules, not contacts to push together",
                   "reference": "the elemental phases are planned from bulk seeds only"}
            warnings.warn(f"coverage {skipped} asked for, but seed {s} is a {kind} seed, where "
                          + "; ".join(f"{p} does not apply ({why.get(p, 'not defined for this kind')})" for p in skipped)
                          + f"; planned for it: {applies or 'no coverage protocol'}.", UserWarning, stacklevel=2)
        if "surface" in applies:
            from .coverage import facet_label

            facets = [(facet_label(m), list(m)) for m in cfg.surface_millers] if kind == "bulk" else \
                [("liquid-vapour" if kind == "molecular" else "as-given", None)]
            for size in sizes("surface"):
                for facet, miller in facets:
                    for t in cfg.surface_temperatures_k if cfg.surface_frames else []:
                        add(protocol="surface", seed_index=s, seed_kind=kind, size=size, facet=facet, miller=miller,
                            mode="md", temperature_K=float(t), n_frames=cfg.surface_frames)
                    if cfg.surface_rattle_relax_starts:
                        add(protocol="surface", seed_index=s, seed_kind=kind, size=size, facet=facet, miller=miller,
                            mode="rattle_relax", n_starts=cfg.surface_rattle_relax_starts)
        if "defect" in applies and (cfg.defect_frames or cfg.defect_relax_steps):
            from .coverage import defect_kinds_for

            symbols = seeds[s].get_chemical_symbols()
            for size in sizes("defect"):
                for defect in defect_kinds_for(Atoms(symbols), cfg.defect_kinds):
                    for t in cfg.defect_temperatures_k:
                        add(protocol="defect", seed_index=s, seed_kind=kind, size=size, defect=defect,
                            temperature_K=float(t), n_frames=cfg.defect_frames)
        if "cluster" in applies and (cfg.cluster_frames or cfg.cluster_relax_steps):
            for n in cfg.cluster_sizes:
                for t in cfg.cluster_temperatures_k:
                    for shape in range(cfg.cluster_shapes):
                        # shape 0 keeps the key (and so the id and seed) of data made before the option
                        add(protocol="cluster", seed_index=s, seed_kind=kind, cluster_size=int(n),
                            temperature_K=float(t), n_frames=cfg.cluster_frames,
                            **({"cluster_shape": shape} if shape else {}))
        if "hot" in applies and cfg.hot_frames:
            tm, source = (cfg.melting_point_k, "configured") if cfg.melting_point_k else \
                estimated_melting_point(seeds[s])
            for size in sizes("hot"):
                for f in cfg.hot_temperature_factors:
                    add(protocol="hot", seed_index=s, seed_kind=kind, size=size, temperature_K=round(f * tm, 1),
                        melting_point_K=round(float(tm), 1), melting_point_source=source, n_frames=cfg.hot_frames)
        if "reference" in applies and cfg.reference_frames:
            from .coverage import reference_elements

            for element in reference_elements(seeds[s]):
                for size in sizes("reference"):
                    for t in cfg.reference_temperatures_k:
                        add(protocol="reference", seed_index=s, seed_kind=kind, element=element, size=size,
                            temperature_K=float(t), n_frames=cfg.reference_frames)
        if "volume" in applies and cfg.volume_frames:
            for size in sizes("volume"):
                for scale in cfg.volume_scales:
                    add(protocol="volume", seed_index=s, seed_kind=kind, size=size, volume_scale=float(scale),
                        n_frames=cfg.volume_frames)
        if "short_range" in applies:
            from .coverage import element_pairs

            per = cfg.short_range_frames_per_task

            def chunks(n):  # frame counts of the tasks n frames are cut into (several, so a split keeps most)
                return [min(per, n - k) for k in range(0, n, per)]

            for pair in element_pairs(seeds[s]):
                n_dimer = cfg.short_range_dimer_frames
                parts = math.ceil(n_dimer / per) if n_dimer else 0
                for j in range(parts):  # interleaved distances: a held-out part is bracketed by trained ones
                    add(protocol="short_range", seed_index=s, seed_kind=kind, pair=pair, mode="dimer", part=j,
                        n_parts=parts, n_frames=len(range(j, n_dimer, parts)))
                for size in sizes("short_range"):
                    for j, n in enumerate(chunks(cfg.short_range_frames)):
                        add(protocol="short_range", seed_index=s, seed_kind=kind, pair=pair, mode="pushed_pair",
                            size=size, repeat=j, n_frames=n)
            for size in sizes("short_range"):
                for j, n in enumerate(chunks(cfg.short_range_rattle_frames)):
                    add(protocol="short_range", seed_index=s, seed_kind=kind, mode="rattle", size=size, repeat=j,
                        n_frames=n)
    return tasks


def _label(atoms: Atoms, calc, task: dict, teacher_name: str, frame_index: int) -> Atoms:
    """A copy of ``atoms`` holding the teacher's energy, forces and stress."""
    a = atoms.copy()
    a.calc = None
    a.arrays.pop("masses", None)  # frames keep natural masses whatever the MD ran with
    if atoms.calc is not calc:
        atoms.calc = calc
    energy = float(atoms.get_potential_energy())
    forces = np.array(atoms.get_forces(), dtype=np.float64)
    results = {"energy": energy, "free_energy": energy, "forces": forces}
    if atoms.pbc.all() and atoms.cell.rank == 3:
        results["stress"] = np.array(atoms.get_stress(voigt=True), dtype=np.float64)
    a.calc = SinglePointCalculator(a, **results)
    a.info.update(
        traj_id=task["id"], protocol=task["protocol"], teacher=teacher_name, rng_seed=task["rng_seed"],
        frame_index=frame_index, temperature_K=float(task.get("temperature_K", 0.0)),
        pressure_GPa=float(task.get("pressure_GPa", 0.0)),
    )
    a.info.update({k: task[k] for k in PROVENANCE if k in task})
    return a


def accept_frame(frame: Atoms, cfg: GenerateConfig) -> bool:
    """Keep a labelled frame unless its forces exceed ``reject_fmax`` or two atoms are closer
    than ``reject_min_distance``."""
    fmax = np.linalg.norm(frame.calc.results["forces"], axis=1).max() if len(frame) else 0.0
    if not np.isfinite(fmax) or fmax > cfg.reject_fmax:
        return False
    return min_pair_distance(frame, probe=max(cfg.reject_min_distance, 0.1)) >= cfg.reject_min_distance


def _init_velocities(atoms, temperature_k, rng):
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation

    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_k, rng=rng)
    Stationary(atoms)
    if not atoms.pbc.any():
        ZeroRotation(atoms)


def md_masses(atoms: Atoms, hydrogen_mass_amu: Optional[float]) -> np.ndarray:
    """The masses MD runs with: the natural ones, hydrogen's replaced by ``hydrogen_mass_amu``.

    Classical configurational statistics do not depend on the masses (the Boltzmann
    weight of a configuration is exp(-E/kT) whatever the momenta), so heavy hydrogen
    samples the same structures; it slows the O-H/C-H stretches (by 1.37x for O-D against O-H),
    which lets a 1 fs step stay stable where natural hydrogen needs 0.5 fs (the practice of
    hydrogen mass repartitioning; Feenstra, Hess and Berendsen, J. Comput. Chem. 20, 786 (1999)).
    Dynamics (diffusion, vibrational spectra) are those of the heavier isotope.
    """
    masses = atoms.get_masses().copy()
    if hydrogen_mass_amu:
        masses[atoms.numbers == 1] = hydrogen_mass_amu
    return masses


def _run_md(atoms, calc, task, cfg, teacher_name, rng, npt=False, timestep_fs=None, melt_k=None, melt_steps=0,
            first_index=0):
    atoms.calc = calc
    if cfg.hydrogen_mass_amu and (atoms.numbers == 1).any():
        atoms.set_masses(md_masses(atoms, cfg.hydrogen_mass_amu))
    dt = (timestep_fs or cfg.timestep_fs) * units.fs
    if melt_k and melt_steps:
        # melt first: a small crystal superheats far above its melting point in short runs
        from ase.md.bussi import Bussi

        _init_velocities(atoms, melt_k, rng)
        Bussi(atoms, timestep=dt, temperature_K=melt_k, taut=cfg.taut_fs * units.fs, rng=rng).run(melt_steps)
    else:
        _init_velocities(atoms, task["temperature_K"], rng)
    if npt:
        from ase.md.nose_hoover_chain import IsotropicMTKNPT

        dyn = IsotropicMTKNPT(atoms, timestep=dt, temperature_K=task["temperature_K"],
                              pressure_au=task["pressure_GPa"] * units.GPa, tdamp=cfg.taut_fs * units.fs,
                              pdamp=10 * cfg.taut_fs * units.fs)
    elif cfg.thermostat == "bussi":
        from ase.md.bussi import Bussi

        dyn = Bussi(atoms, timestep=dt, temperature_K=task["temperature_K"], taut=cfg.taut_fs * units.fs, rng=rng)
    elif cfg.thermostat in ("nose-hoover", "nosehoover", "nhc"):
        from ase.md.nose_hoover_chain import NoseHooverChainNVT

        dyn = NoseHooverChainNVT(atoms, timestep=dt, temperature_K=task["temperature_K"], tdamp=cfg.taut_fs * units.fs)
    else:
        raise ValueError(f"Unknown thermostat {cfg.thermostat!r}; use 'bussi' or 'nose-hoover'.")
    dyn.run(cfg.nvt_equilibration_steps)
    frames = []
    for k in range(task["n_frames"]):
        dyn.run(cfg.nvt_interval_steps)
        frames.append(_label(atoms, calc, task, teacher_name, first_index + k))
    return frames


def _rattle_relax(base, calc, task, cfg, name, rng, n_starts):
    """Rattle with sigma log-uniform in [0.01, 0.1] Å, then a few FIRE steps; every step is a frame."""
    from ase.optimize import FIRE

    frames, k = [], 0
    for _ in range(n_starts):
        a = base.copy()
        sigma = float(np.exp(rng.uniform(np.log(0.01), np.log(0.1))))
        a.positions += rng.normal(scale=sigma, size=a.positions.shape)
        a.calc = calc
        frames.append(_label(a, calc, task, name, k))
        k += 1
        opt = FIRE(a, logfile=None)
        for _ in range(cfg.rattle_relax_steps):
            opt.run(fmax=1e-6, steps=1)
            frames.append(_label(a, calc, task, name, k))
            k += 1
    return frames


def _relax_then_md(a, calc, task, cfg, name, rng, relax_steps):
    """A few FIRE steps from the unrelaxed defect or cluster (each a frame), then NVT."""
    from ase.optimize import FIRE

    a.calc = calc
    frames = [_label(a, calc, task, name, 0)]
    opt = FIRE(a, logfile=None)
    for _ in range(relax_steps):
        opt.run(fmax=1e-6, steps=1)
        frames.append(_label(a, calc, task, name, len(frames)))
    if task["n_frames"]:
        frames += _run_md(a, calc, task, cfg, name, rng, first_index=len(frames))
    return frames


def _coverage_structure(task: dict, seed: Atoms, cfg: "GenerateConfig", rng) -> Atoms:
    """The starting structure of a coverage task."""
    from .coverage import liquid_interface, make_cluster, make_defect, make_slab, seed_supercell

    proto = task["protocol"]
    if proto == "surface":
        if task["seed_kind"] == "bulk":
            return make_slab(seed, task["miller"], task["size"], cfg.surface_min_thickness, cfg.vacuum)
        if task["seed_kind"] == "molecular":
            return liquid_interface(seed, task["size"], cfg.vacuum)
        return seed_supercell(seed, task["size"])
    if proto == "defect":
        return make_defect(supercell(seed, task["size"], at_least=False), task["defect"], rng)
    if proto == "cluster":
        return make_cluster(seed, task["cluster_size"], cfg.vacuum, molecular=task["seed_kind"] == "molecular",
                            rng=rng if task.get("cluster_shape") else None)
    if proto == "reference":
        from .coverage import reference_crystal

        return supercell(reference_crystal(task["element"]), task["size"], at_least=False)
    if proto == "volume":
        base = supercell(seed, task["size"], at_least=False)
        if task["seed_kind"] == "molecular":  # move whole molecules, keep their shape
            from .coverage import whole_molecules

            whole, mol = whole_molecules(base)
            centres = np.array([whole.positions[mol == m].mean(axis=0) for m in range(mol.max() + 1)])
            whole.set_cell(whole.cell.array * task["volume_scale"], scale_atoms=False)
            whole.positions += (task["volume_scale"] - 1.0) * centres[mol]
            return whole
        base.set_cell(base.cell.array * task["volume_scale"], scale_atoms=True)
        return base
    return seed_supercell(seed, task["size"])  # hot (a molecule as it is)


def _short_range(task: dict, seed: Atoms, calc, cfg: "GenerateConfig", name: str, rng) -> List[Atoms]:
    """The frames of one short-range task: dimers at evenly spaced distances (this task's
    share, interleaved), bulk cells with one pair pushed together, or hard rattles."""
    from .coverage import make_dimer, pair_distances, push_pair

    if task["mode"] == "rattle":
        base = supercell(seed, task["size"], at_least=False)
        d_nn = min(pair_distances(seed).values())
        frames = []
        for k in range(task["n_frames"]):
            a = base.copy()
            a.info["rattle_sigma"] = sigma = float(rng.uniform(0.04, 0.12) * d_nn)
            a.positions += rng.normal(scale=sigma, size=a.positions.shape)
            frames.append(_label(a, calc, task, name, k))
        return frames
    d_ref = pair_distances(seed)[task["pair"]]
    lo = cfg.short_range_min_factor * d_ref
    if task["mode"] == "dimer":
        j, parts = task["part"], task["n_parts"]
        grid = np.linspace(lo, 1.6 * d_ref, cfg.short_range_dimer_frames)
        return [_label(make_dimer(task["pair"], grid[k], cfg.vacuum), calc, task, name, k)
                for k in range(j, len(grid), parts)]
    base = supercell(seed, task["size"], at_least=False)
    frames = []
    for k in range(task["n_frames"]):
        a = base.copy()
        a.positions += rng.normal(scale=cfg.strain_rattle, size=a.positions.shape)
        frames.append(_label(push_pair(a, task["pair"], rng.uniform(lo, 0.92 * d_ref), rng), calc, task, name, k))
    return frames


def _random_strain(rng, max_strain):
    e = rng.uniform(-max_strain, max_strain, size=(3, 3))
    return 0.5 * (e + e.T)


def run_task(task: dict, seeds: List[Atoms], cfg: GenerateConfig, teacher) -> List[Atoms]:
    """All frames of one task (before rejection)."""
    rng = np.random.default_rng(task["rng_seed"])
    from .coverage import seed_supercell

    base = seed_supercell(seeds[task["seed_index"]], task["size"]) if "size" in task else None
    calc = teacher.calculator()
    if hasattr(calc, "reset"):
        # a task must not depend on the tasks run before it in this process (a calculator's
        # cached state, e.g. EMT's skinned neighbour list, changes the last bits of its
        # results): then any worker reproduces a serial run bit for bit
        calc.reset()
    name = teacher.name
    proto = task["protocol"]
    if proto in ("nvt", "npt"):
        return _run_md(base.copy(), calc, task, cfg, name, rng, npt=proto == "npt")
    if proto == "strain":
        frames = []
        for k in range(task["n_frames"]):
            a = base.copy()
            if a.pbc.any():
                a.set_cell(a.cell.array @ (np.eye(3) + _random_strain(rng, cfg.strain_max)), scale_atoms=True)
            a.positions += rng.normal(scale=cfg.strain_rattle, size=a.positions.shape)
            frames.append(_label(a, calc, task, name, k))
        return frames
    if proto == "rattle_relax":
        return _rattle_relax(base, calc, task, cfg, name, rng, task["n_starts"])
    if proto == "short_range":
        return _short_range(task, seeds[task["seed_index"]], calc, cfg, name, rng)
    if proto in COVERAGE:
        a = _coverage_structure(task, seeds[task["seed_index"]], cfg, rng)
        if proto == "surface" and task["mode"] == "rattle_relax":
            return _rattle_relax(a, calc, task, cfg, name, rng, task["n_starts"])
        if proto in ("surface", "hot", "reference"):
            hot = proto == "hot"
            tm = task.get("melting_point_K", 0.0)
            return _run_md(a, calc, task, cfg, name, rng, timestep_fs=cfg.hot_timestep_fs if hot else None,
                           melt_k=2.0 * tm if hot and task["temperature_K"] > tm else None,
                           melt_steps=cfg.hot_melt_steps)
        if proto == "defect":
            return _relax_then_md(a, calc, task, cfg, name, rng, cfg.defect_relax_steps)
        if proto == "cluster":
            return _relax_then_md(a, calc, task, cfg, name, rng, cfg.cluster_relax_steps)
        frames = []  # volume
        for k in range(task["n_frames"]):
            b = a.copy()
            b.positions += rng.normal(scale=cfg.strain_rattle, size=b.positions.shape)
            frames.append(_label(b, calc, task, name, k))
        return frames
    if proto == "relax":
        from ase.filters import FrechetCellFilter
        from ase.optimize import FIRE

        a = base.copy()
        if a.pbc.any():
            a.set_cell(a.cell.array @ (np.eye(3) + _random_strain(rng, cfg.strain_max)), scale_atoms=True)
        a.positions += rng.normal(scale=0.05, size=a.positions.shape)
        a.calc = calc
        target = FrechetCellFilter(a) if a.pbc.all() else a
        frames = [_label(a, calc, task, name, 0)]
        opt = FIRE(target, logfile=None)
        for k in range(1, cfg.relax_max_steps + 1):
            opt.run(fmax=cfg.relax_fmax, steps=1)
            frames.append(_label(a, calc, task, name, k))
            if opt.converged():
                break
        return frames
    raise ValueError(f"Unknown protocol {proto!r}")


def relabel_frames(frames: List[Atoms], teacher, task: dict, cfg: GenerateConfig) -> tuple:
    """``frames`` labelled again by ``teacher`` (their positions, cell and provenance kept;
    ``info["sampler"]`` names the potential that made them), and how many of them the
    teacher's labels reject (:func:`accept_frame`). With ``cfg.hvp``, each kept frame gets
    the teacher's Hessian-vector product."""
    calc = teacher.calculator()
    if hasattr(calc, "reset"):
        calc.reset()
    out = []
    for f in frames:
        src = dict(f.info)
        a = f.copy()
        a.calc = None
        for key in ("hvp_v", "hvp"):
            a.arrays.pop(key, None)
        labelled = _label(a, calc, {"id": src.get("traj_id", task.get("id")), "protocol": src.get("protocol", task.get("protocol")),
                                    "rng_seed": src.get("rng_seed", task.get("rng_seed", 0))},
                          teacher.name, int(src.get("frame_index", len(out))))
        labelled.info.update({k: v for k, v in src.items() if k not in ("teacher", "hvp_epsilon")})
        labelled.info["teacher"] = teacher.name
        labelled.info["sampler"] = src.get("sampler", src.get("teacher", ""))
        out.append(labelled)
    kept = [f for f in out if accept_frame(f, cfg)]
    if cfg.hvp and kept:
        from .hessian import teacher_hvp

        rng = np.random.default_rng(task.get("rng_seed", 0) + 1)
        for f in kept:
            teacher_hvp(f, calc, rng, cfg.hvp_epsilon)
    return kept, len(out) - len(kept)


def label_task(task: dict, seeds, cfg, teacher, threads: Optional[int] = None, sampler=None) -> dict:
    """Run one task and keep the frames that pass the rejection rules.

    ``teacher`` is a Teacher or, on Dask workers, its spec (a dict). ``sampler`` (the same
    kinds, or None) runs the task's MD and relaxations instead of the teacher; the teacher
    then labels the frames the sampler kept, one call each.
    """
    from .executors import teacher_lock, teacher_loads, worker_teacher

    lock = contextlib.nullcontext()
    if isinstance(teacher, dict):
        spec = teacher
        teacher = worker_teacher(spec, threads)
        lock = teacher_lock(spec)  # tasks sharing this worker's teacher run one after the other
    sampler_lock = contextlib.nullcontext()
    if isinstance(sampler, dict):
        sampler_spec = sampler
        sampler = worker_teacher(sampler_spec, threads)
        sampler_lock = teacher_lock(sampler_spec)
    t0 = time.perf_counter()
    if sampler is None:
        with lock:
            frames = run_task(task, seeds, cfg, teacher)
    else:
        with sampler_lock:
            frames = run_task(task, seeds, cfg, sampler)
    kept = [f for f in frames if accept_frame(f, cfg)]
    rejected = len(frames) - len(kept)
    if cfg.keep_fraction < 1.0 and len(kept) > 1:
        from .selection import select_diverse

        chosen = select_diverse(kept, max(1, round(cfg.keep_fraction * len(kept))))
        kept = [kept[k] for k in sorted(chosen)]  # trajectory order
    deselected = len(frames) - rejected - len(kept)
    if sampler is not None:
        with lock:
            kept, more = relabel_frames(kept, teacher, task, cfg)
        rejected += more
    elif cfg.hvp and kept:
        from .hessian import teacher_hvp

        calc = teacher.calculator()
        rng = np.random.default_rng(task["rng_seed"] + 1)
        for f in kept:
            teacher_hvp(f, calc, rng, cfg.hvp_epsilon)
    return {"id": task["id"], "frames": kept, "rejected": rejected, "deselected": deselected,
            "seconds": round(time.perf_counter() - t0, 2), "worker": f"{os.uname().nodename}:{os.getpid()}",
            "teacher_loads": teacher_loads()}


# --------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------


def _atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, default=str))


def _write_chunk(path: Path, frames: List[Atoms]) -> None:
    from ase.io import write

    tmp = path.with_name(path.name + ".tmp")
    write(tmp, frames, format="extxyz")
    os.replace(tmp, path)


def check_teacher_covers(teacher, seeds: List[Atoms]) -> None:
    for s in seeds:
        teacher.check_species(s)


#: generate options that name what to cover: a data folder may be extended by adding values to them
EXTENDABLE = ("nvt_temperatures_k", "npt_pressures_gpa", "coverage", "surface_millers", "surface_temperatures_k",
              "defect_kinds", "defect_temperatures_k", "cluster_sizes", "cluster_temperatures_k",
              "hot_temperature_factors", "volume_scales", "cluster_shapes")
#: the counts among them: a data folder is extended by raising them
_EXTENDABLE_COUNTS = ("cluster_shapes",)

#: what a manifest records of a finished task besides its plan
_RESULT_KEYS = ("file", "frames", "rejected", "deselected", "seconds", "sampler_seconds")


#: options read by one coverage protocol only: free to change while extending a data folder
#: that protocol is added to (none of its finished tasks used them)
PROTOCOL_OPTIONS = {"short_range": ("short_range_frames", "short_range_dimer_frames", "short_range_min_factor",
                                     "short_range_rattle_frames", "short_range_frames_per_task")}


def _extension_changes(stored: dict, new: dict) -> dict:
    """{option: (old, new)} when ``new`` only adds values to :data:`EXTENDABLE` options of
    ``stored`` (or sets the options of a protocol it adds, :data:`PROTOCOL_OPTIONS`);
    otherwise a ValueError naming the first option that forbids extending."""
    changes = {}
    added = set(new.get("coverage") or []) - set(stored.get("coverage") or [])
    free = {k for p in added for k in PROTOCOL_OPTIONS.get(p, ())}
    for key in sorted(set(stored) | set(new)):
        old, now = stored.get(key), new.get(key)
        if old == now or key in free:
            continue
        if key not in EXTENDABLE:
            raise ValueError(f"generate.{key} changed ({old!r} -> {now!r}); only values added to "
                             f"{', '.join(EXTENDABLE)} can extend a data folder.")
        if key in _EXTENDABLE_COUNTS:
            if now < old:
                raise ValueError(f"generate.{key} fell from {old} to {now}; extending can only raise it.")
            changes[key] = (old, now)
            continue
        missing = [v for v in (old or []) if v not in (now or [])]
        if missing:
            raise ValueError(f"generate.{key} lost {missing!r}; extending keeps every value the data were made with.")
        changes[key] = (old, now)
    return changes


def _adopt_finished(tasks: List[dict], finished: dict) -> List[dict]:
    """The plan ``tasks`` with the ids of the manifest's ``finished`` tasks that have the
    same plan (a plan's ids are positions, and adding values moves them); tasks new to the
    data get ids no finished task has."""
    def plan(t):
        return json.dumps({k: v for k, v in t.items() if k != "id" and k not in _RESULT_KEYS}, sort_keys=True)

    by_plan = {plan(v): tid for tid, v in finished.items()}
    used, out = set(finished), []
    for t in tasks:
        tid = by_plan.get(plan(t))
        if tid is None:
            tid, k = t["id"], 0
            while tid in used:
                k += 1
                tid = f"{t['id']}-x{k}"
        used.add(tid)
        out.append({**t, "id": tid})
    lost = set(finished) - {t["id"] for t in out}
    if lost:
        raise ValueError(f"extending would drop finished tasks {sorted(lost)[:5]}: their plan is not in the new "
                         "configuration.")
    return out


def generate(cfg: GenerateConfig, teacher, out_dir, progress: bool = True, max_tasks: Optional[int] = None,
             executor=None, client=None, extend: bool = False, sampler=None) -> dict:
    """Run (or resume) data generation into ``out_dir``. Returns the manifest.

    Args:
        cfg: what to generate
        teacher: a :class:`orbdistill.teachers.Teacher`
        out_dir: folder for ``chunks/*.extxyz`` and ``manifest.json``
        max_tasks: stop after this many new tasks (tests use it to simulate interruption)
        executor: an :class:`~orbdistill.data.executors.ExecutorConfig` (or its dict):
            "local" (default) runs the tasks here; "dask" on a Dask cluster
        client: a ``distributed.Client`` to use instead of the one ``executor`` describes
        extend: accept a configuration that adds values to the options of :data:`EXTENDABLE`
            (more cluster sizes, temperatures, facets, volume scales...): the finished tasks
            are kept and only the new ones are labelled. Any other change is refused.
        sampler: a cheaper potential (a Teacher) that runs the MD and relaxations; the
            teacher labels only the frames kept, one call each. The configurations then
            follow the sampler's dynamics, not the teacher's. A folder made without a sampler
            can be given the teacher's labels later by :func:`orbdistill.data.relabel.relabel`.
    """
    from .executors import ExecutorConfig, dask_client, run_on_dask

    ex = executor if isinstance(executor, ExecutorConfig) else ExecutorConfig.from_dict(executor or {})
    if client is not None:  # a client given by the caller wins over the config
        ex = ExecutorConfig(kind="dask", threads_per_worker=ex.threads_per_worker)
    out = Path(out_dir)
    (out / "chunks").mkdir(parents=True, exist_ok=True)
    seeds = load_seeds(cfg.seeds)
    check_teacher_covers(teacher, seeds)
    if sampler is not None:
        try:
            check_teacher_covers(sampler, seeds)
        except ValueError as exc:
            raise ValueError(f"sampler: {exc}") from exc
    tasks = plan_tasks(cfg, seeds)
    if not tasks:
        raise ValueError("The generate configuration produces no task: enable at least one protocol.")
    manifest_path = out / "manifest.json"
    cfg_dict = json.loads(json.dumps(dataclasses.asdict(cfg)))  # as the manifest stores it (tuples as lists)
    teacher_desc = {k: v for k, v in teacher.describe().items() if k != "species"}
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        # fields added to GenerateConfig after the data were made count at their defaults
        defaults = json.loads(json.dumps(dataclasses.asdict(GenerateConfig(seeds=cfg.seeds))))
        stored = {**{k: v for k, v in defaults.items() if k not in manifest.get("config", {})}, **manifest.get("config", {})}
        if manifest.get("teacher", {}).get("name") != teacher.name:
            raise ValueError(f"{out} was generated with teacher {manifest['teacher'].get('name')!r}, not {teacher.name!r}.")
        stored_sampler = (manifest.get("sampler") or {}).get("name")
        if stored_sampler != (sampler.name if sampler is not None else None):
            raise ValueError(f"{out} was sampled with {stored_sampler or 'its teacher'!r}, not "
                             f"{sampler.name if sampler is not None else 'the teacher'!r}: set the config's sampler "
                             "to match, or use a new folder.")
        if stored != cfg_dict:
            if not extend:
                raise ValueError(
                    f"{out} holds data generated with another configuration; use a new folder or the same configuration "
                    "to resume (or extend it: `--extend`, when values were only added to "
                    f"{', '.join(EXTENDABLE)})."
                )
            changes = _extension_changes(stored, cfg_dict)
            tasks = _adopt_finished(tasks, manifest["tasks"])
            manifest.setdefault("extensions", []).append(
                {"at": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "added": {k: (new - old if k in _EXTENDABLE_COUNTS else [v for v in new if v not in (old or [])])
                           for k, (old, new) in changes.items()}})
            manifest["config"] = cfg_dict
            _atomic_write_json(manifest_path, manifest)
        elif manifest.get("extensions"):  # resuming an extended folder: keep the ids it adopted
            tasks = _adopt_finished(tasks, manifest["tasks"])
    else:
        manifest = {"config": cfg_dict, "teacher": teacher_desc, "tasks": {}, "created": time.strftime("%Y-%m-%d %H:%M:%S")}
        if sampler is not None:
            manifest["sampler"] = {k: v for k, v in sampler.describe().items() if k != "species"}
    for stale in (out / "chunks").glob("*.tmp"):
        stale.unlink()  # an interrupted task: it is run again from its start
    todo = [t for t in tasks if t["id"] not in manifest["tasks"]]
    if len(todo) < len(tasks):
        log.info("resuming: %d of %d tasks already done", len(tasks) - len(todo), len(tasks))
    by_id = {t["id"]: t for t in todo}

    def record(result: dict) -> None:
        """Write one finished task (chunk, then manifest; both atomic). Only this process writes."""
        task = by_id[result["id"]]
        if task["id"] in manifest["tasks"]:
            return  # a task the scheduler ran twice (a worker died after finishing it): keep the first
        path = out / "chunks" / f"{task['id']}.extxyz"
        _write_chunk(path, result["frames"])
        manifest["tasks"][task["id"]] = {
            "file": f"chunks/{path.name}", "frames": len(result["frames"]), "rejected": result["rejected"],
            "deselected": result.get("deselected", 0),
            "seconds": result["seconds"], **{k: v for k, v in task.items() if k != "id"},
        }
        _atomic_write_json(manifest_path, manifest)

    desc = f"generating with {teacher.name}" + (f" (sampled by {sampler.name})" if sampler is not None else "")
    bar = tqdm(total=len(todo), desc=desc + (" on dask" if ex.kind == "dask" else ""), disable=not progress)
    try:
        if ex.kind == "dask":
            if client is not None:
                run_on_dask(client, label_task, todo, seeds, cfg, teacher, record, bar, max_tasks, ex.threads_per_worker,
                            sampler=sampler)
            else:
                with dask_client(ex) as c:
                    run_on_dask(c, label_task, todo, seeds, cfg, teacher, record, bar, max_tasks, ex.threads_per_worker,
                                sampler=sampler)
        else:
            for k, task in enumerate(todo):
                if max_tasks is not None and k >= max_tasks:
                    break
                record(label_task(task, seeds, cfg, teacher, sampler=sampler))
                bar.update(1)
    finally:
        bar.close()
    manifest["complete"] = all(t["id"] in manifest["tasks"] for t in tasks)
    manifest["n_frames"] = sum(v["frames"] for v in manifest["tasks"].values())
    manifest["n_rejected"] = sum(v["rejected"] for v in manifest["tasks"].values())
    _atomic_write_json(manifest_path, manifest)
    return manifest


def read_frames(out_dir) -> List[Atoms]:
    """All frames of a generated data folder, in task order."""
    from ase.io import read

    out = Path(out_dir)
    manifest_path = out / "manifest.json"
    if not manifest_path.exists():
        raise FileNotFoundError(f"{out} has no manifest.json: not a generated data folder.")
    manifest = json.loads(manifest_path.read_text())
    frames = []
    for tid in sorted(manifest["tasks"]):
        info = manifest["tasks"][tid]
        if info["frames"]:
            frames.extend(read(out / info["file"], index=":"))
    return frames


def domain_summary(manifest: dict) -> dict:
    """What a data folder covers, from its manifest: per protocol group the frame count,
    temperature and pressure ranges, facets, defects, cluster sizes, volume scales and
    atom counts (the package card shows it to people and programs)."""
    cfg = manifest.get("config", {})
    groups: Dict[str, dict] = {}
    for task in manifest.get("tasks", {}).values():
        g = groups.setdefault(protocol_group(task["protocol"]),
                              {"frames": 0, "protocols": set(), "temperatures_k": set(), "pressures_gpa": set(),
                               "facets": set(), "defects": set(), "cluster_sizes": set(), "volume_scales": set(),
                               "pairs": set(), "sizes": set()})
        g["frames"] += task.get("frames", 0)
        g["protocols"].add(task["protocol"])
        for key, field_name in (("temperature_K", "temperatures_k"), ("pressure_GPa", "pressures_gpa"),
                                ("facet", "facets"), ("defect", "defects"), ("cluster_size", "cluster_sizes"),
                                ("volume_scale", "volume_scales"), ("pair", "pairs"), ("size", "sizes")):
            if key in task:
                g[field_name].add(task[key])
    out = {}
    for name, g in sorted(groups.items()):
        out[name] = {k: (sorted(v) if isinstance(v, set) else v) for k, v in g.items() if v or k == "frames"}
    if "bulk" in out and cfg.get("strain_frames"):
        out["bulk"]["strain_max"] = cfg.get("strain_max")
    if "short_range" in out:
        out["short_range"]["min_distance_factor"] = cfg.get("short_range_min_factor", 0.6)
        out["short_range"]["modes"] = sorted({t["mode"] for t in manifest["tasks"].values()
                                              if t["protocol"] == "short_range"})
    return out

