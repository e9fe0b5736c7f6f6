"""The whole job: teacher + seeds -> labelled data -> trained student -> package.

A distillation config (JSON, YAML or TOML; checked whole by
:func:`orbdistill.distill_config.load_distill_config` before any work starts) has these sections:

.. code-block:: yaml

    name: cu-sevennet-v2
    teacher: {name: sevennet-0}            # weights: a local Orb checkpoint, or "random"
    student: {kind: v2, overrides: {num_features: 64}}
    generate: {seeds: [../data/structures/Cu_fcc.cif], sizes: [32, 108]}
    train: {epochs: 60, batch_size: 8}
    split: [0.8, 0.1, 0.1]
    work_dir: ../runs/cu-sevennet-v2       # relative paths: relative to this file
    package_dir: ../calculators/cu-sevennet-v2
    device: cpu                            # also the training device unless train.device says
    executor: {kind: dask, workers: 2}     # labelling on Dask (default: local)
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Optional, Union

from orbdistill.distill_config import load_distill_config, sampler_from_config, teacher_from_config
from orbdistill.models.domain import fit_domain  # noqa: F401  (part of this module's API)
from orbdistill.data.dataset import frames_to_samples, split_arguments, split_by_trajectory
from orbdistill.data.generate import GenerateConfig, domain_summary, generate, read_frames
from orbdistill.training.trainer import TrainConfig, Trainer, evaluate, evaluate_by_group
from orbdistill.utils import atomic_write_text

log = logging.getLogger(__name__)


def load_config(source: Union[str, os.PathLike, dict]) -> dict:
    """Read and validate a distillation config (see :func:`orbdistill.distill_config.load_distill_config`)."""
    return load_distill_config(source)


def _teacher(cfg: dict):
    return teacher_from_config(cfg)


def run_generate(cfg: dict, teacher=None, progress: bool = True, max_tasks: Optional[int] = None, client=None,
                 extend: bool = False) -> dict:
    """Label the data of ``cfg`` (resuming), on the executor the config names, or on the Dask
    ``client`` given. ``extend``: keep the finished tasks of a folder whose configuration
    only gained values (see :func:`orbdistill.data.generate.generate`)."""
    cfg = load_config(cfg)
    teacher = teacher or _teacher(cfg)
    gcfg = GenerateConfig.from_dict(cfg.get("generate", {}))
    return generate(gcfg, teacher, Path(cfg["work_dir"]) / "data", progress=progress, max_tasks=max_tasks,
                    executor=cfg.get("executor"), client=client, extend=extend, sampler=sampler_from_config(cfg))


def _student(cfg: dict, frames, teacher=None):
    from orbdistill.models import build_student, v1_from_orb

    s = cfg["student"]
    species = s.get("species") or sorted({int(z) for f in frames for z in f.numbers})
    kind = s.get("kind", "v2")
    overrides = dict(s.get("overrides", {}))
    if s.get("init_from_teacher"):
        if kind != "v1" or teacher is None or teacher.family != "orb":
            raise ValueError("init_from_teacher needs kind 'v1' and an Orb teacher.")
        return v1_from_orb(teacher.model, species=species, **overrides)
    if s.get("init_from"):  # fine-tuning: the architecture and normalisation come with the weights
        from orbdistill.distill_config import check_init_from

        return check_init_from(dict(s, species=species), species, "student.init_from").train()
    return build_student(kind, species, **overrides)


def _start_weights(source: str) -> dict:
    """Where a fine-tuned student started: the package or file, and its weights' hash."""
    from orbdistill.packages import file_sha256, find_package

    path = Path(source)
    if not path.exists():
        path = find_package(source)
    return {"source": str(source), "weights_sha256": file_sha256(path / "model.pt" if path.is_dir() else path)}


def _keeps_normalization(cfg: dict) -> bool:
    """A student that starts from given weights (the teacher's, or a package's) keeps their
    element references and output scale: it reproduces its starting point at epoch 0."""
    return bool(cfg["student"].get("init_from_teacher") or cfg["student"].get("init_from"))


def run_train(cfg: dict, progress: bool = True, max_epochs: Optional[int] = None, log_fn=print, teacher=None,
              new_data_restarts: bool = False):
    """Train on the generated data of ``cfg`` (resuming if a checkpoint exists).

    A checkpoint made on other data is an error, or, with ``new_data_restarts`` (after
    extending the data), moved to ``WORK/train-before-<time>`` and training starts anew.
    Returns (best model, trainer, (train, val, test) samples).
    """
    from orbdistill.training.trainer import DataChangedError

    cfg = load_config(cfg)
    frames = read_frames(Path(cfg["work_dir"]) / "data")
    if not frames:
        raise ValueError(f"Empty dataset in {cfg['work_dir']}/data: generation produced no frames.")
    train_f, val_f, test_f = split_by_trajectory(frames, **split_arguments(cfg))
    if not val_f:
        raise ValueError("The split left no validation trajectory: generate more trajectories or change 'split'.")
    tcfg = TrainConfig.from_dict(cfg.get("train", {}))
    import torch

    torch.manual_seed(tcfg.seed)  # the initial weights depend on the seed only
    model = _student(cfg, frames, teacher)
    samples = [frames_to_samples(x, model.cutoff, model.max_neighbors) for x in (train_f, val_f, test_f)]
    # a student copied from the teacher keeps the teacher's normalisation (it reproduces the teacher at epoch 0)
    train_dir = Path(cfg["work_dir"]) / "train"

    def new_trainer(model):
        return Trainer(model, samples[0], samples[1], tcfg, train_dir, progress=progress,
                       fit_normalization=not _keeps_normalization(cfg))

    trainer = new_trainer(model)
    try:
        resumed = trainer.resume()
    except DataChangedError:
        if not new_data_restarts or trainer.dist.enabled:  # under torchrun: delete the folder by hand
            raise
        old = train_dir.with_name(f"train-before-{time.strftime('%Y%m%d-%H%M%S')}")
        train_dir.rename(old)
        if log_fn:
            log_fn(f"the data changed: the earlier training moved to {old}; training anew")
        torch.manual_seed(tcfg.seed)
        trainer, resumed = new_trainer(_student(cfg, frames, teacher)), False
    if resumed and log_fn:
        log_fn(f"resumed training at epoch {trainer.epoch}")
    best = trainer.fit(max_epochs=max_epochs, log_fn=log_fn)
    return best, trainer, samples


def calibrate_package(package, data_dir, split=None, seed: Optional[int] = None, log_fn=print) -> dict:
    """Fit and calibrate the out-of-domain signal of an existing package from the generated
    data it was trained on (the package's own split of trajectories is redone)."""
    from orbdistill.export.package import write_domain
    from orbdistill.models import load_student
    from orbdistill.packages import find_package, read_card

    package = find_package(package)
    used = json.loads((package / "config.json").read_text()) if (package / "config.json").exists() else {}
    how = split_arguments(used)  # the split the package was trained with
    split = tuple(split or how["fractions"])
    seed = seed if seed is not None else how["seed"]
    model = load_student(package)
    frames = read_frames(data_dir)
    train_f, val_f, test_f = split_by_trajectory(frames, split, seed=seed, method=how["method"])
    train_s, held_s = (frames_to_samples(x, model.cutoff, model.max_neighbors) for x in (train_f, val_f + test_f))
    card_mae = read_card(package).get("metrics", {}).get("force_mae_mev_a")
    domain, ood = fit_domain(model, train_s, held_s, force_mae_ev_a=card_mae / 1e3 if card_mae else None)
    ood["fitted_on"] = f"{len(train_s)} training frames of {data_dir}"
    write_domain(package, domain, ood)
    if log_fn:
        log_fn(f"{package}: out-of-domain threshold {ood['threshold']:.2f} "
               f"({100 * ood['held_out_flagged']:.1f} % of {ood['n_frames']} held-out frames above)")
    return ood


def distill(source, progress: bool = True, log_fn=print, client=None, extend: bool = False, teacher=None) -> dict:
    """Generate, train, evaluate on held-out trajectories and package. Returns a summary.

    ``teacher``: a :class:`~orbdistill.teachers.Teacher` to use instead of the one the
    config names (e.g. one wrapped from an ASE calculator object)."""
    from orbdistill.export.package import write_package
    from orbdistill.training.plots import plot_learning_curves, plot_parity

    cfg = load_config(source)
    if cfg.get("threads"):
        import torch

        torch.set_num_threads(int(cfg["threads"]))
    work = Path(cfg["work_dir"])
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_text(work / "config_used.json", json.dumps(cfg, indent=1))
    timing = {}
    t0 = time.perf_counter()
    from orbdistill.training.distributed import context_from_env

    dist = context_from_env(cfg["train"]["device"])  # under torchrun: rank 0 labels, all ranks train
    teacher = teacher or _teacher(cfg)
    if dist.is_main:
        manifest = run_generate(cfg, teacher=teacher, progress=progress, client=client, extend=extend)
    dist.barrier()
    if not dist.is_main:
        log_fn = None
        manifest = json.loads((work / "data" / "manifest.json").read_text())  # rank 0 finished it
    timing["generate_s"] = time.perf_counter() - t0
    if log_fn:
        log_fn(f"data: {manifest['n_frames']} frames ({manifest['n_rejected']} rejected) in {timing['generate_s']:.0f} s")
    t1 = time.perf_counter()
    best, trainer, (train_s, val_s, test_s) = run_train(cfg, progress=progress, log_fn=log_fn, teacher=teacher,
                                                        new_data_restarts=extend)
    timing["train_s"] = time.perf_counter() - t1
    if not dist.is_main:
        return {"rank": dist.rank, "package": None, "timing": {k: round(v, 1) for k, v in timing.items()}}
    # what training cost when its epochs ran, also when this call found them done (a repackaging)
    timing["train_epochs_s"] = sum(float(row.get("seconds") or 0.0) for row in trainer.history)
    held_out = test_s if test_s else val_s
    tc = trainer.cfg
    metrics = evaluate(best, held_out, dtype=tc.dtype, device=tc.device, return_predictions=True)
    preds = metrics.pop("predictions")
    metrics["held_out"] = "test trajectories" if test_s else "validation trajectories (no test split)"
    metrics["by_group"] = evaluate_by_group(best, held_out, dtype=tc.dtype, device=tc.device)
    plot_learning_curves(trainer.history, work / "learning_curves.png")
    plot_parity(preds, metrics, work / "parity.png", title=f"{cfg['name']}: held-out trajectories")
    timing["total_s"] = time.perf_counter() - t0
    protocols = sorted({v["protocol"] for v in manifest["tasks"].values()})
    # what labelling cost when it ran, also when this call resumed or the data were relabelled
    timing["data_tasks_s"] = sum(float(v.get("seconds") or 0.0) for v in manifest["tasks"].values())
    if any(v.get("sampler_seconds") is not None for v in manifest["tasks"].values()):
        timing["sampler_tasks_s"] = sum(float(v.get("sampler_seconds") or 0.0) for v in manifest["tasks"].values())
    card = {
        "teacher": {k: v for k, v in teacher.describe().items() if k not in ("species",)},
        **({"sampler": manifest["sampler"]} if manifest.get("sampler") else {}),
        "metrics": metrics,
        "data": {"n_frames": manifest["n_frames"], "n_rejected": manifest["n_rejected"], "n_train": len(train_s),
                 "n_val": len(val_s), "n_test": len(test_s), "protocols": protocols,
                 "temperatures_k": manifest["config"]["nvt_temperatures_k"], "sizes": manifest["config"]["sizes"]},
        "coverage": domain_summary(manifest),
        "training": {"epochs_run": trainer.epoch, "best_epoch": trainer.best_epoch, "stats": trainer.stats,
                     **({"init_from": _start_weights(cfg["student"]["init_from"])} if cfg["student"].get("init_from") else {})},
        "timing": {k: round(v, 1) for k, v in timing.items()},
        "plots": ["parity.png", "learning_curves.png"],
    }
    # calibrated on every frame it was not trained on (validation and test trajectories): a
    # group holds one or two trajectories of each split, and frames of one trajectory are
    # alike, so the threshold's quantile needs every held-out trajectory there is
    domain, ood = fit_domain(best, train_s, val_s + test_s, force_mae_ev_a=metrics["force_mae_mev_a"] / 1e3)
    if log_fn:
        log_fn(f"out-of-domain threshold {ood['threshold']:.2f} ({100 * ood['held_out_flagged']:.1f} % of held-out frames above)")
        if "force_error" in ood:
            fe = ood["force_error"]
            log_fn(f"force-error model: bar {1e3 * fe['threshold_ev_a']:.1f} meV/Å, rank correlation {fe['spearman']:.2f} "
                   f"with the measured errors ({100 * fe['held_out_flagged']:.1f} % of held-out frames above the bar)")
    pkg = write_package(best, cfg["package_dir"], card, config=cfg,
                        files=[work / "parity.png", work / "learning_curves.png"], domain=domain, domain_info=ood)
    summary = {"package": str(pkg), "metrics": metrics, "timing": card["timing"], "data": card["data"]}
    if cfg.get("onpolicy", {}).get("rounds"):
        from orbdistill.onpolicy import run_onpolicy

        state = run_onpolicy(cfg, progress=progress, log_fn=log_fn, teacher=teacher)
        summary["onpolicy"] = [{k: r.get(k) for k in ("round", "candidates", "labelled", "diverged", "converged")}
                               for r in state["rounds"]]
    atomic_write_text(work / "results.json", json.dumps(summary, indent=1))
    if log_fn:
        log_fn(f"held-out ({metrics['held_out']}): E {metrics['energy_mae_mev_atom']:.2f} meV/atom, "
               f"F {metrics['force_mae_mev_a']:.1f} meV/Å"
               + (f", S {metrics['stress_mae_gpa']:.3f} GPa" if "stress_mae_gpa" in metrics else "")
               + f"; packaged in {pkg} ({timing['total_s']:.0f} s in all)")
    return summary
