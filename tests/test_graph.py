"""The graph contract: pairs, distances and shifts agree with ASE's own neighbour list."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.neighborlist import neighbor_list as ase_neighbor_list

from orbdistill.graph import build_graph, edge_vectors, neighbour_list

from conftest import rattled_triclinic_cu


def _slab_zero_c():
    s = fcc111("Cu", (2, 2, 3), vacuum=5.0)
    s.cell[2] = 0.0
    return s


CASES = {
    "triclinic_rattled": (rattled_triclinic_cu, 5.0),
    "cell_smaller_than_cutoff": (lambda: bulk("Cu", "fcc", a=3.61), 6.0),
    "tiny_triclinic_long_cutoff": (lambda: bulk("Si", "diamond", a=5.43), 7.5),
    "non_periodic_molecule": (lambda: molecule("CH3CH2OH"), 3.0),
    "slab_mixed_pbc": (lambda: fcc111("Cu", (2, 2, 3), vacuum=5.0), 6.0),
    "slab_mixed_pbc_zero_c": (_slab_zero_c, 6.0),
    "wire_one_periodic_axis": (
        lambda: Atoms("Cu3", positions=[[0, 0, 0], [1.3, 1.2, 0.4], [2.5, 0.1, 1.1]], cell=[2.6, 0, 0], pbc=[True, False, False]),
        5.0,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_pairs_and_distances_match_ase(case):
    make, cutoff = CASES[case]
    atoms = make()
    i, j, s, d = neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)
    ia, ja, sa, da = ase_neighbor_list("ijSd", atoms, cutoff)
    ours = {(a, b, *sh): dist for a, b, sh, dist in zip(i, j, s.tolist(), d)}
    ref = {(a, b, *sh): dist for a, b, sh, dist in zip(ia, ja, sa.tolist(), da)}
    assert set(ours) == set(ref)
    assert len(ours) > 0
    for k in ref:
        assert ours[k] == pytest.approx(ref[k], abs=1e-10)


@pytest.mark.parametrize("case", sorted(CASES))
def test_edge_vectors_have_neighbour_list_lengths(case):
    make, cutoff = CASES[case]
    atoms = make()
    g = build_graph(atoms, cutoff=cutoff, dtype=torch.float64)
    vec = g.edge_vectors()
    _, _, _, d = neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)
    assert torch.allclose(vec.norm(dim=1), torch.as_tensor(d), atol=1e-10)
    assert (vec.norm(dim=1) < cutoff).all()


def test_matscipy_backend_agrees_with_vesin():
    atoms = rattled_triclinic_cu()
    a = neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, 5.0, backend="vesin")
    b = neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, 5.0, backend="matscipy")
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y)


def test_knn_cap_keeps_the_nearest_neighbours():
    atoms = rattled_triclinic_cu()
    full = neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, 6.0)
    i, j, s, d = neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, 6.0, max_neighbors=20)
    counts = np.bincount(i, minlength=len(atoms))
    assert counts.max() == 20 and (counts == np.minimum(20, np.bincount(full[0], minlength=len(atoms)))).all()
    for c in range(len(atoms)):
        kept = d[i == c]
        dropped = np.setdiff1d(full[3][full[0] == c], kept)
        assert kept.max() <= dropped.min() + 1e-12


def test_knn_graph_equals_orbs_own_graph():
    """With a 20-neighbour cap, our edges are orb-models' edges (no ties after rattling)."""
    from orb_models.forcefield.atomic_system import SystemConfig, ase_atoms_to_atom_graphs

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=3)
    atoms.wrap()
    orb = ase_atoms_to_atom_graphs(atoms, system_config=SystemConfig(radius=6.0, max_num_neighbors=20))
    g = build_graph(atoms, cutoff=6.0, max_neighbors=20)
    ours = set(zip(g.edge_index[0].tolist(), g.edge_index[1].tolist(), *g.cell_shifts.T.tolist()))
    theirs = set(
        zip(orb.senders.tolist(), orb.receivers.tolist(), *orb.edge_features["unit_shifts"].round().long().T.tolist())
    )
    assert ours == theirs


def test_batch_offsets_and_fields():
    a = rattled_triclinic_cu()
    b = molecule("H2O")
    g = build_graph([a, b], cutoff=4.0)
    ga, gb = build_graph(a, cutoff=4.0), build_graph(b, cutoff=4.0)
    assert g.num_structures == 2 and g.num_atoms == len(a) + len(b)
    assert g.num_edges == ga.num_edges + gb.num_edges
    assert g.batch.tolist() == [0] * len(a) + [1] * len(b)
    assert g.n_atoms.tolist() == [len(a), len(b)]
    assert g.cell.shape == (2, 3, 3) and g.pbc.shape == (2, 3)
    assert (g.edge_index[:, ga.num_edges:] - len(a)).equal(gb.edge_index)
    assert g.cell_shifts.dtype == torch.int64 and g.atomic_numbers.dtype == torch.int64
    assert torch.allclose(g.edge_vectors()[: ga.num_edges], ga.edge_vectors(), atol=1e-6)


def test_edge_vectors_follow_positions_and_cell_by_autograd():
    atoms = rattled_triclinic_cu()
    g = build_graph(atoms, cutoff=4.0, dtype=torch.float64)
    pos = g.positions.clone().requires_grad_(True)
    vec = edge_vectors(pos, g.cell, g.edge_index, g.cell_shifts, g.batch)
    (grad,) = torch.autograd.grad(vec.norm(dim=1).sum(), pos)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_nan_positions_are_rejected():
    atoms = bulk("Cu", "fcc", a=3.61).repeat(2)
    atoms.positions[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        build_graph(atoms, cutoff=4.0)


def test_periodic_axis_without_cell_vector_is_rejected():
    atoms = Atoms("Cu2", positions=[[0, 0, 0], [1.5, 1.5, 0]], cell=[3.0, 3.0, 0.0], pbc=True)
    with pytest.raises(ValueError, match="periodic"):
        build_graph(atoms, cutoff=4.0)


def test_bad_cutoff_and_cap_are_rejected():
    atoms = bulk("Cu")
    with pytest.raises(ValueError, match="cutoff"):
        build_graph(atoms, cutoff=0.0)
    with pytest.raises(ValueError, match="max_neighbors"):
        build_graph(atoms, cutoff=3.0, max_neighbors=0)


def test_pair_order_sorts_like_a_lexsort_of_centre_neighbour_and_shift():
    from orbdistill.graph import _pair_order

    rng = np.random.default_rng(3)
    i, j = rng.integers(0, 50, 4000), rng.integers(0, 50, 4000)
    s = rng.integers(-3, 4, (4000, 3))
    ref = np.lexsort((s[:, 2], s[:, 1], s[:, 0], j, i))
    assert np.array_equal(_pair_order(i, j, s, 50), ref)
    # an index range whose single key would overflow int64 takes the lexsort
    assert np.array_equal(_pair_order(i, j, s, 2 ** 30), ref)
