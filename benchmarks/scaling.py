"""Scaling out on this machine: teacher labelling on Dask and training with DDP.

    python benchmarks/scaling.py [--teacher sevennet-0] [--tasks 8] [--out benchmarks/results]

Measures, in one run (so the ratios are comparable):

* labelling throughput (labelled frames per second) of the same task list run serially
  (torch with all cores), on a Dask LocalCluster of 1 worker (all cores) and of 2 workers
  (one core each); cluster start-up is timed separately;
* the scheduler overhead: wall time per task of 1,000 no-op tasks on 2 workers;
* training: seconds per epoch on one process and on two gloo processes (torchrun) with
  the same global batch.

Writes ``scaling.json`` and ``scaling.png``. The expected speed-up on N GPUs follows from
the per-task time t and the per-task overhead o: ``S(N) = N t / (t + N o)`` while tasks
outnumber workers (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def labelling_config(work: Path, teacher: str, tasks: int) -> dict:
    return {"name": "scaling", "teacher": {"name": teacher},
            "student": {"kind": "v2", "overrides": {"num_features": 32, "num_vector_features": 8, "num_layers": 2}},
            "generate": {"seeds": ["bulk:Cu:fcc:3.61"], "sizes": [32], "nvt_temperatures_k": [300.0, 600.0, 900.0, 1200.0],
                         "nvt_trajectories_per_temperature": max(1, tasks // 4), "nvt_equilibration_steps": 4,
                         "nvt_interval_steps": 2, "nvt_frames": 6},
            "train": {"epochs": 2, "batch_size": 8, "warmup_epochs": 1}, "split": [0.6, 0.2, 0.2],
            "work_dir": str(work), "package_dir": str(work / "pkg")}


def time_labelling(cfg: dict, client=None) -> dict:
    from orbdistill.pipeline import run_generate

    shutil.rmtree(cfg["work_dir"], ignore_errors=True)
    t0 = time.perf_counter()
    m = run_generate(cfg, progress=False, client=client)
    dt = time.perf_counter() - t0
    return {"seconds": dt, "frames": m["n_frames"], "tasks": len(m["tasks"]), "frames_per_s": m["n_frames"] / dt,
            "task_seconds_mean": sum(v["seconds"] for v in m["tasks"].values()) / len(m["tasks"])}


def scheduler_overhead(client, n: int = 1000) -> dict:
    from distributed import wait

    from orbdistill.data.executors import noop_task

    client.gather(client.map(noop_task, range(20), pure=False))  # warm up
    t0 = time.perf_counter()
    futures = client.map(noop_task, range(n), pure=False)
    wait(futures)
    dt = time.perf_counter() - t0
    return {"tasks": n, "seconds": dt, "ms_per_task": 1e3 * dt / n}


def time_training(cfg: dict, nproc: int, tmp: Path) -> dict:
    work = tmp / f"train-{nproc}"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(Path(cfg["work_dir"]) / "data", work / "data")
    c = dict(cfg, work_dir=str(work), package_dir=str(work / "pkg"))
    (tmp / f"train-{nproc}.json").write_text(json.dumps(c))
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // nproc)))
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port", "29531"]
           if nproc > 1 else [sys.executable]) + ["-m", "orbdistill.cli", "train", "--config", str(tmp / f"train-{nproc}.json")]
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    history = json.loads((work / "train" / "history.json").read_text())
    return {"processes": nproc, "seconds_per_epoch": sum(h["seconds"] for h in history) / len(history),
            "epochs": len(history)}


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--teacher", default="sevennet-0")
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    from distributed import Client, LocalCluster

    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    tmp = Path(tempfile.mkdtemp(prefix="orbdistill-scaling-"))
    cfg = labelling_config(tmp / "label", args.teacher, args.tasks)
    result = {"machine": {"cores": cores, "torch": torch.__version__}, "teacher": args.teacher, "labelling": {}}
    result["labelling"]["serial"] = time_labelling(cfg)
    print("serial", result["labelling"]["serial"])
    for workers, threads in ((1, cores), (2, max(1, cores // 2))):
        t0 = time.perf_counter()
        # one task at a time per worker (Dask thread); torch gets `threads` threads in the worker
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
        startup = time.perf_counter() - t0
        cfg_w = dict(cfg, executor={"kind": "dask", "threads_per_worker": threads})
        row = time_labelling(cfg_w, client=client)
        row.update(startup_seconds=startup, threads_per_worker=threads)
        result["labelling"][f"dask-{workers}"] = row
        print(f"dask {workers} workers", row)
        if workers == 2:
            result["scheduler_overhead"] = scheduler_overhead(client)
            print("overhead", result["scheduler_overhead"])
        client.close()
        cluster.close()
    result["training"] = [time_training(cfg, n, tmp) for n in (1, 2)]
    print("training", result["training"])
    t_task = result["labelling"]["serial"]["task_seconds_mean"]
    o = result["scheduler_overhead"]["ms_per_task"] / 1e3
    result["expected_speedup"] = {str(n): n * t_task / (t_task + n * o) for n in (1, 2, 4, 8, 16, 64)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.json").write_text(json.dumps(result, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    names = list(result["labelling"])
    ax[0].bar(names, [result["labelling"][k]["frames_per_s"] for k in names], color="tab:blue")
    ax[0].set_ylabel("labelled frames / s")
    ax[0].set_title(f"{args.teacher}, Cu32, {cores} cores")
    ns = [int(k) for k in result["expected_speedup"]]
    ax[1].plot(ns, [result["expected_speedup"][str(n)] for n in ns], "o-", label=f"model: t={t_task:.2f} s, o={1e3 * o:.1f} ms")
    ax[1].plot(ns, ns, "k:", label="ideal")
    ax[1].set_xscale("log")
    ax[1].set_yscale("log")
    ax[1].set_xlabel("workers (GPUs)")
    ax[1].set_ylabel("expected labelling speed-up")
    ax[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=110)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {out / 'scaling.json'}")


if __name__ == "__main__":
    main()
