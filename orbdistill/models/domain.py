"""A per-atom out-of-domain signal: how far an atom's features are from the training data's.

A student's energy readout sees each atom only through its invariant features (the final
node state, :meth:`StudentModel.invariant_features`). An atom whose features lie where no
training atom's did is one the readout extrapolates for. The signal here measures that
distance with one Gaussian per element, fitted to the features of every training atom:

    u_i = sqrt( (x_i - mu_Z)^T P_Z (x_i - mu_Z) / F ),   P_Z = (Sigma_Z + lambda_Z I)^-1

(a Mahalanobis distance, normalised by the width F so that training atoms score about 1;
``lambda_Z`` is a small shrinkage, 1e-3 of the mean feature variance, which keeps ``P_Z``
finite for features the data never varied). Distances in a model's latent space are the
usual cheap uncertainty for interatomic potentials when no ensemble is at hand (Janet et
al., Chem. Sci. 10, 7913 (2019); Zhu et al., npj Comput. Mater. 9, 154 (2023), a Gaussian
mixture on MACE's features). It costs one F x F product per atom and reuses the features
of the step's own forward pass, so the default step pays almost nothing for it.

The signal is calibrated at packaging on held-out frames: the card stores the
``threshold`` above which a structure's largest per-atom value is out of the domain.
"""

from __future__ import annotations

from typing import Dict, Sequence

import torch

#: file of a package that holds the fitted domain model (tensors only)
DOMAIN_FILE = "domain.pt"


class DomainModel(torch.nn.Module):
    """Per-element feature Gaussians; ``forward(features [N, F], atomic_numbers [N]) -> [N]``.

    Atoms of an element absent from the fit get ``inf`` (they are out of the domain by
    definition; the calculator refuses such elements before this is reached).
    """

    def __init__(self, species: Sequence[int], width: int):
        super().__init__()
        species = sorted(int(z) for z in species)
        row = torch.full((119,), -1, dtype=torch.long)
        row[torch.tensor(species)] = torch.arange(len(species))
        self.register_buffer("row", row)
        self.register_buffer("species", torch.tensor(species, dtype=torch.long))
        self.register_buffer("mean", torch.zeros(len(species), width))
        self.register_buffer("precision", torch.eye(width).repeat(len(species), 1, 1))
        self.register_buffer("n_atoms", torch.zeros(len(species), dtype=torch.long))

    @property
    def width(self) -> int:
        return int(self.mean.shape[1])

    def forward(self, features: torch.Tensor, atomic_numbers: torch.Tensor) -> torch.Tensor:
        rows = self.row[atomic_numbers]
        x = features.to(self.mean.dtype)
        q = torch.full((x.shape[0],), float("inf"), dtype=x.dtype, device=x.device)
        # one product per element (not a gathered [N, F, F] precision: 33 MB at 2,048 atoms)
        for k in range(int(self.species.shape[0])):
            idx = torch.nonzero(rows == k, as_tuple=True)[0]
            if idx.numel() == 0:
                continue
            d = x.index_select(0, idx) - self.mean[k]
            q[idx] = ((d @ self.precision[k]) * d).sum(dim=1).clamp(min=0)
        return torch.sqrt(q / self.width)

    @classmethod
    def fit(cls, features: torch.Tensor, atomic_numbers: torch.Tensor, shrinkage: float = 1e-3) -> "DomainModel":
        """Fit the Gaussians to training-atom features [N, F] (float64 inside)."""
        x = features.detach().double().cpu()
        z = atomic_numbers.detach().cpu()
        species = sorted(set(z.tolist()))
        dom = cls(species, x.shape[1]).double()
        for k, el in enumerate(species):
            xs = x[z == el]
            mu = xs.mean(0)
            cov = torch.cov(xs.T, correction=1) if len(xs) > 1 else torch.zeros(x.shape[1], x.shape[1], dtype=x.dtype)
            lam = shrinkage * max(float(torch.diagonal(cov).mean()), 1e-12)
            dom.mean[k] = mu
            dom.precision[k] = torch.linalg.inv(cov + lam * torch.eye(x.shape[1], dtype=x.dtype))
            dom.n_atoms[k] = len(xs)
        return dom.float()

    def state(self) -> Dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.state_dict().items()}

    @classmethod
    def from_state(cls, state: Dict[str, torch.Tensor]) -> "DomainModel":
        dom = cls(state["species"].tolist(), int(state["mean"].shape[1]))
        dom.load_state_dict(state, strict=True)
        return dom


@torch.no_grad()
def sample_features(model, samples, batch_size: int = 16):
    """Invariant features and atomic numbers of every atom of ``samples`` (training samples),
    in the model's own dtype and device."""
    from orbdistill.data.dataset import collate
    from orbdistill.graph import edge_vectors

    p = next(model.parameters())
    dtype, device = p.dtype, p.device
    model.eval()
    feats, numbers = [], []
    for k in range(0, len(samples), batch_size):
        g, _ = collate(samples[k: k + batch_size], dtype=dtype, device=device)
        v = edge_vectors(g.positions, g.cell, g.edge_index, g.cell_shifts, g.batch)
        feats.append(model.invariant_features(v, g.atomic_numbers, g.edge_index))
        numbers.append(g.atomic_numbers)
    return torch.cat(feats).cpu(), torch.cat(numbers).cpu()


def frame_scores(model, domain: DomainModel, samples, batch_size: int = 16):
    """Largest per-atom signal of each sample (frame), in sample order."""
    feats, numbers = sample_features(model, samples, batch_size)
    u = domain(feats.float(), numbers)
    out, start = [], 0
    for s in samples:
        out.append(float(u[start: start + s.n_atoms].max()))
        start += s.n_atoms
    return out


def calibrate(model, domain: DomainModel, held_out, quantile: float = 0.99, margin: float = 1.1) -> dict:
    """The threshold: ``margin`` times the ``quantile`` of the largest per-atom signal over
    held-out in-domain frames (about 1 % of in-domain frames are flagged at 0.99)."""
    import numpy as np

    scores = np.asarray(frame_scores(model, domain, held_out))
    threshold = float(margin * np.quantile(scores, quantile))
    return {"threshold": threshold, "quantile": quantile, "margin": margin, "n_frames": len(scores),
            "held_out_flagged": float((scores > threshold).mean()),
            "held_out_score_median": float(np.median(scores)), "held_out_score_max": float(scores.max())}


def fit_domain(model, train_samples, held_out_samples):
    """The out-of-domain signal of ``model``: Gaussians on its training atoms' features,
    calibrated on held-out frames. Returns (DomainModel, calibration dict)."""
    feats, numbers = sample_features(model, train_samples)
    domain = DomainModel.fit(feats, numbers)
    return domain, calibrate(model, domain, held_out_samples)

