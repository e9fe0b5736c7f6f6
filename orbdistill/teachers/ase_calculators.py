"""Classical ASE calculators (EMT) and any user-supplied ASE calculator as teachers."""

from __future__ import annotations

from ase.calculators.calculator import Calculator

from .base import Teacher

#: elements ASE's EMT parameterises (Jacobsen, Stoltze, Norskov, Surf. Sci. 366, 394 (1996))
EMT_SPECIES = [1, 6, 7, 8, 13, 28, 29, 46, 47, 78, 79]


def load_emt_teacher() -> Teacher:
    from ase.calculators.emt import EMT

    return Teacher(
        name="emt",
        family="ase",
        make_calculator=EMT,
        cutoff=None,
        species=list(EMT_SPECIES),
        model=None,
        conservative=True,
        weights="analytic (ASE EMT)",
    )


def teacher_from_calculator(calc: Calculator, name: str | None = None, species=None, cutoff=None) -> Teacher:
    """Wrap any ASE calculator object as a teacher (its species are unknown unless given)."""
    if not isinstance(calc, Calculator) and not hasattr(calc, "get_potential_energy"):
        raise TypeError(f"Expected an ASE calculator, got {type(calc).__name__}.")
    model = getattr(calc, "model", None)
    if model is not None and not hasattr(model, "parameters"):
        model = None
    return Teacher(
        name=name or type(calc).__name__,
        family="ase",
        make_calculator=lambda: calc,
        cutoff=cutoff,
        species=sorted(species) if species is not None else None,
        model=model,
        conservative=True,
        weights="user calculator",
        _calc=calc,
    )
