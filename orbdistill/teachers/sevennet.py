"""SevenNet-0: a pretrained universal potential whose weights ship in the ``sevenn`` wheel.

Reference: Park et al., "Scalable parallel algorithm for graph neural network interatomic
potentials in molecular dynamics simulations", J. Chem. Theory Comput. 20, 4857 (2024).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import torch

from .base import Teacher

log = logging.getLogger(__name__)

SEVENNET_NAMES = {"sevennet-0": "7net-0", "7net-0": "7net-0"}


def sevenn_version() -> str:
    try:
        from importlib.metadata import version

        return version("sevenn")
    except Exception:  # pragma: no cover
        return "unknown"


def load_sevennet_teacher(name: str = "sevennet-0", device=None) -> Teacher:
    from sevenn.calculator import SevenNetCalculator

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        calc = SevenNetCalculator(SEVENNET_NAMES[name], device=str(device))
    species = sorted(int(z) for z in calc.type_map.keys())
    return Teacher(
        name="sevennet-0",
        family="sevennet",
        make_calculator=lambda: calc,
        cutoff=float(calc.cutoff),
        species=species,
        model=calc.model,
        conservative=True,
        weights="sevenn wheel (7net-0)",
        extra={"sevenn_version": sevenn_version()},
        _calc=calc,
    )
