"""Package the best checkpoint of a training run that was stopped before its schedule
ended, evaluated on the run's held-out test trajectories.

    python benchmarks/package_partial_run.py workflows/distill_cu_sevennet_v1_reduced.json
"""

import json
import sys
from pathlib import Path

from orbdistill.data.dataset import frames_to_samples, split_arguments, split_by_trajectory
from orbdistill.data.generate import read_frames
from orbdistill.export.package import write_package
from orbdistill.models import load_student
from orbdistill.pipeline import load_config
from orbdistill.training.plots import plot_learning_curves, plot_parity
from orbdistill.training.trainer import evaluate


def main(config_path):
    cfg = load_config(config_path)
    work = Path(cfg["work_dir"])
    frames = read_frames(work / "data")
    train_f, val_f, test_f = split_by_trajectory(frames, **split_arguments(cfg))
    model = load_student(work / "train" / "best.pt")
    test = frames_to_samples(test_f, model.cutoff, model.max_neighbors)
    metrics = evaluate(model, test, return_predictions=True)
    preds = metrics.pop("predictions")
    metrics["held_out"] = "test trajectories"
    history = json.loads((work / "train" / "history.json").read_text())
    plot_learning_curves(history, work / "learning_curves.png")
    plot_parity(preds, metrics, work / "parity.png", title=f"{cfg['name']}: held-out trajectories")
    manifest = json.loads((work / "data" / "manifest.json").read_text())
    best = min(history, key=lambda h: h["val_loss"])
    card = {
        "teacher": manifest["teacher"],
        "metrics": metrics,
        "data": {"n_frames": len(frames), "n_train": len(train_f), "n_val": len(val_f), "n_test": len(test_f),
                 "protocols": sorted({f.info["protocol"] for f in frames})},
        "training": {"epochs_run": len(history), "epochs_planned": cfg["train"]["epochs"], "best_epoch": best["epoch"],
                     "seconds_per_epoch": round(sum(h["seconds"] for h in history) / len(history), 1),
                     "note": "stopped before the end of its schedule for lack of time; best checkpoint packaged"},
        "plots": ["parity.png", "learning_curves.png"],
    }
    pkg = write_package(model, cfg["package_dir"], card, config=cfg, files=[work / "parity.png", work / "learning_curves.png"])
    print(json.dumps({"package": str(pkg), "metrics": metrics, "training": card["training"]}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
