"""Compiling the package's C++ (fused kernels, the LAMMPS plugin) with CMake, once per
source and version, into ``$ORBDISTILL_CACHE`` (default ``~/.cache/orbdistill``)."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Sequence

import torch

log = logging.getLogger(__name__)


class BuildToolMissing(RuntimeError):
    """cmake or a C++ compiler is missing; the message says which and how to get it."""


def cache_root() -> Path:
    return Path(os.environ.get("ORBDISTILL_CACHE", Path.home() / ".cache" / "orbdistill"))


def source_hash(folders: Iterable[Path]) -> str:
    """A short hash of every file in ``folders`` (names and bytes)."""
    h = hashlib.sha256()
    for folder in folders:
        for p in sorted(Path(folder).iterdir()):
            if p.is_file():
                h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()[:12]


def cpu_fingerprint() -> str:
    """A short hash of this CPU's instruction sets (``flags`` in ``/proc/cpuinfo``; the
    machine name elsewhere). Builds tuned with ``-march=native`` are keyed by it: a cache in
    a home folder shared by nodes of different CPUs (an AVX-512 login node, AVX2 compute
    nodes) would otherwise hand a node code it cannot execute (illegal instruction)."""
    import platform

    text = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                text += " ".join(sorted(line.split(":", 1)[1].split()))
                break
    except OSError:
        pass
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def cmake_exe() -> str:
    exe = shutil.which("cmake")
    if exe is None:
        raise BuildToolMissing("cmake is not installed: pip install cmake")
    return exe


@contextmanager
def build_lock(build_dir: Path):
    """One build at a time per folder (tests and workers may ask together)."""
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cmake_build(source: Path, build_dir: Path, artifact: str, defines: Sequence[str] = (), jobs: int = 2,
                force: bool = False, verbose: bool = False, what: str = "the C++ sources") -> Path:
    """Configure and build the CMake project ``source`` and copy ``artifact`` (a file name
    written to the build's output folder) to ``build_dir/artifact``, atomically.
    A finished build is reused unless ``force``."""
    build_dir = Path(build_dir)
    target = build_dir / artifact
    with build_lock(build_dir):
        if target.exists() and not force:
            return target
        work = build_dir / "cmake"
        configure = [
            cmake_exe(), "-S", str(source), "-B", str(work), "-DCMAKE_BUILD_TYPE=Release",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={work / 'out'}", *defines,
        ]
        compile_ = [cmake_exe(), "--build", str(work), "--parallel", str(jobs)]
        for cmd in (configure, compile_):
            log.info("running %s", " ".join(cmd))
            res = subprocess.run(cmd, capture_output=not verbose, text=True)
            if res.returncode != 0:
                tail = "\n".join(((res.stdout or "") + (res.stderr or "")).strip().splitlines()[-25:])
                if "CMAKE_CXX_COMPILER" in tail or "No CMAKE_CXX_COMPILER" in tail:
                    raise BuildToolMissing(f"No C++ compiler found for {what}: install g++ or clang++.\n{tail}")
                raise RuntimeError(f"Building {what} failed at `{' '.join(cmd[:3])} ...`:\n{tail}")
        built = work / "out" / artifact
        if not built.exists():
            raise RuntimeError(f"cmake finished but wrote no {built}")
        tmp = target.with_name(target.name + ".tmp")
        shutil.copy2(built, tmp)
        os.replace(tmp, target)
        return target
