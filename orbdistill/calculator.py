"""StudentCalculator: any orbdistill student as an ASE calculator.

>>> from ase.build import bulk
>>> from orbdistill import StudentCalculator
>>> atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
>>> atoms.calc = StudentCalculator("cu-sevennet-v2")      # a packaged student, by name
>>> atoms.get_forces().shape
(4, 3)

The calculator is ASE glue only: which engine evaluates the student lives in
:mod:`orbdistill.engines`, the package layout in :mod:`orbdistill.packages`, graphs and the
neighbour-list skin in :class:`orbdistill.graph.GraphBuilder`.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Optional, Union

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.data import chemical_symbols
from ase.stress import full_3x3_to_voigt_6_stress

from .engines import BACKENDS, CompileEngine, OnnxEngine, TorchEngine, TorchScriptEngine, load_engine
from .graph import GraphBuilder
from .packages import find_package, read_card
from .utils import resolve_dtype

log = logging.getLogger(__name__)

__all__ = ["StudentCalculator", "BACKENDS", "ExtrapolationError", "ExtrapolationWarning"]


class ExtrapolationError(RuntimeError):
    """A structure outside a student's training domain, with ``on_extrapolation="raise"``."""


class ExtrapolationWarning(UserWarning):
    """A structure outside a student's training domain (``on_extrapolation="warn"``)."""

_ENGINES = (TorchEngine, TorchScriptEngine, OnnxEngine)  # CompileEngine is a TorchEngine


class StudentCalculator(Calculator):
    """ASE calculator for orbdistill students.

    Args:
        model: a package name (``"cu-sevennet-v2"``, found as :func:`orbdistill.packages.find_package`
            says), a package folder, a checkpoint file, a student model, or an engine
        device: "cpu", "cuda", ... (default: CUDA when available)
        dtype: "float32" (default) or "float64"
        min_distance: atoms closer than this (Å) raise an error (overlapping atoms)
        skin: Verlet skin (Å) of the neighbour list: reused while no pair outside it can have
            come within the cutoff, atom motion and cell deformation both counted
            (:class:`~orbdistill.graph.GraphBuilder`); 0 rebuilds it at every call. Ignored for
            models with a neighbour cap.
        num_threads: if given, set torch's CPU thread count (a process-wide setting)
        backend: "torch", "compile", "torchscript" or "onnx" (the last two need a package
            with exports)
        on_extrapolation: what to do when a structure leaves the package's training domain
            (its largest per-atom ``uncertainty`` above the calibrated threshold of the card):
            "warn" (default: a warning once per calculator, then a log line per structure),
            "raise" (:class:`ExtrapolationError`) or "ignore"
        tune_allocator: keep freed memory in the process instead of returning it to the
            system between steps (glibc; process-wide, results unchanged): up to 2.6x faster
            eager steps (``fused_kernels=False``, exported backends) from about 2,000 atoms
            on, but the peak memory grows as the heap fragments
            (:func:`orbdistill.utils.tune_allocator` has the figures); off by default. The
            fused kernels write no large per-edge tensors and gain little from it
        fused_kernels: on the torch backend on CPU, evaluate with the fused kernels of
            :mod:`orbdistill.kernels` (same results; compiled once on first use): "auto"
            (default: where the student has them and they build), True (raise if they
            cannot) or False (the eager model)

    Properties: ``energy``, ``free_energy`` (= energy), ``forces`` (eV/Å), ``stress``
    (Voigt xx, yy, zz, yz, xz, xy in eV/Å^3, ASE sign; only for cells with volume) and
    ``energies`` (per atom, eV). Packages with a fitted domain model (``domain.pt``) add
    ``uncertainty`` (per atom; training atoms score about 1, see
    :mod:`orbdistill.models.domain`) and ``max_uncertainty`` (the structure's largest), on
    the torch backend; those calibrated with a force-error model also ``force_error`` (per
    atom, estimated, eV/Å) and ``mean_force_error`` (the structure's estimated force MAE).
    :attr:`out_of_domain` says why the last structure was flagged.
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
        backend: str = "torch",
        on_extrapolation: str = "warn",
        tune_allocator: bool = False,
        fused_kernels: Union[bool, str] = "auto",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if tune_allocator:
            from .utils import tune_allocator as _tune

            _tune()
        if on_extrapolation not in ("warn", "raise", "ignore"):
            raise ValueError(f"on_extrapolation must be 'warn', 'raise' or 'ignore', got {on_extrapolation!r}")
        self.on_extrapolation = on_extrapolation
        self._warned = False
        self.domain, self.ood_threshold, self.force_error_model, self._ood = None, None, None, {}
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = resolve_dtype(dtype)
        if num_threads is not None:
            torch.set_num_threads(int(num_threads))
        self.card = None
        if isinstance(model, _ENGINES):
            self.engine = model
        elif isinstance(model, (str, os.PathLike)) and os.path.isfile(os.fspath(model)):
            from .models import load_student  # a checkpoint file

            self.engine = TorchEngine(load_student(model), self.device, self.dtype, fused_kernels=fused_kernels)
        elif isinstance(model, (str, os.PathLike)):  # a package folder or a package name
            package = find_package(model)
            self.card = read_card(package)
            self.engine = load_engine(package, backend, self.device, self.dtype, num_threads=num_threads,
                                      fused_kernels=fused_kernels)
            self.package = package
            self._load_domain(package)
        else:
            self.engine = (CompileEngine(model, self.device, self.dtype) if backend == "compile"
                           else TorchEngine(model, self.device, self.dtype, fused_kernels=fused_kernels))
        self.model = getattr(self.engine, "model", None)
        self.backend = self.engine.name
        self.species = set(self.engine.species)
        self.cutoff = self.engine.cutoff
        self.max_neighbors = self.engine.max_neighbors
        self.min_distance = min_distance
        self.graphs = GraphBuilder(self.cutoff, self.max_neighbors, skin=float(skin), min_distance=min_distance,
                                   dtype=self.dtype, device=self.device)
        self.skin = self.graphs.skin
        self.implemented_properties = ["energy", "free_energy", "forces", "stress", "energies"]
        if self.domain is not None and getattr(self.engine, "has_features", False):
            self.implemented_properties += ["uncertainty", "max_uncertainty"]
            if self.force_error_model is not None:
                self.implemented_properties += ["force_error", "mean_force_error"]

    def _load_domain(self, package) -> None:
        f = os.path.join(os.fspath(package), "domain.pt")
        if not os.path.exists(f):
            return
        if not getattr(self.engine, "has_features", False):  # exported graphs: no features, no model code
            log.info("the %s backend returns no features: no per-atom uncertainty (use backend='torch')", self.engine.name)
            return
        from .models import safe_torch_load
        from .models.domain import DomainModel

        self.domain = DomainModel.from_state(safe_torch_load(f, what="domain model")).to(self.device)
        self._ood = (self.card or {}).get("domain", {}).get("ood", {}) or {}
        self.ood_threshold = self._ood.get("threshold")
        if self._ood.get("force_error"):
            from .models.domain import ForceErrorModel

            self.force_error_model = ForceErrorModel.from_dict(self._ood["force_error"])

    @classmethod
    def from_package(cls, path, backend: str = "torch", device=None, dtype="float32", **kwargs) -> "StudentCalculator":
        """Load a packaged student: a folder, or a package name (see :mod:`orbdistill.packages`).

        Args:
            path: package folder (holds ``model.pt`` and ``card.json``) or name
            backend: "torch" (eager PyTorch), "compile" (``torch.compile`` of the model, dynamic
                shapes; compiles on the first call), "torchscript" or "onnx" (exported files
                in the package, see ``orbdistill export``; forces and stress inside the graph)
            device, dtype, **kwargs: as for the constructor
        """
        if backend not in BACKENDS:
            raise ValueError(f"Unknown backend {backend!r}; choose from {BACKENDS}.")
        return cls(find_package(path), backend=backend, device=device, dtype=dtype, **kwargs)

    @property
    def neighbour_list_stats(self) -> dict:
        """Calls and neighbour-list builds so far (with a skin, builds < calls)."""
        return {"calls": self.graphs.n_calls, "builds": self.graphs.n_builds, "skin": self.skin}

    # ------------------------------------------------------------------------------------
    def check_species(self, atoms) -> None:
        missing = sorted(set(int(z) for z in atoms.numbers) - self.species)
        if missing:
            names = ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in missing)
            trained = " ".join(chemical_symbols[z] for z in sorted(self.species))
            raise ValueError(f"This student was not trained on {names}; it covers: {trained}.")

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
        graph = self.graphs(atoms)
        want_features = self.domain is not None and getattr(self.engine, "has_features", False)
        out = self.engine(graph, compute_stress=has_volume, features=True) if want_features else \
            self.engine(graph, compute_stress=has_volume)
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
        if want_features:
            u = self.domain(out["features"], graph.atomic_numbers).detach().cpu().numpy().astype(np.float64)
            self.results["uncertainty"] = u
            self.results["max_uncertainty"] = float(u.max())
            sigma = None
            if self.force_error_model is not None:
                sigma = self.force_error_model(u, np.linalg.norm(forces, axis=1), atoms.numbers)
                self.results["force_error"] = sigma
                self.results["mean_force_error"] = float(sigma.mean())
            self._check_domain(atoms, u, sigma)

    @property
    def force_error_bar(self) -> Optional[float]:
        """The card's bar (eV/Å) on ``mean_force_error``; None without a force-error model."""
        return (self._ood.get("force_error") or {}).get("threshold_ev_a") if self.force_error_model else None

    @property
    def out_of_domain(self) -> list:
        """Why the last structure is outside this student's domain (the largest uncertainty
        above the card's threshold, the estimated force error above its bar); empty when it
        is inside or the package has no signal."""
        from .models.domain import domain_flags

        if "max_uncertainty" not in self.results:
            return []
        return domain_flags(self.results["max_uncertainty"], self.results.get("mean_force_error"), self._ood)

    def _check_domain(self, atoms, u: np.ndarray, sigma: Optional[np.ndarray] = None) -> None:
        if self.on_extrapolation == "ignore":
            return
        reasons = self.out_of_domain
        if not reasons:
            return
        worst = np.argsort(-(sigma if sigma is not None and u.max() <= (self.ood_threshold or np.inf) else u))[:5]
        msg = (f"{atoms.get_chemical_formula()}: outside this student's training domain ({'; '.join(reasons)}; "
               f"worst atoms {worst.tolist()}"
               + (f", {int((u > self.ood_threshold).sum())} of {len(u)} above the uncertainty threshold"
                  if self.ood_threshold is not None else "")
               + "). Its errors here can be far above the card's: check against the teacher, or distil with data "
               "that covers this structure.")
        if self.on_extrapolation == "raise":
            raise ExtrapolationError(msg)
        if not self._warned:
            warnings.warn(msg, ExtrapolationWarning, stacklevel=3)
            self._warned = True
        else:
            log.info(msg)
