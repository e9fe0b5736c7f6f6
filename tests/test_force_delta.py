"""Force-magnitude weighting (``train.force_delta``): a few atoms with tens of eV/Å (hard
rattles, pushed pairs) must not outweigh the near-equilibrium forces in the loss."""

import dataclasses

import numpy as np
import pytest
import torch
from ase.build import bulk

from conftest import emt_labelled, rattled_cu_cells
from orbdistill.data.dataset import collate, frames_to_samples
from orbdistill.models import build_student
from orbdistill.training.trainer import (TrainConfig, Trainer, compute_loss, data_statistics, evaluate,
                                         evaluate_by_group, force_atom_weights)


def bulk_and_pushed(n_bulk=24, n_pushed=5, factor=0.62, seed=0):
    """Rattled Cu cells (forces ~0.5 eV/Å) and cells with one pair pushed to ``factor`` x the
    nearest-neighbour distance (tens of eV/Å on two atoms)."""
    rng = np.random.default_rng(seed)
    out = rattled_cu_cells(n_bulk, rng, 0.05, a_spread=0.01, n_traj=8)
    for k in range(n_pushed):
        b = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
        b.rattle(0.03, seed=int(rng.integers(1 << 30)))
        d = b.positions[1] - b.positions[0]
        b.positions[1] = b.positions[0] + d * factor * rng.uniform(0.95, 1.05)
        out.append(emt_labelled(b, "short_range", f"p{k}"))
    return out


def test_weights_follow_the_force_magnitude():
    f = np.array([[0.0, 0.0, 0.0], [0.3, 0.0, 0.4], [0.0, 20.0, 0.0]])
    w = force_atom_weights(f, 0.5)
    assert w.tolist() == pytest.approx([1.0, 0.5, 1 / 41])
    assert force_atom_weights(f, 0.0).tolist() == [1.0, 1.0, 1.0]
    assert force_atom_weights(torch.tensor(f), 0.5).tolist() == pytest.approx(w.tolist())


def test_the_loss_and_its_normalisation_use_the_atom_weights():
    torch.manual_seed(0)
    model = build_student("v2", [29], num_features=16, num_vector_features=4, num_layers=2, cutoff=4.5).double()
    frames = bulk_and_pushed(n_bulk=2, n_pushed=1)
    samples = [dataclasses.replace(s, weight=w) for s, w in zip(frames_to_samples(frames, 4.5), (0.5, 0.7, 3.0))]
    delta = 0.8
    stats = data_statistics(samples, np.zeros(119), force_delta=delta)
    f_all = np.concatenate([s.forces for s in samples])
    w_all = 1.0 / (1.0 + np.linalg.norm(f_all, axis=1) / delta)
    assert stats["forces_std"] == pytest.approx(np.sqrt((w_all[:, None] * f_all**2).mean()))
    # the pushed pair's forces dominate the plain scale; the weighted one stays near the bulk's
    plain = data_statistics(samples, np.zeros(119))
    assert np.abs(f_all).max() > 10.0 and stats["forces_std"] < 0.5 * plain["forces_std"]

    cfg = TrainConfig(dtype="float64", energy_weight=0.0, forces_weight=1.0, stress_weight=0.0, force_delta=delta)
    loss, _ = compute_loss(model, samples, cfg, stats, training=False)
    graph, tgt = collate(samples, dtype=torch.float64)
    out = model.predict(graph, compute_forces=True, compute_stress=False)
    df = out["forces"] - tgt["forces"]
    w_frame = torch.tensor([0.5, 0.7, 3.0], dtype=torch.float64)[graph.batch]
    w_atom = torch.as_tensor(w_all)
    expected = ((w_frame * w_atom)[:, None] * df**2).sum() / df.numel() / stats["forces_std"] ** 2
    assert float(loss) == pytest.approx(float(expected), rel=1e-10)

    m = evaluate(model, samples, dtype="float64", force_delta=delta)
    assert m["force_wrmse_mev_a"] == pytest.approx(1e3 * float((w_atom[:, None] * df**2).mean().sqrt()), rel=1e-8)
    assert "force_wrmse_mev_a" not in evaluate(model, samples, dtype="float64")


def test_force_delta_fits_near_equilibrium_forces_better_beside_pushed_pairs(tmp_path):
    frames = bulk_and_pushed()
    samples = frames_to_samples(frames, 4.5)
    val = frames_to_samples(bulk_and_pushed(n_bulk=8, n_pushed=2, seed=1), 4.5)
    held = frames_to_samples(bulk_and_pushed(n_bulk=12, n_pushed=4, seed=2), 4.5)
    errors = {}
    for delta in (0.0, 0.5):
        torch.manual_seed(0)
        model = build_student("v2", [29], num_features=16, num_vector_features=4, num_layers=2, cutoff=4.5,
                              pair_repulsion="none")
        cfg = TrainConfig(epochs=20, batch_size=4, lr=5e-3, warmup_epochs=1, group_balance=0.0, force_delta=delta,
                          energy_weight=0.1, stress_weight=0.1, seed=0)
        best = Trainer(model, samples, val, cfg, tmp_path / f"d{delta}", progress=False).fit(log_fn=None)
        errors[delta] = evaluate_by_group(best, held)
    b0, b1 = errors[0.0]["bulk"]["force_mae_mev_a"], errors[0.5]["bulk"]["force_mae_mev_a"]
    assert b1 < 0.8 * b0, (b0, b1)
    # and a checkpoint is resumed only with the force_delta it was trained with
    model = build_student("v2", [29], num_features=16, num_vector_features=4, num_layers=2, cutoff=4.5,
                          pair_repulsion="none")
    again = Trainer(model, samples, val, TrainConfig(epochs=30, batch_size=4, group_balance=0.0), tmp_path / "d0.5",
                    progress=False)
    with pytest.raises(ValueError, match="force_delta = 0.5"):
        again.resume()


def test_robust_target_scales_ignore_a_few_far_off_frames(tmp_path):
    """``target_scales="robust"``: two Cu dimers (eV/atom above the crystal) beside 24 bulk
    cells inflate the std of the per-atom energies several times, and leave the robust scale
    near the bulk's own spread; a checkpoint resumes only with the scales it was trained with."""
    from ase import Atoms

    rng = np.random.default_rng(0)
    bulk_frames = rattled_cu_cells(24, rng, 0.05, a_spread=0.02, n_traj=8)
    dimers = [emt_labelled(Atoms("Cu2", positions=[[0, 0, 0], [0, 0, d]], cell=[12.0] * 3, pbc=False),
                           "short_range", f"dimer{k}") for k, d in enumerate((2.2, 2.5))]
    refs = np.zeros(119)
    refs[29] = np.mean([a.get_potential_energy() / len(a) for a in bulk_frames])
    only_bulk = data_statistics(frames_to_samples(bulk_frames, 4.5), refs)
    samples = frames_to_samples(bulk_frames + dimers, 4.5)
    plain = data_statistics(samples, refs)
    robust = data_statistics(samples, refs, target_scales="robust")
    assert plain["energy_per_atom_std"] > 5 * only_bulk["energy_per_atom_std"]
    assert robust["energy_per_atom_std"] == pytest.approx(only_bulk["energy_per_atom_std"], rel=0.35)
    assert robust["forces_std"] == plain["forces_std"]  # forces: force_delta's business
    # stress: two cells compressed 8 % (tens of GPa) among the 24 inflate the std, not the robust scale
    squeezed = []
    for k in range(2):
        a = bulk_frames[k].copy()
        a.set_cell(a.cell * 0.92, scale_atoms=True)
        squeezed.append(emt_labelled(a, "volume", f"v{k}"))
    clean = data_statistics(frames_to_samples(bulk_frames, 4.5), refs, target_scales="robust")["stress_std"]
    assert clean == pytest.approx(only_bulk["stress_std"], rel=0.25)  # normal-ish data: close to the std
    mixed = frames_to_samples(bulk_frames + squeezed, 4.5)
    assert data_statistics(mixed, refs)["stress_std"] > 3 * only_bulk["stress_std"]
    assert data_statistics(mixed, refs, target_scales="robust")["stress_std"] == pytest.approx(clean, rel=0.25)
    with pytest.raises(ValueError, match="target_scales = 'mad'"):
        data_statistics(samples, refs, target_scales="mad")
    model = build_student("v2", [29], num_features=16, num_vector_features=4, num_layers=2, cutoff=4.5)
    Trainer(model, samples[:20], samples[20:], TrainConfig(epochs=1, batch_size=8, target_scales="robust"),
            tmp_path / "r", progress=False).fit(log_fn=None)
    model = build_student("v2", [29], num_features=16, num_vector_features=4, num_layers=2, cutoff=4.5)
    again = Trainer(model, samples[:20], samples[20:], TrainConfig(epochs=2, batch_size=8), tmp_path / "r",
                    progress=False)
    with pytest.raises(ValueError, match="target_scales = robust"):
        again.resume()
