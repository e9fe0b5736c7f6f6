"""Two teachers, two students: how far the teachers disagree against how far each student is
from its teacher.

A student cannot be more right than its teacher. When two foundation models disagree by
more than a student's distillation error, the choice of teacher matters more than the
quality of the distillation, and a user should see both scales side by side. The
comparison needs the same configurations labelled by both teachers: one folder made by
``generate`` and a second made from it by :func:`orbdistill.data.relabel.relabel` (or
with the first teacher as ``sampler``). Both packages split their data by trajectory with
the same rule, so their held-out frames are the same trajectories; the frames held out by
every package are compared.

Example:
    >>> from orbdistill.validation.teachers import compare_teachers     # doctest: +SKIP
    >>> r = compare_teachers(["calculators/nial-sevennet-v2", "calculators/nial-sevennet-l3i5-v2"],
    ...                      ["runs/nial-sevennet-v2/data", "runs/nial-sevennet-l3i5-v2/data"], out="cmp")
    >>> r["pairs"]["sevennet-0 vs sevennet-l3i5"]["all"]["force_mae_mev_a"]   # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from orbdistill.training.trainer import EV_A3_TO_GPA
from orbdistill.utils import atomic_write_text


def _labels(frame) -> dict:
    r = frame.calc.results
    out = {"energy": float(r["energy"]), "forces": np.asarray(r["forces"], dtype=float)}
    if "stress" in r:
        out["stress"] = np.asarray(r["stress"], dtype=float).reshape(-1)[:6]
    return out


def _errors(a: List[dict], b: List[dict], n_atoms: List[int]) -> dict:
    """Energy (per atom, raw and after removing the mean per-atom offset), force and stress
    differences of two label sets on the same frames."""
    de = np.array([(x["energy"] - y["energy"]) / n for x, y, n in zip(a, b, n_atoms)])
    df = np.concatenate([(x["forces"] - y["forces"]).ravel() for x, y in zip(a, b)])
    out = {"n_frames": len(a), "energy_mae_mev_atom": 1e3 * float(np.abs(de).mean()),
           "energy_offset_mev_atom": 1e3 * float(de.mean()),
           "energy_mae_offset_removed_mev_atom": 1e3 * float(np.abs(de - de.mean()).mean()),
           "force_mae_mev_a": 1e3 * float(np.abs(df).mean()), "force_rmse_mev_a": 1e3 * float(np.sqrt((df ** 2).mean()))}
    ds = [x["stress"] - y["stress"] for x, y in zip(a, b) if "stress" in x and "stress" in y]
    if ds:
        out["stress_mae_gpa"] = float(np.abs(np.concatenate(ds)).mean() * EV_A3_TO_GPA)
    return out


def held_out_frames(package, data_dir=None) -> list:
    """The test frames (the validation frames when there is no test split) of the data a
    package was trained on, split by the package's own rule."""
    from orbdistill.data.dataset import split_arguments, split_by_trajectory
    from orbdistill.data.generate import read_frames
    from orbdistill.packages import find_package

    package = find_package(package)
    cfg = json.loads((package / "config.json").read_text())
    data = Path(data_dir) if data_dir else Path(cfg["work_dir"]) / "data"
    if not (data / "manifest.json").exists():
        raise FileNotFoundError(f"{data} is not a data folder; pass the folder {package.name} was trained on.")
    _, val, test = split_by_trajectory(read_frames(data), **split_arguments(cfg))
    return test or val


def compare_teachers(packages: Sequence, data_dirs: Optional[Sequence] = None, out=None, progress: bool = True) -> dict:
    """Teachers against each other and students against both teachers, on the frames every
    package held out, per kind of structure (bulk, surface, defect, ...) and over all.

    Args:
        packages: two or more packages distilled from different teachers on the same
            configurations
        data_dirs: the data folder of each package (default: its ``work_dir``/data)
        out: a folder for ``teachers.json``, ``teachers.md`` and ``teachers.png``
    Returns:
        ``{"teachers", "n_frames", "pairs": {"A vs B": {group: errors}}, "students": {package:
        {"vs <teacher>": {group: errors}}}}``; errors in meV/atom, meV/Å and GPa
    """
    from tqdm.auto import tqdm

    from orbdistill.calculator import StudentCalculator
    from orbdistill.data.generate import protocol_group
    from orbdistill.packages import find_package

    if len(packages) < 2:
        raise ValueError("compare_teachers needs two or more packages, each from its own teacher.")
    data_dirs = list(data_dirs) if data_dirs else [None] * len(packages)
    if len(data_dirs) != len(packages):
        raise ValueError(f"{len(packages)} packages but {len(data_dirs)} data folders.")
    paths = [find_package(p) for p in packages]
    cards = [json.loads((p / "card.json").read_text()) for p in paths]
    teachers = [c["teacher"]["name"] for c in cards]
    if len(set(teachers)) != len(teachers):
        raise ValueError(f"the packages share a teacher ({teachers}); compare packages of different teachers.")
    held = []
    for p, d in zip(paths, data_dirs):
        held.append({(f.info["traj_id"], int(f.info["frame_index"])): f for f in held_out_frames(p, d)})
    keys = sorted(set.intersection(*(set(h) for h in held)))
    if not keys:
        raise ValueError("The packages hold out no frame in common: their data are not the same configurations "
                         "(make the second folder with `orbdistill relabel`).")
    for h, name in zip(held[1:], teachers[1:]):
        worst = max(float(np.abs(h[k].positions - held[0][k].positions).max()) for k in keys)
        if worst > 1e-5:
            raise ValueError(f"The frames of {name!r} are not those of {teachers[0]!r} (positions differ by {worst:.3g} Å): "
                             "relabel one folder from the other.")
    frames = [held[0][k] for k in keys]
    groups = [protocol_group(f.info.get("protocol", "bulk")) for f in frames]
    n_atoms = [len(f) for f in frames]
    labels = {t: [_labels(h[k]) for k in keys] for t, h in zip(teachers, held)}
    preds = {}
    for p, card in zip(paths, cards):
        calc = StudentCalculator(p, on_extrapolation="ignore")
        rows = []
        for f in tqdm(frames, desc=f"{card['name']} on held-out frames", disable=not progress):
            a = f.copy()
            a.calc = calc
            r = {"energy": float(a.get_potential_energy()), "forces": np.array(a.get_forces())}
            if a.pbc.all():
                r["stress"] = np.array(a.get_stress(voigt=True))
            rows.append(r)
        preds[card["name"]] = rows

    def by_group(a, b):
        out = {"all": _errors(a, b, n_atoms)}
        for g in sorted(set(groups)):
            idx = [i for i, x in enumerate(groups) if x == g]
            out[g] = _errors([a[i] for i in idx], [b[i] for i in idx], [n_atoms[i] for i in idx])
        return out

    result = {"teachers": teachers, "packages": [c["name"] for c in cards], "n_frames": len(keys),
              "frames_by_group": {g: groups.count(g) for g in sorted(set(groups))}, "pairs": {}, "students": {}}
    for i in range(len(teachers)):
        for j in range(i + 1, len(teachers)):
            result["pairs"][f"{teachers[i]} vs {teachers[j]}"] = by_group(labels[teachers[i]], labels[teachers[j]])
    for card in cards:
        result["students"][card["name"]] = {"teacher": card["teacher"]["name"],
                                            **{f"vs {t}": by_group(preds[card["name"]], labels[t]) for t in teachers}}
    if out is not None:
        write_comparison(result, out)
    return result


def comparison_rows(result: dict, quantity: str = "force_mae_mev_a") -> List[Dict]:
    """One row per comparison (teachers, each student against each teacher) and one column per
    group: the table of the report and the bars of the plot."""
    groups = ["all"] + [g for g in result["frames_by_group"]]
    rows = [{"what": f"teachers: {pair}", **{g: v[g].get(quantity) for g in groups if g in v}}
            for pair, v in result["pairs"].items()]
    for name, s in result["students"].items():
        for t in result["teachers"]:
            own = "own teacher" if t == s["teacher"] else "other teacher"
            rows.append({"what": f"{name} vs {t} ({own})", **{g: s[f"vs {t}"][g].get(quantity) for g in groups if g in s[f"vs {t}"]}})
    return rows


def write_comparison(result: dict, out) -> dict:
    """``teachers.json``, ``teachers.md`` (force, energy and stress tables) and ``teachers.png``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "teachers.json", json.dumps(result, indent=1))
    groups = ["all"] + list(result["frames_by_group"])
    md = [f"# Teachers {' and '.join(result['teachers'])}: disagreement against distillation error", "",
          f"{result['n_frames']} held-out frames labelled by every teacher ("
          + ", ".join(f"{g} {n}" for g, n in result["frames_by_group"].items()) + ").", ""]
    for q, title in (("force_mae_mev_a", "Force MAE (meV/Å)"),
                     ("energy_mae_offset_removed_mev_atom", "Energy MAE after removing the mean offset (meV/atom)"),
                     ("energy_offset_mev_atom", "Mean energy offset (meV/atom)"), ("stress_mae_gpa", "Stress MAE (GPa)")):
        rows = comparison_rows(result, q)
        md += [f"## {title}", "", "| | " + " | ".join(groups) + " |", "|---" * (len(groups) + 1) + "|"]
        for r in rows:
            md.append(f"| {r['what']} | " + " | ".join("-" if r.get(g) is None else f"{r[g]:.3g}" for g in groups) + " |")
        md.append("")
    atomic_write_text(out / "teachers.md", "\n".join(md))
    rows = comparison_rows(result, "force_mae_mev_a")
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(groups) * len(rows) / 3), 4))
    width = 0.8 / len(rows)
    x = np.arange(len(groups))
    for k, r in enumerate(rows):
        ax.bar(x + k * width - 0.4 + width / 2, [r.get(g) or 0 for g in groups], width, label=r["what"],
               hatch="//" if r["what"].startswith("teachers") else None)
    ax.set_xticks(x, groups)
    ax.set_ylabel("force MAE (meV/Å)")
    ax.set_title("held-out frames: teachers against each other, students against teachers")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "teachers.png", dpi=120)
    plt.close(fig)
    return {"json": str(out / "teachers.json"), "markdown": str(out / "teachers.md"), "plot": str(out / "teachers.png")}
