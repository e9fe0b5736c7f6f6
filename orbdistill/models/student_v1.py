"""Student v1: Orb-v3's architecture at reduced width and depth.

Encoder -> attention-gated interaction steps -> energy head, as in Orb-v3
(orb-models ``gns.MoleculeGNS``), on the flat tensors of the graph contract:

* node input: element embedding, then an MLP + RMSNorm;
* edge input: Bessel radial functions x real spherical harmonics (outer product) times a
  polynomial envelope, then an MLP + RMSNorm;
* each interaction step: sigmoid gates from the edge state times the envelope; an edge
  MLP on ``[e_ij, h_i, h_j]``; gated scatter-sums to senders and receivers; a node MLP on
  ``[h_i, received, sent]``; residual updates of nodes and edges;
* energy head: an MLP on the node states, either per atom and summed (default for
  students) or on the mean-pooled structure state times the atom count (Orb's head);
* optional ZBL pair repulsion.

Every width is configurable, and each interaction step may have its own MLP width
(progressive reduction: keep early steps wide, make late ones narrow).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch

from .base import StudentConfig, StudentModel
from .layers import (
    MLP,
    BesselBasis,
    NormedMLP,
    SpeciesEmbedding,
    SphericalHarmonicsL3,
    build_repulsion,
    gather,
    polynomial_envelope,
    scatter_mean,
    scatter_sum,
)


@dataclass
class V1Config(StudentConfig):
    """Configuration of :class:`OrbStudentV1` (defaults: the distillation student).

    Attributes:
        latent_dim: node and edge state width (Orb-v3: 256)
        encoder_hidden: hidden width of the encoder MLPs (Orb-v3: 1024)
        step_hidden: hidden width of the edge MLP of each interaction step; its length is
            the number of steps (Orb-v3: [1024] * 5)
        node_step_hidden: hidden width of the node MLP of each step (default: step_hidden).
            Node MLPs run once per atom, edge MLPs once per edge (~20-120x more often), so
            the default student keeps node MLPs wide and cuts edge MLPs hardest
        node_encoder_hidden: hidden width of the node encoder (default: encoder_hidden)
        mlp_depth: hidden layers per MLP (Orb-v3: 2)
        lmax: highest spherical-harmonic degree on edges (Orb-v3: 3)
        num_radial: Bessel functions (Orb-v3: 8)
        envelope_p: polynomial envelope order (Orb-v3: 4)
        head_hidden, head_depth: energy head MLP (Orb-v3: 256, 1)
        readout: "per_atom" (sum of per-atom energies) or "mean_pool" (Orb's head)
        pair_repulsion: "physical", "orb" (orb-models' exact convention) or "none"
        norm: "rms" (Orb-v3) or "layer"
        activation: "silu" (Orb-v3)
    """

    kind: str = "v1"
    species: List[int] = field(default_factory=lambda: [29])
    cutoff: float = 6.0
    max_neighbors: Optional[int] = 20
    latent_dim: int = 256
    encoder_hidden: int = 512
    step_hidden: List[int] = field(default_factory=lambda: [512, 384, 384, 256])
    node_step_hidden: Optional[List[int]] = field(default_factory=lambda: [1024, 1024, 768, 768])
    node_encoder_hidden: Optional[int] = 1024
    mlp_depth: int = 2
    lmax: int = 3
    num_radial: int = 8
    envelope_p: int = 4
    head_hidden: int = 256
    head_depth: int = 1
    readout: str = "per_atom"
    pair_repulsion: str = "physical"
    norm: str = "rms"
    activation: str = "silu"


class OrbInteraction(torch.nn.Module):
    """One attention-gated interaction step (Orb's ``AttentionInteractionNetwork``)."""

    def __init__(self, latent: int, hidden: int, depth: int, act: str, norm: str, node_hidden: Optional[int] = None):
        super().__init__()
        self.edge_mlp = NormedMLP(3 * latent, [hidden] * depth, latent, act, norm)
        self.node_mlp = NormedMLP(3 * latent, [node_hidden or hidden] * depth, latent, act, norm)
        self.receive_gate = torch.nn.Linear(latent, 1)
        self.send_gate = torch.nn.Linear(latent, 1)

    def forward(self, h, e, senders, receivers, envelope):
        """h [N, D], e [E, D], senders/receivers [E], envelope [E, 1] -> (h', e')"""
        receive_w = torch.sigmoid(self.receive_gate(e)) * envelope
        send_w = torch.sigmoid(self.send_gate(e)) * envelope
        edge_in = torch.cat([e, gather(h, senders), gather(h, receivers)], dim=1)
        de = self.edge_mlp(edge_in)
        n = h.shape[0]
        sent = scatter_sum(de * send_w, senders, n)
        received = scatter_sum(de * receive_w, receivers, n)
        dh = self.node_mlp(torch.cat([h, received, sent], dim=1))
        return h + dh, e + de


class OrbStudentV1(StudentModel):
    """Parameter-reduced Orb-v3 (see module docstring)."""

    config_cls = V1Config

    def __init__(self, config: V1Config):
        super().__init__(config)
        c = config
        if c.readout not in ("per_atom", "mean_pool"):
            raise ValueError(f"readout must be 'per_atom' or 'mean_pool', got {c.readout!r}")
        if not c.step_hidden:
            raise ValueError("step_hidden needs one width per interaction step (at least one)")
        self.embedding = SpeciesEmbedding(c.latent_dim)
        self.radial = BesselBasis(c.cutoff, c.num_radial)
        self.angular = SphericalHarmonicsL3(c.lmax)
        edge_in = c.num_radial * self.angular.dim
        node_enc = c.node_encoder_hidden or c.encoder_hidden
        self.node_encoder = NormedMLP(c.latent_dim, [node_enc] * c.mlp_depth, c.latent_dim, c.activation, c.norm)
        self.edge_encoder = NormedMLP(edge_in, [c.encoder_hidden] * c.mlp_depth, c.latent_dim, c.activation, c.norm)
        node_widths = c.node_step_hidden or c.step_hidden
        if len(node_widths) != len(c.step_hidden):
            raise ValueError(
                f"node_step_hidden ({len(node_widths)} widths) must have one width per step ({len(c.step_hidden)})"
            )
        self.interactions = torch.nn.ModuleList(
            OrbInteraction(c.latent_dim, w, c.mlp_depth, c.activation, c.norm, node_hidden=wn)
            for w, wn in zip(c.step_hidden, node_widths)
        )
        self.head = MLP(c.latent_dim, [c.head_hidden] * c.head_depth, 1, c.activation)
        # Orb's energy normaliser: head output * std + mean (per atom)
        self.register_buffer("head_mean", torch.tensor(0.0))
        self.register_buffer("head_std", torch.tensor(1.0))
        self.repulsion = build_repulsion(c.pair_repulsion)

    def node_states(self, vectors, atomic_numbers, edge_index):
        """Final node states [N, latent] (also used for feature distillation)."""
        senders, receivers = edge_index[0], edge_index[1]
        r = vectors.norm(dim=1)
        envelope = polynomial_envelope(r, self.config.cutoff, self.config.envelope_p).unsqueeze(-1)
        sh = self.angular(vectors)
        rbf = self.radial(r)
        # explicit width: reshape(n, -1) is ambiguous for a structure without edges
        edge_features = (rbf.unsqueeze(2) * sh.unsqueeze(1)).reshape(-1, rbf.shape[1] * sh.shape[1]) * envelope
        h = self.node_encoder(self.embedding(atomic_numbers))
        e = self.edge_encoder(edge_features)
        for layer in self.interactions:
            h, e = layer(h, e, senders, receivers, envelope)
        return h

    def invariant_features(self, vectors, atomic_numbers, edge_index):
        return self.node_states(vectors, atomic_numbers, edge_index)

    def message_passing_hops(self) -> int:
        return len(self.config.step_hidden)

    def is_local(self):
        if self.config.readout == "mean_pool":
            return "readout = 'mean_pool': the energy head sees the whole structure at once; use readout 'per_atom'"
        return super().is_local()

    def readout_energies(self, h, atomic_numbers, batch, n_structures: int):
        if self.config.readout == "mean_pool":
            pooled = scatter_mean(h, batch, n_structures)
            e = (self.head(pooled).squeeze(-1) * self.head_std + self.head_mean)[batch]
        else:
            e = self.head(h).squeeze(-1) * self.head_std + self.head_mean
        return e
