"""The layout of a student package, and finding one by name.

A package is a folder::

    cu-sevennet-v2/
      model.pt                     config + weights (loads with torch.load(weights_only=True))
      card.json                    the model card (teacher, species, cutoff, metrics, domain, exports)
      README.md                    the card in prose
      config.json                  the distillation config that produced it
      model_float32.torchscript    exports (optional), each recording the SHA-256 of the
      model_float64.onnx ...       model.pt it was made from

A package is found by name (``StudentCalculator("cu-sevennet-v2")``) in the folders of the
environment variable ``ORBDISTILL_CALCULATORS`` (``os.pathsep``-separated), then
``./calculators`` and the ``calculators/`` folder of an orbdistill source checkout.

This module imports neither model code nor the calculator: both use it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import List, Optional

from .utils import atomic_write_text

MODEL_FILE = "model.pt"
CARD_FILE = "card.json"
# export format -> file suffix ("lammps": the file pair_style orbdistill loads, not an ASE backend)
EXPORT_FORMATS = {"torchscript": "torchscript", "onnx": "onnx", "lammps": "lammps.pt"}
ENV_VAR = "ORBDISTILL_CALCULATORS"


def exported_file(package, backend: str, dtype_name: str) -> Path:
    """Where a package keeps its ``backend`` export in ``dtype_name`` ("float32"/"float64")."""
    if backend not in EXPORT_FORMATS:
        raise ValueError(f"Unknown export format {backend!r}; choose from {sorted(EXPORT_FORMATS)}.")
    return Path(package) / f"model_{dtype_name}.{EXPORT_FORMATS[backend]}"


def export_files(package) -> List[Path]:
    """The exported model files present in a package."""
    p = Path(package)
    return sorted(f for suffix in EXPORT_FORMATS.values() for f in p.glob(f"model_*.{suffix}"))


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_sha256(package) -> str:
    """SHA-256 of the package's ``model.pt``: exports record it, loaders compare it."""
    path = Path(package) / MODEL_FILE
    if not path.exists():
        raise FileNotFoundError(f"{package} is not a student package: no {MODEL_FILE}.")
    return file_sha256(path)


def check_export_matches(package, export_path, recorded: Optional[str]) -> None:
    """Raise if an export was made from other weights than the package's ``model.pt``."""
    current = weights_sha256(package)
    if recorded != current:
        what = "records no weights hash (made by an older orbdistill)" if not recorded else \
            f"was made from other weights (sha256 {recorded[:12]}..., model.pt is {current[:12]}...)"
        raise ValueError(
            f"{export_path} {what}: it is stale. Re-export it with `orbdistill export {package}`."
        )


def read_card(path) -> dict:
    """The ``card.json`` of a package folder (or the path of a card file)."""
    path = Path(path)
    card = path / CARD_FILE if path.is_dir() else path
    if not card.exists():
        raise FileNotFoundError(f"{path} is not a student package (no {CARD_FILE}).")
    try:
        data = json.loads(card.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{card} is not a valid model card (JSON): {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{card} is not a valid model card: expected a JSON object, got {type(data).__name__}.")
    return data


def write_card(package, card: dict) -> None:
    atomic_write_text(Path(package) / CARD_FILE, json.dumps(card, indent=1, default=str))


def search_path() -> List[Path]:
    """Folders searched for packages by name, in order."""
    folders = [Path(p) for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    folders.append(Path.cwd() / "calculators")
    folders.append(Path(__file__).resolve().parent.parent / "calculators")
    out = []
    for f in folders:
        if f not in out:
            out.append(f)
    return out


def available_packages() -> List[str]:
    """Names of the packages found on :func:`search_path`."""
    names = set()
    for folder in search_path():
        if folder.is_dir():
            names.update(p.name for p in folder.iterdir() if (p / MODEL_FILE).exists())
    return sorted(names)


def find_package(name_or_path) -> Path:
    """A package folder from its path or its name (see module docstring)."""
    p = Path(os.fspath(name_or_path)).expanduser()
    if p.is_dir():
        if not (p / MODEL_FILE).exists():
            raise FileNotFoundError(f"{p} is not a student package: it has no {MODEL_FILE}.")
        return p
    if p.exists():
        raise ValueError(f"{p} is a file, not a package folder; load a checkpoint with load_student({str(p)!r}).")
    if len(p.parts) == 1:
        for folder in search_path():
            candidate = folder / p.name
            if (candidate / MODEL_FILE).exists():
                return candidate
    known = available_packages()
    raise FileNotFoundError(
        f"No student package {os.fspath(name_or_path)!r}: not a folder, and no package of that name in "
        f"{', '.join(str(f) for f in search_path())} (set {ENV_VAR} to add folders). "
        f"Known packages: {', '.join(known) if known else 'none'}."
    )
