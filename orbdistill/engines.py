"""Engines: the four ways to evaluate a student on an :class:`~orbdistill.graph.AtomGraph`.

Every engine is called as ``engine(graph, compute_stress) -> {"energy" [B], "forces" [N, 3],
"stress" [B, 3, 3], "energies" [N]}`` and knows ``species``, ``cutoff`` and
``max_neighbors``. The ASE calculator, the validation suite and the benchmarks use them;
none of them needs to know which one it holds.

================  ==========================================================================
``torch``         eager PyTorch (the model itself)
``compile``       ``torch.compile`` (Inductor) of the energy function, dynamic shapes
``torchscript``   an exported TorchScript file, forces and stress inside its graph
``onnx``          an exported ONNX file run by onnxruntime (no model code involved)
================  ==========================================================================
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import torch

from .graph import GRAPH_INPUTS
from .packages import MODEL_FILE, check_export_matches, exported_file
from .utils import dtype_name, resolve_dtype

log = logging.getLogger(__name__)

BACKENDS = ("torch", "compile", "torchscript", "onnx")


class TorchEngine:
    """Eager PyTorch: the student model itself."""

    name = "torch"

    def __init__(self, model, device, dtype, fused_kernels="auto"):
        self.model = model.to(device=device, dtype=resolve_dtype(dtype)).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        #: whether the fused CPU kernels (:mod:`orbdistill.kernels`) evaluate the model
        self.fused = False
        if fused_kernels and torch.device(device).type == "cpu" and self.model.supports_fused_kernels:
            self.fused = self.model.use_fused_kernels(fused_kernels)
        elif fused_kernels is True:
            raise ValueError(f"fused_kernels=True needs a CPU device and a student that has them "
                             f"({type(self.model).__name__} on {device})")
        self.species = [int(z) for z in self.model.species.tolist()]
        self.cutoff = self.model.cutoff
        self.max_neighbors = self.model.max_neighbors

    #: the engine can return the invariant per-atom features (the out-of-domain signal's input)
    has_features = True

    def __call__(self, graph, compute_stress: bool, features: bool = False) -> dict:
        out = self.model.predict(graph, compute_forces=True, compute_stress=compute_stress, features=features)
        return {k: v.detach() for k, v in out.items()}


def _first_line(exc: BaseException, limit: int = 400) -> str:
    text = " ".join(str(exc).split())
    return text[:limit] + ("..." if len(text) > limit else "")


def _compiler_problem(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return any(k in text for k in ("invalidcxxcompiler", "no working c++ compiler", "c++ compiler", "cxx compiler",
                                   "triton", "g++: not found", "gcc: not found", "command not found"))


class CompileEngine(TorchEngine):
    """``torch.compile`` (Inductor) of the model's energy function, with dynamic shapes.

    The forward pass is compiled by Dynamo/Inductor and its gradient pass by AOTAutograd,
    so forces and stress come from compiled kernels; the autograd call that joins them stays
    in Python. Atom and edge counts are dynamic (``dynamic=True``): MD steps whose edge count
    changes reuse the compiled code. The first call compiles (tens of seconds on CPU).

    Structures with one atom or no edge are evaluated eagerly: size-0 and size-1 dimensions
    are specialised by Dynamo, and compiling a separate graph for them would cost a minute to
    save a millisecond.
    """

    name = "compile"
    has_features = False

    def __init__(self, model, device, dtype, mode: Optional[str] = None):
        super().__init__(model, device, dtype, fused_kernels=False)  # Inductor compiles the eager graph
        compiled = torch.compile(self.model.atomic_energies, dynamic=True, mode=mode)

        def energies(*args):
            # Python floats in the model (exponents, constants) stay constants: with dynamic
            # shapes Dynamo would otherwise turn them into graph inputs, which Inductor's
            # backward lowering rejects (torch 2.13)
            with torch._dynamo.config.patch(specialize_float=True):
                return compiled(*args)

        self._energies = energies
        self._compiled_once = False

    def __call__(self, graph, compute_stress: bool, features: bool = False) -> dict:
        from .models.base import conservative_outputs

        if graph.num_atoms < 2 or graph.num_edges < 2:
            return super().__call__(graph, compute_stress)
        try:
            out = conservative_outputs(self._energies, graph.inputs(), compute_forces=True,
                                       compute_stress=compute_stress)
        except Exception as exc:
            if self._compiled_once:
                raise
            if _compiler_problem(exc):
                hint = ("Inductor needs a working C++ compiler on CPU (gcc or clang on PATH) and Triton on CUDA; "
                        "install one, or use backend='torchscript' or 'torch'.")
            else:
                hint = "use backend='torchscript' or 'torch' meanwhile, and report this with the structure."
            raise RuntimeError(f"torch.compile failed on this student: {type(exc).__name__}: {_first_line(exc)}. "
                               + hint) from exc
        self._compiled_once = True
        return {k: v.detach() for k, v in out.items()}


class _ExportedEngine:
    has_features = False  # the exported graphs return energy, forces, stress and per-atom energies

    def _meta(self, meta: dict, path, dtype, package):
        if meta.get("dtype") != dtype_name(dtype):
            raise ValueError(f"{path} was exported in {meta.get('dtype')}, not {dtype_name(dtype)}.")
        if package is not None:
            check_export_matches(package, path, meta.get("weights_sha256"))
        self.species = [int(z) for z in json.loads(meta["species"])]
        self.cutoff = float(meta["cutoff"])
        self.max_neighbors = json.loads(meta.get("max_neighbors", "null"))


class TorchScriptEngine(_ExportedEngine):
    """A TorchScript file with forces and stress inside its graph."""

    name = "torchscript"

    def __init__(self, path, device, dtype, package=None):
        from .export.files import read_torchscript

        self.module, meta = read_torchscript(path, map_location=device)
        self._meta(meta, path, dtype, package)

    def __call__(self, graph, compute_stress: bool) -> dict:
        e, f, s, ea = self.module(*graph.inputs())
        return {"energy": e, "forces": f, "stress": s, "energies": ea}


class OnnxEngine(_ExportedEngine):
    """An ONNX file run by onnxruntime (no model code involved)."""

    name = "onnx"

    def __init__(self, path, device, dtype, num_threads=None, package=None):
        from .export.onnx_runtime import OnnxRunner

        self.runner = OnnxRunner(path, device=str(device), num_threads=num_threads or 0)
        self._meta(self.runner.metadata, path, dtype, package)

    def __call__(self, graph, compute_stress: bool) -> dict:
        feeds = {name: t.detach().cpu().numpy() for name, t in zip(GRAPH_INPUTS, graph.inputs())}
        return {k: torch.from_numpy(v) for k, v in self.runner(feeds).items()}


def load_engine(package, backend: str = "torch", device=None, dtype="float32", num_threads=None,
                fused_kernels="auto"):
    """The engine ``backend`` for the package folder ``package`` (exported backends import no model code).
    ``fused_kernels`` applies to the torch backend (:class:`TorchEngine`)."""
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; choose from {BACKENDS}.")
    package = Path(package)
    dt = resolve_dtype(dtype)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if backend in ("torch", "compile"):
        from .models import load_student

        if backend == "torch":
            return TorchEngine(load_student(package / MODEL_FILE), dev, dt, fused_kernels=fused_kernels)
        return CompileEngine(load_student(package / MODEL_FILE), dev, dt)
    f = exported_file(package, backend, dtype_name(dt))
    if not f.exists():
        raise FileNotFoundError(
            f"{f} does not exist: export it first with `orbdistill export {package} --format {backend} "
            f"--dtype {dtype_name(dt)}`."
        )
    if backend == "torchscript":
        return TorchScriptEngine(f, dev, dt, package=package)
    return OnnxEngine(f, dev, dt, num_threads=num_threads, package=package)
