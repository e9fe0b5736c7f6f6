"""SevenNet teachers: pretrained universal potentials whose weights ship in the ``sevenn`` wheel.

=========================  =====================================================================
name                       model
=========================  =====================================================================
``sevennet-0``             SevenNet-0 (11 Jul 2024 release; MPtrj, PBE)
``sevennet-0-22may2024``   SevenNet-0, the first release
``sevennet-l3i5``          SevenNet-l3i5: spherical harmonics up to l = 3, 5 interaction layers
                           (the most expensive of the four; the offline stand-in for Orb's cost)
``sevennet-mf-0``          SevenNet-MF-0, multi-fidelity: ``modal="PBE"`` (default) or
                           ``"R2SCAN"`` picks the level of theory it predicts
=========================  =====================================================================

Reference: Park et al., "Scalable parallel algorithm for graph neural network interatomic
potentials in molecular dynamics simulations", J. Chem. Theory Comput. 20, 4857 (2024);
multi-fidelity: Kim et al., "Data-efficient multifidelity training for high-fidelity machine
learning interatomic potentials", J. Am. Chem. Soc. 147, 1042 (2025).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Optional

import torch

from .base import Teacher

log = logging.getLogger(__name__)

#: orbdistill name -> sevenn's pretrained name
SEVENNET_NAMES = {
    "sevennet-0": "7net-0",
    "7net-0": "7net-0",
    "sevennet-0-22may2024": "7net-0_22may2024",
    "sevennet-l3i5": "7net-l3i5",
    "sevennet-mf-0": "7net-mf-0",
}
#: multi-fidelity models: their modals, the first the default
SEVENNET_MODALS = {"sevennet-mf-0": ("PBE", "R2SCAN")}


def sevenn_version() -> str:
    try:
        from importlib.metadata import version

        return version("sevenn")
    except Exception:  # pragma: no cover
        return "unknown"


def load_sevennet_teacher(name: str = "sevennet-0", device=None, modal: Optional[str] = None) -> Teacher:
    """A SevenNet teacher by orbdistill name (see the module docstring); ``modal`` picks the
    level of theory of a multi-fidelity model."""
    from sevenn.calculator import SevenNetCalculator

    key = "sevennet-0" if name == "7net-0" else name
    modals = SEVENNET_MODALS.get(key)
    if modals is None and modal is not None:
        raise ValueError(f"modal={modal!r}: {key} has one level of theory; modal applies to "
                         f"{', '.join(SEVENNET_MODALS)}")
    if modals is not None:
        modal = modals[0] if modal is None else modal
        if modal not in modals:
            raise ValueError(f"modal={modal!r}: {key} predicts {' or '.join(modals)}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        calc = SevenNetCalculator(SEVENNET_NAMES[name], device=str(device), **({"modal": modal} if modal else {}))
    species = sorted(int(z) for z in calc.type_map.keys())
    extra = {"sevenn_version": sevenn_version()}
    if modal:
        extra["modal"] = modal
    return Teacher(
        name=key,
        family="sevennet",
        make_calculator=lambda: calc,
        cutoff=float(calc.cutoff),
        species=species,
        model=calc.model,
        conservative=True,
        weights=f"sevenn wheel ({SEVENNET_NAMES[name]}{', ' + modal if modal else ''})",
        extra=extra,
        _calc=calc,
    )
