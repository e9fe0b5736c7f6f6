"""The one data contract of orbdistill: a batch of atomic structures as flat tensors.

Every model, teacher adapter, exporter and calculator in the package passes an
:class:`AtomGraph` around. It holds only flat tensors, so the same computation can be
traced, scripted and exported:

=================  ==============  ====================================================
field              shape           meaning
=================  ==============  ====================================================
``positions``      ``[N, 3]``      Cartesian positions (Å)
``atomic_numbers`` ``[N]``         atomic numbers Z (int64)
``edge_index``     ``[2, E]``      (centre i, neighbour j) pairs; row 0 is the sender
``cell_shifts``    ``[E, 3]``      integer lattice translation of neighbour j (int64)
``cell``           ``[B, 3, 3]``   lattice vectors as rows (Å); zeros without a cell
``pbc``            ``[B, 3]``      periodicity per axis (bool)
``batch``          ``[N]``         structure index of every atom (int64)
``n_atoms``        ``[B]``         atoms per structure (int64)
=================  ==============  ====================================================

The edge vector is ``r_ij = x_j - x_i + S_ij @ cell`` (the convention of orb-models:
vectors point from the sender, the centre atom, to the receiver).

Neighbour lists are built in float64 with vesin (matscipy as a fallback) and may be
capped to the k nearest neighbours of each centre atom, as Orb does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import torch

log = logging.getLogger(__name__)

__all__ = [
    "AtomGraph",
    "build_graph",
    "neighbour_list",
    "edge_vectors",
    "validate_structure",
]


@dataclass
class AtomGraph:
    """A batch of structures with their neighbour graph, as flat tensors (see module doc)."""

    positions: torch.Tensor
    atomic_numbers: torch.Tensor
    edge_index: torch.Tensor
    cell_shifts: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    batch: torch.Tensor
    n_atoms: torch.Tensor
    cutoff: float = 0.0
    max_neighbors: Optional[int] = None

    @property
    def num_structures(self) -> int:
        return int(self.n_atoms.shape[0])

    @property
    def num_atoms(self) -> int:
        return int(self.positions.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])

    @property
    def senders(self) -> torch.Tensor:
        return self.edge_index[0]

    @property
    def receivers(self) -> torch.Tensor:
        return self.edge_index[1]

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "AtomGraph":
        """Move to ``device``; cast floating tensors (positions, cell) to ``dtype``."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                if v.is_floating_point() and dtype is not None:
                    v = v.to(device=device, dtype=dtype)
                else:
                    v = v.to(device=device)
            out[f.name] = v
        return AtomGraph(**out)

    def edge_vectors(self) -> torch.Tensor:
        """Edge vectors ``r_ij`` [E, 3] (Å), differentiable w.r.t. positions and cell."""
        return edge_vectors(self.positions, self.cell, self.edge_index, self.cell_shifts, self.batch)

    def as_dict(self) -> dict:
        """The tensors as a plain dictionary (the form exported models take)."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }


def edge_vectors(
    positions: torch.Tensor,
    cell: torch.Tensor,
    edge_index: torch.Tensor,
    cell_shifts: torch.Tensor,
    batch: torch.Tensor,
) -> torch.Tensor:
    """``r_ij = x_j - x_i + S_ij @ cell[b]`` for every edge.

    Args:
        positions: [N, 3] (Å)
        cell: [B, 3, 3] lattice vectors as rows (Å)
        edge_index: [2, E] (sender i, receiver j)
        cell_shifts: [E, 3] integer translations of the receiver
        batch: [N] structure index of each atom
    Returns:
        [E, 3] edge vectors (Å)
    """
    i, j = edge_index[0], edge_index[1]
    # index_select rather than x[idx]: same values, much faster backward on CPU
    edge_cell = torch.index_select(cell, 0, torch.index_select(batch, 0, i))  # [E, 3, 3]
    shift = torch.einsum("ek,ekl->el", cell_shifts.to(positions.dtype), edge_cell)
    return torch.index_select(positions, 0, j) - torch.index_select(positions, 0, i) + shift


# --------------------------------------------------------------------------------------
# Neighbour lists
# --------------------------------------------------------------------------------------


def validate_structure(atoms) -> None:
    """Raise ``ValueError`` for structures no model can evaluate.

    Checks: at least one atom, finite positions, and a cell with non-zero, linearly
    independent vectors along every periodic axis.
    """
    n = len(atoms)
    if n == 0:
        raise ValueError("The structure has no atoms.")
    pos = np.asarray(atoms.positions, dtype=np.float64)
    bad = np.where(~np.isfinite(pos).all(axis=1))[0]
    if len(bad):
        raise ValueError(
            f"Atom positions contain NaN or infinite values (atoms {bad[:10].tolist()}"
            f"{' ...' if len(bad) > 10 else ''}); the structure cannot be evaluated."
        )
    pbc = np.asarray(atoms.pbc, dtype=bool)
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    if not np.isfinite(cell).all():
        raise ValueError(f"The cell contains NaN or infinite values: {cell.tolist()}")
    for axis in np.where(pbc)[0]:
        if np.linalg.norm(cell[axis]) < 1e-8:
            raise ValueError(
                f"Axis {axis} is periodic (pbc={pbc.tolist()}) but its cell vector is zero; "
                "set a cell vector or make that axis non-periodic."
            )
    if pbc.all() and abs(np.linalg.det(cell)) < 1e-8:
        raise ValueError(f"The periodic cell has zero volume: {cell.tolist()}")


def _complete_cell(cell: np.ndarray, pbc: np.ndarray, positions: np.ndarray, cutoff: float) -> np.ndarray:
    """Replace missing (zero) vectors of non-periodic axes by long orthogonal ones.

    Neighbour-list back ends want a full-rank box even along non-periodic axes; the
    length chosen exceeds the extent of the structure plus the cutoff, so no spurious
    pair can appear through it.
    """
    cell = cell.copy()
    missing = [a for a in range(3) if not pbc[a] and np.linalg.norm(cell[a]) < 1e-8]
    if not missing:
        return cell
    extent = float(np.ptp(positions, axis=0).max()) if len(positions) else 0.0
    length = 2.0 * (extent + cutoff) + 10.0
    present = [a for a in range(3) if a not in missing]
    if len(present) == 0:
        return np.eye(3) * length
    if len(present) == 1:
        v = cell[present[0]] / np.linalg.norm(cell[present[0]])
        trial = np.array([1.0, 0.0, 0.0]) if abs(v[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
        u = np.cross(v, trial)
        u /= np.linalg.norm(u)
        w = np.cross(v, u)
        fill = [u, w]
    else:
        w = np.cross(cell[present[0]], cell[present[1]])
        fill = [w / np.linalg.norm(w)]
    for a, direction in zip(missing, fill):
        cell[a] = direction * length
    if np.linalg.det(cell) < 0:  # keep a right-handed box
        cell[missing[0]] *= -1
    return cell


def _vesin_pairs(positions, cell, pbc, cutoff):
    from vesin import NeighborList

    nl = NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, s, d = nl.compute(points=positions, box=cell, periodic=[bool(p) for p in pbc], quantities="ijSd")
    return i.astype(np.int64), j.astype(np.int64), s.astype(np.int64), d


def _matscipy_pairs(positions, cell, pbc, cutoff):
    from matscipy.neighbours import neighbour_list as msp_neighbour_list

    i, j, s, d = msp_neighbour_list(
        "ijSd", positions=positions, cell=cell, pbc=np.asarray(pbc, dtype=bool), cutoff=float(cutoff)
    )
    return i.astype(np.int64), j.astype(np.int64), s.astype(np.int64), d


def neighbour_list(
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: Sequence[bool],
    cutoff: float,
    max_neighbors: Optional[int] = None,
    backend: str = "auto",
):
    """All pairs (i, j, S) with ``|x_j - x_i + S @ cell| < cutoff``, in float64.

    Args:
        positions: [N, 3] (Å)
        cell: [3, 3] lattice vectors as rows (Å); zero rows allowed on non-periodic axes
        pbc: three booleans
        cutoff: radius (Å)
        max_neighbors: keep only the k nearest neighbours of every centre atom i
            (Orb's convention; ties broken by neighbour index then shift)
        backend: "auto" (vesin, else matscipy), "vesin" or "matscipy"
    Returns:
        ``(i, j, S, d)``: int64 [E], int64 [E], int64 [E, 3], float64 [E]; sorted by i.
    """
    if not cutoff > 0:
        raise ValueError(f"cutoff must be positive, got {cutoff!r}")
    if max_neighbors is not None and max_neighbors < 1:
        raise ValueError(f"max_neighbors must be >= 1 or None, got {max_neighbors!r}")
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool).reshape(3)
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    box = _complete_cell(cell, pbc, positions, cutoff)

    if backend == "auto":
        try:
            i, j, s, d = _vesin_pairs(positions, box, pbc, cutoff)
        except ImportError:  # pragma: no cover - vesin is a hard dependency
            i, j, s, d = _matscipy_pairs(positions, box, pbc, cutoff)
    elif backend == "vesin":
        i, j, s, d = _vesin_pairs(positions, box, pbc, cutoff)
    elif backend == "matscipy":
        i, j, s, d = _matscipy_pairs(positions, box, pbc, cutoff)
    else:
        raise ValueError(f"Unknown neighbour-list backend {backend!r}; use 'auto', 'vesin' or 'matscipy'.")
    s[:, ~pbc] = 0  # translations along non-periodic axes never happen

    if max_neighbors is not None:
        order = np.lexsort((s[:, 2], s[:, 1], s[:, 0], j, d, i))
    else:
        order = np.lexsort((s[:, 2], s[:, 1], s[:, 0], j, i))
    i, j, s, d = i[order], j[order], s[order], d[order]
    if max_neighbors is not None and len(i):
        counts = np.bincount(i, minlength=len(positions))
        starts = np.cumsum(counts) - counts
        rank = np.arange(len(i)) - starts[i]
        keep = rank < max_neighbors
        i, j, s, d = i[keep], j[keep], s[keep], d[keep]
    return i, j, s, d


def _as_list(structures) -> list:
    if isinstance(structures, (list, tuple)):
        return list(structures)
    return [structures]


def build_graph(
    structures,
    cutoff: float,
    max_neighbors: Optional[int] = None,
    device: Union[str, torch.device, None] = None,
    dtype: torch.dtype = torch.float32,
    backend: str = "auto",
    min_distance: Optional[float] = None,
) -> AtomGraph:
    """Build an :class:`AtomGraph` from one ``ase.Atoms`` or a list of them (a batch).

    Args:
        structures: ``ase.Atoms`` or a sequence of them
        cutoff: neighbour radius (Å)
        max_neighbors: optional cap of k nearest neighbours per atom (Orb convention)
        device: torch device of the returned tensors
        dtype: floating dtype of positions and cell (the neighbour list itself is float64)
        min_distance: raise ``ValueError`` if two atoms are closer than this (Å)
    Returns:
        AtomGraph

    Example:
        >>> from ase.build import bulk
        >>> g = build_graph(bulk("Cu", "fcc", a=3.61), cutoff=3.0)
        >>> g.num_atoms, g.num_edges
        (1, 12)
    """
    atoms_list = _as_list(structures)
    if len(atoms_list) == 0:
        raise ValueError("build_graph needs at least one structure.")
    pos_l, z_l, ei_l, sh_l, cell_l, pbc_l, batch_l, n_l = [], [], [], [], [], [], [], []
    offset = 0
    for b, atoms in enumerate(atoms_list):
        validate_structure(atoms)
        positions = np.asarray(atoms.positions, dtype=np.float64)
        cell = np.asarray(atoms.cell.array, dtype=np.float64)
        pbc = np.asarray(atoms.pbc, dtype=bool)
        i, j, s, d = neighbour_list(positions, cell, pbc, cutoff, max_neighbors, backend)
        if min_distance is not None and len(d) and d.min() < min_distance:
            k = int(np.argmin(d))
            raise ValueError(
                f"Atoms {int(i[k])} and {int(j[k])} are {d[k]:.3f} Å apart (below {min_distance} Å): overlapping "
                "atoms; the structure is unphysical and the model output would be meaningless."
            )
        n = len(atoms)
        pos_l.append(positions)
        z_l.append(np.asarray(atoms.numbers, dtype=np.int64))
        ei_l.append(np.stack([i + offset, j + offset]))
        sh_l.append(s)
        cell_l.append(cell)
        pbc_l.append(pbc)
        batch_l.append(np.full(n, b, dtype=np.int64))
        n_l.append(n)
        offset += n

    def t(x, dt=None):
        return torch.as_tensor(x, dtype=dt, device=device)

    return AtomGraph(
        positions=t(np.concatenate(pos_l), dtype),
        atomic_numbers=t(np.concatenate(z_l)),
        edge_index=t(np.concatenate(ei_l, axis=1)),
        cell_shifts=t(np.concatenate(sh_l).reshape(-1, 3)),
        cell=t(np.stack(cell_l), dtype),
        pbc=t(np.stack(pbc_l)),
        batch=t(np.concatenate(batch_l)),
        n_atoms=t(np.asarray(n_l, dtype=np.int64)),
        cutoff=float(cutoff),
        max_neighbors=max_neighbors,
    )


def min_pair_distance(structures: Iterable, probe: float = 1.0) -> float:
    """Smallest interatomic distance (Å) below ``probe``, or ``inf`` if none is shorter."""
    best = np.inf
    for atoms in _as_list(structures):
        _, _, _, d = neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, probe)
        if len(d):
            best = min(best, float(d.min()))
    return best
