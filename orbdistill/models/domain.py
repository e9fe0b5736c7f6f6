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

A distance says where the student has no data; it cannot see a region the data covers and
the student still fits badly (molten or compressed cells, small clusters: their errors are
several times the bulk's while their features are the training frames'). So the
calibration also fits a :class:`ForceErrorModel`, an estimate of each atom's force error
from its distance and from the size of its predicted force (errors grow with the force:
hot and strained frames carry larger forces and larger errors), on the held-out frames'
measured errors. Calibrating a latent distance against held-out errors is the approach of
Hu et al., Mach. Learn.: Sci. Technol. 3, 045028 (2022); Musil et al., J. Chem. Theory
Comput. 15, 906 (2019) calibrate committee spreads the same way. A structure is flagged
when its largest distance exceeds the threshold *or* its estimated force MAE exceeds the
error bar (3x the held-out force MAE by default: :func:`domain_flags`).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
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


def fit_domain(model, train_samples, held_out_samples, force_mae_ev_a: Optional[float] = None,
               force_error: bool = True):
    """The out-of-domain signal of ``model``: Gaussians on its training atoms' features,
    calibrated on held-out frames, and (``force_error``) the force-error model fitted on
    the same frames, its bar 3x ``force_mae_ev_a`` (the card's held-out force MAE; default:
    the MAE over ``held_out_samples``). Returns (DomainModel, calibration dict)."""
    feats, numbers = sample_features(model, train_samples)
    domain = DomainModel.fit(feats, numbers)
    info = calibrate(model, domain, held_out_samples)
    if force_error and len(held_out_samples) >= 5:
        info["force_error"] = calibrate_force_error(model, domain, held_out_samples, force_mae_ev_a)
    return domain, info



class ForceErrorModel:
    """Estimated force error of each atom (eV/Å, the mean absolute Cartesian component, the
    quantity a force MAE averages):

        sigma_i = s_Z * u_i**b * (|F_i| + f0)**c

    from the atom's out-of-domain signal ``u_i`` and the norm of its predicted force
    ``|F_i|`` (eV/Å). ``s_Z`` is one scale per element, ``f0`` (eV/Å) keeps atoms at rest
    from an estimate of zero. Fitted by :meth:`fit` on held-out frames so that each frame's
    mean ``sigma_i`` matches its measured force MAE (least squares on the logarithms, a
    soft-L1 loss against the odd outlier frame).

    >>> m = ForceErrorModel({29: 0.02}, u_exponent=1.0, force_exponent=1.0, force_floor_ev_a=0.1)
    >>> float(m(np.array([2.0]), np.array([0.4]), np.array([29]))[0])  # 0.02 * 2 * 0.5
    0.02
    """

    def __init__(self, scale: Dict[int, float], u_exponent: float, force_exponent: float, force_floor_ev_a: float):
        self.scale = {int(z): float(v) for z, v in scale.items()}
        self.u_exponent = float(u_exponent)
        self.force_exponent = float(force_exponent)
        self.force_floor_ev_a = float(force_floor_ev_a)
        self._table = np.full(119, np.inf)
        for z, v in self.scale.items():
            self._table[z] = v

    def __call__(self, u: np.ndarray, force_norm: np.ndarray, atomic_numbers: np.ndarray) -> np.ndarray:
        """Per-atom estimates [N] (eV/Å) from ``u`` [N], ``force_norm`` [N] (eV/Å) and
        ``atomic_numbers`` [N]; an element without a scale gets ``inf``."""
        s = self._table[np.asarray(atomic_numbers).ravel()]  # per-step: one gather, no Python loop over atoms
        u = np.maximum(np.asarray(u, dtype=float), 1e-6)
        f = np.asarray(force_norm, dtype=float) + self.force_floor_ev_a
        return s * u ** self.u_exponent * f ** self.force_exponent

    def to_dict(self) -> dict:
        return {"scale_ev_a": {str(z): v for z, v in self.scale.items()}, "u_exponent": self.u_exponent,
                "force_exponent": self.force_exponent, "force_floor_ev_a": self.force_floor_ev_a}

    @classmethod
    def from_dict(cls, d: dict) -> "ForceErrorModel":
        return cls({int(z): v for z, v in d["scale_ev_a"].items()}, d["u_exponent"], d["force_exponent"],
                   d["force_floor_ev_a"])

    @classmethod
    def fit(cls, frames: Sequence[dict], force_floor_ev_a: Optional[float] = None) -> "ForceErrorModel":
        """Fit to held-out frames, each a dict of per-atom ``u`` [n], ``force_norm`` [n]
        (predicted, eV/Å), ``atomic_numbers`` [n] and the frame's measured ``force_mae``
        (eV/Å). ``f0`` defaults to a quarter of the median predicted force norm."""
        from scipy.optimize import least_squares

        # a frame whose forces vanish by symmetry (an isolated atom, an element's reference
        # cell) has a force MAE of zero and says nothing about the error's scale
        frames = [fr for fr in frames if float(fr["force_mae"]) > 1e-9]
        if len(frames) < 5:
            raise ValueError(f"Fitting the force-error model needs at least 5 held-out frames, got {len(frames)}.")
        species = sorted({int(z) for fr in frames for z in np.asarray(fr["atomic_numbers"]).ravel()})
        col = {z: k for k, z in enumerate(species)}
        if force_floor_ev_a is None:
            force_floor_ev_a = 0.25 * float(np.median(np.concatenate([np.asarray(fr["force_norm"]) for fr in frames])))
            force_floor_ev_a = max(force_floor_ev_a, 1e-3)
        log_u = [np.log(np.maximum(np.asarray(fr["u"], dtype=float), 1e-6)) for fr in frames]
        log_f = [np.log(np.asarray(fr["force_norm"], dtype=float) + force_floor_ev_a) for fr in frames]
        cols = [np.array([col[int(z)] for z in np.asarray(fr["atomic_numbers"]).ravel()]) for fr in frames]
        target = np.log(np.maximum([float(fr["force_mae"]) for fr in frames], 1e-9))

        def residuals(p):
            log_s, b, c = p[:len(species)], p[-2], p[-1]
            pred = [np.log(np.mean(np.exp(log_s[k] + b * lu + c * lf))) for k, lu, lf in zip(cols, log_u, log_f)]
            # a weak pull of the element scales toward their mean: where every frame has the same
            # composition (liquid water), only their combination is determined, and without it
            # one element's scale can run to zero
            return np.concatenate([np.asarray(pred) - target, 0.3 * (log_s - log_s.mean())])

        p0 = np.concatenate([np.full(len(species), float(np.median(target))), [0.5, 0.5]])
        lower = np.concatenate([np.full(len(species), -np.inf), [0.0, 0.0]])
        upper = np.concatenate([np.full(len(species), np.inf), [4.0, 3.0]])
        sol = least_squares(residuals, p0, bounds=(lower, upper), loss="soft_l1", f_scale=0.5)
        log_s = sol.x[:len(species)]
        return cls({z: float(np.exp(log_s[col[z]])) for z in species}, sol.x[-2], sol.x[-1], force_floor_ev_a)


def held_out_errors(model, domain: DomainModel, samples, batch_size: int = 16) -> List[dict]:
    """Per held-out frame: the per-atom signal ``u`` [n], predicted force norms
    ``force_norm`` [n] (eV/Å), ``atomic_numbers`` [n] and the frame's force MAE against
    its labels (eV/Å), from one forward and backward pass per batch."""
    from orbdistill.data.dataset import collate

    p = next(model.parameters())
    model.eval()
    out = []
    for k in range(0, len(samples), batch_size):
        chunk = samples[k: k + batch_size]
        g, tgt = collate(chunk, dtype=p.dtype, device=p.device)
        pred = model.predict(g, compute_forces=True, compute_stress=False, features=True)
        u = domain(pred["features"].float(), g.atomic_numbers).detach().cpu().double().numpy()
        fn = pred["forces"].detach().norm(dim=1).cpu().double().numpy()
        err = (pred["forces"] - tgt["forces"]).detach().abs().mean(dim=1).cpu().double().numpy()
        z = g.atomic_numbers.cpu().numpy()
        start = 0
        for s in chunk:
            sl = slice(start, start + s.n_atoms)
            out.append({"u": u[sl], "force_norm": fn[sl], "atomic_numbers": z[sl], "force_mae": float(err[sl].mean())})
            start += s.n_atoms
    return out


def domain_flags(max_u: float, mean_force_error: Optional[float], ood: dict) -> List[str]:
    """Why a structure is out of the domain of a package whose card holds ``ood`` (the
    card's ``domain.ood``): an empty list when it is inside. ``max_u`` is the structure's
    largest per-atom signal, ``mean_force_error`` its mean estimated force error (eV/Å;
    None without a force-error model)."""
    reasons = []
    thr = ood.get("threshold")
    if thr is not None and max_u > thr:
        reasons.append(f"largest per-atom uncertainty {max_u:.2f} > threshold {thr:.2f}")
    fe = ood.get("force_error") or {}
    bar = fe.get("threshold_ev_a")
    if bar is not None and mean_force_error is not None and mean_force_error > bar:
        reasons.append(f"estimated force error {1e3 * mean_force_error:.0f} meV/Å > {1e3 * bar:.0f} meV/Å "
                       f"({fe.get('bar_factor', 3):g}x the held-out force MAE)")
    return reasons


def calibrate_force_error(model, domain: DomainModel, held_out, force_mae_ev_a: Optional[float] = None,
                          bar_factor: float = 3.0) -> dict:
    """Fit the :class:`ForceErrorModel` on held-out frames and set its bar: ``bar_factor`` x
    ``force_mae_ev_a`` (the card's held-out force MAE; by default the MAE over
    ``held_out``). Returns the card entry (``domain.ood.force_error``) with the fit's
    quality: the spread of log(measured / estimated) and the rank correlation."""
    from scipy.stats import spearmanr

    frames = held_out_errors(model, domain, held_out)
    em = ForceErrorModel.fit(frames)
    frames = [fr for fr in frames if fr["force_mae"] > 1e-9]  # as the fit: zero-force frames carry no scale
    mae = np.array([fr["force_mae"] for fr in frames])
    est = np.array([float(em(fr["u"], fr["force_norm"], fr["atomic_numbers"]).mean()) for fr in frames])
    if force_mae_ev_a is None:
        force_mae_ev_a = float(np.average(mae, weights=[len(fr["u"]) for fr in frames]))
    bar = bar_factor * float(force_mae_ev_a)
    log_ratio = np.log(mae / est)
    return {**em.to_dict(), "threshold_ev_a": bar, "bar_factor": bar_factor, "reference_force_mae_ev_a": float(force_mae_ev_a),
            "n_frames": len(frames), "log_ratio_std": float(log_ratio.std()),
            "spearman": float(spearmanr(est, mae).statistic), "held_out_flagged": float((est > bar).mean()),
            "held_out_bad": float((mae > bar).mean())}
