"""The student base class: energies from a subclass, forces and stress from autograd here.

Every student computes per-atom energies from edge vectors. This module turns them into
the total energy, forces ``F = -dE/dx`` and stress ``sigma = (1/V) dE/d(strain)`` with one
autograd pass over a symmetric strain applied to positions and cell (the displacement
trick of SchNetPack/NequIP/Orb), so every student is conservative by construction and
the physics lives in one place.

Energy of atom i: ``E_i = scale * e_i + shift + ref[Z_i]`` where ``e_i`` is the model's
raw output, ``ref`` are per-element reference energies (fitted by least squares during
training) and ``scale``/``shift`` normalise the model output to the data.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from orbdistill.graph import AtomGraph, edge_vectors

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "orbdistill-student"
CHECKPOINT_VERSION = 1


@dataclass
class StudentConfig:
    """Fields every student has. Subclasses add their own; all are saved in checkpoints.

    Attributes:
        kind: registry name ("v1", "v2", "v2-e3nn", ...)
        species: atomic numbers the student is trained for
        cutoff: neighbour radius (Å)
        max_neighbors: optional k-nearest cap per atom (Orb convention)
    """

    kind: str = "base"
    species: List[int] = field(default_factory=lambda: [29])
    cutoff: float = 5.0
    max_neighbors: Optional[int] = None

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self) -> None:
        """Ranges every student needs; errors name the field, the value and what is allowed."""
        import math

        if not (isinstance(self.cutoff, (int, float)) and math.isfinite(self.cutoff) and self.cutoff > 0):
            raise ValueError(f"cutoff = {self.cutoff!r}: must be a positive distance in Å")
        if self.max_neighbors is not None and (not isinstance(self.max_neighbors, int) or self.max_neighbors < 1):
            raise ValueError(f"max_neighbors = {self.max_neighbors!r}: must be a whole number >= 1, or null (no cap)")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            sizes = value if isinstance(value, list) and f.name != "species" else [value]
            for v in sizes:
                if isinstance(v, bool) or not isinstance(v, int) or f.name == "max_neighbors":
                    continue
                lowest = 0 if (f.name == "lmax" or f.name.endswith("_depth")) else 1  # 0 = no hidden layer
                if v < lowest:
                    raise ValueError(f"{f.name} = {value!r}: must be >= {lowest}")

    @classmethod
    def from_dict(cls, d: dict) -> "StudentConfig":
        from orbdistill.config import dataclass_from_dict

        return dataclass_from_dict(cls, d, f"{cls.__name__} field")


def apply_strain(positions: torch.Tensor, cell: torch.Tensor, batch: torch.Tensor, displacement: torch.Tensor):
    """Positions and cell deformed by the symmetric part of ``displacement`` [B, 3, 3].

    With ``displacement = 0``, ``dE/d displacement`` is the virial ``V * sigma``.
    """
    sym = 0.5 * (displacement + displacement.transpose(-1, -2))
    positions = positions + torch.einsum("ni,nij->nj", positions, torch.index_select(sym, 0, batch))
    return positions, cell + torch.bmm(cell, sym)


def strained(positions: torch.Tensor, cell: torch.Tensor, batch: torch.Tensor):
    """Apply a zero symmetric strain that autograd can differentiate.

    Returns (positions', cell', displacement) with ``displacement`` [B, 3, 3] requiring grad.
    """
    displacement = torch.zeros_like(cell, requires_grad=True)
    positions, cell = apply_strain(positions, cell, batch, displacement)
    return positions, cell, displacement


def stress_from_virial(virial: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """sigma = virial / V (eV/Å^3, ASE sign) per structure; zero where the cell has no volume."""
    vol = cell_volumes(cell)
    has_volume = vol > 1e-8
    safe = torch.where(has_volume, vol, torch.ones_like(vol))
    return torch.where(has_volume.view(-1, 1, 1), virial / safe.view(-1, 1, 1), torch.zeros_like(virial))


def cell_volumes(cell: torch.Tensor) -> torch.Tensor:
    """|a . (b x c)| per structure [B] (0 for structures without a full cell).

    A triple product rather than ``torch.linalg.det``: same value, and it exports to ONNX.
    """
    return (cell[:, 0] * torch.cross(cell[:, 1], cell[:, 2], dim=-1)).sum(-1).abs()


class StudentModel(torch.nn.Module):
    """Base class of all students.

    Subclasses implement :meth:`invariant_features` and :meth:`readout_energies` and set
    ``config_cls``. Inputs are the
    flat tensors of :class:`orbdistill.graph.AtomGraph`.
    """

    config_cls = StudentConfig

    def __init__(self, config: StudentConfig):
        super().__init__()
        config.check()
        self.config = config
        species = sorted(set(int(z) for z in config.species))
        if not species or min(species) < 1 or max(species) > 118:
            raise ValueError(f"species must be atomic numbers 1..118, got {config.species!r}")
        self.register_buffer("species", torch.tensor(species, dtype=torch.long))
        self.register_buffer("element_refs", torch.zeros(119))
        self.register_buffer("energy_scale", torch.tensor(1.0))
        self.register_buffer("energy_shift", torch.tensor(0.0))

    # ---- the part subclasses write ------------------------------------------------------
    def invariant_features(self, vectors: torch.Tensor, atomic_numbers: torch.Tensor,
                           edge_index: torch.Tensor) -> torch.Tensor:
        """Per-atom invariant features [N, F] that the energy readout takes (what the
        out-of-domain signal measures): vectors [E, 3] (Å), atomic_numbers [N], edge_index [2, E]."""
        raise NotImplementedError

    def readout_energies(self, features: torch.Tensor, atomic_numbers: torch.Tensor, batch: torch.Tensor,
                         n_structures: int) -> torch.Tensor:
        """Raw per-atom energies [N] from the features [N, F]."""
        raise NotImplementedError

    def raw_atomic_energies(
        self,
        vectors: torch.Tensor,
        atomic_numbers: torch.Tensor,
        edge_index: torch.Tensor,
        batch: torch.Tensor,
        n_structures: int,
    ) -> torch.Tensor:
        """vectors [E, 3] (Å), atomic_numbers [N], edge_index [2, E], batch [N] -> [N]"""
        features = self.invariant_features(vectors, atomic_numbers, edge_index)
        return self.readout_energies(features, atomic_numbers, batch, n_structures)

    # ---- shared -------------------------------------------------------------------------
    @property
    def cutoff(self) -> float:
        return float(self.config.cutoff)

    @property
    def max_neighbors(self) -> Optional[int]:
        return self.config.max_neighbors

    def atomic_energies(self, positions, atomic_numbers, edge_index, cell_shifts, cell, batch,
                        return_features: bool = False):
        """Per-atom energies [N] (eV) from flat graph tensors; with ``return_features`` also
        the invariant features [N, F] (same forward pass)."""
        vectors = edge_vectors(positions, cell, edge_index, cell_shifts, batch)
        return self.energies_from_vectors(vectors, atomic_numbers, edge_index, batch, cell.shape[0],
                                          return_features=return_features)

    def energies_from_vectors(self, vectors, atomic_numbers, edge_index, batch, n_structures: int,
                              return_features: bool = False):
        """Per-atom energies [N] (eV) from edge vectors [E, 3] (Å, ``x_j - x_i + shift``).

        The whole energy model after the neighbour list: what the LAMMPS export evaluates on
        local and ghost atoms (:mod:`orbdistill.lammps`), where every periodic image is an
        atom of its own and there are no cell shifts.
        """
        features = self.invariant_features(vectors, atomic_numbers, edge_index)
        raw = self.readout_energies(features, atomic_numbers, batch, n_structures)
        e = raw * self.energy_scale + self.energy_shift + self.element_refs[atomic_numbers]
        repulsion = getattr(self, "repulsion", None)
        if repulsion is not None:  # physical pair term: never rescaled by the fit
            e = e + repulsion(vectors.norm(dim=1), atomic_numbers, edge_index, batch, n_structures)
        return (e, features) if return_features else e

    #: whether this architecture has fused kernels (:mod:`orbdistill.kernels`)
    supports_fused_kernels = False

    def use_fused_kernels(self, enable="auto") -> bool:
        """Evaluate with the fused CPU kernels of :mod:`orbdistill.kernels` (inference only:
        forces and stress, no parameter gradients). ``"auto"`` turns them on where this
        architecture has them and they build or load; ``True`` raises if they cannot;
        ``False`` runs the eager model. Returns whether they are on. Models run eagerly on
        other devices and while any parameter requires grad (training)."""
        from ..kernels import fused_requested

        self._fused = fused_requested(enable, self.supports_fused_kernels, type(self).__name__)
        return self._fused

    def fused_active(self, tensor: torch.Tensor) -> bool:
        """True when this call takes the fused path (see :meth:`use_fused_kernels`)."""
        return (getattr(self, "_fused", False) and tensor.device.type == "cpu"
                and not any(p.requires_grad for p in self.parameters()))

    def message_passing_hops(self) -> int:
        """How many bonds away an atom's energy can see: the energy of atom i depends only on
        atoms within this many neighbour-list hops (the number of message-passing steps).
        Parallel domain decomposition (LAMMPS) needs it to size the ghost shell."""
        raise NotImplementedError(f"{type(self).__name__} does not state its receptive field")

    def is_local(self) -> Optional[str]:
        """None when the energy is a sum of per-atom terms that each see a finite
        neighbourhood (what a spatially decomposed MD code needs); otherwise the reason."""
        if self.max_neighbors is not None:
            return (f"max_neighbors = {self.max_neighbors}: a k-nearest cap depends on how ties between equal "
                    "distances are broken, which differs between codes; use a student without the cap")
        return None

    def forward(self, positions, atomic_numbers, edge_index, cell_shifts, cell, batch) -> torch.Tensor:
        """Per-atom energies [N] (eV)."""
        return self.atomic_energies(positions, atomic_numbers, edge_index, cell_shifts, cell, batch)

    def predict(
        self,
        graph: AtomGraph,
        compute_forces: bool = True,
        compute_stress: bool = True,
        training: bool = False,
        features: bool = False,
    ) -> Dict[str, torch.Tensor]:
        """Energy [B], per-atom energies [N], forces [N, 3] and stress [B, 3, 3] (eV/Å^3);
        with ``features`` also the invariant per-atom features [N, F].

        Stress is ``(1/V) dE/d(strain)`` (ASE sign: negative under compression); it is zero
        for structures without a volume. ``training=True`` keeps the graph so that force
        and stress errors can be differentiated with respect to the parameters.
        """
        if training and getattr(self, "_fused", False):  # a loss on forces needs their derivatives: eager
            self._fused = False
            try:
                return conservative_outputs(self.atomic_energies, graph.inputs(), compute_forces=compute_forces,
                                            compute_stress=compute_stress, training=training, features=features)
            finally:
                self._fused = True
        return conservative_outputs(self.atomic_energies, graph.inputs(), compute_forces=compute_forces,
                                    compute_stress=compute_stress, training=training, features=features)

    def num_parameters(self) -> int:
        return int(sum(p.numel() for p in self.parameters()))

    # ---- checkpoints --------------------------------------------------------------------
    def checkpoint_dict(self) -> dict:
        from orbdistill._version import __version__

        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "orbdistill_version": __version__,
            "kind": self.config.kind,
            "config": self.config.to_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
        }

    def save(self, path) -> Path:
        """Write the model (config + weights) atomically to ``path``."""
        from orbdistill.utils import atomic_torch_save

        return atomic_torch_save(self.checkpoint_dict(), path)


def conservative_outputs(
    atomic_energies: Callable[..., torch.Tensor],
    inputs: Sequence[torch.Tensor],
    compute_forces: bool = True,
    compute_stress: bool = True,
    training: bool = False,
    mark=None,
    features: bool = False,
) -> Dict[str, torch.Tensor]:
    """Energy, forces and stress from per-atom energies by one autograd pass (see module docstring).

    Args:
        atomic_energies: ``f(positions, atomic_numbers, edge_index, cell_shifts, cell, batch)
            -> [N]`` (a student's :meth:`StudentModel.atomic_energies`, or a compiled version)
        inputs: the graph tensors in :data:`orbdistill.graph.GRAPH_INPUTS` order
            (``AtomGraph.inputs()``): positions [N, 3], atomic_numbers [N], edge_index [2, E],
            cell_shifts [E, 3], cell [B, 3, 3], batch [N]
        mark: if given, called between the forward and the gradient pass (the analyser
            times them separately)
        features: also return the invariant per-atom ``features`` [N, F] of the same pass
            (``atomic_energies`` must accept ``return_features``)
    Returns:
        dict with ``energy`` [B], ``energies`` [N], and, when asked, ``forces`` [N, 3] and
        ``stress`` [B, 3, 3]
    """
    positions, atomic_numbers, edge_index, cell_shifts, cell, batch = inputs
    n_structures = cell.shape[0]
    need_grad = compute_forces or compute_stress
    with torch.enable_grad():
        pos = positions if (positions.requires_grad or not need_grad) else positions.detach().requires_grad_(True)
        if compute_stress:
            pos_s, cell_s, displacement = strained(pos, cell, batch)
        else:
            pos_s, cell_s, displacement = pos, cell, None
        if features:
            e_atoms, feats = atomic_energies(pos_s, atomic_numbers, edge_index, cell_shifts, cell_s, batch,
                                             return_features=True)
        else:
            e_atoms = atomic_energies(pos_s, atomic_numbers, edge_index, cell_shifts, cell_s, batch)
        energy = torch.zeros(n_structures, dtype=e_atoms.dtype, device=e_atoms.device).index_add(0, batch, e_atoms)
        out = {"energy": energy, "energies": e_atoms}
        if features:
            out["features"] = feats.detach()
        if mark is not None:
            mark()
        if not need_grad:
            return out
        inputs_ = [pos] + ([displacement] if compute_stress else [])
        grads = torch.autograd.grad(energy.sum(), inputs_, create_graph=training, allow_unused=True)
    if compute_forces:
        g = grads[0] if grads[0] is not None else torch.zeros_like(pos)
        out["forces"] = -g
    if compute_stress:
        virial = grads[1] if grads[1] is not None else torch.zeros_like(cell)
        out["stress"] = stress_from_virial(virial, cell)
    return out
