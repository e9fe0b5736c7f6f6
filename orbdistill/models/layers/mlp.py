"""The one MLP builder every model uses."""

from __future__ import annotations

from typing import Sequence

import torch

_ACTIVATIONS = {"silu": torch.nn.SiLU, "gelu": torch.nn.GELU, "tanh": torch.nn.Tanh}


def activation(name: str) -> torch.nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"Unknown activation {name!r}; choose from {sorted(_ACTIVATIONS)}") from None


class MLP(torch.nn.Sequential):
    """Linear -> act -> ... -> Linear (no activation after the last layer).

    Args:
        in_dim, hidden (one width per hidden layer), out_dim, act: activation name
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, act: str = "silu", bias_last: bool = True):
        dims = [in_dim, *hidden, out_dim]
        layers = []
        for k in range(len(dims) - 1):
            last = k == len(dims) - 2
            layers.append(torch.nn.Linear(dims[k], dims[k + 1], bias=True if not last else bias_last))
            if not last:
                layers.append(activation(act))
        super().__init__(*layers)

    @property
    def linears(self):
        return [m for m in self if isinstance(m, torch.nn.Linear)]


class NormedMLP(torch.nn.Module):
    """An :class:`MLP` followed by RMSNorm or LayerNorm on its output (Orb's block)."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, act: str = "silu", norm: str = "rms"):
        super().__init__()
        self.mlp = MLP(in_dim, hidden, out_dim, act)
        if norm == "rms":
            self.norm = torch.nn.RMSNorm(out_dim)
        elif norm == "layer":
            self.norm = torch.nn.LayerNorm(out_dim)
        elif norm == "none":
            self.norm = torch.nn.Identity()
        else:
            raise ValueError(f"Unknown norm {norm!r}; choose 'rms', 'layer' or 'none'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.mlp(x))
