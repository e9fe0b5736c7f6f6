"""Several packages on one recipe's held-out frames, by kind of frame: a comparison on equal
footing after the data grew (a package's own card reports its own test split).

    python benchmarks/held_out_compare.py --config CONFIG --package OLD --package NEW \
        [--split test|val] [--threads 1] [--tag SUFFIX]

The recipe's data folder (``work_dir/data``) is split as training splits it; every package
is evaluated on the chosen split's frames, grouped by protocol and by what varies within
it (facet, defect, short-range kind). Frames that an older package's own split put in its
training set are still counted; when the data only grew, the old trajectories keep their
split (check with the ids in the JSON). Energy errors are signed means (an offset shows)
and MAEs, per atom. Writes ``held_out_compare<tag>.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True, help="the distillation config (its work_dir holds the data)")
    p.add_argument("--package", action="append", required=True)
    p.add_argument("--split", choices=("test", "val"), default="test")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tag", default="")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from orbdistill import StudentCalculator
    from orbdistill.data.dataset import split_by_trajectory
    from orbdistill.data.generate import read_frames
    from orbdistill.distill_config import load_distill_config
    from orbdistill.pipeline import split_arguments

    cfg = load_distill_config(args.config)
    frames = read_frames(Path(cfg["work_dir"]) / "data")
    _, val, test = split_by_trajectory(frames, **split_arguments(cfg))
    held = test if args.split == "test" else val
    t0 = time.perf_counter()
    out = {"config": args.config, "split": args.split, "n_frames": len(held),
           "trajectories": sorted({f.info["traj_id"] for f in held}), "packages": {}}
    for pkg in args.package:
        calc = StudentCalculator(pkg, on_extrapolation="ignore")
        groups = {}
        for f in held:
            a = f.copy()
            a.calc = calc
            de = (a.get_potential_energy() - f.get_potential_energy()) / len(f)
            df = np.abs(a.get_forces() - f.get_forces()).mean()
            info = f.info
            kind = info.get("facet") or info.get("defect") or ""
            if info["protocol"] == "short_range":
                kind = "dimer" if len(f) == 2 else ("pushed pair" if "pair" in info else "rattle")
            key = f"{info['protocol']} {kind}".strip()
            groups.setdefault(key, []).append((de, df))
        out["packages"][pkg] = {
            k: {"frames": len(v), "energy_mean_mev_atom": 1e3 * float(np.mean([x[0] for x in v])),
                "energy_mae_mev_atom": 1e3 * float(np.mean([abs(x[0]) for x in v])),
                "force_mae_mev_a": 1e3 * float(np.mean([x[1] for x in v]))}
            for k, v in sorted(groups.items())}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["threads"] = args.threads
    path = Path(args.out) / f"held_out_compare{args.tag}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    keys = sorted({k for v in out["packages"].values() for k in v})
    names = [Path(x).name for x in args.package]
    print(f"{'frames':32s}" + "".join(f"{n[:26]:>28s}" for n in names))
    for k in keys:
        row = f"{k[:26]:26s} {out['packages'][args.package[0]].get(k, {}).get('frames', 0):5d}"
        for pkg in args.package:
            r = out["packages"][pkg].get(k)
            row += f"   E {r['energy_mean_mev_atom']:+8.1f} F {r['force_mae_mev_a']:7.1f}" if r else " " * 28
        print(row)
    print(f"{out['seconds']} s -> {path}")


if __name__ == "__main__":
    main()
