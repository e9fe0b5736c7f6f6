"""Orb teachers through orb-models' own loaders (0.5.x and 0.6+).

orb-models 0.5.x (Python 3.10/3.11) loaders return the model and the calculator lives in
``orb_models.forcefield.calculator``; 0.6+ (Python 3.12) loaders return
``(model, atoms_adapter)`` and the calculator moved to
``orb_models.forcefield.inference.calculator``. Both are handled here.

``weights="random"`` builds the architecture with random weights: parameter counts,
FLOPs, memory and speed are exact, energies are meaningless.
"""

from __future__ import annotations

import inspect
import logging
import os
from typing import Optional

import torch

from .base import Teacher

log = logging.getLogger(__name__)

#: name -> (architecture, neighbour cap); radius is 6 Å for all of them
ORB_NAMES = {
    "orb-v3-conservative-inf-omat": ("v3-conservative", 120),
    "orb-v3-conservative-20-omat": ("v3-conservative", 20),
    "orb-v3-direct-inf-omat": ("v3-direct", 120),
    "orb-v3-direct-20-omat": ("v3-direct", 20),
    "orb-v3-conservative-inf-mpa": ("v3-conservative", 120),
    "orb-v3-conservative-20-mpa": ("v3-conservative", 20),
    "orb-v3-direct-inf-mpa": ("v3-direct", 120),
    "orb-v3-direct-20-mpa": ("v3-direct", 20),
    "orb-v2": ("v2", 20),
}
ORB_RADIUS = 6.0


def orb_version() -> str:
    try:
        from importlib.metadata import version

        return version("orb-models")
    except Exception:  # pragma: no cover
        return "unknown"


def _split_loader_result(result):
    """0.5.x returns the model; 0.6+ returns (model, atoms_adapter)."""
    if isinstance(result, tuple):
        return result[0], result[1]
    return result, None


def _call_with_supported(fn, required=(), **kwargs):
    """Call ``fn`` with the keyword arguments it accepts. Optional ones it does not know
    are dropped (they differ between orb-models releases); a ``required`` one it does not
    know is an error: dropping ``weights_path`` would download the published weights
    instead of loading the user's file."""
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    missing = [k for k in required if k in kwargs and k not in params and not takes_any]
    if missing:
        raise RuntimeError(
            f"{getattr(fn, '__name__', fn)} of orb-models {orb_version()} takes no {', '.join(missing)} argument: "
            "this release loads local checkpoints differently; orbdistill will not fall back to downloading. "
            "Install an orb-models release orbdistill supports (0.5.x or 0.6.x)."
        )
    accepted = kwargs if takes_any else {k: v for k, v in kwargs.items() if k in params}
    return fn(**accepted)


def build_orb_architecture(name: str, device=None):
    """The Orb model ``name`` with random weights (no download). Returns (model, adapter)."""
    from orb_models.forcefield import pretrained

    arch, k = ORB_NAMES[name]
    builder = {
        "v3-conservative": "orb_v3_conservative_architecture",
        "v3-direct": "orb_v3_direct_architecture",
        "v2": "orb_v2_architecture",
    }[arch]
    fn = getattr(pretrained, builder, None)
    if fn is None:  # pragma: no cover - depends on the orb-models release
        raise RuntimeError(
            f"orb-models {orb_version()} has no {builder}(); cannot build {name!r} with random weights."
        )
    kwargs = {"device": device}
    if "system_config" in inspect.signature(fn).parameters:
        from orb_models.forcefield.atomic_system import SystemConfig

        kwargs["system_config"] = SystemConfig(radius=ORB_RADIUS, max_num_neighbors=k)
    model, adapter = _split_loader_result(_call_with_supported(fn, **kwargs))
    if adapter is None and not hasattr(model, "system_config"):  # pragma: no cover - 0.6+
        adapter = _make_adapter_06(k)
    return model.eval(), adapter


def _make_adapter_06(max_num_neighbors: int):  # pragma: no cover - orb-models 0.6+ only
    try:
        from orb_models.common.atoms.atoms_adapter import ForcefieldAtomsAdapter  # type: ignore
    except ImportError as exc:
        raise RuntimeError(
            f"orb-models {orb_version()}: cannot find the atoms adapter class; "
            "load a pretrained model instead of random weights."
        ) from exc
    return ForcefieldAtomsAdapter(radius=ORB_RADIUS, max_num_neighbors=max_num_neighbors)


def load_orb_model(name: str, weights: Optional[str] = None, device=None, precision: str = "float32-high"):
    """Load an Orb model by orb-models' name. Returns ``(model, adapter_or_None)``.

    Args:
        name: one of :data:`ORB_NAMES`
        weights: None (download the published checkpoint), a local checkpoint path,
            or "random" (architecture only)
        device: torch device
        precision: orb-models precision ("float32-high", "float32-highest", "float64")
    """
    if weights == "random":
        return build_orb_architecture(name, device=device)
    from orb_models.forcefield import pretrained

    loader = pretrained.ORB_PRETRAINED_MODELS[name]
    kwargs = dict(device=device, precision=precision, compile=False)
    if weights is not None:
        weights = os.fspath(weights)
        if not os.path.exists(weights) and "://" not in weights:
            raise FileNotFoundError(
                f"Orb checkpoint {weights!r} does not exist. Pass the path of a downloaded "
                f"{name} checkpoint (e.g. {name}-20250404.ckpt)."
            )
        if os.path.exists(weights):
            check_orb_checkpoint(name, weights)
        kwargs["weights_path"] = weights
    try:
        result = _call_with_supported(loader, required=("weights_path",), **kwargs)
    except FileNotFoundError:
        raise
    except (ConnectionError, OSError) as exc:
        raise RuntimeError(
            f"Could not fetch the weights of {name!r} ({type(exc).__name__}: {exc}). "
            f"Download the checkpoint elsewhere and pass it as a local file: "
            f"load_teacher({name!r}, weights='/path/to/{name}.ckpt'), "
            "or use weights='random' for architecture analysis and timing."
        ) from exc
    except RuntimeError as exc:
        if "state_dict" in str(exc) or "size mismatch" in str(exc) or "Missing key" in str(exc):
            raise RuntimeError(
                f"The checkpoint {weights!r} does not match the {name!r} architecture: {exc}"
            ) from exc
        raise
    except Exception as exc:
        if weights is not None and ("pickle" in str(exc).lower() or "zip" in str(exc).lower()
                                    or "unpickl" in str(exc).lower() or "EOF" in str(exc)):
            raise RuntimeError(f"Cannot read the Orb checkpoint {weights!r}: it is corrupt or not a torch file ({exc}).") from exc
        if "Connection" in type(exc).__name__ or "HTTP" in type(exc).__name__ or "Timeout" in type(exc).__name__:
            raise RuntimeError(
                f"Could not fetch the weights of {name!r} ({type(exc).__name__}). Pass a local "
                f"checkpoint with weights='/path/to/{name}.ckpt', or weights='random'."
            ) from exc
        raise
    model, adapter = _split_loader_result(result)
    return model.eval(), adapter


def check_orb_checkpoint(name: str, path: str) -> None:
    """Raise a clear error if ``path`` is not a readable checkpoint of architecture ``name``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RuntimeError(
            f"Cannot read the Orb checkpoint {path!r}: it is corrupt, truncated or not a torch file "
            f"({type(exc).__name__}: {exc})."
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RuntimeError(f"The Orb checkpoint {path!r} does not hold a state dict of tensors.")
    reference, _ = build_orb_architecture(name)
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    got = {k.replace("_orig_mod.", ""): tuple(v.shape) for k, v in state.items()}
    missing = sorted(set(expected) - set(got))
    wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    if missing or wrong:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing tensors (e.g. {missing[:3]})")
        if wrong:
            detail.append(f"{len(wrong)} tensors of the wrong shape (e.g. {wrong[0]}: {got[wrong[0]]} != {expected[wrong[0]]})")
        raise RuntimeError(f"The checkpoint {path!r} does not match the {name!r} architecture: " + "; ".join(detail) + ".")


def orb_calculator(model, adapter=None, device=None):
    """orb-models' own ASE calculator for ``model`` (0.5.x or 0.6+ location)."""
    try:
        from orb_models.forcefield.inference.calculator import ORBCalculator  # 0.6+
    except ImportError:
        from orb_models.forcefield.calculator import ORBCalculator  # 0.5.x
    if adapter is not None:  # pragma: no cover - 0.6+
        return ORBCalculator(model, adapter, device=device)
    return ORBCalculator(model, device=device)


def orb_to_graph(model, atoms, adapter=None, device=None):
    """orb-models' own graph (AtomGraphs) of ``atoms`` for ``model``."""
    if adapter is not None:  # pragma: no cover - 0.6+
        return adapter.from_ase_atoms(atoms, device=device)
    from orb_models.forcefield.atomic_system import ase_atoms_to_atom_graphs

    return ase_atoms_to_atom_graphs(atoms, system_config=model.system_config, device=device)


def is_conservative(model) -> bool:
    return hasattr(model, "grad_forces_name")


def load_orb_teacher(name: str, weights: Optional[str] = None, device=None, precision: str = "float32-high") -> Teacher:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, adapter = load_orb_model(name, weights=weights, device=device, precision=precision)
    arch, k = ORB_NAMES[name]
    if weights == "random":
        log.warning("Teacher %s built with RANDOM weights: use it for analysis and timing only.", name)
    return Teacher(
        name=name,
        family="orb",
        make_calculator=lambda: orb_calculator(model, adapter, device=device),
        cutoff=ORB_RADIUS,
        max_neighbors=k,
        species=None,  # embedding covers Z = 1-118
        model=model,
        conservative=is_conservative(model),
        weights="random" if weights == "random" else (os.fspath(weights) if weights else "published checkpoint"),
        extra={"orb_models_version": orb_version(), "architecture": arch, "_adapter": adapter},
    )
