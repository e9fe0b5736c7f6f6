"""Teacher-labelled training data: MD at several temperatures and pressures, strained and
rattled cells, rattle-and-relax paths and relaxation trajectories.

The work is a list of *tasks* fixed by the configuration (one trajectory each). A finished
task is written as one extxyz chunk, atomically (temporary file + rename), and recorded in
``manifest.json`` (also written atomically). Re-running with the same configuration skips
finished tasks, so an interrupted run resumes without losing or duplicating frames.

Every frame carries provenance in ``atoms.info``: ``traj_id``, ``protocol``,
``temperature_K``, ``pressure_GPa``, ``teacher``, ``rng_seed``; the manifest records the
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
from typing import Annotated, Dict, List, Literal, Optional

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


PROTOCOLS = ("nvt", "npt", "strain", "rattle_relax", "relax")


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
    reject_fmax: PositiveFloat = 30.0
    reject_min_distance: NonNegativeFloat = 0.5
    seed: NonNegativeInt = 0

    @classmethod
    def from_dict(cls, d: dict) -> "GenerateConfig":
        return build_config(cls, d, "generate")


# --------------------------------------------------------------------------------------
# tasks
# --------------------------------------------------------------------------------------


def plan_tasks(cfg: GenerateConfig, n_seeds: int) -> List[dict]:
    """The deterministic task list of a configuration."""
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
    return tasks


def _label(atoms: Atoms, calc, task: dict, teacher_name: str, frame_index: int) -> Atoms:
    """A copy of ``atoms`` holding the teacher's energy, forces and stress."""
    a = atoms.copy()
    a.calc = None
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


def _run_md(atoms, calc, task, cfg, teacher_name, rng, npt=False):
    atoms.calc = calc
    _init_velocities(atoms, task["temperature_K"], rng)
    dt = cfg.timestep_fs * units.fs
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
        frames.append(_label(atoms, calc, task, teacher_name, k))
    return frames


def _random_strain(rng, max_strain):
    e = rng.uniform(-max_strain, max_strain, size=(3, 3))
    return 0.5 * (e + e.T)


def run_task(task: dict, seeds: List[Atoms], cfg: GenerateConfig, teacher) -> List[Atoms]:
    """All frames of one task (before rejection)."""
    rng = np.random.default_rng(task["rng_seed"])
    base = supercell(seeds[task["seed_index"]], task["size"], at_least=False)
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
        from ase.optimize import FIRE

        frames, k = [], 0
        for _ in range(task["n_starts"]):
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


def label_task(task: dict, seeds, cfg, teacher, threads: Optional[int] = None) -> dict:
    """Run one task and keep the frames that pass the rejection rules.

    ``teacher`` is a Teacher or, on Dask workers, its spec (a dict).
    """
    from .executors import teacher_lock, teacher_loads, worker_teacher

    lock = contextlib.nullcontext()
    if isinstance(teacher, dict):
        spec = teacher
        teacher = worker_teacher(spec, threads)
        lock = teacher_lock(spec)  # tasks sharing this worker's teacher run one after the other
    t0 = time.perf_counter()
    with lock:
        frames = run_task(task, seeds, cfg, teacher)
    kept = [f for f in frames if accept_frame(f, cfg)]
    return {"id": task["id"], "frames": kept, "rejected": len(frames) - len(kept),
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


def generate(cfg: GenerateConfig, teacher, out_dir, progress: bool = True, max_tasks: Optional[int] = None,
             executor=None, client=None) -> dict:
    """Run (or resume) data generation into ``out_dir``. Returns the manifest.

    Args:
        cfg: what to generate
        teacher: a :class:`orbdistill.teachers.Teacher`
        out_dir: folder for ``chunks/*.extxyz`` and ``manifest.json``
        max_tasks: stop after this many new tasks (tests use it to simulate interruption)
        executor: an :class:`~orbdistill.data.executors.ExecutorConfig` (or its dict):
            "local" (default) runs the tasks here; "dask" on a Dask cluster
        client: a ``distributed.Client`` to use instead of the one ``executor`` describes
    """
    from .executors import ExecutorConfig, dask_client, run_on_dask

    ex = executor if isinstance(executor, ExecutorConfig) else ExecutorConfig.from_dict(executor or {})
    if client is not None:  # a client given by the caller wins over the config
        ex = ExecutorConfig(kind="dask", threads_per_worker=ex.threads_per_worker)
    out = Path(out_dir)
    (out / "chunks").mkdir(parents=True, exist_ok=True)
    seeds = load_seeds(cfg.seeds)
    check_teacher_covers(teacher, seeds)
    tasks = plan_tasks(cfg, len(seeds))
    if not tasks:
        raise ValueError("The generate configuration produces no task: enable at least one protocol.")
    manifest_path = out / "manifest.json"
    cfg_dict = dataclasses.asdict(cfg)
    teacher_desc = {k: v for k, v in teacher.describe().items() if k != "species"}
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("config") != cfg_dict:
            raise ValueError(
                f"{out} holds data generated with another configuration; use a new folder or the same configuration "
                "to resume."
            )
        if manifest.get("teacher", {}).get("name") != teacher.name:
            raise ValueError(f"{out} was generated with teacher {manifest['teacher'].get('name')!r}, not {teacher.name!r}.")
    else:
        manifest = {"config": cfg_dict, "teacher": teacher_desc, "tasks": {}, "created": time.strftime("%Y-%m-%d %H:%M:%S")}
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
            "seconds": result["seconds"], **{k: v for k, v in task.items() if k != "id"},
        }
        _atomic_write_json(manifest_path, manifest)

    bar = tqdm(total=len(todo), desc=f"generating with {teacher.name}" + (" on dask" if ex.kind == "dask" else ""),
               disable=not progress)
    try:
        if ex.kind == "dask":
            if client is not None:
                run_on_dask(client, label_task, todo, seeds, cfg, teacher, record, bar, max_tasks, ex.threads_per_worker)
            else:
                with dask_client(ex) as c:
                    run_on_dask(c, label_task, todo, seeds, cfg, teacher, record, bar, max_tasks, ex.threads_per_worker)
        else:
            for k, task in enumerate(todo):
                if max_tasks is not None and k >= max_tasks:
                    break
                record(label_task(task, seeds, cfg, teacher))
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
