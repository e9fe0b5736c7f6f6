"""Scaling out: labelling on a Dask cluster and training with torch DDP (2 CPU processes,
gloo), each equal to the serial run."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from orbdistill.data import read_frames
from orbdistill.pipeline import load_config, run_generate, run_train

distributed = pytest.importorskip("distributed")


def config(tmp_path, name="run", **generate):
    g = {"seeds": ["bulk:Cu:fcc:3.61"], "sizes": [32], "timestep_fs": 4.0, "nvt_temperatures_k": [300.0, 900.0],
         "nvt_trajectories_per_temperature": 2, "nvt_equilibration_steps": 5, "nvt_interval_steps": 4,
         "nvt_frames": 12, "strain_frames": 16, "strain_frames_per_task": 4, "rattle_relax_frames": 8,
         "rattle_relax_per_task": 2, "rattle_relax_steps": 1, "coverage": []}
    g.update(generate)
    return {"name": "cu-emt-scale", "teacher": {"name": "emt"},
            "student": {"kind": "v2", "overrides": {"num_features": 16, "num_vector_features": 4, "num_layers": 2,
                                                    "cutoff": 4.5}},
            "generate": g, "train": {"epochs": 3, "batch_size": 3, "lr": 3e-3, "warmup_epochs": 1, "dtype": "float64"},  # 40 frames: the last batch of 1 leaves rank 1 an empty shard
            "split": [0.6, 0.2, 0.2], "work_dir": str(tmp_path / name), "package_dir": str(tmp_path / f"{name}-pkg")}


def frames_by_task(work_dir):
    out = {}
    for f in read_frames(Path(work_dir) / "data"):
        out.setdefault(f.info["traj_id"], []).append(f)
    return out


def assert_same_frames(a, b):
    assert sorted(a) == sorted(b)
    for tid in a:
        assert len(a[tid]) == len(b[tid]), tid
        for fa, fb in zip(a[tid], b[tid]):
            assert np.array_equal(fa.positions, fb.positions) and np.array_equal(fa.cell.array, fb.cell.array), tid
            assert fa.get_potential_energy() == fb.get_potential_energy(), tid
            assert np.array_equal(fa.get_forces(), fb.get_forces()), tid


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serial")
    cfg = config(tmp)
    run_generate(cfg, progress=False)
    return cfg, frames_by_task(cfg["work_dir"])


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    c = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(c)
    yield client
    client.close()
    c.close()


def test_two_dask_workers_give_bitwise_the_frames_of_a_serial_run(tmp_path, serial, cluster):
    _, ref = serial
    cfg = config(tmp_path)
    m = run_generate(cfg, progress=False, client=cluster)
    assert m["complete"]
    assert_same_frames(frames_by_task(cfg["work_dir"]), ref)
    # each worker loaded its teacher once, however many tasks it ran
    from orbdistill.data.executors import teacher_loads

    loads = cluster.run(teacher_loads)
    assert set(loads.values()) == {1}  # both workers worked, and loaded the teacher once for all their tasks


def test_a_worker_killed_mid_run_loses_no_task_and_duplicates_none(tmp_path, serial, cluster):
    _, ref = serial
    cfg = config(tmp_path)
    manifest = Path(cfg["work_dir"]) / "data" / "manifest.json"
    killed = {}

    def kill_one_worker_once_work_is_under_way():
        try:
            while not (manifest.exists() and json.loads(manifest.read_text())["tasks"]):
                time.sleep(0.05)
            worker = sorted(cluster.scheduler_info()["workers"])[0]
            killed["worker"] = worker
            killed["tasks_done"] = len(json.loads(manifest.read_text())["tasks"])
        except Exception as exc:  # a thread's exception would otherwise vanish (pytest ignores UserWarning)
            killed["error"] = repr(exc)
            return
        try:
            cluster.run(lambda: os._exit(1), workers=[worker], wait=False)
        except Exception:  # the worker died before it could answer: what was asked
            pass

    cluster.wait_for_workers(2, timeout=60)  # both workers up before one is killed
    th = threading.Thread(target=kill_one_worker_once_work_is_under_way)
    th.start()
    m = run_generate(cfg, progress=False, client=cluster)
    th.join()
    assert "error" not in killed, killed["error"]
    assert killed and killed["tasks_done"] < len(ref) and m["complete"]  # killed while tasks were left
    chunks = sorted(p.name for p in (Path(cfg["work_dir"]) / "data" / "chunks").glob("*.extxyz"))
    assert len(chunks) == len(m["tasks"]) == len(ref)  # every task once
    assert_same_frames(frames_by_task(cfg["work_dir"]), ref)
    cluster.wait_for_workers(2, timeout=60)  # the nanny restarted the killed worker


def test_an_interrupted_client_resumes_without_losing_or_repeating_work(tmp_path, serial, cluster):
    _, ref = serial
    cfg = config(tmp_path)
    first = run_generate(cfg, progress=False, client=cluster, max_tasks=3)  # the client stops after 3 tasks
    assert not first["complete"] and len(first["tasks"]) == 3
    done_before = {k: v["file"] for k, v in first["tasks"].items()}
    again = run_generate(cfg, progress=False, client=cluster)
    assert again["complete"] and all(again["tasks"][k]["file"] == f for k, f in done_before.items())
    assert_same_frames(frames_by_task(cfg["work_dir"]), ref)


def test_the_executor_is_chosen_in_the_config_and_checked(tmp_path):
    from orbdistill.config import ConfigError

    cfg = config(tmp_path)
    cfg["executor"] = {"kind": "dask", "workers": 0}
    with pytest.raises(ConfigError, match=r"executor\.workers = 0"):
        load_config(cfg)
    cfg["executor"] = {"kind": "slurm"}
    with pytest.raises(ConfigError, match=r"executor\.kind = 'slurm'"):
        load_config(cfg)


def test_a_sampler_runs_the_md_on_dask_workers_and_the_teacher_labels(tmp_path, serial, cluster):
    """With a sampler, workers load both models by spec; here the sampler is the teacher
    itself, so the frames are the serial ones relabelled (equal up to EMT's last bits)."""
    _, ref = serial
    cfg = config(tmp_path)
    cfg["sampler"] = {"name": "emt"}
    m = run_generate(cfg, progress=False, client=cluster)
    assert m["complete"] and m["sampler"]["name"] == "emt"
    got = frames_by_task(cfg["work_dir"])
    assert sorted(got) == sorted(ref)
    for tid in ref:
        assert len(got[tid]) == len(ref[tid])
        for fa, fb in zip(got[tid], ref[tid]):
            assert np.array_equal(fa.positions, fb.positions) and fa.info["sampler"] == "emt"
            assert fa.get_potential_energy() == pytest.approx(fb.get_potential_energy(), abs=1e-9)
            assert np.allclose(fa.get_forces(), fb.get_forces(), atol=1e-9)


def test_a_teacher_made_from_a_calculator_object_cannot_go_to_dask(tmp_path, cluster):
    from ase.calculators.emt import EMT

    from orbdistill.data import GenerateConfig, generate
    from orbdistill.teachers import load_teacher

    teacher = load_teacher(EMT())
    with pytest.raises(ValueError, match="load it by name"):
        generate(GenerateConfig(nvt_frames=2, nvt_temperatures_k=[300.0]), teacher, tmp_path / "d", progress=False,
                 client=cluster)


# ---- DDP --------------------------------------------------------------------------------

def _torchrun(tmp_path, cfg_path, extra=()):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
           "-m", "orbdistill.cli", "train", "--config", str(cfg_path), *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return res


def _weights(path):
    from orbdistill.models import load_student

    return {k: v.clone() for k, v in load_student(path).state_dict().items()}


def test_ddp_on_two_processes_equals_one_process_with_the_same_global_batch(tmp_path, serial):
    cfg, _ = serial
    import shutil

    for name in ("single", "ddp"):
        c = dict(cfg, work_dir=str(tmp_path / name), package_dir=str(tmp_path / f"{name}-pkg"))
        shutil.copytree(Path(cfg["work_dir"]) / "data", tmp_path / name / "data")
        (tmp_path / f"{name}.json").write_text(json.dumps({k: v for k, v in c.items() if not k.startswith("_")}))
    torch.manual_seed(0)
    run_train(load_config(tmp_path / "single.json"), progress=False, log_fn=None)
    res = _torchrun(tmp_path, tmp_path / "ddp.json")
    assert res.stdout.count("best epoch") == 1  # rank 0 alone reports
    a, b = _weights(tmp_path / "single" / "train" / "best.pt"), _weights(tmp_path / "ddp" / "train" / "best.pt")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-9, atol=1e-10, msg=k)
    hist_a = json.loads((tmp_path / "single" / "train" / "history.json").read_text())
    hist_b = json.loads((tmp_path / "ddp" / "train" / "history.json").read_text())
    assert [round(h["train_loss"], 9) for h in hist_a] == [round(h["train_loss"], 9) for h in hist_b]


def test_ddp_resumes_from_its_checkpoint(tmp_path, serial):
    cfg, _ = serial
    import shutil

    c = dict(cfg, work_dir=str(tmp_path / "ddp"), package_dir=str(tmp_path / "pkg"))
    shutil.copytree(Path(cfg["work_dir"]) / "data", tmp_path / "ddp" / "data")
    short = dict(c, train=dict(c["train"], epochs=3))
    (tmp_path / "c.json").write_text(json.dumps({k: v for k, v in short.items() if not k.startswith("_")}))
    _torchrun(tmp_path, tmp_path / "c.json")
    straight = _weights(tmp_path / "ddp" / "train" / "best.pt")
    # the same run stopped after epoch 1 and resumed by a second torchrun
    shutil.rmtree(tmp_path / "ddp" / "train")
    _torchrun(tmp_path, tmp_path / "c.json", extra=("--max-epochs", "1"))  # a job that hit its wall-time limit
    history = json.loads((tmp_path / "ddp" / "train" / "history.json").read_text())
    assert len(history) == 1
    res = _torchrun(tmp_path, tmp_path / "c.json")
    history = json.loads((tmp_path / "ddp" / "train" / "history.json").read_text())
    assert len(history) == 3
    resumed = _weights(tmp_path / "ddp" / "train" / "best.pt")
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], rtol=1e-10, atol=1e-12, msg=k)


def test_command_line_executor_flags_reach_the_config(tmp_path):
    from orbdistill.cli import _config_with_executor, build_parser

    (tmp_path / "c.json").write_text(json.dumps(config(tmp_path)))
    args = build_parser().parse_args(["generate", "--config", str(tmp_path / "c.json"), "--workers", "3"])
    assert _config_with_executor(args)["executor"] == {"kind": "dask", "scheduler": None, "workers": 3,
                                                       "threads_per_worker": 1}
    args = build_parser().parse_args(["distill", "--config", str(tmp_path / "c.json"), "--scheduler", "tcp://h:8786"])
    assert _config_with_executor(args)["executor"]["scheduler"] == "tcp://h:8786"
    args = build_parser().parse_args(["generate", "--config", str(tmp_path / "c.json")])
    assert _config_with_executor(args)["executor"]["kind"] == "local"


def test_tasks_sharing_a_worker_do_not_share_its_teacher_at_the_same_time(tmp_path, serial):
    """A worker with several Dask threads runs tasks concurrently; they must not use its one
    teacher calculator at once (seen: 'forces not present in this calculation')."""
    from distributed import Client, LocalCluster

    _, ref = serial
    cfg = config(tmp_path)
    with LocalCluster(n_workers=1, threads_per_worker=3, processes=True, dashboard_address=None) as c, Client(c) as client:
        m = run_generate(cfg, progress=False, client=client)
    assert m["complete"]
    assert_same_frames(frames_by_task(cfg["work_dir"]), ref)
