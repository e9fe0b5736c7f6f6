"""Small helpers used across the package: atomic file writes, dtype names."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Union

import torch

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    """``"float32"``/``"float64"`` (or the torch dtypes) -> torch dtype; anything else is an error."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return DTYPES[dtype]


def dtype_name(dtype: Union[str, torch.dtype]) -> str:
    return str(resolve_dtype(dtype)).replace("torch.", "")


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename: readers see the old
    file or the new one, never a partial one (an interrupted run leaves no torn file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def atomic_write_text(path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj, path) -> Path:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())
