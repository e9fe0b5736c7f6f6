"""Reading exported student files (TorchScript, ONNX metadata). Imports no model code."""

from __future__ import annotations

import json
from typing import Dict, Tuple

import torch


def read_torchscript(path, map_location="cpu") -> Tuple[torch.jit.ScriptModule, Dict[str, str]]:
    """Load an exported TorchScript student and its metadata; errors name the file."""
    extra = {"metadata.json": ""}
    try:
        try:
            module = torch.jit.load(str(path), _extra_files=extra, map_location=map_location)
        except RuntimeError as exc:
            if "orbdistill::" not in str(exc):
                raise
            # a LAMMPS export that calls the fused kernels: load them, then the file
            from orbdistill.kernels import KernelsNotAvailable, load_kernels

            try:
                load_kernels()
            except KernelsNotAvailable as why:
                raise RuntimeError(f"it calls orbdistill's fused kernels, which are not available here ({why})") from exc
            module = torch.jit.load(str(path), _extra_files=extra, map_location=map_location)
    except Exception as exc:
        raise ValueError(f"Cannot load the TorchScript file {path}: truncated, corrupt or not TorchScript "
                         f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}). Re-export the package.") from exc
    try:
        meta = json.loads(extra["metadata.json"])
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} has no orbdistill metadata: it was not written by `orbdistill export`.") from exc
    return module, meta


def read_torchscript_metadata(path) -> Dict[str, str]:
    return read_torchscript(path)[1]


def read_onnx_metadata(path) -> Dict[str, str]:
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ValueError(f"Cannot read the ONNX file {path}: truncated or corrupt ({exc}).") from exc
    return {p.key: p.value for p in proto.metadata_props}
