"""Training samples: frames with precomputed neighbour lists, split by trajectory, batched
into :class:`orbdistill.graph.AtomGraph` plus target tensors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from ase.stress import voigt_6_to_full_3x3_stress

from orbdistill.graph import AtomGraph, neighbour_list


@dataclass
class Sample:
    """One labelled structure with its neighbour list (numpy, float64)."""

    positions: np.ndarray
    numbers: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    edge_index: np.ndarray
    shifts: np.ndarray
    energy: float
    forces: np.ndarray
    stress: Optional[np.ndarray]  # [3, 3] eV/Å^3 or None
    traj_id: str

    @property
    def n_atoms(self) -> int:
        return len(self.numbers)


def frame_labels(atoms) -> Tuple[float, np.ndarray, Optional[np.ndarray]]:
    """(energy, forces, stress 3x3 or None) stored on a labelled frame."""
    if atoms.calc is None or "energy" not in atoms.calc.results or "forces" not in atoms.calc.results:
        raise ValueError("Frame has no energy/forces labels (expected a SinglePointCalculator with results).")
    res = atoms.calc.results
    stress = res.get("stress")
    if stress is not None:
        stress = np.asarray(stress, dtype=np.float64)
        stress = voigt_6_to_full_3x3_stress(stress) if stress.shape == (6,) else stress.reshape(3, 3)
    return float(res["energy"]), np.asarray(res["forces"], dtype=np.float64), stress


def frames_to_samples(frames: Sequence, cutoff: float, max_neighbors: Optional[int] = None) -> List[Sample]:
    """Neighbour lists for every frame (built once, reused every epoch)."""
    out = []
    for k, a in enumerate(frames):
        e, f, s = frame_labels(a)
        i, j, sh, _ = neighbour_list(a.positions, a.cell.array, a.pbc, cutoff, max_neighbors)
        out.append(Sample(
            positions=np.asarray(a.positions, dtype=np.float64), numbers=np.asarray(a.numbers, dtype=np.int64),
            cell=np.asarray(a.cell.array, dtype=np.float64), pbc=np.asarray(a.pbc, dtype=bool),
            edge_index=np.stack([i, j]), shifts=sh, energy=e, forces=f, stress=s,
            traj_id=str(a.info.get("traj_id", f"frame-{k}")),
        ))
    return out


def collate(samples: Sequence[Sample], dtype=torch.float32, device=None) -> Tuple[AtomGraph, Dict[str, torch.Tensor]]:
    """Batch samples: (graph, targets) with targets ``energy`` [B], ``forces`` [N, 3],
    ``stress`` [B, 3, 3], ``has_stress`` [B] (bool), ``n_atoms`` [B]."""
    offset = 0
    ei, batch = [], []
    for b, s in enumerate(samples):
        ei.append(s.edge_index + offset)
        batch.append(np.full(s.n_atoms, b, dtype=np.int64))
        offset += s.n_atoms

    def t(x, dt=None):
        return torch.as_tensor(x, dtype=dt, device=device)

    n_atoms = np.array([s.n_atoms for s in samples], dtype=np.int64)
    graph = AtomGraph(
        positions=t(np.concatenate([s.positions for s in samples]), dtype),
        atomic_numbers=t(np.concatenate([s.numbers for s in samples])),
        edge_index=t(np.concatenate(ei, axis=1)),
        cell_shifts=t(np.concatenate([s.shifts for s in samples]).reshape(-1, 3)),
        cell=t(np.stack([s.cell for s in samples]), dtype),
        pbc=t(np.stack([s.pbc for s in samples])),
        batch=t(np.concatenate(batch)),
        n_atoms=t(n_atoms),
    )
    stress = np.stack([s.stress if s.stress is not None else np.zeros((3, 3)) for s in samples])
    targets = {
        "energy": t(np.array([s.energy for s in samples]), dtype),
        "forces": t(np.concatenate([s.forces for s in samples]), dtype),
        "stress": t(stress, dtype),
        "has_stress": t(np.array([s.stress is not None for s in samples])),
        "n_atoms": t(n_atoms),
    }
    return graph, targets


def split_by_trajectory(frames: Sequence, fractions=(0.8, 0.1, 0.1), seed: int = 0):
    """Split frames into (train, validation, test) by whole trajectories (``info['traj_id']``),
    so that no split sees frames correlated with another split's.

    Trajectories of each protocol are spread over the splits separately, so that every
    split sees every protocol when there are enough trajectories.
    """
    if not frames:
        raise ValueError("Empty dataset: no frames to split.")
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    groups: Dict[str, list] = {}
    for f in frames:
        groups.setdefault(str(f.info.get("traj_id", "single")), []).append(f)
    by_protocol: Dict[str, list] = {}
    for tid in sorted(groups):
        by_protocol.setdefault(str(groups[tid][0].info.get("protocol", "?")), []).append(tid)
    rng = np.random.default_rng(seed)
    assign = {0: [], 1: [], 2: []}
    counts = np.zeros(3)
    total = len(frames)
    for proto in sorted(by_protocol):
        ids = list(by_protocol[proto])
        rng.shuffle(ids)
        for tid in ids:
            # give the trajectory to the split furthest below its target share
            deficit = np.array(fractions) * total - counts
            for k in range(3):
                if fractions[k] > 0 and not any(groups[x][0].info.get("protocol") == proto for x in assign[k]):
                    if len(by_protocol[proto]) >= sum(1 for f in fractions if f > 0):
                        deficit[k] += total  # first trajectory of this protocol for this split
            deficit[np.array(fractions) == 0] = -np.inf
            k = int(np.argmax(deficit))
            assign[k].append(tid)
            counts[k] += len(groups[tid])
    out = tuple([f for tid in assign[k] for f in groups[tid]] for k in range(3))
    if not out[0]:
        raise ValueError(f"Only {len(groups)} trajectories: too few to split into train/validation/test.")
    return out
