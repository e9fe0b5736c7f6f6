"""StudentCalculator: any orbdistill student as an ASE calculator.

>>> from ase.build import bulk
>>> from orbdistill.models import build_student
>>> from orbdistill.calculator import StudentCalculator
>>> atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
>>> atoms.calc = StudentCalculator(build_student("v2", species=[29]))
>>> atoms.get_forces().shape
(4, 3)
"""

from __future__ import annotations

import logging
import os
from typing import Optional, Union

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.data import chemical_symbols
from ase.stress import full_3x3_to_voigt_6_stress

from .graph import build_graph

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return _DTYPES[dtype]


class StudentCalculator(Calculator):
    """ASE calculator for orbdistill students.

    Args:
        model: a student model, or the path of a checkpoint or package folder
        device: "cpu", "cuda", ... (default: CUDA when available)
        dtype: "float32" (default) or "float64"
        min_distance: atoms closer than this (Å) raise an error (overlapping atoms)
        skin: reuse the neighbour list while no atom moved more than skin/2 (Å); 0 rebuilds
            it at every call. Ignored for models with a neighbour cap.
        num_threads: if given, set torch's CPU thread count (a process-wide setting)

    Properties: ``energy``, ``free_energy`` (= energy), ``forces`` (eV/Å), ``stress``
    (Voigt xx, yy, zz, yz, xz, xy in eV/Å^3, ASE sign; only for cells with volume) and
    ``energies`` (per atom, eV).
    """

    default_parameters: dict = {}

    def __init__(
        self,
        model,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Union[str, torch.dtype] = "float32",
        min_distance: float = 0.5,
        skin: float = 0.0,
        num_threads: Optional[int] = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(model, (str, os.PathLike)):
            from .models import load_student

            model = load_student(model)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = _resolve_dtype(dtype)
        if num_threads is not None:
            torch.set_num_threads(int(num_threads))
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.species = set(int(z) for z in self.model.species.tolist())
        self.min_distance = min_distance
        self.skin = float(skin) if model.max_neighbors is None else 0.0
        self.implemented_properties = ["energy", "free_energy", "forces", "stress", "energies"]
        self._nl_cache = None

    @classmethod
    def from_package(cls, path, backend: str = "torch", device=None, dtype="float32", **kwargs) -> "StudentCalculator":
        """Load a packaged student (a folder under ``calculators/``).

        Args:
            path: package folder (holds ``model.pt`` and ``card.json``)
            backend: "torch" (eager PyTorch)
            device, dtype, **kwargs: as for the constructor
        """
        from .export.package import read_card
        from .models import load_student

        path = os.fspath(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"Student package {path!r} does not exist (expected a folder with model.pt and card.json).")
        if backend != "torch":
            raise ValueError(f"Backend {backend!r} is not available in this version of orbdistill; supported: 'torch'.")
        card = read_card(path)
        calc = cls(load_student(os.path.join(path, "model.pt")), device=device, dtype=dtype, **kwargs)
        calc.card = card
        return calc

    # ------------------------------------------------------------------------------------
    def check_species(self, atoms) -> None:
        missing = sorted(set(int(z) for z in atoms.numbers) - self.species)
        if missing:
            names = ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in missing)
            trained = " ".join(chemical_symbols[z] for z in sorted(self.species))
            raise ValueError(f"This student was not trained on {names}; it covers: {trained}.")

    def _graph(self, atoms):
        cutoff = self.model.cutoff
        if self.skin > 0:
            cache = self._nl_cache
            if (
                cache is not None
                and len(atoms) == len(cache["numbers"])
                and np.array_equal(atoms.numbers, cache["numbers"])
                and np.array_equal(atoms.pbc, cache["pbc"])
                and np.allclose(atoms.cell.array, cache["cell"])
                and np.isfinite(atoms.positions).all()
                and np.max(np.linalg.norm(atoms.positions - cache["positions"], axis=1)) < 0.5 * self.skin
            ):
                g = cache["graph"]
                g.positions = torch.as_tensor(atoms.positions, dtype=self.dtype, device=self.device)
                if self.min_distance is not None and g.num_edges:
                    d = g.edge_vectors().norm(dim=1)
                    k = int(torch.argmin(d))
                    if float(d[k]) < self.min_distance:
                        raise ValueError(
                            f"Atoms {int(g.edge_index[0, k])} and {int(g.edge_index[1, k])} are {float(d[k]):.3f} Å "
                            f"apart (below {self.min_distance} Å): overlapping atoms."
                        )
                return g
            g = build_graph(atoms, cutoff + self.skin, None, device=self.device, dtype=self.dtype,
                            min_distance=self.min_distance)
            self._nl_cache = {"numbers": atoms.numbers.copy(), "pbc": atoms.pbc.copy(), "cell": atoms.cell.array.copy(),
                              "positions": atoms.positions.copy(), "graph": g}
            return g
        return build_graph(atoms, cutoff, self.model.max_neighbors, device=self.device, dtype=self.dtype,
                           min_distance=self.min_distance)

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        properties = properties or ["energy"]
        self.check_species(atoms)
        has_volume = atoms.cell.rank == 3 and abs(atoms.cell.volume) > 1e-8
        if "stress" in properties and not has_volume:
            raise PropertyNotImplementedError(
                f"Stress needs a cell with volume (this one has rank {atoms.cell.rank}, pbc={atoms.pbc.tolist()}); "
                "energy and forces are available."
            )
        graph = self._graph(atoms)
        out = self.model.predict(graph, compute_forces=True, compute_stress=has_volume)
        energy = float(out["energy"][0].detach().cpu())
        forces = out["forces"].detach().cpu().numpy().astype(np.float64)
        if not np.isfinite(energy) or not np.isfinite(forces).all():
            raise RuntimeError("The student returned non-finite energy or forces for this structure.")
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": forces,
            "energies": out["energies"].detach().cpu().numpy().astype(np.float64),
        }
        if has_volume:
            self.results["stress"] = full_3x3_to_voigt_6_stress(out["stress"][0].detach().cpu().numpy().astype(np.float64))
