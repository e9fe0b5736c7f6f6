"""The Hessian-vector-product loss: teacher products by central differences, the student's
by the same differences (equal to its exact, double-backward product), and the loss term."""

import dataclasses

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT

from orbdistill.data.dataset import collate, frames_to_samples
from orbdistill.data.hessian import teacher_hvp
from orbdistill.models import build_student
from orbdistill.training.trainer import TrainConfig, compute_loss, data_statistics, student_hvp


def rattled_cu(seed=0, n=(2, 2, 2)):
    a = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(n)
    a.rattle(0.05, seed=seed)
    return a


def test_teacher_hessian_products_are_symmetric_and_vanish_for_a_translation():
    atoms = rattled_cu()
    rng = np.random.default_rng(0)
    f1 = teacher_hvp(atoms.copy(), EMT(), rng, epsilon=1e-3)
    f2 = teacher_hvp(atoms.copy(), EMT(), rng, epsilon=1e-3)
    v1, hv1, v2, hv2 = f1.arrays["hvp_v"], f1.arrays["hvp"], f2.arrays["hvp_v"], f2.arrays["hvp"]
    # v2 . H v1 = v1 . H v2 (the Hessian is symmetric), to the O(eps^2) of the differences
    # (1e-3 relative at the default eps = 0.01 Å; 1e-5 at 1e-3 Å)
    assert np.sum(v2 * hv1) == pytest.approx(np.sum(v1 * hv2), rel=3e-5)
    assert np.sum(v1 * hv1) != pytest.approx(0.0, abs=1.0)  # not trivially zero
    # a rigid translation of a periodic crystal costs nothing: H (1, 1, ..., 1) = 0
    class Fixed:
        def normal(self, size):
            return np.ones(size)
    t = teacher_hvp(atoms.copy(), EMT(), Fixed())
    assert np.abs(t.arrays["hvp"]).max() < 1e-6


def test_student_product_by_differences_equals_the_exact_one():
    torch.manual_seed(0)
    model = build_student("v2", [29], num_features=16, num_vector_features=4, num_layers=2, cutoff=4.5).double()
    frame = rattled_cu(1)
    frame.calc = EMT()
    frame.get_forces()
    from ase.calculators.singlepoint import SinglePointCalculator

    frame.calc = SinglePointCalculator(frame, energy=frame.get_potential_energy(), forces=frame.get_forces(),
                                       stress=frame.get_stress())
    teacher_hvp(frame, EMT(), np.random.default_rng(2), epsilon=1e-3)
    (sample,) = frames_to_samples([frame], model.cutoff)
    graph, tgt = collate([sample], dtype=torch.float64)
    fd = student_hvp(model, graph, tgt["hvp_v"], tgt["hvp_epsilon"], training=False).detach()
    # exact: H v = d/dx (dE/dx . v), by double backward
    pos = graph.positions.clone().requires_grad_(True)
    forces = model.predict(dataclasses.replace(graph, positions=pos), compute_forces=True, training=True)["forces"]
    (exact,) = torch.autograd.grad(-(forces * tgt["hvp_v"]).sum(), pos)
    # O(eps^2) = 1e-6 times the third derivatives of a random student: 2e-3 of the largest entry
    torch.testing.assert_close(fd, exact, rtol=0, atol=2e-3 * exact.abs().max().item())
    assert exact.abs().max() > 1.0


def test_hessian_loss_is_zero_against_itself_and_trains_the_weights():
    from ase.calculators.singlepoint import SinglePointCalculator

    from orbdistill.calculator import StudentCalculator

    torch.manual_seed(0)
    model = build_student("v2", [29], num_features=16, num_vector_features=4, num_layers=2, cutoff=4.5).double()
    calc = StudentCalculator(model, dtype="float64")
    frames = []
    for k in range(3):
        a = rattled_cu(k)
        a.calc = calc
        a.calc = SinglePointCalculator(a, energy=a.get_potential_energy(), forces=a.get_forces(), stress=a.get_stress())
        frames.append(teacher_hvp(a, calc, np.random.default_rng(k)))
    samples = frames_to_samples(frames, model.cutoff)
    stats = data_statistics(samples, np.zeros(119))
    cfg = TrainConfig(energy_weight=0.0, forces_weight=0.0, stress_weight=0.0, hessian_weight=1.0, dtype="float64")
    loss, parts = compute_loss(model, samples, cfg, stats, training=True)
    own = float(loss)
    assert "dh" in parts and own < 1e-7  # the student is its own teacher (to the calculator's rounding)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
            p.requires_grad_(True)  # the calculator froze them for inference
    loss, parts = compute_loss(model, samples, cfg, stats, training=True)
    loss.backward()
    assert float(loss) > 1e4 * own
    assert sum(float(p.grad.abs().sum()) for p in model.parameters() if p.grad is not None) > 0
    with pytest.raises(ValueError, match="all 0"):
        TrainConfig(energy_weight=0.0, forces_weight=0.0, stress_weight=0.0)
