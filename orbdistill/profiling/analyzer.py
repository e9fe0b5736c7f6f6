"""Layer-by-layer analysis of a model: parameters, FLOPs (forward and gradient pass),
latency and memory per module.

>>> from orbdistill.profiling import analyze  # doctest: +SKIP
>>> report = analyze("orb-v3-conservative-20-omat", n_atoms_hint=32)  # doctest: +SKIP
>>> report["total_params"]  # doctest: +SKIP
25510582
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from typing import Optional

import numpy as np
import torch

from orbdistill.structures import cu_fcc

from .flops import OpCounter
from .targets import Target, resolve_target

log = logging.getLogger(__name__)

#: substrings of module class names or op names that mark specialised operations
SPECIAL_MODULES = {
    "SphericalHarmonics": "spherical harmonics (real, per edge)",
    "TensorProduct": "e3nn tensor product (Clebsch-Gordan contractions)",
    "Attention": "attention-gated message passing (sigmoid/softmax gates per edge)",
    "Gate": "gated non-linearity",
    "Bessel": "Bessel radial basis",
    "ZBL": "ZBL pair repulsion",
    "Embedding": "element embedding table",
    "RMSNorm": "RMS normalisation",
    "LayerNorm": "layer normalisation",
}
SPECIAL_OPS = {
    "index_add": "scatter-sum aggregation (index_add)",
    "scatter_add": "scatter-sum aggregation (scatter_add)",
    "scatter_reduce": "scatter reduction",
    "index_put": "indexed accumulation (index_put)",
    "matrix_exp": "matrix exponential (rotation generator)",
    "linalg_det": "determinant (cell volume)",
    "sigmoid": "sigmoid gates",
}


def default_structure(n_atoms_hint: int = 256, rattle: float = 0.01, seed: int = 0):
    """Cu fcc (a = 3.61 Å) near ``n_atoms_hint`` atoms, rattled by ``rattle`` Å (see
    :func:`orbdistill.structures.cu_fcc`)."""
    return cu_fcc(n_atoms_hint, rattle=rattle, seed=seed)


def _shapes(obj, limit: int = 6):
    if isinstance(obj, torch.Tensor):
        return [list(obj.shape)]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        out = []
        for v in obj:
            out.extend(_shapes(v, limit))
            if len(out) >= limit:
                break
        return out[:limit]
    if hasattr(obj, "__dict__") and type(obj).__name__ in ("AtomGraphs", "AtomGraph", "AtomGraphData"):
        return [type(obj).__name__]
    return []


def _bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_bytes(v) for v in obj)
    return 0


def _sync(device):
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class _ModuleTimer:
    """Forward hooks recording inclusive wall time, shapes and output sizes per module."""

    def __init__(self, root: torch.nn.Module, device=None, record_shapes: bool = False):
        self.root = root
        self.device = device
        self.record_shapes = record_shapes
        self.times = defaultdict(list)
        self.calls = defaultdict(int)
        self.shapes = {}
        self._start = {}
        self._handles = []

    def __enter__(self):
        for name, mod in self.root.named_modules():
            self._handles.append(mod.register_forward_pre_hook(self._pre(name), with_kwargs=True))
            self._handles.append(mod.register_forward_hook(self._post(name), with_kwargs=True, always_call=True))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()

    def _pre(self, name):
        def hook(mod, args, kwargs):
            _sync(self.device)
            self._start.setdefault(name, []).append(time.perf_counter())
            if self.record_shapes and name not in self.shapes:
                self.shapes[name] = {"input_shapes": _shapes(list(args) + list(kwargs.values()))}

        return hook

    def _post(self, name):
        def hook(mod, args, kwargs, out):
            _sync(self.device)
            t0 = self._start[name].pop()
            self.times[name].append(1e3 * (time.perf_counter() - t0))
            self.calls[name] += 1
            if self.record_shapes and "output_shapes" not in self.shapes.get(name, {"output_shapes": 1}):
                self.shapes[name]["output_shapes"] = _shapes(out)
                self.shapes[name]["output_bytes"] = _bytes(out)

        return hook


def _timed_step(target: Target, inputs, device):
    marks = {}

    def mark():
        _sync(device)
        marks["t"] = time.perf_counter()

    _sync(device)
    t0 = time.perf_counter()
    target.step(inputs, mark)
    _sync(device)
    t1 = time.perf_counter()
    t_mark = marks.get("t", t1)
    return 1e3 * (t_mark - t0), 1e3 * (t1 - t_mark)


def measure_memory(target_name: str, structure_path: Optional[str], n_atoms_hint: int, threads: int) -> dict:
    """Peak resident memory (MB) of one step in a fresh Python process (CPU)."""
    from .memory import probe

    out = probe(structure_path, target=target_name, n_atoms=n_atoms_hint, threads=threads)
    if "error" in out:
        log.warning("memory probe failed: %s", out["error"])
    return out


def analyze(
    target,
    structure=None,
    structure_path: Optional[str] = None,
    repeats: int = 3,
    device: Optional[str] = None,
    memory: bool = True,
    n_atoms_hint: int = 256,
) -> dict:
    """Analyse a model on one structure. Returns the report as a dictionary.

    Args:
        target: teacher name, student name/checkpoint/package, or a :class:`Target`
        structure: ``ase.Atoms`` (default: 256-atom Cu fcc, rattled 0.01 Å)
        structure_path: file the structure came from (recorded; used by the memory probe)
        repeats: timed repetitions after one warm-up (median reported)
        device: torch device ("cpu" default)
        memory: measure peak memory in a fresh process (CPU) / max allocated (CUDA)
    """
    device = device or "cpu"
    tgt = resolve_target(target, device=device)
    if structure is None:
        structure = default_structure(n_atoms_hint)
    module = tgt.module
    module.eval()
    total_params = int(sum(p.numel() for p in module.parameters()))

    # graph construction
    t0 = time.perf_counter()
    inputs = tgt.make_inputs(structure)
    graph_ms = [1e3 * (time.perf_counter() - t0)]
    for _ in range(max(0, repeats - 1)):
        t0 = time.perf_counter()
        tgt.make_inputs(structure)
        graph_ms.append(1e3 * (time.perf_counter() - t0))
    n_edges = tgt.count_edges(inputs)

    # FLOPs (one pass, every op counted and attributed to its innermost module)
    counted_inputs = tgt.make_inputs(structure)
    counter = OpCounter(module)
    with counter:
        with _ModuleTimer(module, device, record_shapes=True) as shape_rec:
            tgt.step(counted_inputs)
    counts = counter.result

    # latency: warm-up, then repeats; whole-step timing without hooks
    tgt.step(tgt.make_inputs(structure))
    fwd, bwd = [], []
    for _ in range(repeats):
        inp = tgt.make_inputs(structure)
        f, b = _timed_step(tgt, inp, device)
        fwd.append(f)
        bwd.append(b)
    timer = _ModuleTimer(module, device)
    for _ in range(repeats):
        inp = tgt.make_inputs(structure)
        with timer:
            tgt.step(inp)

    mem = {}
    if memory:
        if torch.device(device).type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            tgt.step(tgt.make_inputs(structure))
            torch.cuda.synchronize()
            mem = {"peak_cuda_allocated_mb": torch.cuda.max_memory_allocated() / 2**20}
        elif isinstance(target, str):
            mem = measure_memory(target, structure_path, len(structure), torch.get_num_threads())

    # rows: every module, inclusive and self values
    names = [n for n, _ in module.named_modules()]
    mods = dict(module.named_modules())
    children = defaultdict(list)
    for n in names:
        if n:
            parent = n.rsplit(".", 1)[0] if "." in n else ""
            children[parent].append(n)
    flops_self = {n: int(counts.by_module.get(("forward", n), 0)) for n in names}
    params_self = {n: int(sum(p.numel() for p in mods[n].parameters(recurse=False))) for n in names}
    lat_incl = {n: (statistics.median(timer.times[n]) * timer.calls[n] / max(1, repeats)) if timer.times.get(n) else 0.0
                for n in names}

    flops_incl, params_incl = {}, {}
    for n in reversed(names):
        flops_incl[n] = flops_self[n] + sum(flops_incl[c] for c in children[n])
        params_incl[n] = params_self[n] + sum(params_incl[c] for c in children[n])

    # containers that are never called themselves (ModuleList, ModuleDict) take the
    # time of their children
    for n in reversed(names):
        if not timer.times.get(n) and children[n]:
            lat_incl[n] = sum(lat_incl[c] for c in children[n])
    fwd_ms = statistics.median(fwd)
    bwd_ms = statistics.median(bwd) if tgt.conservative else 0.0
    # the root's forward is rarely called as such (targets call submodules): its latency
    # is the whole forward pass
    lat_incl[""] = fwd_ms
    layers = []
    for n in names:
        m = mods[n]
        child_lat = sum(lat_incl[c] for c in children[n])
        row = {
            "name": n or "(model)",
            "type": type(m).__name__,
            "library": type(m).__module__.split(".")[0],
            "depth": 0 if not n else n.count(".") + 1,
            "params": params_incl[n],
            "params_self": params_self[n],
            "flops_forward": flops_incl[n],
            "flops_forward_self": flops_self[n],
            "latency_ms": round(lat_incl[n], 4),
            "latency_ms_self": round(max(0.0, lat_incl[n] - child_lat), 4),
            "calls": timer.calls.get(n, 0) // max(1, repeats),
            "input_shapes": shape_rec.shapes.get(n, {}).get("input_shapes", []),
            "output_shapes": shape_rec.shapes.get(n, {}).get("output_shapes", []),
            "output_bytes": shape_rec.shapes.get(n, {}).get("output_bytes", 0),
        }
        layers.append(row)

    blocks = _blocks(names, children, flops_incl, params_incl, lat_incl, flops_self, params_self, counts.forward)
    if tgt.conservative:
        blocks.append({"name": "gradient pass (forces, stress)", "params": 0, "flops": counts.backward,
                       "latency_ms": round(bwd_ms, 3), "phase": "backward"})

    cat = defaultdict(dict)
    for (phase, c), v in counts.by_category.items():
        cat[phase][c] = int(v)
    top_ops = sorted(
        ({"phase": p, "op": o, "calls": r.calls, "flops": r.flops} for (p, o), r in counts.by_op.items() if r.flops),
        key=lambda d: -d["flops"],
    )[:25]

    special = _specialised(mods, counts, tgt)
    deps = _dependencies(mods, params_self)

    report = {
        "target": tgt.name,
        "kind": tgt.kind,
        "family": tgt.family,
        "random_weights": tgt.random_weights,
        "warning": ("RANDOM WEIGHTS: architecture analysis only; parameters, FLOPs and speed are "
                    "those of the real model, energies are not.") if tgt.random_weights else None,
        "conservative": tgt.conservative,
        "structure": {
            "formula": structure.get_chemical_formula(),
            "n_atoms": len(structure),
            "pbc": [bool(x) for x in structure.pbc],
            "cell": np.asarray(structure.cell.array).round(6).tolist(),
            "source": structure_path or "default: Cu fcc a=3.61 Å cubic supercell, rattled 0.01 Å (seed 0)",
        },
        "graph": {
            "cutoff": tgt.cutoff,
            "max_neighbors": tgt.max_neighbors,
            "n_edges": n_edges,
            "mean_neighbors": n_edges / len(structure) if n_edges >= 0 else None,
        },
        "total_params": total_params,
        "flops_forward_total": counts.forward,
        "flops_backward_total": counts.backward if tgt.conservative else 0,
        "flops_by_category": dict(cat),
        "flops_per_atom_step": (counts.forward + counts.backward) / len(structure),
        "latency_ms": {
            "graph_construction": round(statistics.median(graph_ms), 3),
            "forward": round(fwd_ms, 3),
            "backward": round(bwd_ms, 3),
            "model_step": round(fwd_ms + bwd_ms, 3),
            "total_step": round(fwd_ms + bwd_ms + statistics.median(graph_ms), 3),
            "repeats": repeats,
            "statistic": "median",
        },
        "memory": mem,
        "environment": {
            "device": str(device),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
        },
        "layers": layers,
        "blocks": blocks,
        "top_ops": top_ops,
        "specialised_ops": special,
        "dependencies": deps,
        "unclassified_ops": sorted(counts.unclassified_ops),
        "notes": tgt.notes,
    }
    return report


def _blocks(names, children, flops_incl, params_incl, lat_incl, flops_self, params_self, total_fwd):
    """A partition of the forward pass into readable blocks: expand any module holding
    more than 40 % of the forward FLOPs into its children, keep the rest whole."""
    rows = []

    def visit(n):
        kids = [c for c in children[n] if params_incl[c] or flops_incl[c]]
        if n == "" or (kids and total_fwd and flops_incl[n] > 0.4 * total_fwd):
            child_lat = sum(lat_incl[c] for c in children[n])
            own_flops = flops_self[n] + sum(flops_incl[c] for c in children[n] if c not in kids)
            own_params = params_self[n] + sum(params_incl[c] for c in children[n] if c not in kids)
            if own_flops or own_params:
                rows.append({"name": f"{n or '(outside modules)'} (own ops)" if n else "(outside modules)",
                             "params": own_params, "flops": own_flops,
                             "latency_ms": round(max(0.0, lat_incl[n] - child_lat), 3), "phase": "forward"})
            for c in kids:
                visit(c)
        else:
            rows.append({"name": n, "params": params_incl[n], "flops": flops_incl[n],
                         "latency_ms": round(lat_incl[n], 3), "phase": "forward"})

    visit("")
    return rows


def _specialised(mods, counts, tgt):
    found = {}
    for name, m in mods.items():
        cls = type(m).__name__
        for key, desc in SPECIAL_MODULES.items():
            if key.lower() in cls.lower():
                d = found.setdefault(desc, {"operation": desc, "where": [], "library": type(m).__module__.split(".")[0]})
                if len(d["where"]) < 6:
                    d["where"].append(name or "(model)")
    for (phase, op), rec in counts.by_op.items():
        for key, desc in SPECIAL_OPS.items():
            if op.startswith(key):
                d = found.setdefault(desc, {"operation": desc, "where": [], "library": "torch (aten)"})
                d.setdefault("flops", 0)
                d["flops"] += rec.flops
                d["where"].append(f"{phase}: aten.{op} x{rec.calls}")
    if tgt.max_neighbors:
        found["knn"] = {"operation": f"k-nearest-neighbour graph (k={tgt.max_neighbors}, r={tgt.cutoff} Å)",
                        "where": ["graph construction"], "library": tgt.family}
    return list(found.values())


def _dependencies(mods, params_self):
    libs = defaultdict(lambda: {"modules": 0, "params": 0, "types": set()})
    for name, m in mods.items():
        lib = type(m).__module__.split(".")[0]
        libs[lib]["modules"] += 1
        libs[lib]["params"] += params_self[name]
        libs[lib]["types"].add(type(m).__name__)
    return [{"library": k, "modules": v["modules"], "params": v["params"], "types": sorted(v["types"])[:12]}
            for k, v in sorted(libs.items(), key=lambda kv: -kv[1]["params"])]
