"""Students are conservative, symmetric and extensive, whatever their architecture."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.calculators.calculator import PropertyNotImplementedError

from orbdistill.calculator import StudentCalculator
from orbdistill.graph import build_graph
from orbdistill.models import build_student, load_student

from conftest import ORB_V3_CONSERVATIVE_PARAMS, rattled_triclinic_cu

SMALL = {
    "v1": dict(latent_dim=32, encoder_hidden=48, node_encoder_hidden=48, step_hidden=[48, 32],
               node_step_hidden=[48, 48], head_hidden=16, cutoff=4.5, max_neighbors=None),
    "v1-knn": dict(latent_dim=32, encoder_hidden=48, node_encoder_hidden=48, step_hidden=[48, 32],
                   node_step_hidden=[48, 48], head_hidden=16, cutoff=5.0, max_neighbors=12),
    "v2": dict(num_features=24, num_vector_features=8, num_layers=2, cutoff=4.5),
    "v2-invariant": dict(num_features=24, num_layers=2, cutoff=4.5, use_vectors=False),
    "v2-e3nn": dict(num_features=8, num_layers=2, cutoff=4.5),
}
KINDS = {"v1": "v1", "v1-knn": "v1", "v2": "v2", "v2-invariant": "v2", "v2-e3nn": "v2-e3nn"}
SPECIES = [1, 6, 8, 29]


def make(name, **extra):
    torch.manual_seed(0)
    cfg = dict(SMALL[name], **extra)
    m = build_student(KINDS[name], SPECIES, **cfg)
    with torch.no_grad():  # give the energy some per-element structure
        m.element_refs[torch.tensor(SPECIES)] = torch.tensor([-1.1, -7.0, -4.9, -3.7])
        m.energy_scale.fill_(0.7)
    return m


def calc(model, dtype="float64"):
    return StudentCalculator(model, device="cpu", dtype=dtype)


def slab():
    s = fcc111("Cu", (2, 2, 3), vacuum=4.0)
    s.rattle(0.05, seed=2)
    return s


def co_on_cu():
    s = fcc111("Cu", (2, 2, 2), vacuum=4.0)
    s += Atoms("CO", positions=[s.positions[-1] + [0, 0, 1.9], s.positions[-1] + [0, 0, 3.05]])
    s.rattle(0.03, seed=4)
    return s


def pushed_pair():
    """Bulk Cu with one pair 1.2 Å apart: where the ZBL term is a large share of the force."""
    from orbdistill.data.coverage import push_pair

    return push_pair(rattled_triclinic_cu(seed=3), "Cu-Cu", 1.2, np.random.default_rng(0))


STRUCTURES = {
    "triclinic_bulk": rattled_triclinic_cu,
    "molecule": lambda: molecule("CH3CH2OH"),
    "slab": slab,
    "pushed_pair": pushed_pair,
}


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("structure", sorted(STRUCTURES))
def test_forces_match_finite_differences(name, structure):
    from ase.calculators.fd import calculate_numerical_forces

    if name == "v1-knn" and structure != "triclinic_bulk":
        pytest.skip("kNN graphs are discontinuous when the neighbour ranking changes; tested on bulk only")
    atoms = STRUCTURES[structure]()
    atoms.calc = calc(make(name))
    f = atoms.get_forces()
    idx = [0, 3, len(atoms) - 1]
    fd = calculate_numerical_forces(atoms, eps=1e-4, iatoms=idx)
    np.testing.assert_allclose(f[idx], fd, atol=2e-6 * max(1.0, np.abs(fd).max()))
    assert np.abs(f).max() > 1e-4  # not trivially zero


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("structure", ["triclinic_bulk", "slab", "pushed_pair"])
def test_stress_matches_ase_numerical_stress(name, structure):
    # kNN graphs are smooth while the strain changes no neighbour ranking: true for the
    # rattled bulk at d = 1e-5; the slab has exact ties in its ideal layers' rankings
    if name == "v1-knn" and structure == "slab":
        pytest.skip("kNN ranking ties in the slab's layers make the energy non-differentiable")
    atoms = STRUCTURES[structure]()
    c = calc(make(name))
    atoms.calc = c
    s = atoms.get_stress()
    ref = c.calculate_numerical_stress(atoms, d=1e-5)
    np.testing.assert_allclose(s, ref, atol=1e-7 + 1e-5 * np.abs(ref).max())
    assert np.abs(s).max() > 1e-6


def _random_rotation(seed=0):
    from scipy.spatial.transform import Rotation

    return Rotation.random(random_state=seed).as_matrix()


@pytest.mark.parametrize("name", ["v1-radial", "v1-knn-radial", "v2", "v2-invariant", "v2-e3nn"])
@pytest.mark.parametrize("structure", ["triclinic_bulk", "molecule"])
def test_energy_invariant_and_forces_and_stress_rotate(name, structure):
    """Energies are invariant, forces rotate as vectors and stress as a tensor. v1 with
    spherical harmonics (like Orb) learns invariance rather than having it built in, so v1
    is tested here with lmax = 0 (its graph, radial basis, gates and messages); the
    angular features are tested separately below. The kNN variant checks that the
    k-nearest selection is itself rotation invariant (the rattled structures have no ties)."""
    base = {"v1-radial": "v1", "v1-knn-radial": "v1-knn"}.get(name, name)
    model = make(base, lmax=0) if base.startswith("v1") else make(name)
    atoms = STRUCTURES[structure]()
    atoms.calc = calc(model)
    e, f = atoms.get_potential_energy(), atoms.get_forces()
    R = _random_rotation(1)
    rot = atoms.copy()
    rot.positions = atoms.positions @ R.T
    if atoms.pbc.any():
        rot.set_cell(atoms.cell.array @ R.T, scale_atoms=False)
    rot.calc = calc(model)
    assert rot.get_potential_energy() == pytest.approx(e, abs=1e-9 * max(1, abs(e)))
    np.testing.assert_allclose(rot.get_forces(), f @ R.T, atol=1e-9)
    if atoms.pbc.all():
        from ase.stress import full_3x3_to_voigt_6_stress, voigt_6_to_full_3x3_stress

        expected = full_3x3_to_voigt_6_stress(R @ voigt_6_to_full_3x3_stress(atoms.get_stress()) @ R.T)
        np.testing.assert_allclose(rot.get_stress(), expected, atol=1e-10)


def test_v1_angular_features_transform_as_spherical_harmonics():
    """For each l <= 3 the 2l+1 harmonics of rotated vectors are an orthogonal mix of the
    originals (a Wigner matrix): fit the matrix on many edges and check it is orthogonal
    and exact. With the radial part this makes v1's edge features equivariant, as Orb's."""
    from orbdistill.models.layers import SphericalHarmonicsL3

    sh = SphericalHarmonicsL3(3).double()
    v = torch.as_tensor(np.random.default_rng(0).normal(size=(200, 3)))
    R = torch.as_tensor(_random_rotation(4))
    y0, y1 = sh(v), sh(v @ R.T)
    start = 0
    for l in range(4):
        a, b = y0[:, start:start + 2 * l + 1], y1[:, start:start + 2 * l + 1]
        D = torch.linalg.lstsq(a, b).solution
        torch.testing.assert_close(a @ D, b, atol=1e-10, rtol=0)
        torch.testing.assert_close(D.T @ D, torch.eye(2 * l + 1, dtype=D.dtype), atol=1e-10, rtol=0)
        start += 2 * l + 1


@pytest.mark.parametrize("name", sorted(SMALL))
def test_translation_and_permutation_invariance(name):
    atoms = co_on_cu()
    model = make(name)
    atoms.calc = calc(model)
    e, f = atoms.get_potential_energy(), atoms.get_forces()
    moved = atoms.copy()
    moved.positions += [0.37, -1.21, 0.55]
    moved.calc = calc(model)
    assert moved.get_potential_energy() == pytest.approx(e, abs=1e-9 * abs(e))
    np.testing.assert_allclose(moved.get_forces(), f, atol=1e-9)
    perm = np.random.default_rng(5).permutation(len(atoms))
    shuffled = atoms[perm]
    shuffled.calc = calc(model)
    assert shuffled.get_potential_energy() == pytest.approx(e, abs=1e-9 * abs(e))
    np.testing.assert_allclose(shuffled.get_forces(), f[perm], atol=1e-9)


@pytest.mark.parametrize("name", ["v1", "v2", "v2-e3nn"])
def test_supercell_energy_is_extensive(name):
    atoms = rattled_triclinic_cu()
    model = make(name)
    atoms.calc = calc(model)
    e = atoms.get_potential_energy()
    sc = atoms.repeat((2, 1, 2))
    sc.calc = calc(model)
    assert sc.get_potential_energy() == pytest.approx(4 * e, rel=1e-10)
    np.testing.assert_allclose(sc.get_stress(), atoms.get_stress(), atol=1e-10)
    np.testing.assert_allclose(sc.get_forces()[: len(atoms)], atoms.get_forces(), atol=1e-9)


@pytest.mark.parametrize("name", ["v1", "v2"])
def test_batched_predictions_equal_single_ones(name):
    model = make(name).double()
    structs = [rattled_triclinic_cu(seed=1), molecule("H2O"), slab()]
    g = build_graph(structs, model.cutoff, model.max_neighbors, dtype=torch.float64)
    out = model.predict(g)
    start = 0
    for b, a in enumerate(structs):
        single = model.predict(build_graph(a, model.cutoff, model.max_neighbors, dtype=torch.float64))
        assert out["energy"][b].item() == pytest.approx(single["energy"].item(), rel=1e-12)
        torch.testing.assert_close(out["forces"][start : start + len(a)], single["forces"], atol=1e-10, rtol=0)
        torch.testing.assert_close(out["stress"][b], single["stress"][0], atol=1e-12, rtol=0)
        start += len(a)


@pytest.mark.parametrize("name", ["v1", "v2", "v2-e3nn"])
def test_float32_agrees_with_float64(name):
    atoms = rattled_triclinic_cu()
    model = make(name)
    atoms.calc = calc(model, "float64")
    e64, f64, s64 = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
    a32 = atoms.copy()
    a32.calc = calc(make(name), "float32")
    assert a32.get_potential_energy() == pytest.approx(e64, rel=2e-6)
    np.testing.assert_allclose(a32.get_forces(), f64, atol=2e-5 * max(1, np.abs(f64).max()))
    np.testing.assert_allclose(a32.get_stress(), s64, atol=2e-6)


def test_painn_vector_states_rotate_with_the_structure():
    model = make("v2").double()
    atoms = molecule("CH3CH2OH")
    R = torch.as_tensor(_random_rotation(2))
    g = build_graph(atoms, model.cutoff, dtype=torch.float64)
    _, v = model.node_states(g.edge_vectors(), g.atomic_numbers, g.edge_index)
    rot = atoms.copy()
    rot.positions = atoms.positions @ R.numpy().T
    gr = build_graph(rot, model.cutoff, dtype=torch.float64)
    _, vr = model.node_states(gr.edge_vectors(), gr.atomic_numbers, gr.edge_index)
    n, fv = v.shape[0], model.config.num_vector_features
    expected = torch.einsum("ij,njf->nif", R, v.view(n, 3, fv))
    torch.testing.assert_close(vr.view(n, 3, fv), expected, atol=1e-10, rtol=0)
    assert v.abs().max() > 1e-3


def test_e3nn_vector_features_rotate_with_the_structure():
    """l = 1 features are Cartesian (x, y, z) in e3nn >= 0.5: they must turn with R; the
    l = 0 features must not change."""
    model = make("v2-e3nn").double()
    atoms = molecule("CH3CH2OH")
    R = torch.as_tensor(_random_rotation(3))
    rot = atoms.copy()
    rot.positions = atoms.positions @ R.numpy().T
    feats = []
    for a in (atoms, rot):
        g = build_graph(a, model.cutoff, dtype=torch.float64)
        args = (g.edge_vectors(), g.atomic_numbers, g.edge_index)
        feats.append((model.node_features(*args)[:, : model.f], model.vector_features(*args)))
    (s0, v0), (s1, v1) = feats
    torch.testing.assert_close(s1, s0, atol=1e-10, rtol=0)
    torch.testing.assert_close(v1, v0 @ R.T, atol=1e-10, rtol=0)
    assert v0.abs().max() > 1e-3


def test_v1_copied_from_orb_reproduces_orb():
    from ase.stress import full_3x3_to_voigt_6_stress

    from orbdistill.models import v1_from_orb
    from orbdistill.teachers import load_teacher

    t = load_teacher("orb-v3-conservative-20-omat", weights="random", device="cpu")
    student = v1_from_orb(t.model)
    for atoms in (rattled_triclinic_cu(seed=7), bulk("Cu", "fcc", a=3.7, cubic=True).repeat(2)):
        atoms = atoms.copy()
        atoms.rattle(0.03, seed=11)
        atoms.wrap()
        (p,) = t.predict([atoms])
        g = build_graph(atoms, student.cutoff, student.max_neighbors)
        o = student.predict(g)
        assert o["energy"].item() == pytest.approx(p.energy, rel=2e-6)
        np.testing.assert_allclose(o["forces"].numpy(), p.forces, atol=2e-5 * max(1, np.abs(p.forces).max()))
        np.testing.assert_allclose(full_3x3_to_voigt_6_stress(o["stress"][0].numpy()), p.stress, atol=2e-6)
    # the default reduced student: fewer parameters, same interface
    small = v1_from_orb(t.model, step_hidden=[512, 384, 384, 256], node_step_hidden=[1024, 1024, 768, 768],
                        encoder_hidden=512)
    assert 0.3 < small.num_parameters() / t.num_parameters() < 0.5


def test_v1_default_has_30_to_50_percent_of_orb_parameters():
    m = build_student("v1", [29])
    assert 0.3 * ORB_V3_CONSERVATIVE_PARAMS <= m.num_parameters() <= 0.5 * ORB_V3_CONSERVATIVE_PARAMS


# ---- the calculator's handling of bad input -----------------------------------------------
def test_unknown_element_is_named():
    atoms = bulk("Fe", "bcc", a=2.87)
    atoms.calc = calc(make("v2"))
    with pytest.raises(ValueError, match=r"Fe \(Z=26\).*H C O Cu"):
        atoms.get_potential_energy()


def test_nan_positions_raise():
    atoms = rattled_triclinic_cu()
    atoms.positions[2] = np.nan
    atoms.calc = calc(make("v2"))
    with pytest.raises(ValueError, match="NaN"):
        atoms.get_forces()


def test_overlapping_atoms_raise():
    atoms = molecule("H2O")
    atoms.positions[1] = atoms.positions[0] + [0.1, 0, 0]
    atoms.calc = calc(make("v2"))
    with pytest.raises(ValueError, match="overlapping"):
        atoms.get_potential_energy()


def test_molecule_has_energy_and_forces_but_no_stress():
    atoms = molecule("CH4")
    atoms.calc = calc(make("v2"))
    e = atoms.get_potential_energy()
    assert atoms.get_forces().shape == (5, 3)
    assert atoms.calc.results["free_energy"] == e
    assert atoms.calc.results["energies"].sum() == pytest.approx(e)
    with pytest.raises(PropertyNotImplementedError, match="volume"):
        atoms.get_stress()


def test_mixed_pbc_without_cell_vector_gets_energy_and_forces():
    s = fcc111("Cu", (2, 2, 3), vacuum=4.0)
    s.cell[2] = 0.0
    s.pbc = [True, True, False]
    s.calc = calc(make("v2"))
    assert np.isfinite(s.get_potential_energy()) and s.get_forces().shape == (12, 3)


def test_skin_reuse_survives_cell_changes_numerical_stress():
    """ASE's numerical stress deforms the cell by 1e-5 around a cached neighbour list: the
    cached graph must take the new cell (seen: 4.6 GPa off, wrong sign, at a 1 % strain)."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=1)
    c = StudentCalculator("cu-sevennet-v2", dtype="float64", skin=1.0)
    atoms.calc = c
    atoms.get_potential_energy()  # builds the list on the unstrained cell
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.01 * np.array([[1, 0.2, 0], [0.2, 1, 0], [0, 0, 0.5]])),
                   scale_atoms=True)
    analytic = atoms.get_stress()
    numerical = c.calculate_numerical_stress(atoms, d=1e-5)
    np.testing.assert_allclose(analytic, numerical, atol=1e-7)
    assert c.graphs.n_builds == 1  # the strained cell reused the list (1 % is well inside the skin)
    fresh = atoms.copy()
    fresh.calc = StudentCalculator("cu-sevennet-v2", dtype="float64")
    np.testing.assert_allclose(analytic, fresh.get_stress(), atol=1e-12)


@pytest.mark.parametrize("barostat", ["mtk", "berendsen"])
def test_skin_npt_trajectory_equals_the_rebuild_every_step_one(barostat):
    """200 NPT steps (atoms move and the cell breathes): the skin run follows the run that
    rebuilds the list at every step to 1e-8 Å, and rebuilds far less often."""
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    traj, stats = {}, {}
    for skin in (0.0, 0.5):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
        atoms.rattle(0.05, seed=3)
        MaxwellBoltzmannDistribution(atoms, temperature_K=900, rng=np.random.default_rng(0))
        Stationary(atoms)
        atoms.calc = StudentCalculator("cu-sevennet-v2", dtype="float64", skin=skin)
        if barostat == "mtk":
            from ase.md.nose_hoover_chain import IsotropicMTKNPT

            dyn = IsotropicMTKNPT(atoms, timestep=2 * units.fs, temperature_K=900, pressure_au=5 * units.GPa,
                                  tdamp=50 * units.fs, pdamp=200 * units.fs)
        else:
            from ase.md.nptberendsen import NPTBerendsen

            dyn = NPTBerendsen(atoms, timestep=2 * units.fs, temperature_K=900, pressure_au=5 * units.GPa,
                               taut=50 * units.fs, taup=200 * units.fs, compressibility_au=1 / (140 * units.GPa))
        v0 = atoms.get_volume()
        dyn.run(200)
        traj[skin] = (atoms.positions.copy(), atoms.cell.array.copy(), atoms.get_volume() / v0)
        stats[skin] = atoms.calc.neighbour_list_stats
    np.testing.assert_allclose(traj[0.5][0], traj[0.0][0], atol=1e-8)
    np.testing.assert_allclose(traj[0.5][1], traj[0.0][1], atol=1e-8)
    assert abs(traj[0.0][2] - 1) > 0.001  # the cell did change (0.2 % with the coverage-trained package)
    assert 1 < stats[0.5]["builds"] < stats[0.5]["calls"] / 5  # rebuilt when needed, not every step


@pytest.mark.parametrize("move", ["cluster 1e4 Å away", "crystal 1000 cells away"])
def test_float32_forces_do_not_depend_on_where_the_structure_is(move):
    """Positions are wrapped and centred in float64 before the float32 cast (seen before:
    0.09 eV/Å force errors for a cluster 1e4 Å away, 7e-3 for an unwrapped crystal)."""
    from ase.cluster import Icosahedron

    if move.startswith("cluster"):
        atoms = Icosahedron("Cu", 2)
        atoms.rattle(0.05, seed=1)
        shift = np.array([1e4, -1e4, 0.5e4])
    else:
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
        atoms.rattle(0.05, seed=1)
        shift = 1000 * atoms.cell.array.sum(axis=0)
    atoms.calc = StudentCalculator("cu-sevennet-v2", dtype="float32")
    f0, e0 = atoms.get_forces(), atoms.get_potential_energy()
    far = atoms.copy()
    far.positions += shift
    far.calc = StudentCalculator("cu-sevennet-v2", dtype="float32")
    assert np.abs(far.get_forces() - f0).max() < 1e-4
    assert far.get_potential_energy() == pytest.approx(e0, abs=1e-4)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_structures_without_edges_give_single_atom_energies_and_zero_forces(name):
    """An isolated atom, or atoms farther apart than the cutoff (seen: v1 crashed with
    'cannot reshape tensor of 0 elements'): each atom has its lone-atom energy, no force."""
    model = make(name)
    single = {}
    for z in ("H", "O", "Cu"):
        a = Atoms(z, positions=[[0, 0, 0]])
        a.calc = calc(model)
        single[z] = a.get_potential_energy()
        assert np.abs(a.get_forces()).max() == 0.0
    far = Atoms("CuOH", positions=[[0, 0, 0], [0, 0, 9.0], [9.0, 0, 0]])
    far.calc = calc(model)
    assert far.get_potential_energy() == pytest.approx(single["Cu"] + single["O"] + single["H"], abs=1e-10)
    assert np.abs(far.get_forces()).max() == 0.0
    periodic = Atoms("Cu", positions=[[0, 0, 0]], cell=np.eye(3) * 12.0, pbc=True)  # its images are beyond the cutoff
    periodic.calc = calc(model)
    assert periodic.get_potential_energy() == pytest.approx(single["Cu"], abs=1e-10)
    assert np.abs(periodic.get_stress()).max() == 0.0


# ---- checkpoints ----------------------------------------------------------------------------
def test_checkpoint_rebuilds_the_model(tmp_path):
    m = make("v2")
    path = m.save(tmp_path / "m.pt")
    m2 = load_student(path)
    assert m2.config == m.config
    atoms = rattled_triclinic_cu()
    atoms.calc = calc(m)
    e = atoms.get_potential_energy()
    atoms.calc = StudentCalculator(str(path), dtype="float64")
    assert atoms.get_potential_energy() == pytest.approx(e, rel=1e-12)


def test_corrupt_and_mismatched_checkpoints_are_named(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="corrupt"):
        load_student(bad)
    ck = make("v2").checkpoint_dict()
    ck["config"]["num_features"] = 40
    torch.save(ck, tmp_path / "mm.pt")
    with pytest.raises(ValueError, match="do not match"):
        load_student(tmp_path / "mm.pt")
    torch.save({"hello": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an orbdistill student"):
        load_student(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        load_student(tmp_path / "missing.pt")


def test_build_student_rejects_unknown_kinds_and_fields():
    with pytest.raises(ValueError, match="valid kinds"):
        build_student("v9")
    with pytest.raises(ValueError, match="num_featurez"):
        build_student("v2", num_featurez=3)


class _Payload:
    """Unpickling this runs ``os.system`` (what a malicious model.pt would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("where", ["package", "training checkpoint"])
def test_a_checkpoint_that_runs_code_is_refused_and_the_code_does_not_run(tmp_path, where):
    from orbdistill.models import UnsafeCheckpointError

    marker = tmp_path / "pwned"
    ckpt = make("v2").checkpoint_dict()
    ckpt["payload"] = _Payload(marker)
    if where == "package":
        from orbdistill.export import write_package

        write_package(make("v2"), tmp_path / "pkg", {"teacher": {"name": "none"}})
        torch.save(ckpt, tmp_path / "pkg" / "model.pt")
        with pytest.raises(UnsafeCheckpointError, match="Refusing to load"):
            StudentCalculator(tmp_path / "pkg")
        with pytest.raises(UnsafeCheckpointError):
            load_student(tmp_path / "pkg" / "model.pt")
    else:
        from orbdistill.training.trainer import TrainConfig, Trainer
        from orbdistill.data.dataset import frames_to_samples
        from ase.calculators.emt import EMT
        from ase.calculators.singlepoint import SinglePointCalculator

        frames = []
        for k in range(2):
            a = bulk("Cu", "fcc", a=3.6, cubic=True)
            a.rattle(0.05, seed=k)
            a.calc = EMT()
            a.calc = SinglePointCalculator(a, energy=a.get_potential_energy(), forces=a.get_forces())
            frames.append(a)
        samples = frames_to_samples(frames, 4.5)
        tr = Trainer(build_student("v2", [29], num_features=8, num_vector_features=2, num_layers=1), samples[:1],
                     samples[1:], TrainConfig(epochs=1), tmp_path / "train", progress=False)
        torch.save({"model": {}, "payload": _Payload(marker)}, tr.checkpoint_path)
        with pytest.raises(UnsafeCheckpointError, match="training checkpoint"):
            tr.resume()
    assert not marker.exists()


def test_v1_copied_from_orb_still_equals_orb_after_the_trainers_set_up(tmp_path):
    """The trainer used to refit element references and the output scale of every model,
    so a v1 copied from Orb no longer reproduced Orb at epoch 0."""
    from ase.calculators.singlepoint import SinglePointCalculator

    from orbdistill.data.dataset import frames_to_samples
    from orbdistill.models import v1_from_orb
    from orbdistill.teachers import load_teacher
    from orbdistill.training.trainer import TrainConfig, Trainer

    t = load_teacher("orb-v3-conservative-20-omat", weights="random", device="cpu")
    frames = []
    for k in range(3):
        a = rattled_triclinic_cu(seed=k)
        (p,) = t.predict([a])
        a.calc = SinglePointCalculator(a, energy=p.energy + 5.0 * k, forces=p.forces)  # labels unlike Orb's
        frames.append(a)
    student = v1_from_orb(t.model)
    samples = frames_to_samples(frames, student.cutoff, student.max_neighbors)
    tr = Trainer(student, samples[:2], samples[2:], TrainConfig(epochs=1), tmp_path, progress=False,
                 fit_normalization=False)
    check = rattled_triclinic_cu(seed=9)
    (p,) = t.predict([check])
    o = tr.model.predict(build_graph(check, student.cutoff, student.max_neighbors))
    assert o["energy"].item() == pytest.approx(p.energy, abs=1e-5 * max(1.0, abs(p.energy)))
    np.testing.assert_allclose(o["forces"].detach().numpy(), p.forces, atol=1e-5 * max(1, np.abs(p.forces).max()))
    refit = Trainer(v1_from_orb(t.model), samples[:2], samples[2:], TrainConfig(epochs=1), tmp_path / "b", progress=False)
    assert abs(refit.model.predict(build_graph(check, student.cutoff, student.max_neighbors))["energy"].item()
               - p.energy) > 1e-3  # what the default set-up (refit) does, and why the flag exists


@pytest.mark.parametrize("invariant, ratio", [("smooth", 4.0), ("norm", 2.0)])
def test_v2_energy_is_analytic_at_a_perfect_crystal(invariant, ratio):
    """At a perfect fcc crystal every atom's vector states vanish (inversion symmetry). With
    PaiNN's norm sqrt(|Vv|^2 + 1e-8) the energy has a cusp there, E - E0 ~ |d|, and the
    curvature (phonons, elastic response at the minimum) is wrong; the smooth invariant keeps
    E - E0 ~ d^2. Measured: (E(2d) - E0) / (E(d) - E0) = 4.00 (smooth) against 2.02 (norm)."""
    from ase.build import bulk

    from orbdistill.calculator import StudentCalculator
    from orbdistill.models import build_student

    torch.manual_seed(0)
    model = build_student("v2", [29], num_features=16, num_vector_features=4, num_layers=2, cutoff=4.5,
                          vector_invariant=invariant).double()
    with torch.no_grad():  # trained students have vector channels of this size; random ones are tiny
        for mod in model.modules():
            if type(mod).__name__ == "PaiNNUpdate":
                mod.uv.weight.mul_(100.0)
    calc = StudentCalculator(model, dtype="float64")
    crystal = bulk("Cu", "fcc", a=3.61, cubic=True)
    energies = []
    for x in (0.0, 1e-3, 2e-3):
        a = crystal.copy()
        a.positions[0, 0] += x
        a.calc = calc
        energies.append(a.get_potential_energy())
    assert (energies[2] - energies[0]) / (energies[1] - energies[0]) == pytest.approx(ratio, abs=0.1)


def test_v2_checkpoints_from_before_the_smooth_invariant_load_with_the_norm(tmp_path):
    from orbdistill.models import build_student, load_student, safe_torch_load

    torch.manual_seed(0)
    old = build_student("v2", [29], num_features=16, num_vector_features=4, num_layers=2, vector_invariant="norm")
    old.save(tmp_path / "model.pt")
    ckpt = safe_torch_load(tmp_path / "model.pt")
    del ckpt["config"]["vector_invariant"]  # what a checkpoint saved before the option holds
    torch.save(ckpt, tmp_path / "model.pt")
    loaded = load_student(tmp_path / "model.pt")
    assert loaded.config.vector_invariant == "norm"
    assert build_student("v2", [29]).config.vector_invariant == "smooth"  # new students
    with pytest.raises(ValueError, match="vector_invariant"):
        build_student("v2", [29], vector_invariant="abs")


@pytest.mark.parametrize("name", ["v1", "v2"])
def test_students_repel_at_short_range_whatever_their_weights(name):
    """The ZBL term (on by default) dominates a random network as two atoms meet: the dimer's
    energy climbs by tens of eV from 1.2 to 0.6 Å and the force pushes the atoms apart."""
    model = make(name)
    assert model.repulsion is not None
    energies, forces = [], []
    for r in (0.6, 1.2):
        d = Atoms("Cu2", positions=[(0, 0, 0), (0, 0, r)])
        d.calc = calc(model)
        energies.append(d.get_potential_energy())
        forces.append(d.get_forces()[1, 2])
    assert energies[0] - energies[1] > 20.0
    assert forces[0] > 50.0  # along +z on the upper atom: apart
    bare = make(name, pair_repulsion="none")
    assert bare.repulsion is None


def test_v2_checkpoints_from_before_the_repulsion_default_load_without_it(tmp_path):
    from orbdistill.models import safe_torch_load

    torch.manual_seed(0)
    build_student("v2", [29], num_features=16, num_vector_features=4, num_layers=2,
                  pair_repulsion="none").save(tmp_path / "model.pt")
    ckpt = safe_torch_load(tmp_path / "model.pt")
    del ckpt["config"]["pair_repulsion"]  # what a checkpoint saved before the option holds
    torch.save(ckpt, tmp_path / "model.pt")
    assert load_student(tmp_path / "model.pt").repulsion is None
    assert build_student("v2", [29]).config.pair_repulsion == "physical"  # new students
