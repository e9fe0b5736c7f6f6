"""Export students with forces and stress inside the exported graph.

Exported graphs cannot call ``torch.autograd.grad``. Instead, the joint computation
"energy and its gradient with respect to positions and strain" is traced into plain ATen
operations: ``torch.func.grad`` differentiates the energy (parameters are explicit inputs
of the traced function) and ``make_fx(tracing_mode="symbolic")`` records the forward and
backward operations with symbolic numbers of atoms, edges and structures. The traced
graph then goes to ONNX (``torch.onnx.export(dynamo=True)``, run by onnxruntime) or to
TorchScript (``torch.jit.script`` of the traced graph).

Inputs of every exported model (the graph contract; the neighbour list stays outside):

==================  =============  ==========
name                shape          dtype
==================  =============  ==========
``positions``       [N, 3]         float
``atomic_numbers``  [N]            int64
``edge_index``      [2, E]         int64
``cell_shifts``     [E, 3]         int64
``cell``            [B, 3, 3]      float
``batch``           [N]            int64
==================  =============  ==========

Outputs: ``energy`` [B] (eV), ``forces`` [N, 3] (eV/Å), ``stress`` [B, 3, 3] (eV/Å^3, ASE
sign, zero without a volume), ``energies`` [N] (eV).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from orbdistill.graph import GRAPH_INPUTS
from orbdistill.models.base import StudentModel, apply_strain, stress_from_virial

from .onnx_runtime import OUTPUT_NAMES  # one list for exporter and runner

log = logging.getLogger(__name__)

INPUT_NAMES = list(GRAPH_INPUTS)


def _energy_and_gradients(model: StudentModel):
    """f(params, buffers, *graph tensors) -> (energy, forces, stress, energies), autograd-free
    once traced."""

    def energy_fn(params, buffers, positions, displacement, atomic_numbers, edge_index, cell_shifts, cell, batch):
        pos, c = apply_strain(positions, cell, batch, displacement)
        e = torch.func.functional_call(model, (params, buffers), (pos, atomic_numbers, edge_index, cell_shifts, c, batch))
        return e.sum(), e

    grad_fn = torch.func.grad(energy_fn, argnums=(2, 3), has_aux=True)

    def full(params, buffers, positions, atomic_numbers, edge_index, cell_shifts, cell, batch):
        displacement = torch.zeros_like(cell)
        (g_pos, g_disp), e_atoms = grad_fn(params, buffers, positions, displacement, atomic_numbers, edge_index,
                                           cell_shifts, cell, batch)
        energy = torch.zeros(cell.shape[0], dtype=e_atoms.dtype, device=e_atoms.device).index_add(0, batch, e_atoms)
        return energy, -g_pos, stress_from_virial(g_disp, cell), e_atoms

    return full


def example_inputs(model: StudentModel, dtype=torch.float32) -> Tuple[torch.Tensor, ...]:
    """Example graph tensors for tracing: a batch of two periodic structures, 29 + 24 = 53
    atoms of the model's first species.

    The sizes matter: symbolic tracing gives equal sizes one symbol ("duck sizing"), and
    the weights are traced as inputs, so an example whose atom count equals a layer width
    would freeze the atom count; a single structure would freeze the batch size to 1. 53
    atoms in 2 structures matches no width orbdistill uses.
    """
    from ase.build import bulk

    from orbdistill.graph import build_graph

    z = int(model.species[0])
    structures = []
    for n_remove, seed in ((3, 0), (8, 1)):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
        del atoms[list(range(n_remove))]
        atoms.numbers[:] = z
        atoms.rattle(0.05, seed=seed)
        structures.append(atoms)
    g = build_graph(structures, model.cutoff, model.max_neighbors, dtype=dtype)
    widths = {int(d) for p in model.parameters() for d in p.shape}
    if g.num_atoms in widths or g.num_edges in widths:  # pragma: no cover - guard for exotic widths
        raise RuntimeError(f"example sizes ({g.num_atoms} atoms, {g.num_edges} edges) collide with a layer width")
    return g.inputs()


def trace_student(model: StudentModel, dtype=torch.float32) -> torch.fx.GraphModule:
    """Trace energy, forces and stress of ``model`` into an autograd-free ``GraphModule``
    whose ``forward`` takes the six graph tensors; the weights are buffers of the module."""
    model = model.to(dtype=dtype).eval()
    fused = getattr(model, "_fused", False)
    model._fused = False  # TorchScript and ONNX files hold standard operators only (portable)
    try:
        return trace_with_weights(model, _energy_and_gradients(model), example_inputs(model, dtype), INPUT_NAMES)
    finally:
        model._fused = fused


def trace_with_weights(model: StudentModel, full, inputs, input_names) -> torch.fx.GraphModule:
    """Trace ``full(params, buffers, *inputs)`` with symbolic sizes into a ``GraphModule``
    whose ``forward`` takes ``inputs`` only (named ``input_names``); the weights become
    buffers of the module."""
    from torch.fx.experimental.proxy_tensor import make_fx

    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    names = list(params) + list(buffers)
    values = list(params.values()) + list(buffers.values())
    n_params, n_weights = len(params), len(names)

    def flat(*args):
        p = dict(zip(names[:n_params], args[:n_params]))
        b = dict(zip(names[n_params:n_weights], args[n_params:n_weights]))
        return full(p, b, *args[n_weights:])

    gm = make_fx(flat, tracing_mode="symbolic")(*values, *inputs)
    # weights become buffers of the traced module instead of inputs
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    last = placeholders[-1]
    for i, (node, value) in enumerate(zip(placeholders[:n_weights], values)):
        gm.register_buffer(f"w{i}", value.detach().clone())
        with gm.graph.inserting_after(last):
            attr = gm.graph.get_attr(f"w{i}")
        node.replace_all_uses_with(attr)
        gm.graph.erase_node(node)
    for node, name in zip(placeholders[n_weights:], input_names):
        node.name = node.target = name
    gm.graph._codegen = torch.fx.graph.CodeGen()  # plain positional forward, no pytree
    gm.graph.lint()
    gm.recompile()
    return gm.eval()


def metadata(model: StudentModel, dtype: torch.dtype, fmt: str, weights_sha256: Optional[str] = None) -> Dict[str, str]:
    from orbdistill._version import __version__

    return {
        "weights_sha256": weights_sha256 or "",
        "orbdistill_version": __version__,
        "format": fmt,
        "kind": model.config.kind,
        "species": json.dumps([int(z) for z in model.species.tolist()]),
        "cutoff": repr(float(model.cutoff)),
        "max_neighbors": json.dumps(model.max_neighbors),
        "dtype": str(dtype).replace("torch.", ""),
        "inputs": json.dumps(INPUT_NAMES),
        "outputs": json.dumps(OUTPUT_NAMES),
        "config": json.dumps(model.config.to_dict()),
    }


def export_onnx(model: StudentModel, path, dtype=torch.float32, weights_sha256: Optional[str] = None) -> Path:
    """Write an ONNX file whose graph computes energy, forces and stress."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"ONNX export needs the packages onnx and onnxscript ({exc}); pip install onnx onnxscript") from exc
    from torch.export import Dim

    path = Path(path)
    exported = trace_student(model, dtype)
    inputs = example_inputs(model, dtype)
    n, e, b = Dim("n_atoms", min=1), Dim("n_edges", min=1), Dim("n_structures", min=1)
    dyn = ({0: n}, {0: n}, {1: e}, {0: e}, {0: b}, {0: n})
    tmp = path.with_name(path.name + ".tmp")
    program = torch.onnx.export(exported, inputs, dynamo=True, dynamic_shapes=dyn, input_names=INPUT_NAMES,
                                output_names=OUTPUT_NAMES, optimize=False)
    # (the exporter's optimiser folds constants in a way that costs float64 accuracy:
    # forces drift by ~1e-7 eV/Å; onnxruntime optimises the graph itself at load time)
    import onnx

    proto = program.model_proto
    for k, v in metadata(model, dtype, "onnx", weights_sha256).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(proto, str(tmp))
    os.replace(tmp, path)
    return path


def _scriptable(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """TorchScript resolves ``torch.ops.aten.op`` but not ``torch.ops.aten.op.default``:
    call the overload packets instead (same ops, overload chosen by TorchScript)."""
    for node in gm.graph.nodes:
        if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
            node.target = node.target.overloadpacket
    gm.recompile()
    return gm


def export_torchscript(model: StudentModel, path, dtype=torch.float32, weights_sha256: Optional[str] = None) -> Path:
    """Write a TorchScript file whose graph computes energy, forces and stress."""
    path = Path(path)
    exported = _scriptable(trace_student(model, dtype))
    scripted = torch.jit.script(exported)
    tmp = path.with_name(path.name + ".tmp")
    torch.jit.save(scripted, str(tmp), _extra_files={"metadata.json": json.dumps(metadata(model, dtype, "torchscript", weights_sha256))})
    os.replace(tmp, path)
    return path


from .files import read_onnx_metadata, read_torchscript_metadata  # noqa: E402,F401  (re-export)
from .onnx_runtime import OnnxRunner  # noqa: E402,F401  (re-export)
