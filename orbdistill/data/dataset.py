"""Training samples: frames with precomputed neighbour lists, split by trajectory, batched
into :class:`orbdistill.graph.AtomGraph` (by :func:`orbdistill.graph.batch_graphs`, the one
batching path) plus target tensors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from ase.stress import voigt_6_to_full_3x3_stress

from orbdistill.graph import AtomGraph, StructureGraph, batch_graphs, structure_graph


@dataclass
class Sample:
    """One labelled structure: its :class:`~orbdistill.graph.StructureGraph` (neighbour list
    built once, reused every epoch) and the teacher's labels (float64)."""

    graph: StructureGraph
    energy: float
    forces: np.ndarray
    stress: Optional[np.ndarray]  # [3, 3] eV/Å^3 or None
    traj_id: str
    protocol: str = "?"
    hvp_v: Optional[np.ndarray] = None   # [N, 3] probe direction of the Hessian-vector product
    hvp: Optional[np.ndarray] = None     # [N, 3] teacher H v (eV/Å^2 x Å), see orbdistill.data.hessian
    hvp_epsilon: float = 0.0
    weight: float = 1.0                  # this frame's weight in the training loss (see TrainConfig.group_balance)

    @property
    def n_atoms(self) -> int:
        return self.graph.n_atoms

    @property
    def numbers(self) -> np.ndarray:
        return self.graph.numbers


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
    """Labelled frames -> samples (graphs built once, by the same builder the calculator uses)."""
    out = []
    for k, a in enumerate(frames):
        e, f, s = frame_labels(a)
        hv = {}
        if "hvp" in a.arrays and "hvp_v" in a.arrays:
            hv = {"hvp_v": np.asarray(a.arrays["hvp_v"], dtype=np.float64), "hvp": np.asarray(a.arrays["hvp"], dtype=np.float64),
                  "hvp_epsilon": float(a.info.get("hvp_epsilon", 0.01))}
        out.append(Sample(graph=structure_graph(a, cutoff, max_neighbors), energy=e, forces=f, stress=s,
                          traj_id=str(a.info.get("traj_id", f"frame-{k}")), protocol=str(a.info.get("protocol", "?")),
                          **hv))
    return out


def collate(samples: Sequence[Sample], dtype=torch.float32, device=None) -> Tuple[AtomGraph, Dict[str, torch.Tensor]]:
    """Batch samples: (graph, targets) with targets ``energy`` [B], ``forces`` [N, 3],
    ``stress`` [B, 3, 3], ``has_stress`` [B] (bool), ``n_atoms`` [B], ``weight`` [B] (loss
    weight of each frame)."""
    graph = batch_graphs([s.graph for s in samples], dtype=dtype, device=device)

    def t(x, dt=None):
        return torch.as_tensor(x, dtype=dt, device=device)

    stress = np.stack([s.stress if s.stress is not None else np.zeros((3, 3)) for s in samples])
    targets = {
        "energy": t(np.array([s.energy for s in samples]), dtype),
        "forces": t(np.concatenate([s.forces for s in samples]), dtype),
        "stress": t(stress, dtype),
        "has_stress": t(np.array([s.stress is not None for s in samples])),
        "n_atoms": graph.n_atoms,
        "weight": t(np.array([s.weight for s in samples]), dtype),
    }
    if any(s.hvp is not None for s in samples):  # Hessian-vector products (per atom; zeros where absent)
        zeros = [np.zeros((s.n_atoms, 3)) for s in samples]
        targets["hvp_v"] = t(np.concatenate([s.hvp_v if s.hvp is not None else z for s, z in zip(samples, zeros)]), dtype)
        targets["hvp"] = t(np.concatenate([s.hvp if s.hvp is not None else z for s, z in zip(samples, zeros)]), dtype)
        targets["hvp_epsilon"] = t(np.concatenate([np.full(s.n_atoms, s.hvp_epsilon if s.hvp is not None else 0.0)
                                                   for s in samples]), dtype)
        targets["has_hvp"] = t(np.concatenate([np.full(s.n_atoms, s.hvp is not None) for s in samples]))
    return graph, targets


#: how trajectories are spread over train/validation/test (recorded in each package's config)
SPLIT_METHODS = ("stratified", "greedy")


def split_arguments(cfg: dict) -> dict:
    """``split_by_trajectory`` keywords of a distillation config or a package's
    ``config.json``: fractions, the training seed and the method (configs written before
    ``split_method`` existed were split greedily)."""
    return {"fractions": tuple(cfg.get("split", (0.8, 0.1, 0.1))), "seed": cfg.get("train", {}).get("seed", 0),
            "method": cfg.get("split_method", "greedy")}


def split_by_trajectory(frames: Sequence, fractions=(0.8, 0.1, 0.1), seed: int = 0, method: str = "greedy"):
    """Split frames into (train, validation, test) by whole trajectories (``info['traj_id']``),
    so that no split sees frames correlated with another split's.

    Trajectories of each protocol are spread over the splits separately, so that every
    split sees every protocol when there are enough trajectories:

    * ``"stratified"`` (what new distillations use): each protocol's trajectories are
      shuffled with their own random stream (``seed`` and the protocol's name) and cut in the
      proportions ``fractions``, every split with a non-zero share getting at least one when
      the protocol has enough; a protocol with fewer trajectories gives its first to
      training and its second to the held-out split with fewer trajectories so far. Adding
      trajectories to a protocol that has enough leaves the others' assignment unchanged.
      Trajectories that name an ``element`` (the ``reference`` protocol: one element's own
      crystal) are spread per element, so that every element's phase is trained on.
    * ``"greedy"`` (packages made before the stratified split): each trajectory goes to the
      split furthest below its share of *all* frames. Protocols of short trajectories can
      end up mostly in one split (4 of 8 volume scans in validation, say); kept so that
      existing packages are recalibrated on their own held-out frames.
    """
    if method not in SPLIT_METHODS:
        raise ValueError(f"split method {method!r}: choose from {SPLIT_METHODS}")
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
    if method == "stratified":
        # frames of one element's reference phase form their own stratum, so that each
        # element's phase reaches training (a compound's element energies are fixed only
        # with every element's phase in training)
        by_protocol = {}
        for tid in sorted(groups):
            info = groups[tid][0].info
            key = str(info.get("protocol", "?")) + (f":{info['element']}" if "element" in info else "")
            by_protocol.setdefault(key, []).append(tid)
        assign = _stratified(by_protocol, fractions, seed)
        out = tuple([f for tid in assign[k] for f in groups[tid]] for k in range(3))
        if not out[0]:
            raise ValueError(f"Only {len(groups)} trajectories: too few to split into train/validation/test.")
        return out
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


def _stratified(by_protocol: Dict[str, list], fractions, seed: int) -> Dict[int, list]:
    import zlib

    frac = np.asarray(fractions, dtype=float)
    active = [k for k in range(3) if frac[k] > 0]
    assign: Dict[int, list] = {0: [], 1: [], 2: []}
    for proto in sorted(by_protocol):
        ids = sorted(by_protocol[proto])
        np.random.default_rng([seed, zlib.crc32(proto.encode())]).shuffle(ids)
        n = len(ids)
        if n < len(active):
            # train first; the next goes to the held-out split (validation or test) that has
            # fewer trajectories so far, validation on ties, so that tiny data sets still
            # have a validation set
            held = sorted((k for k in active if k), key=lambda j: (len(assign[j]), j))
            for tid, k in zip(ids, [0] + held):
                assign[k].append(tid)
            continue
        target = frac * n
        counts = np.zeros(3, dtype=int)
        counts[active] = np.maximum(1, np.floor(target[active])).astype(int)
        while counts.sum() < n:  # largest remainder, training first on ties
            k = max(active, key=lambda j: (target[j] - counts[j], j == 0))
            counts[k] += 1
        while counts.sum() > n:  # the minimum of one each overshot: take from the largest excess
            k = max((j for j in active if counts[j] > 1), key=lambda j: counts[j] - target[j])
            counts[k] -= 1
        start = 0
        for k in range(3):
            assign[k].extend(ids[start: start + counts[k]])
            start += counts[k]
    return assign
