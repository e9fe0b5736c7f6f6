"""Hessian-vector products of the teacher, for the optional curvature loss.

Forces fix the slope of the energy surface; phonons, elastic constants and the stability of
MD depend on its curvature. MLFF-distill (Amin et al., ICLR 2025) distils the teacher's
Hessian along random directions (a Hutchinson-style estimate) and reports students that
match or beat their teacher. Here each labelled frame can carry one probe: a Gaussian
direction ``v`` (one 3-vector per atom) and the teacher's ``H v``, by central differences of
its forces,

    H v = -(F(x + eps v) - F(x - eps v)) / (2 eps) + O(eps^2),

two more teacher calls per frame, the same for every teacher (no second derivatives of
the teacher are needed). The student's ``H v`` is formed the same way in the loss
(:func:`orbdistill.training.trainer.compute_loss`), with the same ``eps``, so the finite
difference errors of the two largely cancel.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms


def teacher_hvp(frame: Atoms, calc, rng: np.random.Generator, epsilon: float = 0.01) -> Atoms:
    """Add ``arrays["hvp_v"]``, ``arrays["hvp"]`` and ``info["hvp_epsilon"]`` to ``frame``
    (in place, returned): a Gaussian probe direction and the Hessian of ``calc`` applied to
    it (eV/Å^2 times Å of the probe)."""
    v = rng.normal(size=(len(frame), 3))
    if not frame.pbc.any() and len(frame) > 1:
        v -= v.mean(axis=0)  # no rigid translation of a molecule or cluster (a zero mode)
    forces = []
    for sign in (1.0, -1.0):
        a = Atoms(frame.numbers, positions=frame.positions + sign * epsilon * v, cell=frame.cell, pbc=frame.pbc)
        a.calc = calc
        forces.append(np.array(a.get_forces(), dtype=np.float64))
    frame.arrays["hvp_v"] = v
    frame.arrays["hvp"] = -(forces[0] - forces[1]) / (2.0 * epsilon)
    frame.info["hvp_epsilon"] = float(epsilon)
    return frame
