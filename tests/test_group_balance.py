"""Group-balanced training: frames of small protocol groups (clusters, defects, volume scans)
weigh more in the loss, so that the student fits them about as well as the bulk."""

import dataclasses

import numpy as np
import pytest
import torch
from ase.cluster import Icosahedron

from conftest import emt_labelled, rattled_cu_cells
from orbdistill.data.dataset import collate, frames_to_samples
from orbdistill.models import build_student
from orbdistill.training.trainer import (TrainConfig, Trainer, compute_loss, data_statistics, evaluate_by_group,
                                         group_weights)


def bulk_and_clusters(n_bulk=36, n_cluster=4, seed=0):
    rng = np.random.default_rng(seed)
    out = rattled_cu_cells(n_bulk, rng, 0.08, a_spread=0.02)
    for k in range(n_cluster):
        c = Icosahedron("Cu", 2, latticeconstant=3.61)
        c.rattle(0.1, seed=int(rng.integers(1 << 30)))
        c.center(vacuum=6.0)
        c.pbc = False
        out.append(emt_labelled(c, "cluster", f"c{k}"))
    return out


def test_group_weights_share_the_loss_between_groups():
    frames = bulk_and_clusters(n_bulk=18, n_cluster=2)
    samples = frames_to_samples(frames, 4.5)
    for balance in (0.0, 0.5, 1.0):
        w = group_weights(samples, balance)
        total = {g: w[g] * n for g, n in (("bulk", 18), ("cluster", 2))}
        assert sum(total.values()) == pytest.approx(20.0)  # mean weight 1
        # each group's share of the loss goes as n_g^(1 - balance)
        assert total["cluster"] / total["bulk"] == pytest.approx((2 / 18) ** (1 - balance))
    assert group_weights(samples, 0.0) == {"bulk": 1.0, "cluster": 1.0}


def test_the_weighted_loss_is_the_weighted_sum_of_squared_residuals():
    torch.manual_seed(0)
    model = build_student("v2", [29], num_features=16, num_vector_features=4, num_layers=2, cutoff=4.5).double()
    frames = bulk_and_clusters(n_bulk=2, n_cluster=1)
    samples = [dataclasses.replace(s, weight=w) for s, w in zip(frames_to_samples(frames, 4.5), (0.5, 0.7, 3.0))]
    stats = data_statistics(samples, np.zeros(119))
    cfg = TrainConfig(dtype="float64", energy_weight=1.3, forces_weight=0.9, stress_weight=0.4)
    loss, _ = compute_loss(model, samples, cfg, stats, training=False)
    graph, tgt = collate(samples, dtype=torch.float64)
    out = model.predict(graph, compute_forces=True, compute_stress=True)
    w = torch.tensor([0.5, 0.7, 3.0], dtype=torch.float64)
    de = (out["energy"] - tgt["energy"]) / tgt["n_atoms"]
    df = out["forces"] - tgt["forces"]
    has = tgt["has_stress"]
    ds = (out["stress"] - tgt["stress"])[has]
    expected = (1.3 * (w * de**2).sum() / 3 / stats["energy_per_atom_std"] ** 2
                + 0.9 * (w[graph.batch][:, None] * df**2).sum() / df.numel() / stats["forces_std"] ** 2
                + 0.4 * (w[has][:, None, None] * ds**2).sum() / ds.numel() / stats["stress_std"] ** 2)
    assert float(loss) == pytest.approx(float(expected), rel=1e-10)
    assert not bool(has[2])  # the cluster has no stress


def test_balance_fits_a_small_group_better_and_a_run_resumes_only_with_its_own_balance(tmp_path):
    frames = bulk_and_clusters()
    samples = frames_to_samples(frames, 4.5)
    val = frames_to_samples(bulk_and_clusters(n_bulk=6, n_cluster=2, seed=1), 4.5)
    errors = {}
    for balance in (0.0, 1.0):
        torch.manual_seed(0)
        model = build_student("v2", [29], num_features=16, num_vector_features=4, num_layers=2, cutoff=4.5)
        cfg = TrainConfig(epochs=25, batch_size=4, lr=5e-3, warmup_epochs=1, group_balance=balance, seed=0)
        best = Trainer(model, samples, val, cfg, tmp_path / f"b{balance}", progress=False).fit(log_fn=None)
        errors[balance] = evaluate_by_group(best, samples)
    # the four cluster frames are 10 % of the data; with balance 1 they carry half the loss
    c0, c1 = errors[0.0]["cluster"]["force_mae_mev_a"], errors[1.0]["cluster"]["force_mae_mev_a"]
    assert c1 < 0.8 * c0, (c0, c1)
    # a checkpoint is resumed only with the balance it was trained with
    model = build_student("v2", [29], num_features=16, num_vector_features=4, num_layers=2, cutoff=4.5)
    again = Trainer(model, samples, val, TrainConfig(epochs=25, batch_size=4, group_balance=0.5), tmp_path / "b1.0",
                    progress=False)
    with pytest.raises(ValueError, match="group_balance = 1.0"):
        again.resume()
