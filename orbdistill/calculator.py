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

import json
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


class TorchEngine:
    """Eager PyTorch: the student model itself."""

    name = "torch"

    def __init__(self, model, device, dtype):
        self.model = model.to(device=device, dtype=dtype).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.species = [int(z) for z in self.model.species.tolist()]
        self.cutoff = self.model.cutoff
        self.max_neighbors = self.model.max_neighbors

    def __call__(self, graph, compute_stress: bool) -> dict:
        out = self.model.predict(graph, compute_forces=True, compute_stress=compute_stress)
        return {k: v.detach() for k, v in out.items()}


class _CompiledEnergies:
    """Stands in for the model inside ``conservative_outputs``: per-atom energies through a
    ``torch.compile``d function, everything else (strain, forces, stress) unchanged."""

    def __init__(self, fn):
        self.atomic_energies = fn


class CompileEngine(TorchEngine):
    """``torch.compile`` (Inductor) of the model's energy function, with dynamic shapes.

    The forward pass is compiled by Dynamo/Inductor and its gradient pass by AOTAutograd,
    so forces and stress come from compiled kernels; the autograd call that joins them stays
    in Python. Atom and edge counts are marked dynamic (``dynamic=True``): MD steps whose
    edge count changes reuse the compiled code instead of recompiling. The first call
    compiles (tens of seconds on CPU); a new number of structures per call compiles once
    more.
    """

    name = "compile"

    def __init__(self, model, device, dtype, mode: Optional[str] = None):
        super().__init__(model, device, dtype)
        compiled = torch.compile(self.model.atomic_energies, dynamic=True, mode=mode)

        def energies(*args):
            # Python floats in the model (exponents, constants) stay constants: with dynamic
            # shapes Dynamo would otherwise turn them into graph inputs, which Inductor's
            # backward lowering rejects (torch 2.13)
            with torch._dynamo.config.patch(specialize_float=True):
                return compiled(*args)

        self._energies = _CompiledEnergies(energies)
        self._checked = False

    def __call__(self, graph, compute_stress: bool) -> dict:
        from .models.base import conservative_outputs

        try:
            out = conservative_outputs(self._energies, graph.positions, graph.atomic_numbers, graph.edge_index,
                                       graph.cell_shifts, graph.cell, graph.batch, compute_forces=True,
                                       compute_stress=compute_stress)
        except Exception as exc:
            if self._checked:
                raise
            raise RuntimeError(
                f"torch.compile could not compile this student ({type(exc).__name__}: {str(exc)[:300]}). Inductor "
                "needs a working C++ compiler on CPU (gcc or clang on PATH) and Triton on CUDA; "
                "use backend='torchscript' or 'torch' instead."
            ) from exc
        self._checked = True
        return {k: v.detach() for k, v in out.items()}


class _ExportedEngine:
    def _meta(self, meta: dict):
        self.species = [int(z) for z in json.loads(meta["species"])]
        self.cutoff = float(meta["cutoff"])
        self.max_neighbors = json.loads(meta.get("max_neighbors", "null"))


class TorchScriptEngine(_ExportedEngine):
    """A TorchScript file with forces and stress inside its graph."""

    name = "torchscript"

    def __init__(self, path, device, dtype):
        from .export.traced import read_torchscript_metadata

        meta = read_torchscript_metadata(path)
        if meta.get("dtype") != str(dtype).replace("torch.", ""):
            raise ValueError(f"{path} was exported in {meta.get('dtype')}, not {dtype}.")
        self.module = torch.jit.load(str(path), map_location=device)
        self._meta(meta)

    def __call__(self, graph, compute_stress: bool) -> dict:
        e, f, s, ea = self.module(graph.positions, graph.atomic_numbers, graph.edge_index, graph.cell_shifts,
                                  graph.cell, graph.batch)
        return {"energy": e, "forces": f, "stress": s, "energies": ea}


class OnnxEngine(_ExportedEngine):
    """An ONNX file run by onnxruntime (no model code involved)."""

    name = "onnx"

    def __init__(self, path, device, dtype, num_threads=None):
        from .export.onnx_runtime import OnnxRunner

        self.runner = OnnxRunner(path, device=str(device), num_threads=num_threads or 0)
        meta = self.runner.metadata
        if meta.get("dtype") != str(dtype).replace("torch.", ""):
            raise ValueError(f"{path} was exported in {meta.get('dtype')}, not {dtype}.")
        self._meta(meta)

    def __call__(self, graph, compute_stress: bool) -> dict:
        feeds = {
            "positions": graph.positions.cpu().numpy(), "atomic_numbers": graph.atomic_numbers.cpu().numpy(),
            "edge_index": graph.edge_index.cpu().numpy(), "cell_shifts": graph.cell_shifts.cpu().numpy(),
            "cell": graph.cell.cpu().numpy(), "batch": graph.batch.cpu().numpy(),
        }
        return {k: torch.from_numpy(v) for k, v in self.runner(feeds).items()}


BACKENDS = ("torch", "compile", "torchscript", "onnx")


def exported_file(package, backend: str, dtype: torch.dtype) -> str:
    suffix = {"torchscript": "torchscript", "onnx": "onnx"}[backend]
    return os.path.join(os.fspath(package), f"model_{str(dtype).replace('torch.', '')}.{suffix}")


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
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = _resolve_dtype(dtype)
        if num_threads is not None:
            torch.set_num_threads(int(num_threads))
        if isinstance(model, (TorchEngine, _ExportedEngine)):  # CompileEngine is a TorchEngine
            self.engine = model
        else:
            if isinstance(model, (str, os.PathLike)):
                from .models import load_student

                model = load_student(model)
            self.engine = TorchEngine(model, self.device, self.dtype)
        self.model = getattr(self.engine, "model", None)
        self.backend = self.engine.name
        self.species = set(self.engine.species)
        self.cutoff = self.engine.cutoff
        self.max_neighbors = self.engine.max_neighbors
        self.min_distance = min_distance
        self.skin = float(skin) if self.max_neighbors is None else 0.0
        self.implemented_properties = ["energy", "free_energy", "forces", "stress", "energies"]
        self._nl_cache = None

    @classmethod
    def from_package(cls, path, backend: str = "torch", device=None, dtype="float32", **kwargs) -> "StudentCalculator":
        """Load a packaged student (a folder under ``calculators/``).

        Args:
            path: package folder (holds ``model.pt`` and ``card.json``)
            backend: "torch" (eager PyTorch), "compile" (``torch.compile`` of the model, dynamic
                shapes; compiles on the first call), "torchscript" or "onnx" (exported files
                in the package, see ``orbdistill export``; forces and stress inside the graph)
            device, dtype, **kwargs: as for the constructor
        """
        from .export.package import read_card

        path = os.fspath(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"Student package {path!r} does not exist (expected a folder with model.pt and card.json).")
        if backend not in BACKENDS:
            raise ValueError(f"Unknown backend {backend!r}; choose from {BACKENDS}.")
        card = read_card(path)
        dt = _resolve_dtype(dtype)
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if backend in ("torch", "compile"):
            from .models import load_student

            cls_ = TorchEngine if backend == "torch" else CompileEngine
            engine = cls_(load_student(os.path.join(path, "model.pt")), dev, dt)
        else:
            f = exported_file(path, backend, dt)
            if not os.path.exists(f):
                raise FileNotFoundError(
                    f"{f} does not exist: export it first with `orbdistill export {path} --format {backend} "
                    f"--dtype {str(dt).replace('torch.', '')}`."
                )
            if backend == "torchscript":
                engine = TorchScriptEngine(f, dev, dt)
            else:
                engine = OnnxEngine(f, dev, dt, num_threads=kwargs.get("num_threads"))
        calc = cls(engine, device=dev, dtype=dt, **kwargs)
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
        cutoff = self.cutoff
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
        return build_graph(atoms, cutoff, self.max_neighbors, device=self.device, dtype=self.dtype,
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
        out = self.engine(graph, compute_stress=has_volume)
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
