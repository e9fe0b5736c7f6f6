"""Which inputs should a package's force-error estimate use? Out-of-fold figures on its held-out frames.

    python benchmarks/force_error_cv.py --package cu-sevennet-v2 --data runs/cu-sevennet-v2/data \
        [--threads 1] [--out benchmarks/results]

Redoes the package's split of the data it was trained on, measures the student's force MAE
on every held-out frame (validation and test trajectories), and fits
:class:`orbdistill.models.domain.ForceErrorModel` in two-fold cross-validation over whole
trajectories (a frame is always estimated by a model fitted without its trajectory), with
three sets of inputs: the distance ``u`` and the predicted force norm ``|F|`` (the
package's model), ``u`` alone, ``|F|`` alone. For each: the spread of log(measured /
estimated), the rank correlation, and at several multiples of the card's bar (3x its force
MAE) the share of bad held-out frames flagged and of good ones flagged. Writes
``force_error_cv_<package>.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def out_of_fold(frames, folds, transform):
    """Estimated frame force MAE of every frame from a model fitted on the other fold."""
    from orbdistill.models.domain import ForceErrorModel

    est = np.zeros(len(frames))
    for k in np.unique(folds):
        m = ForceErrorModel.fit([transform(f) for f, q in zip(frames, folds) if q != k])
        for i in np.flatnonzero(folds == k):
            g = transform(frames[i])
            est[i] = m(g["u"], g["force_norm"], g["atomic_numbers"]).mean()
    return est


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--package", default="cu-sevennet-v2")
    p.add_argument("--data", required=True, help="the generated data folder the package was trained on")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    import torch
    from scipy.stats import spearmanr

    torch.set_num_threads(args.threads)
    from orbdistill.data.dataset import frames_to_samples
    from orbdistill.models import load_student, safe_torch_load
    from orbdistill.models.domain import DOMAIN_FILE, DomainModel, held_out_errors
    from orbdistill.packages import find_package, read_card
    from orbdistill.pipeline import read_frames, split_arguments, split_by_trajectory

    pkg = find_package(args.package)
    card = read_card(pkg)
    how = split_arguments(json.loads((pkg / "config.json").read_text()))
    model = load_student(pkg)
    domain = DomainModel.from_state(safe_torch_load(pkg / DOMAIN_FILE, what="domain model"))
    _, val_f, test_f = split_by_trajectory(read_frames(args.data), tuple(how["fractions"]), seed=how["seed"],
                                           method=how["method"])
    held = val_f + test_f
    frames = held_out_errors(model, domain, frames_to_samples(held, model.cutoff, model.max_neighbors))
    ids = sorted({str(f.info["traj_id"]) for f in held})
    folds = np.array([ids.index(str(f.info["traj_id"])) % 2 for f in held])
    mae = np.array([f["force_mae"] for f in frames])
    bar = 3e-3 * card["metrics"]["force_mae_mev_a"]
    bad = mae > bar
    inputs = {
        "u and |F|": lambda f: f,
        "u only": lambda f: dict(f, force_norm=np.ones_like(f["force_norm"])),
        "|F| only": lambda f: dict(f, u=np.ones_like(f["u"])),
    }
    results = {}
    for name, transform in inputs.items():
        est = out_of_fold(frames, folds, transform)
        results[name] = {
            "log_ratio_std": float(np.log(mae / est).std()), "spearman": float(spearmanr(est, mae).statistic),
            "at_bar_multiple": {f"{m:g}": {"bad_flagged": float((est[bad] > m * bar).mean()) if bad.any() else None,
                                           "good_flagged": float((est[~bad] > m * bar).mean())}
                                for m in (1.0, 0.9, 0.8, 0.7)}}
        print(f"{name:10s} log-ratio spread {results[name]['log_ratio_std']:.3f}, rank correlation "
              f"{results[name]['spearman']:.3f}, at the bar: {results[name]['at_bar_multiple']['1']}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"force_error_cv_{pkg.name}.json").write_text(json.dumps(
        {"package": pkg.name, "data": str(args.data), "held_out_frames": len(frames), "trajectories": len(ids),
         "bad_frames": int(bad.sum()), "bar_ev_a": bar, "threads": args.threads, "inputs": results}, indent=1))


if __name__ == "__main__":
    main()
