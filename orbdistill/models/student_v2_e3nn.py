"""Student v2-e3nn: an l <= 1 equivariant variant of v2 built with e3nn.

Node features carry ``F x 0e + F x 1o`` irreps. Each interaction: spherical harmonics
(l <= 1) of the edge direction, a "uvu" tensor product of the neighbour features with
them whose path weights come from a radial MLP per edge (NequIP's convolution, Batzner
et al., Nat. Commun. 13, 2453 (2022)), a scatter-sum, a linear mix, a residual and an
e3nn gate. Energies come from the scalar channels. Use it where exact equivariance of
intermediate vector features matters (e.g. later tensorial heads); plain v2 is faster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch

from .base import StudentConfig, StudentModel
from .layers import MLP, BesselBasis, SpeciesEmbedding, build_repulsion, gather, polynomial_envelope, scatter_sum


@dataclass
class V2E3nnConfig(StudentConfig):
    kind: str = "v2-e3nn"
    species: List[int] = field(default_factory=lambda: [29])
    cutoff: float = 5.0
    max_neighbors: Optional[int] = None
    num_features: int = 32
    num_layers: int = 2
    num_radial: int = 8
    envelope_p: int = 6
    radial_hidden: int = 32
    readout_hidden: int = 32
    pair_repulsion: str = "none"


class E3Interaction(torch.nn.Module):
    def __init__(self, irreps_in, f: int, num_radial: int, radial_hidden: int):
        from e3nn import nn as e3nn_nn
        from e3nn import o3

        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_sh = o3.Irreps("1x0e + 1x1o")
        irreps_out = o3.Irreps(f"{f}x0e + {f}x1o")
        mid, instructions = [], []
        for i, (mul, ir_in) in enumerate(self.irreps_in):
            for j, (_, ir_sh) in enumerate(self.irreps_sh):
                for ir_out in ir_in * ir_sh:
                    if ir_out in irreps_out:
                        k = len(mid)
                        mid.append((mul, ir_out))
                        instructions.append((i, j, k, "uvu", True))
        irreps_mid = o3.Irreps(mid)
        irreps_mid, perm, _ = irreps_mid.sort()
        instructions = [(i, j, perm[k], m, t) for i, j, k, m, t in instructions]
        self.tp = o3.TensorProduct(self.irreps_in, self.irreps_sh, irreps_mid, instructions,
                                   shared_weights=False, internal_weights=False)
        self.radial = MLP(num_radial, [radial_hidden], self.tp.weight_numel, "silu")
        scalars = o3.Irreps(f"{f}x0e")
        gates = o3.Irreps(f"{f}x0e")
        gated = o3.Irreps(f"{f}x1o")
        self.linear = o3.Linear(irreps_mid.simplify(), scalars + gates + gated)
        self.self_connection = o3.Linear(self.irreps_in, irreps_out)
        self.gate = e3nn_nn.Gate(scalars, [torch.nn.functional.silu], gates, [torch.sigmoid], gated)
        self.irreps_out = irreps_out

    def forward(self, x, sh, radial, envelope, senders, receivers):
        w = self.radial(radial) * envelope  # zero weight at the cutoff: smooth energy
        msg = self.tp(gather(x, receivers), sh, w)
        agg = scatter_sum(msg, senders, x.shape[0])
        return self.self_connection(x) + self.gate(self.linear(agg))


class E3nnStudentV2(StudentModel):
    config_cls = V2E3nnConfig

    def __init__(self, config: V2E3nnConfig):
        from e3nn import o3

        super().__init__(config)
        c = config
        f = c.num_features
        self.embedding = SpeciesEmbedding(f)
        self.radial = BesselBasis(c.cutoff, c.num_radial)
        self.sh = o3.SphericalHarmonics(o3.Irreps("1x0e + 1x1o"), normalize=True, normalization="component")
        layers, irreps = [], o3.Irreps(f"{f}x0e")
        for _ in range(c.num_layers):
            layer = E3Interaction(irreps, f, c.num_radial, c.radial_hidden)
            layers.append(layer)
            irreps = layer.irreps_out
        self.interactions = torch.nn.ModuleList(layers)
        self.f = f
        self.readout = MLP(f, [c.readout_hidden], 1, "silu")
        self.repulsion = build_repulsion(c.pair_repulsion, ("physical", "none"))

    def node_features(self, vectors, atomic_numbers, edge_index):
        """Irreps features [N, F + 3F]: F scalars then F vectors (x, y, z interleaved per channel)."""
        senders, receivers = edge_index[0], edge_index[1]
        r = vectors.norm(dim=1)
        radial = self.radial(r)
        envelope = polynomial_envelope(r, self.config.cutoff, self.config.envelope_p).unsqueeze(1)
        sh = self.sh(vectors)
        x = self.embedding(atomic_numbers)
        for layer in self.interactions:
            x = layer(x, sh, radial, envelope, senders, receivers)
        return x

    def vector_features(self, vectors, atomic_numbers, edge_index):
        """The l = 1 features as Cartesian vectors [N, F, 3] (e3nn's x, y, z order)."""
        x = self.node_features(vectors, atomic_numbers, edge_index)
        return x[:, self.f:].reshape(x.shape[0], self.f, 3)

    def invariant_features(self, vectors, atomic_numbers, edge_index):
        return self.node_features(vectors, atomic_numbers, edge_index)[:, : self.f]

    def readout_energies(self, features, atomic_numbers, batch, n_structures: int):
        return self.readout(features).squeeze(-1)

    def message_passing_hops(self) -> int:
        return int(self.config.num_layers)
