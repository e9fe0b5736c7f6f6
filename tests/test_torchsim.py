"""Students in torch-sim: a batch equals single ASE calls; batched NVT and FIRE run."""

import os

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE

from orbdistill import StudentCalculator
from orbdistill.models import build_student

try:
    import torch_sim as ts
except ImportError as exc:  # CI installs orbdistill[all], which has torch-sim: missing there is a failure
    if os.environ.get("CI"):
        raise
    pytest.skip(f"torch-sim is not installed ({exc})", allow_module_level=True)
from orbdistill.torchsim import StudentModel  # noqa: E402


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    return build_student("v2", species=[29, 79], num_features=16, num_vector_features=4, num_layers=2).double()


def structures():
    """Different sizes, shapes, compositions and cells, all built around the origin (they
    overlap in space: the batch must keep their graphs apart)."""
    a = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    b = bulk("Cu", "fcc", a=3.7).repeat((2, 3, 2))
    b.numbers[::4] = 79
    c = bulk("Au", "fcc", a=4.1, cubic=True)
    d = bulk("Cu", "hcp", a=2.6, c=4.2).repeat((2, 2, 2))
    d.set_cell(d.cell.array @ np.array([[1, 0.05, 0], [0, 1, 0.08], [0, 0, 1]]), scale_atoms=True)
    for k, s in enumerate((a, b, c, d)):
        s.rattle(0.04, seed=k)
    return [a, b, c, d]


def test_a_batch_of_different_structures_equals_single_ase_calls(student):
    model = StudentModel(student, device="cpu", dtype="float64")
    cells = structures()
    out = model(ts.io.atoms_to_state(cells, device=torch.device("cpu"), dtype=torch.float64))
    start = 0
    for k, atoms in enumerate(cells):
        atoms.calc = StudentCalculator(student, dtype="float64", on_extrapolation="ignore")
        n = len(atoms)
        assert abs(float(out["energy"][k]) - atoms.get_potential_energy()) < 1e-10
        assert np.abs(out["forces"][start:start + n].numpy() - atoms.get_forces()).max() < 1e-10
        assert np.abs(out["stress"][k].numpy() - atoms.get_stress(voigt=False)).max() < 1e-12
        start += n
    assert start == len(out["forces"])


def test_batched_nvt_keeps_each_system_and_heats_it(student):
    model = StudentModel(student, device="cpu", dtype="float64")
    cells = structures()[:3]
    final = ts.integrate(system=cells, model=model, integrator=ts.nvt_langevin, n_steps=60, temperature=800.0,
                         timestep=0.002, seed=1)
    assert final.n_systems == 3 and final.positions.shape[0] == sum(len(c) for c in cells)
    start_state = ts.io.atoms_to_state(cells, device=torch.device("cpu"), dtype=torch.float64)
    moved = (final.positions - start_state.positions).norm(dim=1)
    assert torch.isfinite(final.positions).all() and moved.mean() > 0.02  # Å: the atoms moved
    out = model(final)
    assert torch.isfinite(out["energy"]).all()


def test_batched_fire_relaxation_matches_ase_cell_relaxation():
    """Three Cu cells strained differently relax to one lattice constant, ASE's (the
    committed Cu package: a random student has no physical minimum)."""
    from orbdistill.models import load_student
    from orbdistill.packages import MODEL_FILE, find_package

    student = load_student(find_package("cu-sevennet-v2") / MODEL_FILE).double()
    model = StudentModel(student, device="cpu", dtype="float64")
    cells = [bulk("Cu", "fcc", a=a, cubic=True) for a in (3.5, 3.6, 3.7)]
    relaxed = ts.optimize(system=cells, model=model, optimizer=ts.frechet_cell_fire, max_steps=1500,
                          convergence_fn=ts.generate_force_convergence_fn(force_tol=1e-3))
    lattice = torch.linalg.det(relaxed.row_vector_cell).numpy() ** (1 / 3)
    ref = bulk("Cu", "fcc", a=3.6, cubic=True)
    ref.calc = StudentCalculator(student, dtype="float64", on_extrapolation="ignore")
    FIRE(FrechetCellFilter(ref), logfile=None).run(fmax=1e-4, steps=2000)
    assert np.abs(lattice - ref.get_volume() ** (1 / 3)).max() < 2e-3
    assert abs(lattice[0] - 3.5) > 0.01 or abs(lattice[2] - 3.7) > 0.01  # something relaxed


def test_untrained_elements_in_a_batch_are_named(student):
    model = StudentModel(student, device="cpu", dtype="float64")
    cells = [bulk("Cu", "fcc", a=3.6, cubic=True), bulk("Ag", "fcc", a=4.1, cubic=True)]
    with pytest.raises(ValueError, match=r"system 1 has elements \['Ag'\]"):
        model(ts.io.atoms_to_state(cells, device=torch.device("cpu"), dtype=torch.float64))


def test_a_package_loads_by_name():
    model = StudentModel("cu-sevennet-v2", device="cpu")
    out = model(ts.io.atoms_to_state([bulk("Cu", "fcc", a=3.62, cubic=True)], device=torch.device("cpu"),
                                      dtype=torch.float32))
    assert out["energy"].shape == (1,) and out["stress"].shape == (1, 3, 3)
    assert float(out["forces"].abs().max()) < 1e-4  # a perfect crystal: no force on any atom
