"""Students as analyser targets (``orbdistill analyze v2``, a checkpoint, a package or its name)."""

from __future__ import annotations

import os

from orbdistill.graph import build_graph
from orbdistill.models import STUDENT_KINDS, StudentModel, build_student, conservative_outputs, load_student
from orbdistill.packages import available_packages

from .target import Target


def _resolve_model(obj) -> tuple:
    if isinstance(obj, StudentModel):
        return obj, obj.config.kind
    if isinstance(obj, str) and obj in STUDENT_KINDS:
        return build_student(obj, species=[29]), f"student-{obj} (default config, Cu)"
    if isinstance(obj, (str, os.PathLike)) and (os.path.exists(os.fspath(obj)) or os.fspath(obj) in available_packages()):
        return load_student(obj), os.fspath(obj)
    from orbdistill.teachers import available_teachers

    raise ValueError(
        f"Unknown model {obj!r}: not a teacher ({', '.join(n for n in available_teachers() if n != 'emt')}), "
        f"a student kind ({', '.join(sorted(STUDENT_KINDS))}), an existing checkpoint or package, nor a package name "
        f"({', '.join(available_packages()) or 'none found'})."
    )


def student_target(obj, device=None) -> Target:
    model, name = _resolve_model(obj)
    device = device or "cpu"
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)

    def make_inputs(atoms):
        return build_graph(atoms, model.cutoff, model.max_neighbors, device=device)

    def step(g, mark=lambda: None):
        return conservative_outputs(model.atomic_energies, g.inputs(), mark=mark)

    return Target(
        name=name,
        kind="student",
        family=model.config.kind,
        module=model,
        make_inputs=make_inputs,
        step=step,
        conservative=True,
        cutoff=model.cutoff,
        max_neighbors=model.max_neighbors,
        count_edges=lambda g: g.num_edges,
    )
