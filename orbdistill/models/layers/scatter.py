"""Scatter aggregation with an explicit output size (traceable and exportable)."""

from __future__ import annotations

import torch


def gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[index]`` along dim 0, as ``index_select``: its backward is an ``index_add``,
    several times faster on CPU than the accumulating ``index_put`` that advanced
    indexing falls back to."""
    return torch.index_select(x, 0, index)


def scatter_sum(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """``out[index[k]] += src[k]`` along dim 0.

    Args:
        src: [E, ...]
        index: [E] int64 target rows
        dim_size: number of output rows (always explicit: exported graphs need it)
    Returns:
        [dim_size, ...]
    """
    out = torch.zeros((dim_size,) + tuple(src.shape[1:]), dtype=src.dtype, device=src.device)
    return out.index_add(0, index, src)


def scatter_mean(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Mean of ``src`` rows per target row (empty rows give zero)."""
    total = scatter_sum(src, index, dim_size)
    ones = torch.ones(src.shape[0], dtype=src.dtype, device=src.device)
    count = scatter_sum(ones, index, dim_size).clamp(min=1)
    return total / count.view((-1,) + (1,) * (src.dim() - 1))
