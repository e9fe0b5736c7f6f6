"""Training students on teacher labels: energy per atom, forces and stress.

* Loss: ``w_E MSE(E/N)/var_E + w_F MSE(F)/var_F + w_S MSE(sigma)/var_S``; the variances
  come from the training data (after subtracting per-element reference energies), so the
  weights are comparable numbers.
* Per-element reference energies are fitted by least squares on the training set; the
  model's output scale is the RMS force of the training set.
* AdamW with linear warm-up and cosine decay, an exponential moving average (EMA) of the
  weights (validation, the best model and the final model use the EMA), gradient
  clipping and early stopping on the validation loss.
* A checkpoint is written atomically after every epoch with model, EMA, optimiser,
  scheduler and random states; the batch order of each epoch derives from the seed and
  the epoch number, so a resumed run continues exactly as if it had never stopped.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Annotated, Dict, List, Literal, Optional, Sequence

import numpy as np
import torch
from ase import units
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveInt
from tqdm.auto import tqdm

from orbdistill.config import build_config, config_dataclass

from orbdistill.data.dataset import Sample, collate
from orbdistill.training.distributed import context_from_env, device_for
from orbdistill.models.base import StudentModel
from orbdistill.utils import atomic_torch_save, atomic_write_text, resolve_dtype

log = logging.getLogger(__name__)

EV_A3_TO_GPA = 1.0 / units.GPa  # 160.2177 GPa per eV/Å^3


@config_dataclass
class TrainConfig:
    """How to train (all fields saved in every checkpoint; types and ranges are checked
    when it is built, see :mod:`orbdistill.config`)."""

    epochs: PositiveInt = 60
    batch_size: PositiveInt = 8
    lr: Annotated[float, Field(gt=0, le=1)] = 3e-3
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.02
    warmup_epochs: NonNegativeInt = 2
    weight_decay: NonNegativeFloat = 1e-6
    energy_weight: NonNegativeFloat = 1.0
    forces_weight: NonNegativeFloat = 1.0
    stress_weight: NonNegativeFloat = 1.0
    hessian_weight: NonNegativeFloat = 0.0   # > 0: match the teacher's Hessian-vector products (data with hvp)
    # > 0 (eV/Å): an atom's squared force error weighs 1 / (1 + |F_teacher| / force_delta) (GPUMD's NEP
    # ``force_delta``), so that the few atoms with tens of eV/Å (hard rattles, dimers, pushed pairs) do not
    # outweigh the near-equilibrium forces; 0 weighs every atom alike (see :func:`force_atom_weights`)
    force_delta: NonNegativeFloat = 0.0
    # how the energy and stress terms are normalised: "std", their standard deviations over the
    # training set; "robust", a median-based spread (for energies 1.4826 x the median absolute
    # deviation; the std for normal data) that a few per cent of far-off frames (dimers, small
    # clusters, squeezed cells) do not inflate (see :func:`robust_scale`)
    target_scales: Literal["std", "robust"] = "std"
    # frames of protocol group g (bulk, surface, defect, cluster, hot, volume) weigh (N / (G n_g))^group_balance
    # in the loss: 0 weighs every frame alike, 1 gives every group the same total weight
    group_balance: Annotated[float, Field(ge=0, le=1)] = 0.5
    ema_decay: Annotated[float, Field(ge=0, lt=1)] = 0.99
    grad_clip: NonNegativeFloat = 10.0
    patience: PositiveInt = 25
    seed: NonNegativeInt = 0
    dtype: Literal["float32", "float64"] = "float32"
    device: Annotated[str, Field(pattern=r"^(cpu|auto|cuda(:[0-9]+)?|mps)$")] = "cpu"  # "auto": CUDA when available

    def __post_init__(self):
        if self.energy_weight == self.forces_weight == self.stress_weight == self.hessian_weight == 0:
            raise ValueError("energy_weight, forces_weight, stress_weight and hessian_weight are all 0: "
                             "nothing would be learned")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return build_config(cls, d, "train")


def fit_element_references(samples: Sequence[Sample], species: Sequence[int]) -> np.ndarray:
    """Least-squares per-element energies: ``E ~ sum_Z n_Z ref_Z`` -> ref [119] (eV)."""
    species = list(species)
    counts = np.zeros((len(samples), len(species)))
    col = {z: k for k, z in enumerate(species)}
    for r, s in enumerate(samples):
        for z in s.numbers:
            if int(z) not in col:
                raise ValueError(f"Training data contains Z={int(z)}, which is not among the student's species {species}.")
            counts[r, col[int(z)]] += 1
    energies = np.array([s.energy for s in samples])
    coef, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    refs = np.zeros(119)
    refs[species] = coef
    return refs


class DataChangedError(ValueError):
    """A training checkpoint made on other data than the run's (e.g. after extending it)."""


def data_fingerprint(samples: Sequence[Sample]) -> str:
    """A short hash of a training set: trajectories, sizes and energies of its frames."""
    import hashlib

    key = json.dumps([(s.traj_id, s.n_atoms, round(float(s.energy), 6)) for s in samples])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def group_weights(samples: Sequence[Sample], balance: float) -> Dict[str, float]:
    """Loss weight of a frame of each protocol group: ``(N / (G n_g)) ** balance``, scaled so
    that the mean weight over ``samples`` is 1 (``N`` frames in ``G`` groups, ``n_g`` in
    group ``g``). Small groups (clusters, defects, volume scans) otherwise count for a few
    per cent of the loss and are fitted several times worse than the bulk."""
    from orbdistill.data.generate import protocol_group

    counts: Dict[str, int] = {}
    for s in samples:
        g = protocol_group(s.protocol)
        counts[g] = counts.get(g, 0) + 1
    n, g_count = len(samples), len(counts)
    raw = {g: (n / (g_count * c)) ** balance for g, c in counts.items()}
    mean = sum(raw[g] * c for g, c in counts.items()) / max(n, 1)
    return {g: w / mean for g, w in raw.items()}


def force_atom_weights(forces, force_delta: float):
    """Per-atom weights of squared force errors, ``1 / (1 + |F| / force_delta)`` for reference
    forces ``F`` [N, 3] (numpy array or tensor); all ones when ``force_delta`` is 0.

    The form is NEP's ``force_delta`` (GPUMD documentation, nep.in keyword ``force_delta``):
    at ``|F| >> force_delta`` the squared error counts like ``|dF|^2 force_delta / |F|``,
    between an absolute and a relative error.

    Example:
        >>> import numpy as np
        >>> force_atom_weights(np.array([[0.0, 0.0, 0.0], [3.0, 0.0, 4.0]]), 1.0).tolist()
        [1.0, 0.16666666666666666]
    """
    if isinstance(forces, torch.Tensor):
        if force_delta <= 0:
            return torch.ones(forces.shape[0], dtype=forces.dtype, device=forces.device)
        return 1.0 / (1.0 + torch.linalg.vector_norm(forces, dim=-1) / force_delta)
    forces = np.asarray(forces, dtype=float)
    if force_delta <= 0:
        return np.ones(forces.shape[0])
    return 1.0 / (1.0 + np.linalg.norm(forces, axis=-1) / force_delta)


def robust_scale(x) -> float:
    """A spread of ``x`` that a few far-off frames do not inflate. ``x`` is one value per
    frame, or one row of values per frame (a frame's stress components): each frame's mean
    square deviation from the median of all values, the median of these over frames, divided
    by what that median is for independent normal values (chi-square of k over k, k values
    per row), square root. For one value per frame this is 1.4826 x the median absolute
    deviation. Normal data give their standard deviation.

    >>> rng = np.random.default_rng(0)
    >>> x = np.r_[rng.normal(0.0, 0.2, 970), np.full(30, 12.0)]
    >>> round(float(x.std()), 2), round(robust_scale(x), 2)
    (2.06, 0.2)
    >>> rows = rng.normal(0.0, 0.5, (2000, 6))
    >>> round(robust_scale(rows), 1)
    0.5
    """
    from scipy.stats import chi2

    x = np.asarray(x, dtype=np.float64)
    rows = x.reshape(len(x), -1)
    k = rows.shape[1]
    ms = ((rows - np.median(rows)) ** 2).mean(axis=1)
    return float(np.sqrt(np.median(ms) / (chi2.median(k) / k)))


def data_statistics(samples: Sequence[Sample], refs: np.ndarray, force_delta: float = 0.0,
                    target_scales: str = "std") -> Dict[str, float]:
    """Scales of the training targets. ``forces_std`` normalises the force loss: with
    ``force_delta`` it is the root of the weighted mean square force (the same weights as the
    loss), so the force term keeps its share of the loss when a few atoms carry huge forces.
    With ``target_scales="robust"``, ``energy_per_atom_std`` and ``stress_std`` are
    :func:`robust_scale` of the per-atom energies (after the references) and of the frames'
    stress components: dimers or small clusters 10 eV/atom away, or cells compressed to
    tens of GPa, then no longer shrink the weight of every energy or stress error."""
    if target_scales not in ("std", "robust"):
        raise ValueError(f"target_scales = {target_scales!r}: 'std' or 'robust'")
    spread = robust_scale if target_scales == "robust" else (lambda x: float(np.std(x)))
    e = np.array([(s.energy - refs[s.numbers].sum()) / s.n_atoms for s in samples])
    f = np.concatenate([s.forces.ravel() for s in samples])
    if force_delta > 0:
        w = np.concatenate([force_atom_weights(s.forces, force_delta) for s in samples])
        f_all = np.concatenate([s.forces for s in samples])
        forces_std = float(max(np.sqrt((w[:, None] * f_all**2).mean()), 1e-3))
    else:
        forces_std = float(max(f.std(), 1e-3))
    st = [s.stress.ravel() for s in samples if s.stress is not None]
    st = np.stack(st) if st else np.zeros((1, 1))
    hv = [s.hvp.ravel() for s in samples if s.hvp is not None]
    hv = np.concatenate(hv) if hv else np.ones(1)
    return {
        "hvp_std": float(max(hv.std(), 1e-3)),
        "energy_per_atom_std": float(max(spread(e), 1e-4)),
        "forces_rms": float(max(np.sqrt((f**2).mean()), 1e-3)),
        "forces_std": forces_std,
        "stress_std": float(max(spread(st), 1e-5)),
        "n_frames": len(samples),
        "n_atoms": int(sum(s.n_atoms for s in samples)),
    }


def _dtype(name):
    return resolve_dtype(name)


def _batches(samples, batch_size, generator=None):
    idx = torch.randperm(len(samples), generator=generator).tolist() if generator is not None else list(range(len(samples)))
    return [[samples[i] for i in idx[k: k + batch_size]] for k in range(0, len(idx), batch_size)]


def student_hvp(model, graph, v: torch.Tensor, epsilon: torch.Tensor, training: bool) -> torch.Tensor:
    """The student's Hessian-vector product by central differences of its forces, with the
    teacher's displacement ``epsilon`` (per atom) along ``v`` [N, 3]:
    ``-(F(x + eps v) - F(x - eps v)) / (2 eps)`` (two more force evaluations; differentiable
    with respect to the weights when ``training``)."""
    step = (epsilon.clamp_min(1e-12)[:, None] * v).to(graph.positions.dtype)
    f = [model.predict(dataclasses.replace(graph, positions=graph.positions + sign * step), compute_forces=True,
                       compute_stress=False, training=training)["forces"] for sign in (1.0, -1.0)]
    return -(f[0] - f[1]) / (2.0 * epsilon.clamp_min(1e-12)[:, None])


def compute_loss(model, samples, cfg: TrainConfig, stats: dict, training: bool, dist=None):
    """The weighted, normalised loss of a batch:
    ``w_E sum(dE/N)^2 / n_E / var_E + w_F sum(dF)^2 / n_F / var_F + w_S sum(dS)^2 / n_S / var_S``
    (+ ``w_H sum(dHv)^2 / n_H / var_Hv`` with ``hessian_weight`` and frames carrying a teacher
    Hessian-vector product). Every squared residual is multiplied by its frame's ``weight``
    (:func:`group_weights`), a force residual also by its atom's :func:`force_atom_weights`
    (``force_delta``).

    With ``dist`` (a :class:`~orbdistill.training.distributed.DistContext`), ``samples`` is
    this rank's shard of a global batch and the counts ``n`` are those of the global batch,
    so that the sum over ranks of the shard losses (and of their gradients) is the loss of
    the global batch. A rank with an empty shard returns a zero loss attached to the weights.
    """
    parts = {}
    if samples:
        graph, tgt = collate(samples, dtype=_dtype(cfg.dtype), device=cfg.device)
        want_stress = bool(tgt["has_stress"].any()) and cfg.stress_weight > 0
        out = model.predict(graph, compute_forces=True, compute_stress=want_stress, training=training)
        n = tgt["n_atoms"].to(out["energy"].dtype)
        w_frame = tgt["weight"].to(out["energy"].dtype).sqrt()   # weights multiply squared residuals
        w_atom = w_frame[graph.batch][:, None]
        w_force = w_atom * force_atom_weights(tgt["forces"], cfg.force_delta).sqrt()[:, None]
        parts["de"] = (out["energy"] - tgt["energy"]) / n
        parts["df"] = out["forces"] - tgt["forces"]
        if want_stress:
            parts["ds"] = (out["stress"] - tgt["stress"])[tgt["has_stress"]]
        if cfg.hessian_weight > 0 and "has_hvp" in tgt and bool(tgt["has_hvp"].any()):
            parts["dh"] = (student_hvp(model, graph, tgt["hvp_v"], tgt["hvp_epsilon"], training)
                           - tgt["hvp"])[tgt["has_hvp"]]
        counts_local = torch.tensor([parts[k].numel() if k in parts else 0 for k in ("de", "df", "ds", "dh")],
                                    dtype=torch.float64)
        weighted = {"de": parts["de"] * w_frame, "df": parts["df"] * w_force}
        if "ds" in parts:
            weighted["ds"] = (out["stress"] - tgt["stress"])[tgt["has_stress"]] * w_frame[tgt["has_stress"]][:, None, None]
        if "dh" in parts:
            weighted["dh"] = parts["dh"] * w_atom[tgt["has_hvp"]]
    else:
        counts_local = torch.zeros(4, dtype=torch.float64)
    counts = dist.all_reduce_sum(counts_local.clone()) if dist is not None else counts_local
    if not parts:  # an empty shard (a rank with no structure in this batch): a zero attached to every weight,
        # so its gradients exist (zeros) and the all_reduce of the flat gradient has the same size on every rank
        return sum(p.sum() * 0.0 for p in model.parameters()), {}
    loss = 0.0
    terms = (("de", cfg.energy_weight, stats["energy_per_atom_std"]), ("df", cfg.forces_weight, stats["forces_std"]),
             ("ds", cfg.stress_weight, stats["stress_std"]), ("dh", cfg.hessian_weight, stats.get("hvp_std", 1.0)))
    for k, (key, weight, std) in enumerate(terms):
        if key in parts and counts[k] > 0:
            loss = loss + weight * (weighted[key] ** 2).sum() / float(counts[k]) / std**2
    return loss, {k: v.detach() for k, v in parts.items()}


def evaluate_by_group(model: StudentModel, samples: Sequence[Sample], **kwargs) -> Dict[str, dict]:
    """:func:`evaluate` on each protocol group (bulk, surface, defect, cluster, hot, volume;
    see :func:`orbdistill.data.generate.protocol_group`) present in ``samples``."""
    from orbdistill.data.generate import protocol_group

    groups: Dict[str, list] = {}
    for s in samples:
        groups.setdefault(protocol_group(s.protocol), []).append(s)
    return {g: evaluate(model, ss, **kwargs) for g, ss in sorted(groups.items())}


def evaluate(model: StudentModel, samples: Sequence[Sample], batch_size: int = 16, dtype="float32", device="cpu",
             return_predictions: bool = False, force_delta: float = 0.0) -> dict:
    """Errors of ``model`` on ``samples``: MAE and RMSE of energy per atom (meV/atom),
    force components (meV/Å) and stress components (GPa); with ``force_delta`` > 0 also
    ``force_wrmse_mev_a``, the force RMSE with the training loss's per-atom weights
    (:func:`force_atom_weights`)."""
    if not samples:
        raise ValueError("Cannot evaluate on an empty set of samples.")
    model.eval()
    de, df, ds, wf = [], [], [], []
    preds = {"energy_per_atom": [], "energy_per_atom_ref": [], "forces": [], "forces_ref": [], "stress": [], "stress_ref": []}
    for chunk in _batches(list(samples), batch_size):
        graph, tgt = collate(chunk, dtype=_dtype(dtype), device=device)
        want_stress = bool(tgt["has_stress"].any())
        out = model.predict(graph, compute_forces=True, compute_stress=want_stress)
        n = tgt["n_atoms"].to(out["energy"].dtype)
        de.append(((out["energy"] - tgt["energy"]) / n).detach().cpu().double())
        df.append((out["forces"] - tgt["forces"]).detach().cpu().double().ravel())
        if force_delta > 0:
            wf.append(force_atom_weights(tgt["forces"].detach().cpu().double(), force_delta).repeat_interleave(3))
        if want_stress:
            m = tgt["has_stress"]
            ds.append((out["stress"] - tgt["stress"])[m].detach().cpu().double().ravel())
        if return_predictions:
            preds["energy_per_atom"].append((out["energy"] / n).detach().cpu().double())
            preds["energy_per_atom_ref"].append((tgt["energy"] / n).detach().cpu().double())
            preds["forces"].append(out["forces"].detach().cpu().double().ravel())
            preds["forces_ref"].append(tgt["forces"].detach().cpu().double().ravel())
            if want_stress:
                preds["stress"].append(out["stress"][tgt["has_stress"]].detach().cpu().double().ravel())
                preds["stress_ref"].append(tgt["stress"][tgt["has_stress"]].detach().cpu().double().ravel())
    de, df = torch.cat(de), torch.cat(df)
    m = {
        "energy_mae_mev_atom": 1e3 * de.abs().mean().item(),
        "energy_rmse_mev_atom": 1e3 * de.pow(2).mean().sqrt().item(),
        "force_mae_mev_a": 1e3 * df.abs().mean().item(),
        "force_rmse_mev_a": 1e3 * df.pow(2).mean().sqrt().item(),
        "n_frames": len(samples),
    }
    if force_delta > 0:
        m["force_wrmse_mev_a"] = 1e3 * (torch.cat(wf) * df.pow(2)).mean().sqrt().item()
    if ds:
        ds = torch.cat(ds)
        m["stress_mae_gpa"] = EV_A3_TO_GPA * ds.abs().mean().item()
        m["stress_rmse_gpa"] = EV_A3_TO_GPA * ds.pow(2).mean().sqrt().item()
    if return_predictions:
        m["predictions"] = {k: torch.cat(v).numpy() if v else np.zeros(0) for k, v in preds.items()}
    return m


def _numpy_rng_state() -> list:
    """numpy's global RNG state as plain data (a checkpoint holds no numpy objects)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [str(name), [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]


def _set_numpy_rng_state(state) -> None:
    name, keys, pos, has_gauss, cached = state
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


class Trainer:
    """Train ``model`` on ``train`` samples, select on ``val`` samples, checkpoint to ``out_dir``.

    Example:
        >>> trainer = Trainer(model, train_samples, val_samples, TrainConfig(epochs=5), "runs/x")  # doctest: +SKIP
        >>> best = trainer.fit()  # doctest: +SKIP
    """

    def __init__(self, model: StudentModel, train: Sequence[Sample], val: Sequence[Sample], cfg: TrainConfig, out_dir,
                 progress: bool = True, fit_normalization: bool = True):
        """``fit_normalization=False`` keeps the model's element references and output scale
        (a student initialised from teacher weights reproduces the teacher at epoch 0 only
        with the teacher's own normalisation); the data statistics then use those references."""
        if not train:
            raise ValueError("Empty training set: generate data first (no frames to train on).")
        if not val:
            raise ValueError("Empty validation set: the split left no trajectory for validation.")
        if cfg.device == "auto":
            cfg = dataclasses.replace(cfg, device="cuda" if torch.cuda.is_available() else "cpu")
        self.dist = context_from_env(cfg.device)
        cfg = dataclasses.replace(cfg, device=device_for(self.dist, cfg.device))
        self.cfg = cfg
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.train, self.val = list(train), list(val)
        self.group_weights = group_weights(self.train, cfg.group_balance)
        if cfg.group_balance > 0 and len(self.group_weights) > 1:
            from orbdistill.data.generate import protocol_group

            self.train = [dataclasses.replace(s, weight=self.group_weights[protocol_group(s.protocol)])
                          for s in self.train]
        self.data_fingerprint = data_fingerprint(self.train)  # once: checkpoints carry it every epoch
        self.progress = progress
        torch.manual_seed(cfg.seed)
        self.model = model.to(device=cfg.device, dtype=_dtype(cfg.dtype))
        species = model.species.tolist()
        self.fit_normalization = fit_normalization
        if fit_normalization:
            refs = fit_element_references(self.train, species)
        else:
            refs = self.model.element_refs.detach().cpu().double().numpy()
        self.stats = data_statistics(self.train, refs, cfg.force_delta, cfg.target_scales)
        if fit_normalization:
            with torch.no_grad():
                self.model.element_refs.copy_(torch.as_tensor(refs, dtype=self.model.element_refs.dtype))
                self.model.energy_scale.fill_(self.stats["forces_rms"])
                self.model.energy_shift.zero_()
        self.dist.broadcast_parameters(self.model)
        self.ema = copy.deepcopy(self.model)
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps_per_epoch = math.ceil(len(self.train) / cfg.batch_size)
        total = max(1, cfg.epochs * steps_per_epoch)
        warm = max(1, cfg.warmup_epochs * steps_per_epoch)

        def lr_lambda(step):
            if step < warm:
                return (step + 1) / warm
            x = min(1.0, (step - warm) / max(1, total - warm))
            return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * x))

        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda)
        self.epoch = 0
        self.best_val = float("inf")
        self.best_epoch = -1
        self.history: List[dict] = []

    # ---- checkpoints ----------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    @property
    def best_path(self) -> Path:
        return self.out / "best.pt"

    def state(self) -> dict:
        return {
            "epoch": self.epoch, "model": self.model.state_dict(), "ema": self.ema.state_dict(),
            "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(), "best_val": self.best_val,
            "best_epoch": self.best_epoch, "history": self.history, "stats": self.stats,
            "train_config": dataclasses.asdict(self.cfg), "model_config": self.model.config.to_dict(),
            "data": {"fingerprint": self.data_fingerprint, "n_train": len(self.train), "n_val": len(self.val)},
            "rng": {"torch": torch.get_rng_state(), "numpy": _numpy_rng_state(), "python": list(random.getstate())},
        }

    def resume(self, path=None) -> bool:
        """Load the last checkpoint if there is one; True if training was resumed."""
        path = Path(path) if path else self.checkpoint_path
        if not path.exists():
            return False
        from orbdistill.models import UnsafeCheckpointError, safe_torch_load

        try:
            st = safe_torch_load(path, map_location=self.cfg.device, what="training checkpoint")
        except UnsafeCheckpointError:
            raise
        except ValueError as exc:
            raise ValueError(f"{exc} Delete {path} to start training over.") from exc
        if st.get("model_config") != self.model.config.to_dict():
            raise ValueError(f"Checkpoint {path} belongs to a different model configuration; use another output folder.")
        data = st.get("data")  # checkpoints older than the fingerprint are taken as they are
        if data and data["fingerprint"] != self.data_fingerprint:
            raise DataChangedError(f"Checkpoint {path} was trained on other data ({data['n_train']} training frames, now "
                                   f"{len(self.train)}); delete {self.out} or use another work folder to train anew.")
        # they change the loss; checkpoints older than an option were trained with its default
        for field, default in (("group_balance", 0.0), ("force_delta", 0.0), ("target_scales", "std")):
            saved = st.get("train_config", {}).get(field, default)
            if saved != getattr(self.cfg, field):
                raise ValueError(f"Checkpoint {path} was trained with train.{field} = {saved}, this run asks for "
                                 f"{getattr(self.cfg, field)}; set it to {saved} to resume, or use another output folder.")
        self.model.load_state_dict(st["model"])
        self.ema.load_state_dict(st["ema"])
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        self.epoch, self.best_val, self.best_epoch = st["epoch"], st["best_val"], st["best_epoch"]
        self.history, self.stats = st["history"], st["stats"]
        torch.set_rng_state(st["rng"]["torch"])
        _set_numpy_rng_state(st["rng"]["numpy"])
        version, internal, gauss = st["rng"]["python"]
        random.setstate((version, tuple(internal), gauss))
        log.info("resumed from %s at epoch %d", path, self.epoch)
        return True

    # ---- training ------------------------------------------------------------------------
    def _update_ema(self):
        # warm-up (as TensorFlow's ExponentialMovingAverage with num_updates): early on the
        # average must not remember the random initial weights
        n = self.sched.last_epoch  # optimiser steps taken so far
        d = min(self.cfg.ema_decay, (1.0 + n) / (10.0 + n))
        with torch.no_grad():
            for pe, pm in zip(self.ema.parameters(), self.model.parameters()):
                pe.mul_(d).add_(pm.detach(), alpha=1 - d)
            for be, bm in zip(self.ema.buffers(), self.model.buffers()):
                be.copy_(bm)

    def train_epoch(self) -> float:
        """One pass over the training set; returns the mean batch loss (global batches)."""
        self.model.train()
        gen = torch.Generator().manual_seed(self.cfg.seed * 100_003 + self.epoch)
        batches = _batches(self.train, self.cfg.batch_size, gen)  # the same global batches on every rank
        total = 0.0
        bar = tqdm(batches, desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}", leave=False,
                   disable=not (self.progress and self.dist.is_main))
        for chunk in bar:
            shard = self.dist.shard(chunk)
            loss, _ = compute_loss(self.model, shard, self.cfg, self.stats, training=True,
                                   dist=self.dist if self.dist.enabled else None)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.dist.enabled:  # the gradient of the global batch: the sum of the shards'
                grads = [p.grad for p in self.model.parameters() if p.grad is not None]
                flat = torch.cat([g.reshape(-1) for g in grads])
                self.dist.all_reduce_sum(flat)
                offset = 0
                for g in grads:
                    g.copy_(flat[offset: offset + g.numel()].view_as(g))
                    offset += g.numel()
                loss_value = float(self.dist.all_reduce_sum(loss.detach().reshape(1).clone()))
            else:
                loss_value = float(loss.detach())
            if self.cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.opt.step()
            self.sched.step()
            self._update_ema()
            total += loss_value * len(chunk)
            bar.set_postfix(loss=f"{loss_value:.4f}")
        return total / len(self.train)

    def validation_loss(self, metrics: dict) -> float:
        e = metrics["energy_rmse_mev_atom"] / 1e3 / self.stats["energy_per_atom_std"]
        f = metrics.get("force_wrmse_mev_a", metrics["force_rmse_mev_a"]) / 1e3 / self.stats["forces_std"]
        v = self.cfg.energy_weight * e**2 + self.cfg.forces_weight * f**2
        if "stress_rmse_gpa" in metrics:
            v += self.cfg.stress_weight * (metrics["stress_rmse_gpa"] / EV_A3_TO_GPA / self.stats["stress_std"]) ** 2
        return float(v)

    def fit(self, max_epochs: Optional[int] = None, log_fn=print) -> StudentModel:
        """Train until ``cfg.epochs`` (or early stopping); returns the best EMA model.

        ``max_epochs`` stops after that many epochs of this call (used to test resuming).
        """
        ran = 0
        main = self.dist.is_main  # rank 0 alone logs and writes; every rank takes the same decisions
        if not main:
            log_fn = None
        while self.epoch < self.cfg.epochs:
            if max_epochs is not None and ran >= max_epochs:
                break
            t0 = time.perf_counter()
            train_loss = self.train_epoch()
            metrics = evaluate(self.ema, self.val, dtype=self.cfg.dtype, device=self.cfg.device,
                               force_delta=self.cfg.force_delta)
            val_loss = self.validation_loss(metrics)
            self.epoch += 1
            ran += 1
            row = {"epoch": self.epoch, "train_loss": train_loss, "val_loss": val_loss, "lr": self.sched.get_last_lr()[0],
                   "seconds": time.perf_counter() - t0, **metrics}
            self.history.append(row)
            improved = val_loss < self.best_val
            if improved:
                self.best_val, self.best_epoch = val_loss, self.epoch
                if main:
                    self.ema.save(self.best_path)
            line = (f"epoch {self.epoch:3d}/{self.cfg.epochs}  loss {train_loss:.4f}  val: E {metrics['energy_mae_mev_atom']:.2f} meV/atom"
                    f"  F {metrics['force_mae_mev_a']:.1f} meV/Å")
            if "stress_mae_gpa" in metrics:
                line += f"  S {metrics['stress_mae_gpa']:.3f} GPa"
            line += f"  lr {row['lr']:.2e}  {row['seconds']:.1f} s" + ("  *" if improved else "")
            if log_fn:
                log_fn(line)
            if main:
                atomic_torch_save(self.state(), self.checkpoint_path)
                atomic_write_text(self.out / "history.json", json.dumps(self.history, indent=1))
            if self.epoch - self.best_epoch >= self.cfg.patience:
                if log_fn:
                    log_fn(f"early stopping: no improvement for {self.cfg.patience} epochs (best epoch {self.best_epoch})")
                break
        self.dist.barrier()  # rank 0 has written best.pt and the checkpoint
        return self.best_model()

    def best_model(self) -> StudentModel:
        from orbdistill.models import load_student

        if self.best_path.exists():
            return load_student(self.best_path)
        return self.ema
