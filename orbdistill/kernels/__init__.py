"""Fused CPU kernels for the v2 student (``csrc/painn_kernels.cpp``).

The eager v2 step is dominated by per-edge tensors: the message ``phi_j * W(r_ij)``
([n_edges, F + 2 Fv] per layer), its products and scatters, and the same again in the
gradient pass. The kernels compute the edge geometry (Bessel functions, envelope, unit
vectors) and the whole message with its first derivatives atom by atom, so no per-edge
tensor wider than the radial basis is ever written. They are registered with
``torch.library`` as ``torch.ops.orbdistill.*``, so eager PyTorch, TorchScript files and
the LAMMPS plugin call the same code.

They are compiled with CMake against the installed torch on first use (about a minute on
2 cores, then cached in ``$ORBDISTILL_CACHE``/kernels) or ahead of time with
``orbdistill kernels build``. Where they cannot be built (no cmake or compiler) the
students run eagerly, with one log line saying why; ``ORBDISTILL_KERNELS=0`` turns them
off. They are for inference (forces, stress) on CPU: training and GPUs use the eager
model.

Example::

    >>> from orbdistill.kernels import kernels_available
    >>> kernels_available() in (True, False)
    True
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Tuple

import torch

from ..cmake_build import BuildToolMissing, cache_root, cmake_build, cpu_fingerprint, source_hash

log = logging.getLogger(__name__)

SOURCE_DIR = Path(__file__).parent / "csrc"
LIBRARY_NAME = "liborbdistill_kernels.so"

__all__ = ["build_kernels", "load_kernels", "kernels_available", "kernels_path", "edge_csr", "edge_geometry",
           "edge_symmetric", "EdgeStructure", "painn_message", "fused_requested", "KernelsNotAvailable"]


class KernelsNotAvailable(RuntimeError):
    """The fused kernels could not be built or loaded; the message says why."""


def default_build_dir() -> Path:
    """``$ORBDISTILL_CACHE/kernels/<source hash>-torch<version>-cpu<ISA hash>``: a new torch, or
    a CPU with other instruction sets (the build is tuned with ``-march=native``), gets its own."""
    return cache_root() / "kernels" / f"{source_hash([SOURCE_DIR])}-torch{torch.__version__}-cpu{cpu_fingerprint()}"


def kernels_path(build_dir=None) -> Path:
    return Path(build_dir or default_build_dir()) / LIBRARY_NAME


def build_kernels(build_dir=None, jobs: int = 2, force: bool = False, verbose: bool = False) -> Path:
    """Compile the kernels (reused when built before for these sources and this torch).
    Returns the path of the shared library."""
    target = kernels_path(build_dir)
    if not target.exists() or force:
        log.warning("compiling orbdistill's fused kernels (once for this torch; about a minute on 2 cores)")
    return cmake_build(SOURCE_DIR, target.parent, LIBRARY_NAME, jobs=jobs, force=force, verbose=verbose,
                       what="orbdistill's fused kernels")


_lock = threading.Lock()
_state = {"loaded": False, "error": None}


def _registered() -> bool:
    try:
        torch.ops.orbdistill.painn_message  # noqa: B018 (raises if absent)
        return True
    except (AttributeError, RuntimeError):
        return False


def load_kernels(build: bool = True) -> Path:
    """Load the kernels into this process (building them first if ``build`` and needed).
    Raises :class:`KernelsNotAvailable` with the reason when that is not possible."""
    with _lock:
        if _state["loaded"]:
            return kernels_path()
        if os.environ.get("ORBDISTILL_KERNELS", "1").lower() in ("0", "off", "false", "no"):
            raise KernelsNotAvailable("turned off by ORBDISTILL_KERNELS")
        path = kernels_path()
        try:
            if not path.exists():
                if not build:
                    raise KernelsNotAvailable(f"not built ({path} missing): run `orbdistill kernels build`")
                path = build_kernels()
            if not _registered():  # the LAMMPS plugin or an earlier load may have brought them
                torch.ops.load_library(str(path))
            _register_python_parts()
        except KernelsNotAvailable:
            raise
        except (BuildToolMissing, RuntimeError, OSError) as exc:
            raise KernelsNotAvailable(str(exc)) from exc
        _state["loaded"] = True
        return path


def kernels_available(build: bool = True) -> bool:
    """True when the kernels are loaded (or load now). The first failure is logged once."""
    if _state["loaded"]:
        return True
    if _state["error"] is not None:
        return False
    try:
        load_kernels(build=build)
        return True
    except KernelsNotAvailable as exc:
        _state["error"] = str(exc)
        log.warning("orbdistill's fused kernels are not available, students run eagerly: %s", exc)
        return False


def fused_requested(enable, supported: bool, owner: str) -> bool:
    """What ``fused_kernels=enable`` means for a model (or export) ``owner`` that has kernels
    if ``supported``: "auto" is on where supported and the kernels build or load (a log line
    says why not), True is on or an error, False is off."""
    if enable not in (True, False, "auto"):
        raise ValueError(f"fused_kernels must be True, False or 'auto', got {enable!r}")
    if not enable:
        return False
    if not supported:
        if enable is True:
            raise ValueError(f"{owner} has no fused kernels")
        return False
    if enable is True:
        load_kernels()
        return True
    return kernels_available()


# -- thin wrappers (shapes documented in csrc/painn_kernels.cpp) ----------------------------

def edge_csr(index: torch.Tensor, nodes) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(ptr [n + 1], perm [E])``: the edges of row ``a`` are ``perm[ptr[a]:ptr[a + 1]]``;
    ``nodes`` is the number of rows n or a tensor with n rows (traced exports pass a
    tensor, so that n stays symbolic)."""
    if not isinstance(nodes, torch.Tensor):
        nodes = index.new_empty((int(nodes), 0))
    return torch.ops.orbdistill.edge_csr(index, nodes)


_SECOND_DERIVATIVE = ("orbdistill's fused kernels give first derivatives only (forces and stress at inference); "
                      "the gradient cannot be differentiated again. Train with the eager model "
                      "(StudentModel.use_fused_kernels(False)).")


class _Geometry(torch.autograd.Function):
    """``edge_geometry`` with its first derivative. A plain autograd.Function: a few µs per
    call (torch.library's register_autograd costs ~100 µs in Python), and torch.func and
    make_fx (the exports) both trace through it."""

    @staticmethod
    def forward(vectors, freqs, prefactor, r_max, p):
        return torch.ops.orbdistill.edge_geometry(vectors, freqs, prefactor, r_max, p)

    @staticmethod
    def setup_context(ctx, inputs, output):
        vectors, freqs, prefactor, r_max, p = inputs
        ctx.save_for_backward(vectors, freqs)
        ctx.args = (prefactor, r_max, p)

    @staticmethod
    def backward(ctx, grad):
        _first_derivative_only([grad])
        vectors, freqs = ctx.saved_tensors
        return torch.ops.orbdistill.edge_geometry_backward(grad.contiguous(), vectors, freqs, *ctx.args), \
            None, None, None, None


class _Message(torch.autograd.Function):
    """``painn_message`` with its first derivatives in ``feat``, ``phi`` and ``v``."""

    @staticmethod
    def forward(*inputs):
        return torch.ops.orbdistill.painn_message(*inputs)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:11])
        ctx.args = inputs[11:]
        ctx.n_inputs = len(inputs)

    @staticmethod
    def backward(ctx, grad_ds, grad_dv):
        _first_derivative_only([grad_ds, grad_dv])
        saved = ctx.saved_tensors
        f, fv, first, symmetric = ctx.args
        phi = saved[1]
        grad_ds = grad_ds.contiguous() if grad_ds is not None else phi.new_zeros((phi.shape[0], f))
        grad_dv = grad_dv.contiguous() if grad_dv is not None else phi.new_zeros((phi.shape[0], 3 * fv))
        gfeat, gphi, gv = torch.ops.orbdistill.painn_message_backward(grad_ds, grad_dv, *saved, f, fv, first, symmetric)
        gv = gv if (fv > 0 and not first) else None
        return (gfeat, gphi, gv) + (None,) * (ctx.n_inputs - 3)


def _first_derivative_only(grads) -> None:
    # create_graph=True leaves grad mode on in the backward and gives the incoming gradients
    # a history; plain force evaluations and the exports' traced gradients do neither
    if torch.is_grad_enabled() and any(g is not None and g.requires_grad for g in grads):
        raise RuntimeError(_SECOND_DERIVATIVE)


def _register_python_parts() -> None:
    """Output shapes of the ops for tracing with fake tensors (``make_fx``: the exports)."""
    lib = "orbdistill::"

    @torch.library.register_fake(lib + "edge_csr")
    def _(index, nodes):
        return index.new_empty((nodes.shape[0] + 1,)), index.new_empty(index.shape)

    @torch.library.register_fake(lib + "edge_geometry")
    def _(vectors, freqs, prefactor, r_max, p):
        return vectors.new_empty((vectors.shape[0], freqs.shape[0] + 4))

    @torch.library.register_fake(lib + "edge_geometry_backward")
    def _(grad, vectors, freqs, prefactor, r_max, p):
        return vectors.new_empty(vectors.shape)

    @torch.library.register_fake(lib + "painn_message")
    def _(feat, phi, v, senders, receivers, s_ptr, s_perm, r_ptr, r_perm, wt, bias, f, fv, first, symmetric):
        return phi.new_empty((phi.shape[0], f)), phi.new_empty((phi.shape[0], 3 * fv))

    @torch.library.register_fake(lib + "painn_message_backward")
    def _(grad_ds, grad_dv, feat, phi, v, senders, receivers, s_ptr, s_perm, r_ptr, r_perm, wt, bias, f, fv, first,
          symmetric):
        rows = phi.shape[0] if (fv > 0 and not first) else 0
        return feat.new_empty(feat.shape), phi.new_empty(phi.shape), phi.new_empty((rows, 3 * fv))


def edge_geometry(vectors: torch.Tensor, freqs: torch.Tensor, prefactor: float, r_max: float, p: int) -> torch.Tensor:
    """``[E, R + 4]``: Bessel functions, envelope and unit vector of every edge vector."""
    return _Geometry.apply(vectors, freqs, prefactor, r_max, p)


def edge_symmetric(senders, receivers, vectors, sender_csr) -> bool:
    """True when every edge ``i -> j`` has a reverse ``j -> i`` with exactly the opposite vector."""
    return bool(torch.ops.orbdistill.edge_symmetric(senders, receivers, vectors, sender_csr[0], sender_csr[1]))


class EdgeStructure:
    """What the kernels need to know about an edge list besides its vectors: sender and
    receiver CSR, and whether the list is symmetric (then the gradient pass evaluates
    each edge's filter once instead of twice). Kept while the same ``edge_index`` tensor
    comes back (a neighbour list reused with a Verlet skin), rebuilt otherwise."""

    def __init__(self, detect_symmetry: bool = True):
        #: False for graphs traced into exports: the exported file must not assume the
        #: symmetry of the example it was traced on
        self.detect_symmetry = detect_symmetry
        self._key = None
        self._value = None

    def __call__(self, edge_index: torch.Tensor, vectors: torch.Tensor, nodes: torch.Tensor):
        """``nodes``: a tensor with one row per atom."""
        if not self.detect_symmetry:  # tracing: no caching, no data-dependent branch
            senders, receivers = edge_index[0].contiguous(), edge_index[1].contiguous()
            return senders, receivers, edge_csr(senders, nodes), edge_csr(receivers, nodes), False
        n = nodes.shape[0]
        key = (edge_index, edge_index._version, n)
        if self._key is not None and key[0] is self._key[0] and key[1:] == self._key[1:]:
            return self._value
        senders, receivers = edge_index[0].contiguous(), edge_index[1].contiguous()
        sender_csr = edge_csr(senders, n)
        symmetric = self.detect_symmetry and edge_symmetric(senders, receivers, vectors.detach().contiguous(),
                                                            sender_csr)
        receiver_csr = sender_csr if symmetric else edge_csr(receivers, n)
        self._key, self._value = key, (senders, receivers, sender_csr, receiver_csr, symmetric)
        return self._value


def painn_message(feat, phi, v, senders, receivers, sender_csr, receiver_csr, wt, bias, f: int, fv: int,
                  first: bool, symmetric: bool = False):
    """``(ds [N, F], dv [N, 3 Fv])`` of the factorised PaiNN message (``symmetric``: the
    edge list is symmetric, see :func:`edge_symmetric`)."""
    return _Message.apply(feat, phi, v, senders, receivers, sender_csr[0], sender_csr[1], receiver_csr[0],
                          receiver_csr[1], wt, bias, f, fv, first, symmetric)
