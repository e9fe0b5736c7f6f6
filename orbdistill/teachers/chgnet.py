"""CHGNet teachers: pretrained universal potentials whose weights ship in the ``chgnet`` wheel.

==================  ================================================================
name                model
==================  ================================================================
``chgnet``          CHGNet 0.3.0 (MPtrj, PBE/PBE+U), the package's default model
``chgnet-r2scan``   CHGNet transfer-learned on MP r2SCAN data
==================  ================================================================

CHGNet builds a graph of atoms within 6 Å and a bond graph of bonds shorter than 3 Å (with
the angles between them); energies are extensive, forces and stress are gradients of the
energy. Its calculator reports stress in GPa scaled by ``stress_weight``; orbdistill sets it
to eV/Å^3 (ASE's unit and sign, checked in the tests).

Reference: Deng et al., "CHGNet as a pretrained universal neural network potential for
charge-informed atomistic modelling", Nat. Mach. Intell. 5, 1031 (2023).
"""

from __future__ import annotations

import contextlib
import io
import warnings

import torch

from .base import Teacher

#: orbdistill name -> CHGNet.load(model_name=...)
CHGNET_NAMES = {"chgnet": "0.3.0", "chgnet-0.3.0": "0.3.0", "chgnet-r2scan": "r2scan"}


def chgnet_version() -> str:
    try:
        from importlib.metadata import version

        return version("chgnet")
    except Exception:  # pragma: no cover
        return "unknown"


def load_chgnet_teacher(name: str = "chgnet", device=None) -> Teacher:
    try:
        from ase import units
        from chgnet.model import CHGNet
        from chgnet.model.dynamics import CHGNetCalculator
    except ImportError as exc:
        raise ImportError(f"The CHGNet teachers need the chgnet package: pip install chgnet ({exc})") from exc
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    key = "chgnet" if name == "chgnet-0.3.0" else name
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        model = CHGNet.load(model_name=CHGNET_NAMES[name], use_device=str(device), verbose=False)
        calc = CHGNetCalculator(model, use_device=str(device), stress_weight=units.GPa, on_isolated_atoms="ignore")
    return Teacher(
        name=key,
        family="chgnet",
        make_calculator=lambda: calc,
        cutoff=float(model.graph_converter.atom_graph_cutoff),
        species=list(range(1, 95)),  # CHGNet embeds H..Pu
        model=model,
        conservative=True,
        weights=f"chgnet wheel ({CHGNET_NAMES[name]})",
        extra={"chgnet_version": chgnet_version()},
        _calc=calc,
    )
