"""The teacher interface: one way to label structures, whatever model sits behind it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import numpy as np
from ase.data import chemical_symbols
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    """Teacher labels of one structure.

    Attributes:
        energy: total energy (eV)
        forces: [n_atoms, 3] (eV/Å)
        stress: [6] Voigt xx, yy, zz, yz, xz, xy (eV/Å^3, ASE sign), or None without a cell
    """

    energy: float
    forces: np.ndarray
    stress: Optional[np.ndarray] = None


@dataclass
class Teacher:
    """A labelling model behind one interface.

    Build teachers with :func:`orbdistill.teachers.load_teacher`, not directly.

    Attributes:
        name: registry name (or the calculator class name for user calculators)
        family: "orb", "sevennet", "ase"
        cutoff: interaction radius (Å), or None if unknown
        max_neighbors: neighbour cap per atom (Orb), or None
        species: atomic numbers the teacher covers, or None for "any"
        model: the underlying torch module (None for classical calculators)
        conservative: forces and stress are gradients of the energy
        weights: where the weights came from ("random" for architecture-only teachers)
    """

    name: str
    family: str
    make_calculator: Callable
    cutoff: Optional[float] = None
    max_neighbors: Optional[int] = None
    species: Optional[List[int]] = None
    model: Optional[object] = None
    conservative: bool = True
    weights: str = "pretrained"
    extra: dict = field(default_factory=dict)
    #: how to load this teacher again by name (``load_teacher(**spec)``): what a Dask worker
    #: gets instead of the model; None for teachers made from a calculator object
    spec: Optional[dict] = None
    _calc: Optional[object] = field(default=None, repr=False)

    @property
    def random_weights(self) -> bool:
        return self.weights == "random"

    def calculator(self):
        """An ASE calculator for this teacher (created once, then reused)."""
        if self._calc is None:
            self._calc = self.make_calculator()
        return self._calc

    def num_parameters(self) -> int:
        if self.model is None:
            return 0
        return int(sum(p.numel() for p in self.model.parameters()))

    def describe(self) -> dict:
        """Cutoff, species coverage, parameter count and provenance, as a dict."""
        out = {
            "name": self.name,
            "family": self.family,
            "cutoff": self.cutoff,
            "max_neighbors": self.max_neighbors,
            "species": self.species if self.species is not None else "any",
            "n_species": len(self.species) if self.species is not None else None,
            "params": self.num_parameters(),
            "conservative": self.conservative,
            "weights": self.weights,
        }
        if self.random_weights:
            out["warning"] = "RANDOM WEIGHTS: architecture only; energies are meaningless."
        out.update({k: v for k, v in self.extra.items() if not k.startswith("_")})
        return out

    def check_species(self, atoms) -> None:
        """Raise ``ValueError`` naming any element of ``atoms`` the teacher does not cover."""
        if self.species is None:
            return
        missing = sorted(set(int(z) for z in atoms.numbers) - set(self.species))
        if missing:
            names = ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in missing)
            raise ValueError(
                f"Teacher {self.name!r} does not cover {names}; it covers "
                f"{len(self.species)} elements: {_symbols(self.species)}."
            )

    def predict(self, structures: Sequence, progress: bool = False) -> List[Prediction]:
        """Label structures with energy, forces and (for cells with volume) stress.

        Args:
            structures: ``ase.Atoms`` or a list of them
            progress: show a progress bar
        Returns:
            one :class:`Prediction` per structure
        """
        if not isinstance(structures, (list, tuple)):
            structures = [structures]
        calc = self.calculator()
        out = []
        for atoms in tqdm(structures, desc=f"labelling with {self.name}", disable=not progress):
            self.check_species(atoms)
            a = atoms.copy()
            a.calc = calc
            energy = float(a.get_potential_energy())
            forces = np.array(a.get_forces(), dtype=np.float64)
            stress = None
            if a.pbc.all() and a.cell.rank == 3:
                stress = np.array(a.get_stress(voigt=True), dtype=np.float64)
            out.append(Prediction(energy=energy, forces=forces, stress=stress))
        return out


def _symbols(numbers: Sequence[int], limit: int = 30) -> str:
    syms = [chemical_symbols[z] for z in sorted(numbers)]
    text = " ".join(syms[:limit])
    return text + (f" ... (+{len(syms) - limit})" if len(syms) > limit else "")
