"""Building blocks shared by every student (v1 and v2 import them; neither copies them)."""

from .angular import SphericalHarmonicsL3, spherical_harmonics
from .embedding import SpeciesEmbedding
from .mlp import MLP, NormedMLP, activation
from .radial import BesselBasis, polynomial_envelope
from .repulsion import ZBLRepulsion, build_repulsion
from .scatter import gather, scatter_mean, scatter_sum

__all__ = [
    "BesselBasis",
    "polynomial_envelope",
    "SphericalHarmonicsL3",
    "spherical_harmonics",
    "MLP",
    "NormedMLP",
    "activation",
    "scatter_sum",
    "gather",
    "scatter_mean",
    "SpeciesEmbedding",
    "ZBLRepulsion",
    "build_repulsion",
]
