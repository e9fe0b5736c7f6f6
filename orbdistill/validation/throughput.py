"""Time per MD step through an ASE calculator, across system sizes.

One "MD step" is one call of the calculator for energy, forces and stress on a structure
whose positions changed (as in MD), neighbour list included. The median of ``repeats``
calls after ``warmup`` calls is reported.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional

import numpy as np

from orbdistill.structures import cu_fcc

log = logging.getLogger(__name__)


def _sync(calc):
    dev = str(getattr(calc, "device", "cpu"))
    if dev.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def time_step(calc, atoms, repeats: int = 3, warmup: int = 1) -> dict:
    """Median wall time (ms) of one MD step's calculator work: energy, forces and stress
    after the positions moved, through ``atoms.get_*`` as an MD driver calls them (so a
    calculator may reuse what stays valid, e.g. EMT its neighbour list)."""
    atoms = atoms.copy()
    atoms.calc = calc
    rng = np.random.default_rng(1)
    base = atoms.positions.copy()
    times = []
    for k in range(warmup + repeats):
        atoms.positions = base + rng.normal(scale=1e-3, size=base.shape)  # a new MD frame
        _sync(calc)
        t0 = time.perf_counter()
        atoms.get_potential_energy()
        atoms.get_forces()
        atoms.get_stress()
        _sync(calc)
        dt = 1e3 * (time.perf_counter() - t0)
        if k >= warmup:
            times.append(dt)
    med = statistics.median(times)
    return {"ms_per_step": med, "atom_steps_per_s": len(atoms) / (med / 1e3), "runs": repeats, "all_ms": times}


def run_speed_table(
    factories: Dict[str, Callable[[], object]],
    sizes: Iterable[int],
    repeats: int = 3,
    warmup: int = 1,
    max_step_seconds: float = 60.0,
    structure_fn: Callable[[int], object] = cu_fcc,
    progress: bool = True,
) -> list:
    """Rows ``{model, n_atoms, ms_per_step, atom_steps_per_s}`` for every model and size.

    A model whose step exceeds ``max_step_seconds`` skips the larger sizes.
    """
    from tqdm.auto import tqdm

    rows = []
    sizes = list(sizes)
    for name, factory in factories.items():
        calc = factory()
        for n in tqdm(sizes, desc=name, disable=not progress):
            atoms = structure_fn(n)
            try:
                res = time_step(calc, atoms, repeats=repeats, warmup=warmup)
            except Exception as exc:  # record and continue with the next model
                log.warning("%s at %d atoms failed: %s", name, len(atoms), exc)
                rows.append({"model": name, "n_atoms": len(atoms), "error": str(exc)})
                break
            rows.append({"model": name, "n_atoms": len(atoms), **res})
            if res["ms_per_step"] > 1e3 * max_step_seconds:
                log.warning("%s: %.1f s per step at %d atoms; skipping larger sizes", name, res["ms_per_step"] / 1e3, len(atoms))
                break
        del calc
    return rows


def write_speed_results(rows: list, meta: dict, out_json, out_png=None, title: str = "time per MD step") -> None:
    out_json = Path(out_json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_json.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    os.replace(tmp, out_json)
    if out_png:
        plot_speed(rows, out_png, title=title + f" ({meta.get('threads', '?')} threads, {meta.get('device', 'cpu')})")


def plot_speed(rows: list, path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    models = list(dict.fromkeys(r["model"] for r in rows))
    for m in models:
        pts = [(r["n_atoms"], r["ms_per_step"]) for r in rows if r["model"] == m and "ms_per_step" in r]
        if pts:
            x, y = zip(*pts)
            ax.plot(x, y, "o-", label=m)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("atoms")
    ax.set_ylabel("ms per MD step (energy, forces, stress)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def speed_table_markdown(rows: list) -> str:
    sizes = sorted({r["n_atoms"] for r in rows})
    models = list(dict.fromkeys(r["model"] for r in rows))
    lines = ["| model | " + " | ".join(f"{n} atoms" for n in sizes) + " |", "|---" * (len(sizes) + 1) + "|"]
    for m in models:
        cells = []
        for n in sizes:
            r = next((r for r in rows if r["model"] == m and r["n_atoms"] == n), None)
            cells.append("-" if r is None or "ms_per_step" not in r else f"{r['ms_per_step']:.1f} ms")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def package_speedup(package, structure=None, n_atoms: int = 256, repeats: int = 3, threads: Optional[int] = None,
                    write: bool = True) -> dict:
    """The speed-up of a packaged student over its teacher: one MD step's calculator work
    (energy, forces, stress) on a supercell of about ``n_atoms`` atoms of ``structure``
    (default: the first seed of the package's recipe), the student as a user gets it.

    With ``write`` the result goes into the package's ``card.json`` under ``speed``.

    Example::

        >>> package_speedup("cu-sevennet-v2", n_atoms=32, repeats=1, write=False)["n_atoms"]  # doctest: +SKIP
        32
    """
    import torch
    from ase.io import read

    from orbdistill.calculator import StudentCalculator
    from orbdistill.packages import find_package, read_card, write_card
    from orbdistill.structures import supercell
    from orbdistill.distill_config import teacher_from_config

    package = find_package(package)
    card = read_card(package)
    config = json.loads((package / "config.json").read_text())
    if structure is None:
        seed = Path(config["generate"]["seeds"][0])
        shipped = Path(__file__).resolve().parents[2] / "data" / "structures" / seed.name  # a clone elsewhere
        if not seed.exists() and not shipped.exists():
            raise ValueError(f"the recipe's seed {str(seed)!r} is not a file here: pass structure=")
        structure = read(seed if seed.exists() else shipped)
    elif not hasattr(structure, "positions"):
        structure = read(structure)
    if threads is not None:
        torch.set_num_threads(int(threads))
    atoms = supercell(structure, n_atoms, at_least=False)
    atoms.rattle(0.02, seed=0)
    teacher = teacher_from_config(config)
    rows = {"teacher": time_step(teacher.calculator(), atoms, repeats=repeats),
            "student": time_step(StudentCalculator(package, on_extrapolation="ignore"), atoms, repeats=repeats)}
    out = {"n_atoms": len(atoms), "formula": atoms.get_chemical_formula(), "threads": torch.get_num_threads(),
           "teacher": card.get("teacher", {}).get("name"), "teacher_ms_per_step": round(rows["teacher"]["ms_per_step"], 2),
           "student_ms_per_step": round(rows["student"]["ms_per_step"], 2),
           "speedup": round(rows["teacher"]["ms_per_step"] / rows["student"]["ms_per_step"], 1),
           "statistic": f"median of {repeats} steps", "torch": torch.__version__}
    if write:
        card["speed"] = out
        write_card(package, card)
    return out
