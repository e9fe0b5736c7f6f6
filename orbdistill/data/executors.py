"""Where teacher labelling runs: in this process, or on a Dask cluster.

One trajectory is one task (see :func:`orbdistill.data.generate.plan_tasks`). With Dask:

* the client plans the tasks, scatters the seed structures to the workers once, and sends
  each worker the teacher's *spec* (``load_teacher(**spec)``), never the model; a worker
  loads its teacher once, on its own device (CUDA when it has one), and reuses it for every
  task it runs;
* a worker returns the task's frames; the client alone writes each task's chunk and the
  manifest, atomically, as results arrive. A worker that dies mid-task loses only that
  task, which the scheduler runs again elsewhere; a task id is written once, so no frame
  is duplicated; an interrupted client leaves finished tasks in the manifest, and the same
  command resumes;
* each task draws its random numbers from its own seed, so the frames are those of a
  serial run, bit for bit, whatever worker ran the task (for deterministic teachers).

Clusters: ``{"kind": "dask", "workers": N}`` starts a ``LocalCluster`` of N worker
processes on this machine; ``{"kind": "dask", "scheduler": "tcp://host:8786"}`` joins a
running cluster, e.g. one started with dask-jobqueue on SLURM or PBS (docs/scaling.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from dataclasses import asdict
from typing import Annotated, Dict, Literal, Optional

from pydantic import Field, PositiveInt

from orbdistill.config import build_config, config_dataclass

log = logging.getLogger(__name__)


@config_dataclass
class ExecutorConfig:
    """How labelling tasks run.

    Attributes:
        kind: "local" (this process, the default) or "dask"
        scheduler: address of a running Dask scheduler (``tcp://host:8786``); None starts a
            ``LocalCluster`` on this machine
        workers: worker processes of that LocalCluster (default: one per core)
        threads_per_worker: torch threads of each worker. A worker runs one labelling task
            at a time (a teacher's calculator is not thread-safe): the LocalCluster gets one
            Dask thread per worker, and on other clusters tasks that land on one worker
            wait for its teacher.
    """

    kind: Literal["local", "dask"] = "local"
    scheduler: Optional[Annotated[str, Field(min_length=1)]] = None
    workers: Optional[PositiveInt] = None
    threads_per_worker: PositiveInt = 1

    @classmethod
    def from_dict(cls, d) -> "ExecutorConfig":
        return build_config(cls, d, "executor")


# ------------------------------------------------------------------------------------------
# worker side

_TEACHERS: Dict[str, object] = {}
_TEACHER_LOCKS: Dict[str, threading.Lock] = {}
_LOCK = threading.Lock()
_LOADS = {"count": 0}


def _tune_malloc() -> bool:
    """Undo what Dask's nanny does to glibc's allocator in worker processes.

    The nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (to return memory to the
    system quickly). Setting that variable also switches off glibc's dynamic mmap threshold,
    so every allocation above 128 KiB (most tensors of a teacher step) is mapped and unmapped
    anew: a SevenNet-0 step on Cu32 took 502 ms instead of 212 ms (2 threads, this machine).
    Raising both thresholds again with ``mallopt`` restores the speed. Linux/glibc only.
    """
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_trim_threshold, 256 * 2**20) and libc.mallopt(m_mmap_threshold, 32 * 2**20))
    except Exception:  # pragma: no cover - not glibc
        return False


def worker_teacher(spec: dict, threads: Optional[int] = None):
    """The teacher of ``spec`` in this process, loaded on first use (once per worker)."""
    key = json.dumps(spec, sort_keys=True, default=str)
    with _LOCK:
        if key not in _TEACHERS:
            import torch

            from orbdistill.teachers import load_teacher

            if threads:
                torch.set_num_threads(int(threads))
            if os.environ.get("MALLOC_TRIM_THRESHOLD_"):
                _tune_malloc()
            _TEACHERS[key] = load_teacher(**spec)  # device None: CUDA when this worker has it
            _TEACHER_LOCKS[key] = threading.Lock()
            _LOADS["count"] += 1
        return _TEACHERS[key]


def teacher_lock(spec: dict) -> threading.Lock:
    return _TEACHER_LOCKS[json.dumps(spec, sort_keys=True, default=str)]


def teacher_loads() -> int:
    """How many teachers this process has loaded (``client.run(teacher_loads)`` asks each worker)."""
    return _LOADS["count"]


def noop_task(i: int) -> int:
    """A task that does nothing (the scheduler-overhead benchmark)."""
    return i


# ------------------------------------------------------------------------------------------
# client side

@contextlib.contextmanager
def dask_client(cfg: ExecutorConfig):
    """A ``distributed.Client`` for ``cfg`` (a LocalCluster it starts and stops, or a
    connection to a running scheduler)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise ImportError("The dask executor needs dask.distributed: pip install 'orbdistill[dask]'") from exc
    if cfg.scheduler:
        client = Client(cfg.scheduler)
        try:
            yield client
        finally:
            client.close()
        return
    n = cfg.workers or max(1, (os.cpu_count() or 1) // cfg.threads_per_worker)
    # one Dask thread per worker: one task at a time; torch uses cfg.threads_per_worker threads
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=logging.ERROR)
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def run_on_dask(client, task_fn, todo, seeds, cfg, teacher, record, progress_bar, max_tasks: Optional[int] = None,
                threads: Optional[int] = None, sampler=None) -> int:
    """Submit ``task_fn(task, seeds, cfg, teacher_spec, threads[, sampler=sampler_spec])``
    for every task of ``todo`` to ``client`` and ``record`` each result as it arrives (in
    this process: the only writer). Returns the number of tasks recorded."""
    from distributed import as_completed

    for model in (teacher, sampler):
        if model is not None and model.spec is None:
            raise ValueError(
                f"Teacher {model.name!r} was made from a calculator object and cannot be sent to Dask workers; "
                "load it by name (load_teacher('sevennet-0'), ...) or use the local executor."
            )
    extra = {} if sampler is None else {"sampler": sampler.spec}
    # hash=False: a fresh key, never one a previous (cancelled) run is still releasing
    seeds_future = client.scatter(list(seeds), broadcast=True, hash=False)
    futures = [client.submit(task_fn, task, seeds_future, cfg, teacher.spec, threads, key=f"label-{task['id']}-"
                             f"{task['rng_seed']}", pure=False, retries=2, **extra) for task in todo]
    done = 0
    try:
        for fut in as_completed(futures):
            record(fut.result())
            done += 1
            progress_bar.update(1)
            if max_tasks is not None and done >= max_tasks:
                break
    finally:
        client.cancel(futures)
    return done


def describe_executor(cfg: ExecutorConfig) -> dict:
    return asdict(cfg)
