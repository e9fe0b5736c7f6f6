"""Real spherical harmonics up to l = 3 as polynomials of the unit vector.

Component normalisation (each l block has mean square 1 over the sphere) in the (x, y, z)
axis order used by e3nn 0.4 and Orb-v3, so that Orb weights act on the same features.
"""

from __future__ import annotations

import math

import torch

_S3 = math.sqrt(3.0)
_S5 = math.sqrt(5.0)
_S5_6 = math.sqrt(5.0 / 6.0)
_S3_8 = math.sqrt(3.0 / 8.0)


def spherical_harmonics(unit: torch.Tensor, lmax: int) -> torch.Tensor:
    """unit: [E, 3] unit vectors -> [E, (lmax+1)^2] component-normalised harmonics."""
    if not 0 <= lmax <= 3:
        raise ValueError(f"lmax must be 0..3, got {lmax}")
    x, y, z = unit[:, 0], unit[:, 1], unit[:, 2]
    out = [torch.ones_like(x)]
    if lmax >= 1:
        out += [_S3 * x, _S3 * y, _S3 * z]
    if lmax >= 2:
        y2 = y * y
        xz2 = x * x + z * z
        s20 = _S3 * x * z
        s24 = _S3 / 2.0 * (z * z - x * x)
        l2 = [s20, _S3 * x * y, y2 - 0.5 * xz2, _S3 * y * z, s24]
        out += [_S5 * v for v in l2]
    if lmax >= 3:
        l3 = [
            _S5_6 * (s20 * z + s24 * x),
            _S5 * s20 * y,
            _S3_8 * (4.0 * y2 - xz2) * x,
            0.5 * y * (2.0 * y2 - 3.0 * xz2),
            _S3_8 * z * (4.0 * y2 - xz2),
            _S5 * s24 * y,
            _S5_6 * (s24 * z - s20 * x),
        ]
        out += [math.sqrt(7.0) * v for v in l3]
    return torch.stack(out, dim=-1)


class SphericalHarmonicsL3(torch.nn.Module):
    """Module form: edge vectors [E, 3] -> harmonics [E, (lmax+1)^2] of their directions."""

    def __init__(self, lmax: int = 3):
        super().__init__()
        self.lmax = int(lmax)
        self.dim = (self.lmax + 1) ** 2

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        unit = torch.nn.functional.normalize(vectors, dim=-1)
        return spherical_harmonics(unit, self.lmax)
