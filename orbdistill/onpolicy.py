"""On-policy distillation: the student simulates, the teacher labels where the student is
unsure or fails, and the student is retrained from its own weights.

A student trained on teacher trajectories meets, in its own MD, configurations the
teacher never visited (its errors move it elsewhere), and a small error there can grow
into a collapse. Each round:

1. **explore**: the current student runs NVT at ``temperatures_k`` on starting structures
   built from the seeds (bulk, a slab of each ``surface_millers`` facet, a vacancy cell, a
   cluster of each ``cluster_sizes`` size; see :mod:`orbdistill.data.coverage`); every ``sample_interval`` steps a frame and its
   largest per-atom out-of-domain score are kept. A run *diverges* when atoms come closer
   than ``min_distance``, a force exceeds ``max_force``, the temperature runs above
   ``max_temperature_factor`` x its target, or the model fails; the frames before the
   failure are kept and the run stops.
2. **select**: frames scoring above ``uncertainty_factor`` x the package's calibrated
   threshold, or whose estimated force MAE is above ``uncertainty_factor`` x the card's
   force-error bar (packages calibrated with a force-error model), and the last ``frames_before_failure`` frames of a diverged run, are the
   candidates; at most ``max_new_frames`` of them are chosen by farthest-point sampling
   (:mod:`orbdistill.data.selection`). With ``audit_frames``, the teacher also labels that
   many other frames of every run; those where the student's force MAE exceeds
   ``audit_factor`` x its held-out MAE join the new frames (the student is confident there
   and wrong: no feature distance sees that).
3. **label**: the teacher computes energy, forces and stress of the chosen frames (rejection
   rules of the generate section apply); they are written to ``onpolicy/round-R.extxyz``.
4. **retrain**: from the current weights (normalisation kept) on the original training set
   plus every on-policy frame so far (every fifth on-policy frame joins the validation set
   instead), then the out-of-domain model is refitted and recalibrated, and the
   round's package is written.

The loop stops when a round finds no candidate, no run diverges and no audited frame is
wrong (the student is stable, confident and, where audited, accurate where it was sent), or
after ``rounds``. Every step is resumable: the state
(``onpolicy/state.json``), each round's labelled frames and each round's package are written
atomically, and a rerun continues where it stopped. NVIDIA's ALCHEMI toolkit describes the
same loop for its students (a replay buffer of teacher labels and a stability monitor); this
one is built on ASE and the students' own out-of-domain signal.

Example (in a distillation config)::

    "onpolicy": {"rounds": 3, "temperatures_k": [300, 900], "steps": 500}

then ``orbdistill onpolicy --config cfg.json`` after ``orbdistill distill``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from orbdistill.utils import atomic_write_text

log = logging.getLogger(__name__)

from orbdistill.onpolicy_config import STARTS, OnPolicyConfig  # noqa: F401  (re-exported)


# --------------------------------------------------------------------------------------
# exploration
# --------------------------------------------------------------------------------------


def start_structures(seeds, cfg: OnPolicyConfig, vacuum: float = 12.0) -> Dict[str, object]:
    """Named starting structures for the student's own MD, built from each seed where they
    apply (a slab, a vacancy and a cluster need a bulk seed)."""
    from orbdistill.data.coverage import make_cluster, make_defect, make_slab, seed_kind, seed_supercell

    rng = np.random.default_rng(cfg.seed)
    out = {}
    for k, seed in enumerate(seeds):
        kind = seed_kind(seed)
        tag = f"{seed.get_chemical_formula()}-{k}"
        if "bulk" in cfg.starts:
            out[f"{tag}-bulk"] = seed_supercell(seed, cfg.size)
        if kind == "bulk":
            if "surface" in cfg.starts:
                for hkl in cfg.surface_millers:
                    name = "surface" if len(cfg.surface_millers) == 1 else "surface" + "".join(map(str, hkl))
                    out[f"{tag}-{name}"] = make_slab(seed, list(hkl), cfg.size, vacuum=vacuum)
            if "defect" in cfg.starts:
                element = sorted(set(seed.get_chemical_symbols()))[0]
                out[f"{tag}-vacancy"] = make_defect(seed_supercell(seed, cfg.size), f"vacancy:{element}", rng)
            if "cluster" in cfg.starts:
                for n in cfg.cluster_sizes:
                    out[f"{tag}-cluster" + ("" if len(cfg.cluster_sizes) == 1 else str(n))] = make_cluster(seed, n, vacuum)
    return out


def explore(calc, atoms, temperature_k: float, cfg: OnPolicyConfig, seed: int = 0) -> dict:
    """The student's own NVT run, sampled, with a divergence check after every sample.

    Returns ``frames`` (copies without calculator), ``uncertainty`` (largest per-atom score
    of each frame, NaN when the package has no signal), ``force_error`` (each frame's
    estimated force MAE, eV/Å; NaN without a force-error model), ``steps_completed`` and
    ``failed`` (None, or why the run stopped).
    """
    from ase import units
    from ase.md.bussi import Bussi

    from orbdistill.data.generate import _init_velocities
    from orbdistill.graph import min_pair_distance

    a = atoms.copy()
    a.calc = calc
    rng = np.random.default_rng(seed)
    _init_velocities(a, temperature_k, rng)
    dyn = Bussi(a, timestep=cfg.timestep_fs * units.fs, temperature_K=temperature_k, taut=100 * units.fs, rng=rng)
    frames, scores, errors, failed, done = [], [], [], None, 0

    def record():
        f = a.copy()
        f.calc = None
        frames.append(f)
        scores.append(float(calc.results.get("max_uncertainty", np.nan)))
        errors.append(float(calc.results.get("mean_force_error", np.nan)))

    try:
        a.get_potential_energy()
        record()
        while done < cfg.steps:
            n = min(cfg.sample_interval, cfg.steps - done)
            dyn.run(n)
            done += n
            forces = a.get_forces()
            energy = a.get_potential_energy()
            if not np.isfinite(energy) or not np.isfinite(forces).all():
                failed = f"non-finite energy or forces at step {done}"
            elif np.abs(forces).max() > cfg.max_force:
                failed = f"force {np.abs(forces).max():.1f} eV/Å > {cfg.max_force:g} at step {done}"
            elif a.get_temperature() > cfg.max_temperature_factor * temperature_k:
                failed = f"temperature {a.get_temperature():.0f} K > {cfg.max_temperature_factor:g} x target at step {done}"
            elif min_pair_distance(a, probe=cfg.min_distance) < cfg.min_distance:
                failed = f"atoms closer than {cfg.min_distance:g} Å at step {done}"
            if failed:
                break
            record()
    except Exception as exc:  # the model refused the structure (overlapping atoms, ...)
        failed = f"{type(exc).__name__} at step ~{done}: {str(exc)[:200]}"
    return {"frames": frames, "uncertainty": scores, "force_error": errors, "steps_completed": done, "failed": failed}


def candidates(run: dict, threshold: Optional[float], cfg: OnPolicyConfig,
               force_error_bar: Optional[float] = None) -> List[int]:
    """Indices of a run's frames worth labelling: above ``uncertainty_factor`` x threshold,
    estimated force MAE above ``uncertainty_factor`` x ``force_error_bar`` (eV/Å), and the
    last frames before a divergence."""
    u = np.asarray(run["uncertainty"], dtype=float)
    picked = set()
    if threshold is not None:
        picked |= set(np.flatnonzero(np.nan_to_num(u, nan=0.0) > cfg.uncertainty_factor * threshold).tolist())
    if force_error_bar is not None and run.get("force_error") is not None:
        e = np.nan_to_num(np.asarray(run["force_error"], dtype=float), nan=0.0)
        picked |= set(np.flatnonzero(e > cfg.uncertainty_factor * force_error_bar).tolist())
    if run["failed"] and cfg.frames_before_failure:
        picked |= set(range(max(0, len(u) - cfg.frames_before_failure), len(u)))
    return sorted(picked)


def flagged_fraction(run: dict, threshold: Optional[float], force_error_bar: Optional[float] = None) -> Optional[float]:
    """Share of a run's frames out of the domain: the largest uncertainty above ``threshold``
    or the estimated force MAE above ``force_error_bar`` (as the calculator flags them);
    None without a threshold."""
    if not threshold:
        return None
    u = np.nan_to_num(np.asarray(run["uncertainty"], dtype=float), nan=0.0)
    out = u > threshold
    if force_error_bar is not None and run.get("force_error") is not None:
        out |= np.nan_to_num(np.asarray(run["force_error"], dtype=float), nan=0.0) > force_error_bar
    return float(np.mean(out)) if len(out) else 0.0


def audit_run(run: dict, picked: Sequence[int], calc, teacher, gcfg, round_index: int, n: int) -> list:
    """``n`` evenly spaced frames of a run that are not in ``picked``, labelled by the
    teacher, each with the student's force MAE against it in ``info["audit_force_mae_mev_a"]``
    (meV/Å). The signal says where the student has no data; an audit finds where it has data
    and is wrong anyway."""
    rest = [i for i in range(len(run["frames"])) if i not in set(picked)]
    if not n or not rest:
        return []
    pick = np.unique(np.linspace(0, len(rest) - 1, min(n, len(rest))).round().astype(int))
    labelled, _ = _label_frames([run["frames"][rest[j]] for j in pick], teacher, gcfg, round_index)
    for f in labelled:
        g = f.copy()
        g.calc = calc
        f.info["audit_force_mae_mev_a"] = 1e3 * float(np.abs(g.get_forces() - f.get_forces()).mean())
    return labelled


# --------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------


def _state_path(work: Path) -> Path:
    return work / "onpolicy" / "state.json"


def _save_state(work: Path, state: dict) -> None:
    atomic_write_text(_state_path(work), json.dumps(state, indent=1, default=str))


def _write_frames(path: Path, frames) -> None:
    from ase.io import write

    tmp = path.with_name(path.name + ".tmp")
    write(tmp, frames, format="extxyz")
    os.replace(tmp, path)


def _card_without_identity(card: dict) -> dict:
    """A card's content without what :func:`write_package` sets again for new weights."""
    return {k: v for k, v in card.items() if k not in ("name", "weights_sha256", "exports", "domain", "created")}


def _label_frames(frames, teacher, gcfg, round_index: int) -> tuple:
    from orbdistill.data.generate import _label, accept_frame

    calc = teacher.calculator()
    labelled, rejected = [], 0
    for k, f in enumerate(frames):
        task = {"id": f"onpolicy-r{round_index}-{f.info['start']}-{f.info['temperature_K']:g}K", "protocol": "onpolicy",
                "temperature_K": f.info["temperature_K"], "rng_seed": round_index}
        lab = _label(f, calc, task, teacher.name, k)
        lab.info.update(start=f.info["start"], round=round_index, uncertainty=f.info.get("uncertainty", np.nan))
        if accept_frame(lab, gcfg):
            labelled.append(lab)
        else:
            rejected += 1
    return labelled, rejected


def run_onpolicy(source, progress: bool = True, log_fn=print, teacher=None) -> dict:
    """Run (or resume) the on-policy rounds of a distillation config after ``distill``.

    The starting student is the config's package; each round writes
    ``WORK/onpolicy/round-R/package``, and the last one replaces the config's package
    (its card gains an ``onpolicy`` history). Returns the state (one entry per round).
    """
    from orbdistill.calculator import StudentCalculator
    from orbdistill.data.dataset import frames_to_samples, split_arguments, split_by_trajectory
    from orbdistill.data.generate import GenerateConfig, read_frames
    from orbdistill.data.seeds import load_seeds
    from orbdistill.data.selection import select_diverse
    from orbdistill.export.package import write_package
    from orbdistill.models import load_student
    from orbdistill.packages import read_card
    from orbdistill.distill_config import load_distill_config as load_config, teacher_from_config as _teacher
    from orbdistill.models.domain import fit_domain
    from orbdistill.training.trainer import TrainConfig, Trainer, evaluate, evaluate_by_group

    cfg = load_config(source)
    oc = OnPolicyConfig.from_dict(cfg.get("onpolicy") or {})
    if oc.rounds == 0:
        raise ValueError("onpolicy.rounds is 0: set it (e.g. \"onpolicy\": {\"rounds\": 3}) to run on-policy rounds.")
    work = Path(cfg["work_dir"])
    package = Path(cfg["package_dir"])
    if not (package / "model.pt").exists():
        raise FileNotFoundError(f"{package} holds no student: run `orbdistill distill` first.")
    (work / "onpolicy").mkdir(parents=True, exist_ok=True)
    state = json.loads(_state_path(work).read_text()) if _state_path(work).exists() else {}
    settings = {"onpolicy": dataclasses.asdict(oc), "package": str(package)}
    if state and state.get("settings") != json.loads(json.dumps(settings)):
        raise ValueError(f"{work / 'onpolicy'} holds rounds run with other on-policy settings; "
                         "move it away or use the same settings to resume.")
    state.setdefault("settings", settings)
    state.setdefault("rounds", [])
    state.setdefault("start_package_sha256", read_card(package).get("weights_sha256"))
    gcfg = GenerateConfig.from_dict(cfg["generate"])
    tcfg = TrainConfig.from_dict({**cfg.get("train", {}), "epochs": oc.epochs, "lr": oc.lr, "warmup_epochs": 0,
                                  "patience": max(oc.epochs, 1)})
    teacher = teacher or _teacher(cfg)
    seeds = load_seeds(gcfg.seeds)
    starts = start_structures(seeds, oc, vacuum=gcfg.vacuum)

    # the original split, redone exactly as distill did it
    frames = read_frames(work / "data")
    used = json.loads((package / "config.json").read_text()) if (package / "config.json").exists() else cfg
    train_f, val_f, test_f = split_by_trajectory(frames, **split_arguments(used))  # as the package's distill did
    held_out_f = test_f or val_f

    current = package if not state["rounds"] else Path(state["rounds"][-1].get("package") or package)
    for r in range(len(state["rounds"]) + 1, oc.rounds + 1):
        if state.get("converged"):
            break
        entry = {"round": r, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        chunk = work / "onpolicy" / f"round-{r:02d}.extxyz"
        partial = work / "onpolicy" / f"round-{r:02d}.json"
        if partial.exists() and chunk.exists():  # labelled before an interruption: do not explore again
            entry = json.loads(partial.read_text())
        else:
            calc = StudentCalculator(current, on_extrapolation="ignore", min_distance=0.3)
            threshold = calc.ood_threshold
            audit_limit = oc.audit_factor * read_card(current)["metrics"]["force_mae_mev_a"]
            runs, chosen_pool, audit_failed = {}, [], []
            for name, atoms in starts.items():
                for T in oc.temperatures_k:
                    res = explore(calc, atoms, T, oc, seed=oc.seed + 1000 * r + int(T))
                    for f, u in zip(res["frames"], res["uncertainty"]):
                        f.info.update(start=name, temperature_K=float(T), uncertainty=u)
                    idx = candidates(res, threshold, oc, force_error_bar=calc.force_error_bar)
                    chosen_pool.extend(res["frames"][i] for i in idx)
                    audit = audit_run(res, idx, calc, teacher, gcfg, r, oc.audit_frames)
                    audit_failed.extend(f for f in audit if f.info["audit_force_mae_mev_a"] > audit_limit)
                    u = np.asarray(res["uncertainty"], dtype=float)
                    runs[f"{name}@{T:g}K"] = {
                        "steps_completed": res["steps_completed"], "steps": oc.steps, "failed": res["failed"],
                        "frames": len(res["frames"]), "candidates": len(idx),
                        "max_uncertainty": float(np.nanmax(u)) if np.isfinite(u).any() else None,
                        "flagged_fraction": flagged_fraction(res, threshold, calc.force_error_bar),
                        "audited": len(audit),
                        "audit_failed": sum(f.info["audit_force_mae_mev_a"] > audit_limit for f in audit),
                        "audit_force_mae_mev_a": (float(np.mean([f.info["audit_force_mae_mev_a"] for f in audit]))
                                                  if audit else None)}
                    if log_fn:
                        log_fn(f"round {r}: {name} at {T:g} K: {res['steps_completed']}/{oc.steps} steps"
                               + (f" (diverged: {res['failed']})" if res["failed"] else "")
                               + f", {len(idx)} candidate frames"
                               + (f", audit {runs[f'{name}@{T:g}K']['audit_force_mae_mev_a']:.0f} meV/Å"
                                  if audit else ""))
            if chosen_pool:
                keep = select_diverse(chosen_pool, oc.max_new_frames, cutoff=min(6.0, calc.cutoff))
                chosen_pool = [chosen_pool[k] for k in sorted(keep)]
            labelled, rejected = _label_frames(chosen_pool, teacher, gcfg, r) if chosen_pool else ([], 0)
            labelled += audit_failed  # labelled already, and wrong where the signal was quiet
            _write_frames(chunk, labelled)
            entry.update(runs=runs, threshold=threshold, candidates=sum(v["candidates"] for v in runs.values()),
                         labelled=len(labelled), rejected=rejected, audit_limit_mev_a=audit_limit,
                         audit_failed=len(audit_failed),
                         diverged=sum(1 for v in runs.values() if v["failed"]), student=str(current))
            atomic_write_text(partial, json.dumps(entry, indent=1, default=str))
        if entry["candidates"] == 0 and entry["diverged"] == 0 and entry.get("audit_failed", 0) == 0:
            entry["converged"] = True
            state["converged"] = True
            state["rounds"].append(entry)
            _save_state(work, state)
            if log_fn:
                log_fn(f"round {r}: every run stable and in the domain: done")
            break

        # retrain from the current weights on everything labelled so far
        from ase.io import read

        new = []
        for k in range(1, r + 1):
            f = work / "onpolicy" / f"round-{k:02d}.extxyz"
            if f.exists() and f.stat().st_size:
                new.extend(read(f, index=":"))
        # by frame, not by trajectory: a round has few runs, and its frames are already chosen
        # to differ from each other (farthest-point sampling)
        new_train = [f for k, f in enumerate(new) if k % 5 != 4]
        new_val = [f for k, f in enumerate(new) if k % 5 == 4]
        model = load_student(current)
        to_samples = lambda fr: frames_to_samples(fr, model.cutoff, model.max_neighbors)  # noqa: E731
        train_s, val_s, held_s = to_samples(train_f + new_train), to_samples(val_f + new_val), to_samples(held_out_f)
        round_new = [f for f in new if f.info.get("round") == r]
        before = evaluate(model, to_samples(round_new), dtype=tcfg.dtype) if round_new else None
        trainer = Trainer(model, train_s, val_s, tcfg, work / "onpolicy" / f"round-{r:02d}" / "train", progress=progress,
                          fit_normalization=False)
        trainer.resume()
        best = trainer.fit(log_fn=None)
        after = evaluate(best, to_samples(round_new), dtype=tcfg.dtype) if round_new else None
        metrics = evaluate(best, held_s, dtype=tcfg.dtype)
        metrics["by_group"] = evaluate_by_group(best, held_s, dtype=tcfg.dtype)
        # calibrated on every frame it was not trained on: the validation and test trajectories
        # and the on-policy validation frames (without the latter, the threshold would describe the
        # bulk alone and keep flagging the surfaces and clusters the rounds brought in)
        domain, ood = fit_domain(best, train_s, val_s + (held_s if test_f else []),
                                 force_mae_ev_a=metrics["force_mae_mev_a"] / 1e3)
        card = _card_without_identity(read_card(package))
        card["metrics"] = {**metrics, "held_out": "the distillation's held-out trajectories"}
        card["onpolicy"] = state["rounds"] + [dict(entry, new_frame_errors_before=before, new_frame_errors_after=after)]
        out = work / "onpolicy" / f"round-{r:02d}" / "package"
        write_package(best, out, card, config=cfg, domain=domain, domain_info=ood)
        entry.update(package=str(out), held_out=metrics, new_frame_errors_before=before, new_frame_errors_after=after,
                     threshold_after=ood["threshold"], finished=time.strftime("%Y-%m-%d %H:%M:%S"))
        state["rounds"].append(entry)
        _save_state(work, state)
        partial.unlink(missing_ok=True)
        current = out
        if log_fn:
            log_fn(f"round {r}: {entry['labelled']} frames labelled; their force MAE "
                   f"{before['force_mae_mev_a'] if before else float('nan'):.0f} -> "
                   f"{after['force_mae_mev_a'] if after else float('nan'):.0f} meV/Å; held-out F "
                   f"{metrics['force_mae_mev_a']:.1f} meV/Å")

    # the last round's student becomes the package
    if state["rounds"] and state["rounds"][-1].get("package") and not state.get("installed") == state["rounds"][-1]["package"]:
        last = Path(state["rounds"][-1]["package"])
        best = load_student(last)
        from orbdistill.models.domain import DOMAIN_FILE, DomainModel

        from orbdistill.models import safe_torch_load

        card = read_card(last)
        domain = DomainModel.from_state(safe_torch_load(last / DOMAIN_FILE))
        info = card.get("domain", {}).get("ood")
        card = dict(_card_without_identity(card), onpolicy=state["rounds"])
        write_package(best, package, card, config=cfg, domain=domain,
                      domain_info={k: v for k, v in (info or {}).items() if k not in ("method", "file", "weights_sha256")})
        state["installed"] = str(last)
        _save_state(work, state)
        if log_fn:
            log_fn(f"{package}: replaced by the student of round {state['rounds'][-1]['round']}")
    return state
