"""Learning curves and parity plots (PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from orbdistill.training.trainer import EV_A3_TO_GPA


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curves(history: list, path) -> None:
    plt = _plt()
    ep = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    axes[0].semilogy(ep, [h["train_loss"] for h in history], label="train")
    axes[0].semilogy(ep, [h["val_loss"] for h in history], label="validation")
    axes[0].set_title("loss (normalised)")
    axes[0].legend()
    for ax, key, title in zip(axes[1:], ("energy_mae_mev_atom", "force_mae_mev_a", "stress_mae_gpa"),
                              ("energy MAE (meV/atom)", "force MAE (meV/Å)", "stress MAE (GPa)")):
        vals = [h.get(key) for h in history]
        if any(v is not None for v in vals):
            ax.semilogy(ep, [v if v is not None else np.nan for v in vals], color="C1")
        ax.set_title(title + ", validation")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_parity(pred: dict, metrics: dict, path, title: str = "") -> None:
    """Parity of energy per atom, force components and stress components."""
    plt = _plt()
    panels = [
        ("energy_per_atom", "energy_per_atom_ref", "energy (eV/atom)", 1.0, f"MAE {metrics.get('energy_mae_mev_atom', np.nan):.2f} meV/atom"),
        ("forces", "forces_ref", "force components (eV/Å)", 1.0, f"MAE {metrics.get('force_mae_mev_a', np.nan):.1f} meV/Å"),
        ("stress", "stress_ref", "stress components (GPa)", EV_A3_TO_GPA, f"MAE {metrics.get('stress_mae_gpa', np.nan):.3f} GPa"),
    ]
    panels = [p for p in panels if len(pred.get(p[0], [])) > 0]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.3))
    axes = np.atleast_1d(axes)
    for ax, (k, kr, label, scale, text) in zip(axes, panels):
        x, y = np.asarray(pred[kr]) * scale, np.asarray(pred[k]) * scale
        lo, hi = min(x.min(), y.min()), max(x.max(), y.max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.scatter(x, y, s=3, alpha=0.4)
        ax.set_xlabel(f"teacher {label}")
        ax.set_ylabel(f"student {label}")
        ax.set_title(text, fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
