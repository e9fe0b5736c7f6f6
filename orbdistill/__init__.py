"""orbdistill: distil foundation interatomic potentials into small, fast students."""

__version__ = "0.1.0"

from .graph import AtomGraph, build_graph  # noqa: E402

__all__ = ["AtomGraph", "build_graph", "__version__"]
