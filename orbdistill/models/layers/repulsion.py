"""Ziegler-Biersack-Littmark (ZBL) screened nuclear repulsion with a smooth cutoff.

Reference: Ziegler, Biersack, Littmark, "The Stopping and Range of Ions in Solids" (1985).
The pair energy is ``14.3996 Z_i Z_j / r * phi(r / a)`` (eV, Å), with the universal screening
function ``phi`` and length ``a = 0.4543 * 0.529 / (Z_i^0.3 + Z_j^0.3)`` Å, multiplied by a
polynomial envelope (p = 6) that reaches zero at the sum of the covalent radii.

The screening length is the one MACE's ZBL basis and orb-models use, not the universal
``0.8854 a0 / (Z_i^0.23 + Z_j^0.23)`` of the reference: a softer wall (Cu-Cu at 1 Å,
3.6 eV per pair here against about 130 eV with the universal length). It matters only
below the distances distillation data reach; at crystal distances it is below 1 meV per
pair.

``orb_compatible=True`` reproduces orb-models 0.5.x exactly: there the element index used
is the one-hot position plus one (Z + 1) and the pair energy is averaged over the atoms of
a structure instead of summed. Students use the physical form by default (real Z, summed,
so the energy is extensive); the compatible form exists so that a v1 student copied from
an Orb model reproduces it to round-off.
"""

from __future__ import annotations

import torch
from ase.data import covalent_radii

_C = (0.1818, 0.5099, 0.2802, 0.02817)
_D = (3.2, 0.9423, 0.4028, 0.2016)


def _envelope_p(x: torch.Tensor, p: float) -> torch.Tensor:
    return (
        1.0
        - ((p + 1.0) * (p + 2.0) / 2.0) * torch.pow(x, p)
        + p * (p + 2.0) * torch.pow(x, p + 1.0)
        - (p * (p + 1.0) / 2.0) * torch.pow(x, p + 2.0)
    ) * (x < 1.0).to(x.dtype)


def build_repulsion(kind: str, allowed=("physical", "orb", "none")):
    """The pair term a config asks for: ``"physical"``, ``"orb"`` (orb-models' exact form)
    or ``"none"`` (returns None)."""
    if kind not in allowed:
        raise ValueError(f"pair_repulsion must be one of {allowed}, got {kind!r}")
    return None if kind == "none" else ZBLRepulsion(orb_compatible=kind == "orb")


class ZBLRepulsion(torch.nn.Module):
    """Per-atom ZBL energies.

    forward(lengths [E], z [N], edge_index [2, E], batch [N], n_structures) -> [N] (eV)
    """

    def __init__(self, orb_compatible: bool = False, p: int = 6):
        super().__init__()
        self.orb_compatible = bool(orb_compatible)
        self.p = float(p)
        self.register_buffer("covalent_radii", torch.tensor(covalent_radii, dtype=torch.float32), persistent=False)
        self.register_buffer("c", torch.tensor(_C, dtype=torch.float32).unsqueeze(1), persistent=False)
        self.register_buffer("d", torch.tensor(_D, dtype=torch.float32).unsqueeze(1), persistent=False)

    def forward(self, lengths, z, edge_index, batch, n_structures: int):
        s, r = edge_index[0], edge_index[1]
        offset = 1 if self.orb_compatible else 0
        zs_i = torch.index_select(z, 0, s) + offset
        zr_i = torch.index_select(z, 0, r) + offset
        rc = self.covalent_radii.to(lengths.dtype)
        # only edges inside the envelope (shorter than the sum of covalent radii) contribute:
        # in a crystal a small share of the cutoff's edges, so the rest is skipped
        short = torch.nonzero(lengths < torch.index_select(rc, 0, zs_i) + torch.index_select(rc, 0, zr_i)).squeeze(1)
        lengths = torch.index_select(lengths, 0, short)
        s = torch.index_select(s, 0, short)
        zs_i = torch.index_select(zs_i, 0, short)
        zr_i = torch.index_select(zr_i, 0, short)
        zs, zr = zs_i.to(lengths.dtype), zr_i.to(lengths.dtype)
        a = 0.4543 * 0.529 / (torch.pow(zs, 0.3) + torch.pow(zr, 0.3))
        x = lengths / a
        phi = (self.c.to(lengths.dtype) * torch.exp(-self.d.to(lengths.dtype) * x.unsqueeze(0))).sum(0)
        v = 14.3996 * zs * zr / lengths * phi
        r_max = torch.index_select(rc, 0, zs_i) + torch.index_select(rc, 0, zr_i)
        pair = 0.5 * v * _envelope_p(lengths / r_max, self.p)
        n = z.shape[0]
        per_atom = torch.zeros(n, dtype=lengths.dtype, device=lengths.device).index_add(0, s, pair)
        if self.orb_compatible:
            # orb-models averages the per-atom repulsion over each structure; spread that
            # structure energy evenly so per-atom energies still sum to it
            counts = torch.zeros(n_structures, dtype=lengths.dtype, device=lengths.device).index_add(
                0, batch, torch.ones_like(per_atom)
            )
            mean = torch.zeros(n_structures, dtype=lengths.dtype, device=lengths.device).index_add(0, batch, per_atom) / counts
            per_atom = torch.index_select(mean / counts, 0, batch)
        return per_atom
