"""Student v2: the teacher's expensive operations replaced by cheap ones.

The analyser shows where Orb-v3 spends its time (docs/architecture/teacher-orb-v3.md):
over 99 % of the FLOPs are dense products in the per-edge MLPs on concatenated
``[e_ij, h_i, h_j]`` (768 inputs, 1024 hidden), done for 20-120 neighbours per atom and
done again in the gradient pass. v2 keeps message passing and conservative forces and
changes the operations:

=====================================  ==================================================
Orb-v3                                  v2
=====================================  ==================================================
edge MLP on ``[e, h_i, h_j]`` per edge  node MLP once per atom, gathered per edge and
                                        multiplied by a radial filter (factorised update)
8 Bessel x 16 harmonics (l <= 3) edges  8 Bessel functions and the unit vector (l <= 1,
                                        Cartesian): angular information through vector
                                        features, as in PaiNN
persistent edge states, 256 wide        no edge state
sigmoid attention gates from edge MLPs  the radial filter is the gate
6 Å, up to 120 neighbours               5 Å (configurable), no cap needed
RMSNorm per MLP                         none (fewer reductions; stable in float32)
=====================================  ==================================================

Architecture (Schütt, Unke, Gastegger, "Equivariant message passing for the prediction of
tensorial properties and molecular spectra", ICML 2021), with scalar states ``s_i [F]`` and
vector states ``v_i [3, F]``:

* message: ``(a, b, c) = phi(s_j) * W(r_ij)`` (widths F, Fv, Fv); ``ds_i = sum_j a``,
  ``dv_i = sum_j (b * v_j + c * r_hat_ij)``;
* update: ``U v``, ``V v``; ``(ds, a_vv) = MLP([s, |V v|, <U v, V v>])``;
  ``dv = a_vv * U v``;
* energy: per-atom MLP on ``s``, summed.

Energies are invariant and vector states rotate with the structure (tested).
``use_vectors=False`` gives a purely invariant (radial-only) model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch

from .base import StudentConfig, StudentModel
from .layers import MLP, BesselBasis, SpeciesEmbedding, build_repulsion, gather, polynomial_envelope, scatter_sum


@dataclass
class V2Config(StudentConfig):
    """Configuration of :class:`FastStudentV2`.

    Attributes:
        num_features: width F of scalar states
        num_vector_features: number Fv of vector (l = 1) channels
        num_layers: message-passing steps
        num_radial: Bessel functions
        envelope_p: polynomial envelope order
        use_vectors: carry l = 1 vector states (angular information)
        readout_hidden: hidden width of the per-atom energy MLP
        pair_repulsion: "physical" (the default) or "none": the ZBL screened nuclear
            repulsion below the sum of covalent radii (:mod:`orbdistill.models.layers.repulsion`),
            under the learnt energy. It is below 1 meV per pair at crystal distances (Cu-Cu at
            2.4 Å: 0.07 meV) and grows to eV as atoms meet (3.6 eV at 1 Å), where no data
            reach; a student saved before the default changed keeps "none".
        activation: "silu"
        vector_invariant: how the update sees the size of a vector channel: "smooth",
            ``sqrt(|V v|^2 + 1) - 1`` (analytic everywhere: the default), or "norm",
            ``sqrt(|V v|^2 + 1e-8)`` (PaiNN's; a cusp where the vectors vanish, e.g. every
            atom of a perfect centrosymmetric crystal, which gives wrong curvature there:
            imaginary phonons of -8 THz for fcc Cu). Checkpoints saved before the option
            existed load as "norm".
    """

    kind: str = "v2"
    species: List[int] = field(default_factory=lambda: [29])
    cutoff: float = 5.0
    max_neighbors: Optional[int] = None
    num_features: int = 64
    num_vector_features: int = 16
    num_layers: int = 3
    num_radial: int = 8
    envelope_p: int = 6
    use_vectors: bool = True
    readout_hidden: int = 32
    pair_repulsion: str = "physical"
    activation: str = "silu"
    vector_invariant: str = "smooth"

    @classmethod
    def from_dict(cls, d: dict) -> "V2Config":
        if "vector_invariant" not in d:  # saved before the option existed: the cusped norm
            d = dict(d, vector_invariant="norm")
        if "pair_repulsion" not in d:  # the default was "none" then
            d = dict(d, pair_repulsion="none")
        return super().from_dict(d)


class PaiNNMessage(torch.nn.Module):
    """Factorised message: node MLP once per atom, radial filter per edge.

    Vector states are stored flat, ``v [N, 3 * Fv]`` (x channels, then y, then z), so
    every per-edge product is between tensors of one shape or a column broadcast.
    """

    def __init__(self, f: int, fv: int, num_radial: int, act: str, use_vectors: bool):
        super().__init__()
        self.f, self.fv = f, fv
        self.use_vectors = use_vectors
        n_out = f + 2 * fv if use_vectors else f
        self.phi = MLP(f, [f], n_out, act)
        self.filter = torch.nn.Linear(num_radial, n_out)

    def forward(self, s, v, radial, envelope, unit, senders, receivers, first: bool):
        """s [N, F], v [N, 3 Fv] or None, radial [E, R], envelope [E, 1], unit [E, 3].

        The envelope multiplies the filter output (not its input), so that a neighbour at
        the cutoff sends exactly nothing: the energy stays smooth as atoms cross it.
        """
        n = s.shape[0]
        x = gather(self.phi(s), receivers) * (self.filter(radial) * envelope)  # neighbour j -> centre i
        if not self.use_vectors:
            return s + scatter_sum(x, senders, n), v
        a = x[:, : self.f]
        b = x[:, self.f : self.f + self.fv]
        c = x[:, self.f + self.fv :]
        ds = scatter_sum(a, senders, n)
        dv_edge = torch.cat([c * unit[:, 0:1], c * unit[:, 1:2], c * unit[:, 2:3]], dim=1)
        if not first:  # vector states are zero before the first message
            dv_edge = dv_edge + b.repeat(1, 3) * gather(v, receivers)
        dv = scatter_sum(dv_edge, senders, n)
        return s + ds, (dv if first else v + dv)


class PaiNNUpdate(torch.nn.Module):
    """Per-atom mixing of scalar and vector channels through invariants (norms, dots)."""

    def __init__(self, f: int, fv: int, act: str, invariant: str = "smooth"):
        super().__init__()
        if invariant not in ("smooth", "norm"):
            raise ValueError(f"vector_invariant must be 'smooth' or 'norm', got {invariant!r}")
        self.f, self.fv = f, fv
        self.eps = 1.0 if invariant == "smooth" else 1e-8
        self.offset = 1.0 if invariant == "smooth" else 0.0
        self.uv = torch.nn.Linear(fv, 2 * fv, bias=False)
        self.mlp = MLP(f + 2 * fv, [f], f + fv, act)

    def forward(self, s, v):
        n = s.shape[0]
        uv, vv = torch.split(self.uv(v.view(n, 3, self.fv)), self.fv, dim=2)  # [N, 3, Fv] each
        norm = torch.sqrt((vv * vv).sum(dim=1) + self.eps) - self.offset
        dot = (uv * vv).sum(dim=1)
        a = self.mlp(torch.cat([s, norm, dot], dim=1))
        ds, a_vv = torch.split(a, [self.f, self.fv], dim=1)
        return s + ds, v + (a_vv.unsqueeze(1) * uv).reshape(n, 3 * self.fv)


class ScalarUpdate(torch.nn.Module):
    """Per-atom MLP residual (invariant model)."""

    def __init__(self, f: int, act: str):
        super().__init__()
        self.mlp = MLP(f, [f], f, act)

    def forward(self, s, v):
        return s + self.mlp(s), v


class FastStudentV2(StudentModel):
    """Operation-optimised student (see module docstring)."""

    config_cls = V2Config

    def __init__(self, config: V2Config):
        super().__init__(config)
        c = config
        f = c.num_features
        self.embedding = SpeciesEmbedding(f)
        self.radial = BesselBasis(c.cutoff, c.num_radial)
        fv = c.num_vector_features
        self.messages = torch.nn.ModuleList(
            PaiNNMessage(f, fv, c.num_radial, c.activation, c.use_vectors) for _ in range(c.num_layers)
        )
        self.updates = torch.nn.ModuleList(
            (PaiNNUpdate(f, fv, c.activation, c.vector_invariant) if c.use_vectors else ScalarUpdate(f, c.activation))
            for _ in range(c.num_layers)
        )
        self.readout = MLP(f, [c.readout_hidden], 1, c.activation)
        self.repulsion = build_repulsion(c.pair_repulsion, ("physical", "none"))

    supports_fused_kernels = True

    def node_states(self, vectors, atomic_numbers, edge_index):
        """Scalar states [N, F] and vector states [N, 3 Fv] (x channels, then y, then z;
        None if ``use_vectors`` is off)."""
        if self.fused_active(vectors):
            return self._fused_node_states(vectors, atomic_numbers, edge_index)
        senders, receivers = edge_index[0], edge_index[1]
        r = vectors.norm(dim=1)
        envelope = polynomial_envelope(r, self.config.cutoff, self.config.envelope_p).unsqueeze(1)
        radial = self.radial(r)
        unit = vectors / r.unsqueeze(1)
        s = self.embedding(atomic_numbers)
        v = None
        if self.config.use_vectors:
            v = torch.zeros(s.shape[0], 3 * self.config.num_vector_features, dtype=s.dtype, device=s.device)
        for k, (msg, upd) in enumerate(zip(self.messages, self.updates)):
            s, v = msg(s, v, radial, envelope, unit, senders, receivers, first=(k == 0))
            s, v = upd(s, v)
        return s, v

    def _fused_node_states(self, vectors, atomic_numbers, edge_index):
        """:meth:`node_states` with the fused kernels (:mod:`orbdistill.kernels`): the same
        arithmetic, atom by atom, without per-edge tensors of width F."""
        from .. import kernels

        c = self.config
        s = self.embedding(atomic_numbers)
        n = s.shape[0]
        fv = c.num_vector_features if c.use_vectors else 0
        if "_edge_structure" not in self.__dict__:
            self.__dict__["_edge_structure"] = kernels.EdgeStructure()
        structure = self.__dict__["_edge_structure"]
        structure.detect_symmetry = not getattr(self, "_fused_for_export", False)
        senders, receivers, sender_csr, receiver_csr, symmetric = structure(edge_index, vectors, s)
        feat = kernels.edge_geometry(vectors.contiguous(), self.radial.freqs.to(vectors.dtype), self.radial.prefactor,
                                     c.cutoff, c.envelope_p)
        v = s.new_zeros((n, 3 * fv)) if c.use_vectors else None
        no_vectors = s.new_zeros((0,))  # what the kernels take where there are no vector states yet
        for k, (msg, upd) in enumerate(zip(self.messages, self.updates)):
            first = k == 0
            v_in = v if (v is not None and not first) else no_vectors
            ds, dv = kernels.painn_message(feat, msg.phi(s).contiguous(), v_in, senders, receivers, sender_csr,
                                           receiver_csr, msg.filter.weight.t().contiguous(), msg.filter.bias,
                                           c.num_features, fv, first, symmetric)
            s = s + ds
            if c.use_vectors:
                v = dv if first else v + dv
            s, v = upd(s, v)
        return s, v

    def invariant_features(self, vectors, atomic_numbers, edge_index):
        return self.node_states(vectors, atomic_numbers, edge_index)[0]

    def readout_energies(self, features, atomic_numbers, batch, n_structures: int):
        return self.readout(features).squeeze(-1)

    def message_passing_hops(self) -> int:
        return int(self.config.num_layers)
