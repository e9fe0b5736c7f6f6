"""The per-atom out-of-domain signal: what it measures and that it is invariant."""

import numpy as np
import pytest
import torch
from ase.build import bulk, fcc100

from orbdistill.graph import build_graph
from orbdistill.models import build_student
from orbdistill.models.domain import DomainModel


def test_training_atoms_score_about_one_and_far_points_score_high():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 8, generator=g, dtype=torch.float64) @ torch.diag(torch.tensor([3.0, 1, 1, 1, 0.5, 1, 2, 1], dtype=torch.float64))
    z = torch.full((4000,), 29)
    dom = DomainModel.fit(x, z)
    u = dom(x.float(), z)
    assert 0.9 < float(u.median()) < 1.1  # normalised Mahalanobis distance of the training points
    far = x[:10].float() + 10.0
    assert float(dom(far, z[:10]).min()) > 3 * float(u.max())
    assert torch.isinf(dom(x[:3].float(), torch.tensor([26, 26, 26]))).all()  # an element never seen


def test_domain_model_of_two_elements_scores_each_against_its_own_atoms():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(500, 4, generator=g)
    b = torch.randn(500, 4, generator=g) + 5.0
    dom = DomainModel.fit(torch.cat([a, b]), torch.tensor([8] * 500 + [1] * 500))
    assert float(dom(b[:50], torch.full((50,), 1)).median()) < 1.5
    assert float(dom(b[:50], torch.full((50,), 8)).median()) > 3  # 5 sigma away per feature: about 5; scored as O


def test_signal_is_invariant_under_rotation_translation_and_permutation():
    torch.manual_seed(0)
    model = build_student("v2", [29], num_features=16, num_vector_features=4, num_layers=2).double()
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    atoms.rattle(0.1, seed=2)

    def features(a):
        gr = build_graph(a, model.cutoff, dtype=torch.float64)
        return model.invariant_features(gr.edge_vectors(), gr.atomic_numbers, gr.edge_index), gr.atomic_numbers

    f0, z0 = features(atoms)
    dom = DomainModel.fit(f0, z0).double()
    u0 = dom(f0, z0)
    from scipy.spatial.transform import Rotation

    R = Rotation.random(random_state=3).as_matrix()
    moved = atoms.copy()
    moved.set_cell(atoms.cell.array @ R.T, scale_atoms=False)
    moved.positions = atoms.positions @ R.T + [3.0, -1.0, 7.0]
    perm = np.random.default_rng(0).permutation(len(atoms))
    moved = moved[perm]
    f1, z1 = features(moved)
    torch.testing.assert_close(dom(f1, z1), u0[perm], atol=1e-8, rtol=0)


def test_features_come_from_the_same_forward_pass_as_the_energy():
    model = build_student("v2", [29], num_features=16, num_vector_features=4, num_layers=2)
    slab = fcc100("Cu", (2, 2, 3), vacuum=6.0)
    g = build_graph(slab, model.cutoff)
    plain = model.predict(g)
    with_f = model.predict(g, features=True)
    assert torch.equal(plain["energy"], with_f["energy"]) and torch.equal(plain["forces"], with_f["forces"])
    assert with_f["features"].shape == (len(slab), 16)


def test_a_bad_on_extrapolation_value_is_named():
    from orbdistill.calculator import StudentCalculator

    with pytest.raises(ValueError, match="on_extrapolation"):
        StudentCalculator("cu-sevennet-v2", on_extrapolation="shout")
