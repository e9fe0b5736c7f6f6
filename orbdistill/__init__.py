"""orbdistill: distil foundation interatomic potentials into small, fast students.

The names users need are one import away::

    from orbdistill import StudentCalculator
    atoms.calc = StudentCalculator("cu-sevennet-v2")

``StudentCalculator``, ``load_student``, ``build_student``, ``build_graph`` and
``AtomGraph`` need only the core dependencies (torch, numpy, ase, vesin);
``load_teacher``, ``distill`` and ``validate`` need the extras of their teachers and tasks
(``pip install "orbdistill[all]"``). Each is imported when first used.
"""

from ._version import __version__

_PUBLIC = {
    "StudentCalculator": ("orbdistill.calculator", "StudentCalculator"),
    "load_student": ("orbdistill.models", "load_student"),
    "build_student": ("orbdistill.models", "build_student"),
    "load_teacher": ("orbdistill.teachers", "load_teacher"),
    "distill": ("orbdistill.pipeline", "distill"),
    "validate": ("orbdistill.validation", "validate"),
    "build_graph": ("orbdistill.graph", "build_graph"),
    "AtomGraph": ("orbdistill.graph", "AtomGraph"),
    "available_packages": ("orbdistill.packages", "available_packages"),
}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name):
    if name in _PUBLIC:
        import importlib

        module, attr = _PUBLIC[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'orbdistill' has no attribute {name!r}")


def __dir__():
    return __all__
