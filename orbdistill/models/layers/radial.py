"""Radial bases and smooth cutoff envelopes."""

from __future__ import annotations

import math

import torch


class BesselBasis(torch.nn.Module):
    """``sqrt(2 / r_max) * sin(n pi r / r_max) / r`` for n = 1..num_basis.

    The radial basis of Orb-v3 (and of DimeNet/NequIP, up to normalisation).

    Args:
        r_max: cutoff radius (Å)
        num_basis: number of functions
        trainable: learn the frequencies
    """

    def __init__(self, r_max: float, num_basis: int = 8, trainable: bool = False):
        super().__init__()
        freqs = math.pi / r_max * torch.arange(1, num_basis + 1, dtype=torch.float32)
        if trainable:
            self.freqs = torch.nn.Parameter(freqs)
        else:
            self.register_buffer("freqs", freqs)
        self.prefactor = math.sqrt(2.0 / r_max)
        self.r_max = float(r_max)
        self.num_basis = int(num_basis)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """r: [E] (Å) -> [E, num_basis]"""
        r = r.unsqueeze(-1)
        return self.prefactor * torch.sin(self.freqs.to(r.dtype) * r) / r


def polynomial_envelope(r: torch.Tensor, r_max: float, p: int = 4) -> torch.Tensor:
    """Smooth cutoff ``1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2)``, x = r/r_max,
    zero beyond ``r_max`` (Klicpera et al., DimeNet, ICLR 2020; Orb-v3 uses p = 4).

    r: [E] -> [E]
    """
    x = r / r_max
    env = (
        1.0
        - ((p + 1.0) * (p + 2.0) / 2.0) * torch.pow(x, p)
        + p * (p + 2.0) * torch.pow(x, p + 1)
        - (p * (p + 1.0) / 2.0) * torch.pow(x, p + 2)
    )
    return env * (r < r_max).to(r.dtype)
