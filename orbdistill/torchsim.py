"""Students in torch-sim: batched MD and relaxation of many structures at once.

torch-sim (``pip install torch-sim-atomistic``) integrates and relaxes a batch of systems
held in one ``SimState``; a model is a ``ModelInterface`` that maps the state to energies
[n_systems], forces [n_atoms, 3] and stresses [n_systems, 3, 3] (ASE's sign). This module
is that interface for orbdistill students: every call builds one flat graph of the whole
batch (:func:`orbdistill.graph.build_graph`, the neighbour list of the ASE calculator) and
evaluates the student once.

>>> import torch_sim as ts                                         # doctest: +SKIP
>>> from ase.build import bulk
>>> from orbdistill.torchsim import StudentModel
>>> model = StudentModel("cu-sevennet-v2")
>>> cells = [bulk("Cu", "fcc", a=a, cubic=True).repeat(2) for a in (3.55, 3.60, 3.65)]
>>> final = ts.integrate(system=cells, model=model, integrator=ts.nvt_langevin,
...                      n_steps=100, temperature=600, timestep=0.002)
>>> relaxed = ts.optimize(system=cells, model=model, optimizer=ts.frechet_cell_fire)
"""

from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch

try:
    import torch_sim as ts
    from torch_sim.models.interface import ModelInterface
except ImportError as exc:  # pragma: no cover - exercised where torch-sim is missing
    raise ImportError(f"orbdistill.torchsim needs torch-sim: pip install torch-sim-atomistic ({exc})") from exc

from orbdistill.engines import TorchEngine
from orbdistill.graph import build_graph
from orbdistill.utils import resolve_dtype

__all__ = ["StudentModel"]


class StudentModel(ModelInterface):
    """An orbdistill student as a torch-sim model.

    Args:
        model: package name (``"cu-sevennet-v2"``), package folder, checkpoint file or
            :class:`orbdistill.models.StudentModel`
        device: "cpu" or "cuda" (default: cuda when available)
        dtype: float32 (default, as the calculator) or float64
        compute_stress: return ``stress`` [n_systems, 3, 3] (eV/Å^3; needed by NPT and
            cell relaxations); systems without a full cell get zeros
        min_distance: atoms closer than this (Å) raise ``ValueError`` (0 or None: no check)
        tune_allocator: keep freed memory in the process between steps (glibc; faster on
            large batches, more memory: see :func:`orbdistill.utils.tune_allocator`; off)
    """

    def __init__(self, model, device: Optional[Union[str, torch.device]] = None,
                 dtype: Union[str, torch.dtype] = "float32", compute_stress: bool = True,
                 compute_forces: bool = True, min_distance: Optional[float] = 0.5, tune_allocator: bool = False):
        super().__init__()
        if tune_allocator:
            from orbdistill.utils import tune_allocator as _tune

            _tune()
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._dtype = resolve_dtype(dtype)
        self._compute_stress = bool(compute_stress)
        self._compute_forces = bool(compute_forces)
        self._memory_scales_with = "n_atoms_x_density"
        if not self._compute_forces:
            raise ValueError("compute_forces=False: students compute forces with the energy; leave it True")
        # the calculator's reading of ``model`` (object, checkpoint, package folder or name)
        from orbdistill.calculator import StudentCalculator

        engine = StudentCalculator(model, device=self._device, dtype=self._dtype, on_extrapolation="ignore").engine
        if not isinstance(engine, TorchEngine):
            raise ValueError(f"{model!r} did not load as a torch model (got the {engine.name} backend)")
        self.engine = engine
        self.student = self.engine.model  # a registered submodule: .to() and parameters() reach it
        self.min_distance = min_distance or None

    def _atoms(self, state) -> list:
        """The state's systems as ``ase.Atoms`` (positions and row-vector cells in float64)."""
        from ase import Atoms

        positions = state.positions.detach().to("cpu", torch.float64).numpy()
        cells = state.row_vector_cell.detach().to("cpu", torch.float64).numpy()
        numbers = state.atomic_numbers.detach().cpu().numpy()
        system = state.system_idx.detach().cpu().numpy()
        pbc = np.broadcast_to(np.asarray(state.pbc, dtype=bool), (3,))
        species = set(self.engine.species)
        out = []
        for b in range(state.n_systems):
            idx = np.flatnonzero(system == b)
            unknown = sorted(set(numbers[idx].tolist()) - species)
            if unknown:
                from ase.data import chemical_symbols as cs

                raise ValueError(f"system {b} has elements {[cs[z] for z in unknown]} that this student was not "
                                 f"trained on (it knows {[cs[z] for z in sorted(species)]})")
            out.append(Atoms(numbers=numbers[idx], positions=positions[idx], cell=cells[b], pbc=pbc))
        return out

    def forward(self, state, **_) -> dict:
        """energy [n_systems] (eV), forces [n_atoms, 3] (eV/Å), stress [n_systems, 3, 3]
        (eV/Å^3, ASE sign) and per-atom ``energies`` [n_atoms], in the state's atom order."""
        if isinstance(state, dict):
            state = ts.SimState(**state, masses=torch.ones_like(state["positions"]))
        graph = build_graph(self._atoms(state), cutoff=self.engine.cutoff, max_neighbors=self.engine.max_neighbors,
                            device=self._device, dtype=self._dtype, min_distance=self.min_distance)
        out = self.engine(graph, compute_stress=self._compute_stress)
        result = {"energy": out["energy"], "forces": out["forces"], "energies": out["energies"]}
        if self._compute_stress:
            result["stress"] = out["stress"]
        return result
