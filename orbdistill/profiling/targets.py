"""Analyser targets for teachers (Orb, SevenNet) and the resolver from a name to a target."""

from __future__ import annotations

from typing import Callable

import torch

from .student_targets import student_target
from .target import Target, _noop

# --------------------------------------------------------------------------------------
# Orb (orb-models)
# --------------------------------------------------------------------------------------


def orb_conservative_step(model, batch, mark: Callable[[], None] = _noop):
    """Energy, gradient forces and stress of an Orb conservative model, as its
    ``ConservativeForcefieldRegressor.forward`` computes them, with the gradient pass
    separated from the forward pass."""
    vectors, displacement, generator = batch.compute_differentiable_edge_vectors()
    batch.system_features["stress_displacement"] = displacement
    batch.system_features["generator"] = generator
    batch.edge_features["vectors"] = vectors
    out = model.model(batch)
    node_features = out["node_features"]
    head = model.heads[model.energy_name]
    energy = head.denormalize(head(node_features, batch), batch)
    if model.pair_repulsion:
        energy = energy + model.pair_repulsion_fn(batch)["energy"]
    for name in model.extra_properties:  # e.g. the confidence head, run by orb's forward too
        model.heads[name](node_features, batch)
    mark()
    positions = batch.node_features["positions"]
    grads = torch.autograd.grad(energy.sum(), [positions, displacement, generator], allow_unused=True)
    forces = -grads[0]
    volume = torch.linalg.det(batch.system_features["cell"].view(-1, 3, 3)).abs().view(-1, 1, 1)
    stress = grads[1] / volume
    return energy.detach(), forces.detach(), stress.detach()


def orb_target(teacher) -> Target:
    from orbdistill.teachers.orb import is_conservative, orb_to_graph

    model = teacher.model
    adapter = teacher.extra.get("_adapter")
    device = next(model.parameters()).device
    conservative = is_conservative(model)

    def make_inputs(atoms):
        return orb_to_graph(model, atoms, adapter=adapter, device=device)

    if conservative:
        def step(batch, mark=_noop):
            return orb_conservative_step(model, batch, mark)
    else:
        def step(batch, mark=_noop):
            with torch.no_grad():
                out = model.predict(batch)
            mark()
            return out

    return Target(
        name=teacher.name,
        kind="teacher",
        family="orb",
        module=model,
        make_inputs=make_inputs,
        step=step,
        conservative=conservative,
        cutoff=teacher.cutoff,
        max_neighbors=teacher.max_neighbors,
        random_weights=teacher.random_weights,
        count_edges=lambda batch: int(batch.senders.shape[0]),
    )


# --------------------------------------------------------------------------------------
# SevenNet
# --------------------------------------------------------------------------------------


def sevennet_target(teacher) -> Target:
    from sevenn.atom_graph_data import AtomGraphData
    from sevenn.train.dataload import unlabeled_atoms_to_graph

    calc = teacher.calculator()
    model = calc.model
    device = next(model.parameters()).device
    force_module = getattr(model, "force_output", None)

    def make_inputs(atoms):
        data = AtomGraphData.from_numpy_dict(unlabeled_atoms_to_graph(atoms, calc.cutoff, with_shift=False))
        if getattr(calc, "modal", None):  # multi-fidelity models: the level of theory, as SevenNet's calculator
            data["data_modality"] = calc.modal
        return data.to(device)

    def step(data, mark=_noop):
        handle = None
        if force_module is not None:
            handle = force_module.register_forward_pre_hook(lambda m, a: mark())
        try:
            return model(data.clone() if hasattr(data, "clone") else data)
        finally:
            if handle is not None:
                handle.remove()

    return _pretrained_target(teacher, make_inputs, step, lambda data: int(data["edge_index"].shape[1]),
                              "SevenNet computes forces inside its `force_output` module; its gradient pass is "
                              "timed from that module on.")


def _pretrained_target(teacher, make_inputs, step, count_edges, note: str) -> Target:
    """The :class:`Target` of a pretrained, conservative teacher with a radius graph."""
    return Target(name=teacher.name, kind="teacher", family=teacher.family, module=teacher.model,
                  make_inputs=make_inputs, step=step, conservative=True, cutoff=teacher.cutoff, max_neighbors=None,
                  random_weights=False, count_edges=count_edges, notes=[note])


def chgnet_target(teacher) -> Target:
    """CHGNet: the atom graph (6 Å) and bond graph (3 Å) from CHGNet's own converter; its
    forces and stress come from autograd inside ``model.forward``, after the readout MLP."""
    from pymatgen.io.ase import AseAtomsAdaptor

    model = teacher.model
    device = next(model.parameters()).device

    def make_inputs(atoms):
        return model.graph_converter(AseAtomsAdaptor.get_structure(atoms)).to(device)

    def step(graph, mark=_noop):
        handle = model.mlp.register_forward_hook(lambda module, args, out: mark())
        try:
            return model([graph], task="efs")
        finally:
            handle.remove()

    return _pretrained_target(teacher, make_inputs, step, lambda graph: int(graph.atom_graph.shape[0]),
                              "CHGNet also builds a bond graph (bonds under 3 Å and the angles between them); its "
                              "forces and stress are timed from the end of the readout MLP on.")


def resolve_target(name_or_obj, device=None) -> Target:
    """A :class:`Target` for a teacher name (architecture only for Orb) or a student.

    Teachers are loaded without downloading weights: Orb models are built with random
    weights, which have the same parameters, FLOPs and speed as the published ones.
    """
    if isinstance(name_or_obj, Target):
        return name_or_obj
    from orbdistill.teachers import ORB_NAMES, load_teacher

    if isinstance(name_or_obj, str):
        key = name_or_obj.strip().lower()
        if key in ORB_NAMES:
            return orb_target(load_teacher(key, weights="random", device=device or "cpu"))
        from orbdistill.teachers import CHGNET_NAMES, SEVENNET_NAMES

        if key in SEVENNET_NAMES:
            return sevennet_target(load_teacher(key, device=device or "cpu"))
        if key in CHGNET_NAMES:
            return chgnet_target(load_teacher(key, device=device or "cpu"))
        if key == "emt":
            raise ValueError("'emt' is a classical potential with no neural network to analyse.")
    return student_target(name_or_obj, device=device)  # students: kinds, checkpoints and packages
