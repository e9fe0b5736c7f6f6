"""Does the Hessian-vector-product loss help at equal data?

    python benchmarks/hessian_loss.py [--teacher emt] [--epochs 30] [--threads 2] [--out benchmarks/results]

One data set labelled once, with a teacher Hessian-vector product per frame (Cu: NVT at 300
to 1200 K, strained and rattled cells; EMT by default, any teacher name works), then the
same v2 student trained twice from the same initial weights and batches: forces, energies
and stress only, and the same plus the curvature term (``hessian_weight``). Reported for
each: held-out energy, force and stress errors, and phonons of the relaxed crystal against
the teacher's (frequency MAE on a 6^3 mesh, largest frequency). Writes
``hessian_loss.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="emt")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--hessian-weights", type=float, nargs="+", default=[0.0, 1.0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="runs/hessian-benchmark")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)

    import torch
    from ase.build import bulk

    from orbdistill.calculator import StudentCalculator
    from orbdistill.data import GenerateConfig, generate, read_frames, split_by_trajectory
    from orbdistill.data.dataset import frames_to_samples
    from orbdistill.models import build_student
    from orbdistill.teachers import load_teacher
    from orbdistill.training.trainer import TrainConfig, Trainer, evaluate
    from orbdistill.validation.phonons import compare_phonons, phonons
    from orbdistill.validation.relax import relax

    torch.set_num_threads(args.threads)
    teacher = load_teacher(args.teacher)
    work = Path(args.work)
    gcfg = GenerateConfig(seeds=["bulk:Cu:fcc:3.61"], sizes=[32], nvt_temperatures_k=[300.0, 600.0, 900.0, 1200.0],
                          nvt_trajectories_per_temperature=2, nvt_equilibration_steps=10, nvt_frames=15,
                          strain_frames=60, strain_frames_per_task=15, rattle_relax_frames=40, rattle_relax_per_task=5,
                          coverage=[], hvp=True)
    t0 = time.perf_counter()
    manifest = generate(gcfg, teacher, work / "data", progress=False)
    label_s = time.perf_counter() - t0
    frames = read_frames(work / "data")
    train_f, val_f, test_f = split_by_trajectory(frames, (0.7, 0.15, 0.15), seed=0)
    prim = bulk("Cu", "fcc", a=3.61)
    ref_relaxed = relax(teacher.calculator(), prim, fmax=1e-4, steps=300)["atoms"]
    ref_ph = phonons(teacher.calculator(), ref_relaxed, min_length=10.0, mesh=6)
    results = {"teacher": args.teacher, "frames": manifest["n_frames"], "labelling_s": round(label_s, 1),
               "threads": args.threads, "epochs": args.epochs,
               "teacher_phonons": {"max_frequency_thz": ref_ph["max_frequency_thz"]}, "runs": {}}
    for w in args.hessian_weights:
        torch.manual_seed(0)
        model = build_student("v2", [29], num_features=32, num_vector_features=8, num_layers=2, cutoff=4.5)
        to_s = lambda fr: frames_to_samples(fr, model.cutoff, model.max_neighbors)  # noqa: E731
        train_s, val_s, test_s = to_s(train_f), to_s(val_f), to_s(test_f)
        tcfg = TrainConfig(epochs=args.epochs, batch_size=8, lr=3e-3, warmup_epochs=1, patience=args.epochs,
                           hessian_weight=w)
        t1 = time.perf_counter()
        best = Trainer(model, train_s, val_s, tcfg, work / f"train-h{w:g}", progress=False).fit(log_fn=None)
        train_s_time = time.perf_counter() - t1
        metrics = evaluate(best, test_s)
        calc = StudentCalculator(best)
        relaxed = relax(calc, prim, fmax=1e-4, steps=300)["atoms"]
        ph = phonons(calc, relaxed, min_length=10.0, mesh=6)
        cmp = compare_phonons(ref_ph, ph)
        results["runs"][f"hessian_weight={w:g}"] = {
            "train_s": round(train_s_time, 1), "energy_mae_mev_atom": metrics["energy_mae_mev_atom"],
            "force_mae_mev_a": metrics["force_mae_mev_a"], "stress_mae_gpa": metrics.get("stress_mae_gpa"),
            "lattice_a": float(relaxed.cell.lengths()[0] * 2 ** 0.5), "phonon_frequency_mae_thz": cmp["frequency_mae_thz"],
            "phonon_max_frequency_thz": ph["max_frequency_thz"], "dos_overlap": cmp["dos_overlap"]}
        print(f"hessian_weight={w:g}: F {metrics['force_mae_mev_a']:.1f} meV/Å, E {metrics['energy_mae_mev_atom']:.2f} "
              f"meV/atom, phonon MAE {cmp['frequency_mae_thz']:.3f} THz ({train_s_time:.0f} s)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "hessian_loss.json").write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
