"""The fused CPU kernels of the v2 student (orbdistill/kernels) against the eager model.

The kernels are what a user gets by default on CPU, so they must give the eager model's
energies, forces and stress (float64 to round-off, float32 within its noise), the same
physics (forces are -dE/dx), and refuse what they cannot do (training, double backward)
instead of returning wrong gradients.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

from orbdistill.calculator import StudentCalculator
from orbdistill.kernels import KernelsNotAvailable, edge_csr, load_kernels
from orbdistill.models import build_student

from conftest import rattled_triclinic_cu


@pytest.fixture(scope="module", autouse=True)
def kernels():
    try:
        load_kernels()
    except KernelsNotAvailable as exc:  # CI has cmake and a compiler: there it must build
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            raise
        pytest.skip(f"fused kernels not available: {exc}")


def v2(seed=0, species=(29,), **overrides):
    torch.manual_seed(seed)
    m = build_student("v2", list(species), **overrides)
    with torch.no_grad():  # make the energy shift and the scale non-trivial
        m.energy_scale.fill_(1.7)
        m.energy_shift.fill_(-0.3)
    return m


def results(model, atoms, fused, dtype="float64", **kwargs):
    calc = StudentCalculator(model, dtype=dtype, fused_kernels=fused, device="cpu", **kwargs)
    assert calc.engine.fused is bool(fused)
    atoms = atoms.copy()
    atoms.calc = calc
    out = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(),
           "energies": atoms.get_potential_energies()}
    if atoms.cell.rank == 3:
        out["stress"] = atoms.get_stress()
    return out


def cu_au_cell():
    a = rattled_triclinic_cu(seed=3, rattle=0.12)
    a.numbers[::3] = 79
    return a


STRUCTURES = {
    "triclinic Cu/Au cell": cu_au_cell,
    "isolated cluster": lambda: Atoms("Cu6Au2", positions=np.random.default_rng(1).uniform(0, 4.5, (8, 3))),
    "slab (periodic in 2 directions)": lambda: _slab(),
}


def _slab():
    from ase.build import fcc111

    s = fcc111("Cu", size=(2, 2, 3), vacuum=6.0)
    s.rattle(0.05, seed=2)
    s.numbers[0] = 79
    return s


@pytest.mark.parametrize("name", list(STRUCTURES))
@pytest.mark.parametrize("use_vectors", [True, False])
def test_fused_kernels_equal_the_eager_model_in_float64(name, use_vectors):
    model = v2(species=(29, 79), use_vectors=use_vectors)
    atoms = STRUCTURES[name]()
    eager = results(model, atoms, fused=False)
    fused = results(model, atoms, fused=True)
    assert abs(fused["energy"] - eager["energy"]) < 1e-9 * max(1.0, abs(eager["energy"]))
    np.testing.assert_allclose(fused["forces"], eager["forces"], atol=1e-10)
    np.testing.assert_allclose(fused["energies"], eager["energies"], atol=1e-10)
    if "stress" in eager:
        np.testing.assert_allclose(fused["stress"], eager["stress"], atol=1e-11)


def test_fused_kernels_agree_in_float32_within_its_noise():
    model = v2(species=(29, 79))
    atoms = cu_au_cell().repeat((2, 1, 1))
    ref = results(model, atoms, fused=False, dtype="float64")
    f32 = results(model, atoms, fused=True, dtype="float32")
    e32 = results(model, atoms, fused=False, dtype="float32")
    # the fused float32 result is as close to float64 as the eager float32 one (2x margin)
    for key in ("forces", "stress"):
        err_fused = np.abs(f32[key] - ref[key]).max()
        err_eager = np.abs(e32[key] - ref[key]).max()
        assert err_fused < max(2 * err_eager, 1e-5), (key, err_fused, err_eager)
    assert abs(f32["energy"] - ref["energy"]) < 1e-5 * len(atoms)


def test_fused_forces_are_minus_the_energy_gradient():
    model = v2(species=(29, 79))
    atoms = cu_au_cell()
    calc = StudentCalculator(model, dtype="float64", fused_kernels=True, device="cpu")
    atoms.calc = calc
    f = atoms.get_forces()
    h = 1e-5
    for i, k in [(0, 0), (3, 1), (5, 2), (7, 0)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[i, k] += h
        minus.positions[i, k] -= h
        plus.calc = minus.calc = calc
        fd = -(plus.get_potential_energy() - minus.get_potential_energy()) / (2 * h)
        assert abs(fd - f[i, k]) < 1e-7, (i, k, fd, f[i, k])


def test_fused_stress_matches_ase_numerical_stress():
    model = v2(species=(29, 79))
    atoms = cu_au_cell()
    atoms.calc = StudentCalculator(model, dtype="float64", fused_kernels=True, device="cpu")
    np.testing.assert_allclose(atoms.get_stress(), atoms.calc.calculate_numerical_stress(atoms, d=1e-5), atol=1e-8)


def test_fused_neighbours_in_the_skin_send_nothing():
    """With a Verlet skin the graph holds pairs beyond the cutoff; they must contribute 0."""
    model = v2()
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    atoms.rattle(0.1, seed=5)
    no_skin = results(model, atoms, fused=False)
    skin = results(model, atoms, fused=True, skin=1.0)
    np.testing.assert_allclose(skin["forces"], no_skin["forces"], atol=1e-10)
    np.testing.assert_allclose(skin["stress"], no_skin["stress"], atol=1e-11)


def test_fused_results_do_not_depend_on_the_thread_count():
    model = v2()
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(3)
    atoms.rattle(0.05, seed=1)
    old = torch.get_num_threads()
    try:
        out = []
        for n in (1, 2):
            torch.set_num_threads(n)
            out.append(results(model, atoms, fused=True, dtype="float32"))
    finally:
        torch.set_num_threads(old)
    # each thread owns its atoms' rows: bit-identical, not just close
    assert np.array_equal(out[0]["forces"], out[1]["forces"])


def test_fused_kernels_in_a_batch_of_structures_equal_single_structures():
    from orbdistill.graph import build_graph

    model = v2(species=(1, 8, 29)).double()
    for p in model.parameters():
        p.requires_grad_(False)
    model.use_fused_kernels(True)
    a, b = molecule("H2O"), bulk("Cu", "fcc", a=3.61, cubic=True)
    b.rattle(0.05, seed=0)
    both = model.predict(build_graph([a, b], model.cutoff, dtype=torch.float64))
    for k, s in enumerate((a, b)):
        one = model.predict(build_graph([s], model.cutoff, dtype=torch.float64))
        assert torch.allclose(both["energy"][k], one["energy"][0], atol=1e-12)


def test_training_runs_eagerly_even_with_kernels_on():
    """Parameters that require grad (training) take the eager path: parameter gradients of
    force errors are correct, never silently missing."""
    from orbdistill.graph import build_graph

    model = v2().double()
    model.use_fused_kernels(True)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.1, seed=0)
    g = build_graph([atoms], model.cutoff, dtype=torch.float64)
    assert not model.fused_active(g.positions)
    out = model.predict(g, training=True)
    (out["forces"] ** 2).sum().backward()
    grads = [p.grad for p in model.messages[0].filter.parameters()]
    assert all(gr is not None and gr.abs().sum() > 0 for gr in grads)


def test_fused_kernels_refuse_a_second_derivative():
    model = v2().double()
    for p in model.parameters():
        p.requires_grad_(False)
    model.use_fused_kernels(True)
    from orbdistill.graph import build_graph

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.1, seed=0)
    g = build_graph([atoms], model.cutoff, dtype=torch.float64)
    pos = g.positions.clone().requires_grad_(True)
    e = model.atomic_energies(pos, g.atomic_numbers, g.edge_index, g.cell_shifts, g.cell, g.batch).sum()
    with pytest.raises(RuntimeError, match="first derivatives only"):
        torch.autograd.grad(e, pos, create_graph=True)


def test_edge_csr_groups_edges_stably_and_checks_the_range():
    index = torch.tensor([2, 0, 2, 1, 0, 2])
    ptr, perm = edge_csr(index, 4)
    assert ptr.tolist() == [0, 2, 3, 6, 6]
    assert perm.tolist() == [1, 4, 3, 0, 2, 5]
    with pytest.raises(RuntimeError, match="out of range"):
        edge_csr(torch.tensor([0, 5]), 3)


def test_turning_the_kernels_off_falls_back_to_the_eager_model():
    code = ("from orbdistill.calculator import StudentCalculator; from orbdistill.models import build_student; "
            "c = StudentCalculator(build_student('v2', [29]), device='cpu'); print(c.engine.fused)")
    env = dict(os.environ, ORBDISTILL_KERNELS="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
    assert "turned off by ORBDISTILL_KERNELS" in out.stderr


def test_fused_kernels_on_an_asymmetric_knn_graph_equal_the_eager_model():
    """A k-nearest cap makes the edge list asymmetric (j may be among i's nearest, i not
    among j's): the kernels must notice and take the general two-pass gradient."""
    from orbdistill.graph import build_graph, edge_vectors
    from orbdistill.kernels import edge_symmetric

    model = v2(species=(29, 79), max_neighbors=7)
    atoms = cu_au_cell()
    g = build_graph([atoms], model.cutoff, model.max_neighbors, dtype=torch.float64)
    vec = edge_vectors(g.positions, g.cell, g.edge_index, g.cell_shifts, g.batch)
    senders = g.edge_index[0].contiguous()
    assert not edge_symmetric(senders, g.edge_index[1].contiguous(), vec, edge_csr(senders, len(atoms)))
    eager = results(model, atoms, fused=False)
    fused = results(model, atoms, fused=True)
    np.testing.assert_allclose(fused["forces"], eager["forces"], atol=1e-10)
    np.testing.assert_allclose(fused["stress"], eager["stress"], atol=1e-11)


def test_full_neighbour_lists_are_recognised_as_symmetric():
    from orbdistill.graph import build_graph, edge_vectors
    from orbdistill.kernels import edge_symmetric

    for atoms in (cu_au_cell(), _slab(), bulk("Cu", "fcc", a=3.61)):  # the last: 1 atom, all edges to images
        g = build_graph([atoms], 5.0, dtype=torch.float64)
        vec = edge_vectors(g.positions, g.cell, g.edge_index, g.cell_shifts, g.batch)
        senders = g.edge_index[0].contiguous()
        assert edge_symmetric(senders, g.edge_index[1].contiguous(), vec, edge_csr(senders, len(atoms)))
        # dropping one edge breaks the symmetry
        keep = torch.arange(g.num_edges) != 3
        s2, r2 = senders[keep].contiguous(), g.edge_index[1][keep].contiguous()
        assert not edge_symmetric(s2, r2, vec[keep].contiguous(), edge_csr(s2, len(atoms)))


def test_symmetric_and_general_gradient_passes_agree():
    from orbdistill.graph import build_graph, edge_vectors

    model = v2(species=(29, 79)).double()
    atoms = cu_au_cell()
    g = build_graph([atoms], model.cutoff, dtype=torch.float64)
    vec = edge_vectors(g.positions, g.cell, g.edge_index, g.cell_shifts, g.batch).contiguous()
    n, f, fv = len(atoms), model.config.num_features, model.config.num_vector_features
    s, r = g.edge_index[0].contiguous(), g.edge_index[1].contiguous()
    sc, rc = edge_csr(s, n), edge_csr(r, n)
    feat = torch.ops.orbdistill.edge_geometry(vec, model.radial.freqs, model.radial.prefactor, model.cutoff, 6)
    gen = torch.Generator().manual_seed(0)
    phi, v = torch.randn(n, f + 2 * fv, generator=gen, dtype=torch.float64), torch.randn(n, 3 * fv, generator=gen,
                                                                                          dtype=torch.float64)
    gds, gdv = torch.randn(n, f, generator=gen, dtype=torch.float64), torch.randn(n, 3 * fv, generator=gen,
                                                                                  dtype=torch.float64)
    msg = model.messages[1].filter
    args = (gds, gdv, feat, phi, v, s, r, sc[0], sc[1], rc[0], rc[1], msg.weight.detach().t().contiguous(),
            msg.bias.detach(), f, fv, False)
    general = torch.ops.orbdistill.painn_message_backward(*args, False)
    folded = torch.ops.orbdistill.painn_message_backward(*args, True)
    for a, b in zip(general, folded):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_torchscript_export_of_a_model_running_the_kernels_holds_standard_operators(tmp_path):
    from orbdistill.export.traced import export_torchscript

    model = v2()
    calc = StudentCalculator(model, device="cpu", fused_kernels=True)  # turns the kernels on for this object
    assert calc.engine.fused
    path = export_torchscript(model, tmp_path / "m.pt")
    assert "orbdistill" not in str(torch.jit.load(str(path)).code)
    assert model._fused  # and the model keeps running them


def test_a_force_loss_on_a_model_a_calculator_froze_runs_eagerly():
    """A model handed to a calculator (kernels on, parameters frozen) and then given a
    training loss (forces differentiated again) takes the eager path, not an error."""
    from orbdistill.graph import build_graph

    model = v2().double()
    StudentCalculator(model, dtype="float64", device="cpu", fused_kernels=True)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.1, seed=0)
    g = build_graph([atoms], model.cutoff, dtype=torch.float64)
    out = model.predict(g, training=True)
    assert out["forces"].requires_grad or out["forces"].grad_fn is not None
    ref = model.predict(g)  # kernels, inference
    torch.testing.assert_close(out["forces"].detach(), ref["forces"], atol=1e-10, rtol=0)
    assert model._fused


def test_the_kernel_cache_is_keyed_by_the_cpu_instruction_sets(monkeypatch, tmp_path):
    """-march=native code from one CPU must not be loaded on another that lacks its
    instructions: the build folder changes with the CPU's flags."""
    from pathlib import Path

    import orbdistill.cmake_build as cb
    from orbdistill.kernels import default_build_dir

    monkeypatch.setenv("ORBDISTILL_CACHE", str(tmp_path))
    here = default_build_dir()
    assert here.parent == tmp_path / "kernels" and f"-cpu{cb.cpu_fingerprint()}" in here.name

    real_read = Path.read_text

    def build_dir_on(flags: str):
        monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: f"processor : 0\nflags : {flags}\n"
                            if str(self) == "/proc/cpuinfo" else real_read(self, *a, **k))
        return default_build_dir()

    avx512 = build_dir_on("fpu sse2 avx avx2 avx512f avx512bw")
    avx2 = build_dir_on("fpu sse2 avx avx2")
    assert avx512 != avx2 and avx512.parent == avx2.parent
    # the flags' order does not matter, their set does
    assert build_dir_on("avx512bw avx512f avx2 avx sse2 fpu") == avx512
