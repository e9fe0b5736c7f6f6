"""Pick a diverse subset of frames: farthest-point sampling on a cheap structural descriptor.

Consecutive MD frames are near-duplicates; a subset chosen so that each new frame is as far
as possible from those already chosen spends the labelling (or training) budget where the
configurations differ. The descriptor is a smooth radial fingerprint per atom (Gaussian
bins of neighbour distances, one block per neighbour element, weighted by a cosine cutoff),
reduced per structure to its mean, spread and extremes over the atoms, so that one unusual
atom (an adatom, a close contact) moves the descriptor; when the frames carry forces, their
mean and largest magnitudes are appended. Columns are standardised before distances.

>>> from ase.build import bulk
>>> import numpy as np
>>> frames = []
>>> for k in range(10):
...     a = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
...     a.rattle(0.01 if k < 8 else 0.2, seed=k)
...     frames.append(a)
>>> sorted(select_diverse(frames, 3))[-2:]  # the two strongly rattled frames are picked
[8, 9]
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
from ase import Atoms


def radial_fingerprints(atoms: Atoms, elements: Sequence[str], cutoff: float = 5.0, n_bins: int = 12) -> np.ndarray:
    """Per-atom radial fingerprints, [n_atoms, len(elements) * n_bins]."""
    from orbdistill.graph import neighbour_list

    i, j, _, d = neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)
    centres = np.linspace(0.5, cutoff, n_bins)
    width = centres[1] - centres[0]
    fc = 0.5 * (np.cos(np.pi * d / cutoff) + 1.0)
    basis = np.exp(-0.5 * ((d[:, None] - centres[None, :]) / width) ** 2) * fc[:, None]
    index = {e: k for k, e in enumerate(elements)}
    species = np.array([index[s] for s in atoms.get_chemical_symbols()])
    out = np.zeros((len(atoms), len(elements), n_bins))
    np.add.at(out, (i, species[j]), basis)
    return out.reshape(len(atoms), -1)


def structure_descriptors(frames: Sequence[Atoms], cutoff: float = 5.0, n_bins: int = 12,
                          use_forces: bool = True) -> np.ndarray:
    """One row per frame: per centre element, the mean, standard deviation, minimum and
    maximum of the atoms' fingerprints (zeros for an element the frame lacks), then the
    mean and largest force magnitudes when every frame has forces."""
    elements = sorted({s for a in frames for s in a.get_chemical_symbols()})
    rows = []
    with_forces = use_forces and all(a.calc is not None and "forces" in a.calc.results for a in frames)
    for a in frames:
        fp = radial_fingerprints(a, elements, cutoff, n_bins)
        symbols = np.array(a.get_chemical_symbols())
        parts = []
        for e in elements:
            x = fp[symbols == e]
            if len(x):
                parts += [x.mean(0), x.std(0), x.min(0), x.max(0)]
            else:
                parts += [np.zeros(fp.shape[1])] * 4
        if with_forces:
            f = np.linalg.norm(a.calc.results["forces"], axis=1)
            parts.append(np.array([f.mean(), f.max()]) if len(f) else np.zeros(2))
        rows.append(np.concatenate(parts))
    return np.array(rows)


def farthest_point_sampling(x: np.ndarray, n: int, first: int = 0) -> List[int]:
    """Indices of ``n`` rows of ``x`` chosen greedily, each the farthest (Euclidean) from
    those already chosen, starting from row ``first``."""
    m = len(x)
    n = min(n, m)
    if n <= 0:
        return []
    chosen = [first]
    dist = np.linalg.norm(x - x[first], axis=1)
    for _ in range(n - 1):
        k = int(np.argmax(dist))
        chosen.append(k)
        dist = np.minimum(dist, np.linalg.norm(x - x[k], axis=1))
    return chosen


def select_diverse(frames: Sequence[Atoms], n: int, cutoff: float = 5.0,
                   descriptors: Optional[np.ndarray] = None) -> List[int]:
    """Indices (in the order chosen) of ``n`` diverse frames; all of them if ``n >= len``."""
    if n >= len(frames):
        return list(range(len(frames)))
    x = structure_descriptors(frames, cutoff) if descriptors is None else np.asarray(descriptors)
    scale = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(scale > 1e-12, scale, 1.0)
    # start from the frame farthest from the mean: the most unusual one is always kept
    first = int(np.argmax(np.linalg.norm(x, axis=1)))
    return farthest_point_sampling(x, n, first=first)
