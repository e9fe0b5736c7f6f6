"""Build a v1 student from an Orb-v3 model (orb-models), copying or reducing its weights.

With no overrides, :func:`v1_from_orb` copies every weight that contributes to Orb's
energy and reproduces its energy, forces and stress to round-off (Orb's unused ``_decoder``
and its confidence head are dropped).

With overrides the smaller student starts from the teacher as follows:

* **fewer interaction steps**: keep ``k`` of the teacher's ``T`` steps, evenly spaced and
  always including the first and last (``round(linspace(0, T-1, k))``);
* **narrower MLP hidden layers**: structured magnitude pruning, keeping the hidden units
  with the largest product of incoming-row and outgoing-column weight norms, in their
  original order;
* **narrower latent states**: keep the first ``latent_dim`` channels everywhere (embedding,
  gates, MLP inputs and outputs, norms);
* **fewer radial functions or lower lmax**: keep the matching columns of the edge-encoder
  input (features are ordered radial-major, harmonics-minor);
* the energy normaliser, the per-element reference energies and the pair repulsion are
  copied as they are.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import numpy as np
import torch

from .student_v1 import OrbStudentV1, V1Config

log = logging.getLogger(__name__)


def _linears(seq) -> list:
    return [m for m in seq.modules() if isinstance(m, torch.nn.Linear)]


def _orb_parts(orb_model):
    gns = getattr(orb_model, "model", None)
    if gns is None or not hasattr(gns, "gnn_stacks") or not hasattr(gns, "_encoder"):
        raise TypeError(f"Expected an orb-models forcefield regressor, got {type(orb_model).__name__}.")
    rbf = gns.rbf_transform
    ang = gns.angular_transform
    if not hasattr(rbf, "bessel_weights") or not getattr(gns, "outer_product_with_cutoff", False):
        raise NotImplementedError(
            "v1_from_orb supports the Orb-v3 architecture (Bessel x spherical harmonics edges); "
            f"{type(orb_model).__name__} with {type(rbf).__name__} edges is not supported."
        )
    if getattr(gns, "conditioner", None) is not None:
        raise NotImplementedError("v1_from_orb does not support charge/spin-conditioned Orb models (omol).")
    return gns, rbf, ang


def orb_config(orb_model, species: Optional[Sequence[int]] = None) -> V1Config:
    """The :class:`V1Config` that mirrors ``orb_model`` exactly."""
    gns, rbf, ang = _orb_parts(orb_model)
    node_lin = _linears(gns._encoder._node_fn)
    latent = node_lin[0].in_features
    depth = len(node_lin) - 1
    step_hidden = [_linears(layer._edge_mlp)[0].out_features for layer in gns.gnn_stacks]
    head = orb_model.heads["energy"]
    head_lin = _linears(head.mlp)
    sc = getattr(orb_model, "system_config", None)
    radius = float(getattr(sc, "radius", 6.0)) if sc is not None else 6.0
    k = int(getattr(sc, "max_num_neighbors", 20)) if sc is not None else 20
    norm = "rms" if isinstance(gns._encoder._node_fn.layer_norm, torch.nn.RMSNorm) else "layer"
    act = type(gns._encoder._node_fn.mlp[1]).__name__.lower()
    if act != "silu":
        raise NotImplementedError(f"v1_from_orb supports SiLU Orb models, got {act}")
    return V1Config(
        species=list(species) if species is not None else list(range(1, 119)),
        cutoff=radius,
        max_neighbors=k,
        latent_dim=latent,
        encoder_hidden=node_lin[0].out_features,
        step_hidden=step_hidden,
        node_step_hidden=[_linears(layer._node_mlp)[0].out_features for layer in gns.gnn_stacks],
        node_encoder_hidden=node_lin[0].out_features,
        mlp_depth=depth,
        lmax=int(round(np.sqrt(ang.dim))) - 1,
        num_radial=int(rbf.num_bases),
        envelope_p=4,
        head_hidden=head_lin[0].out_features,
        head_depth=len(head_lin) - 1,
        readout="mean_pool" if head.atom_avg else "per_atom",
        pair_repulsion="orb" if getattr(orb_model, "pair_repulsion", False) else "none",
        norm=norm,
        activation="silu",
    )


def _keep_units(w_in: torch.Tensor, w_out: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Indices of hidden units to keep: largest ||row of w_in|| * ||column of w_out||."""
    if n_keep >= w_in.shape[0]:
        return torch.arange(w_in.shape[0])
    score = w_in.norm(dim=1) * w_out.norm(dim=0)
    return torch.sort(torch.topk(score, n_keep).indices).values


def _copy_mlp(src_linears, dst_linears, in_idx, out_idx):
    """Copy an MLP, pruning hidden units and selecting input/output channels."""
    prev = in_idx
    n = len(src_linears)
    for k, (s, d) in enumerate(zip(src_linears, dst_linears)):
        w, b = s.weight.detach(), s.bias.detach() if s.bias is not None else None
        if k < n - 1:
            rows = _keep_units(w[:, prev] if prev is not None else w, src_linears[k + 1].weight.detach(), d.out_features)
        else:
            rows = out_idx if out_idx is not None else torch.arange(w.shape[0])
        w = w[rows]
        if prev is not None:
            w = w[:, prev]
        d.weight.data.copy_(w)
        if b is not None and d.bias is not None:
            d.bias.data.copy_(b[rows])
        prev = rows


def _copy_norm(src, dst, idx):
    if isinstance(src, (torch.nn.RMSNorm, torch.nn.LayerNorm)) and getattr(src, "weight", None) is not None:
        dst.weight.data.copy_(src.weight.detach()[idx])
        if getattr(src, "bias", None) is not None and getattr(dst, "bias", None) is not None:
            dst.bias.data.copy_(src.bias.detach()[idx])
    if hasattr(src, "eps") and hasattr(dst, "eps"):
        dst.eps = src.eps


def v1_from_orb(orb_model, species: Optional[Sequence[int]] = None, **overrides) -> OrbStudentV1:
    """A v1 student initialised from an Orb-v3 model.

    Args:
        orb_model: an orb-models ConservativeForcefieldRegressor or DirectForcefieldRegressor
            (Orb-v3 architecture), pretrained or random
        species: atomic numbers the student is meant for (default: all 1..118)
        **overrides: :class:`V1Config` fields to change, e.g. ``step_hidden=[512]*4``,
            ``encoder_hidden=512``, ``latent_dim=192``, ``readout="per_atom"``
    Returns:
        OrbStudentV1 in float32 on the CPU

    Example:
        >>> from orbdistill.teachers.orb import build_orb_architecture
        >>> orb, _ = build_orb_architecture("orb-v3-conservative-20-omat")
        >>> student = v1_from_orb(orb, step_hidden=[512, 512, 512, 384], node_step_hidden=[512] * 4,
        ...                       encoder_hidden=512, node_encoder_hidden=512)
        >>> round(student.num_parameters() / 1e6, 1)
        7.1
    """
    gns, rbf, ang = _orb_parts(orb_model)
    full = orb_config(orb_model, species)
    cfg_dict = full.to_dict()
    unknown = sorted(set(overrides) - set(cfg_dict))
    if unknown:
        raise ValueError(f"Unknown v1 config fields {unknown}; valid: {sorted(cfg_dict)}")
    cfg_dict.update(overrides)
    if "step_hidden" in overrides and "node_step_hidden" not in overrides:
        if len(cfg_dict["node_step_hidden"]) != len(cfg_dict["step_hidden"]):
            cfg_dict["node_step_hidden"] = list(cfg_dict["step_hidden"])
    cfg = V1Config(**cfg_dict)
    if cfg.latent_dim > full.latent_dim or cfg.num_radial > full.num_radial or cfg.lmax > full.lmax:
        raise ValueError("A student initialised from Orb cannot be wider than the teacher (latent, radial, lmax).")
    if cfg.mlp_depth != full.mlp_depth:
        raise ValueError(f"mlp_depth must stay {full.mlp_depth} to copy weights (got {cfg.mlp_depth}).")
    if cfg.head_depth != full.head_depth:
        raise ValueError(f"head_depth must stay {full.head_depth} to copy weights (got {cfg.head_depth}).")
    student = OrbStudentV1(cfg)
    T, S = len(gns.gnn_stacks), len(cfg.step_hidden)
    if S > T:
        raise ValueError(f"The student cannot have more interaction steps ({S}) than the teacher ({T}).")
    d = torch.arange(cfg.latent_dim)
    D = full.latent_dim
    concat3 = torch.cat([d, d + D, d + 2 * D])

    with torch.no_grad():
        student.embedding.table.weight.copy_(gns.atom_emb.embeddings.weight.detach()[:, d])
        # edge-encoder input columns: radial-major, harmonics-minor
        n_sh_full, n_sh = (full.lmax + 1) ** 2, (cfg.lmax + 1) ** 2
        edge_cols = torch.tensor([k * n_sh_full + m for k in range(cfg.num_radial) for m in range(n_sh)])
        enc = gns._encoder
        _copy_mlp(_linears(enc._node_fn.mlp), student.node_encoder.mlp.linears, d, d)
        _copy_norm(enc._node_fn.layer_norm, student.node_encoder.norm, d)
        _copy_mlp(_linears(enc._edge_fn.mlp), student.edge_encoder.mlp.linears, edge_cols, d)
        _copy_norm(enc._edge_fn.layer_norm, student.edge_encoder.norm, d)
        keep = np.round(np.linspace(0, T - 1, S)).astype(int) if S < T else np.arange(T)
        for dst, t in zip(student.interactions, keep):
            src = gns.gnn_stacks[int(t)]
            _copy_mlp(_linears(src._edge_mlp.mlp), dst.edge_mlp.mlp.linears, concat3, d)
            _copy_norm(src._edge_mlp.layer_norm, dst.edge_mlp.norm, d)
            _copy_mlp(_linears(src._node_mlp.mlp), dst.node_mlp.mlp.linears, concat3, d)
            _copy_norm(src._node_mlp.layer_norm, dst.node_mlp.norm, d)
            for a, b in ((src._receive_attn, dst.receive_gate), (src._send_attn, dst.send_gate)):
                b.weight.copy_(a.weight.detach()[:, d])
                b.bias.copy_(a.bias.detach())
        head = orb_model.heads["energy"]
        _copy_mlp(_linears(head.mlp), student.head.linears, d, None)
        student.head_mean.fill_(float(head.normalizer.bn.running_mean.reshape(-1)[0]))
        student.head_std.fill_(float(torch.sqrt(head.normalizer.bn.running_var.reshape(-1)[0])))
        ref = head.reference.linear.weight.detach().reshape(-1).to(torch.float32)
        student.element_refs.zero_()
        student.element_refs[: ref.shape[0]] = ref
    log.info("v1 student from Orb: %d steps kept %s, %.2f M parameters", S, list(keep), student.num_parameters() / 1e6)
    return student.float().eval()
