"""Packaging a trained student into a folder users load with one call.

A package folder holds ``model.pt`` (config + weights), ``card.json`` (the model card:
teacher, species, cutoff, held-out metrics, data and training summary), ``README.md`` (the
card in prose, with a usage example), ``config.json`` (the distillation config used) and
the plots of the run.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Optional

from ase.data import chemical_symbols

from orbdistill.models.base import StudentModel
from orbdistill.packages import MODEL_FILE, export_files, exported_file, read_card, weights_sha256, write_card
from orbdistill.utils import atomic_torch_save, atomic_write_text, resolve_dtype

log = logging.getLogger(__name__)


def write_package(model: StudentModel, out_dir, card: dict, config: Optional[dict] = None, files=(),
                  domain=None, domain_info: Optional[dict] = None) -> Path:
    """Write ``model`` and its card into ``out_dir`` (created; existing files replaced).

    Exports and a domain model made from earlier weights in the same folder are removed:
    a package never holds files that disagree with its ``model.pt``. ``domain`` (a fitted
    :class:`~orbdistill.models.domain.DomainModel`) is written as ``domain.pt`` and
    ``domain_info`` (its calibration) goes into the card under ``domain.ood``.
    """
    from orbdistill._version import __version__

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / MODEL_FILE)
    new_hash = weights_sha256(out)
    for f in export_files(out):
        log.warning("removing %s: it was exported from the previous weights; run `orbdistill export %s`", f, out)
        f.unlink()
    from orbdistill.models.domain import DOMAIN_FILE

    if (out / DOMAIN_FILE).exists():
        (out / DOMAIN_FILE).unlink()  # fitted to the previous weights
    species = [int(z) for z in model.species.tolist()]
    full = {
        "name": out.name,
        "species": [chemical_symbols[z] for z in species],
        "atomic_numbers": species,
        "cutoff": model.cutoff,
        "max_neighbors": model.max_neighbors,
        "student": {"kind": model.config.kind, "params": model.num_parameters(), "config": model.config.to_dict()},
        "orbdistill_version": __version__,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        **card,
    }
    full["weights_sha256"] = new_hash
    full.pop("exports", None)
    if domain is not None:
        _domain_files(out, full, domain, domain_info)
    write_card(out, full)
    if config is not None:
        atomic_write_text(out / "config.json", json.dumps(config, indent=1, default=str))
    for f in files:
        f = Path(f)
        if f.exists():
            shutil.copyfile(f, out / f.name)
    _write_readme(out, full)
    return out


#: the level-2 headings :func:`card_markdown` writes (when the card has their content)
CARD_SECTIONS = {"Held-out errors by kind of structure", "Domain covered by the training data", "Use", "Plots"}


def _sections(text: str) -> list:
    """``text`` cut at its level-2 headings: ``[(heading, block), ...]``, the block including
    its heading line; what comes before the first heading has the heading ``None``."""
    out, heading, block = [], None, []
    for line in text.splitlines(keepends=True):
        if line.startswith("## "):
            out.append((heading, "".join(block)))
            heading, block = line[3:].strip(), []
        block.append(line)
    out.append((heading, "".join(block)))
    return out


def readme_text(card: dict, previous: Optional[str] = None) -> str:
    """The package README for ``card``: :func:`card_markdown`, followed by every level-2 section
    of ``previous`` (the README being replaced) that the card does not write itself, in their
    order. Notes a person added to a package (known limits, measurements made after packaging)
    so survive a recalibration or a retraining; a section the card writes is always rewritten."""
    text = card_markdown(card)
    if not previous:
        return text
    # every heading the card can write, also those this card leaves out (a package retrained
    # without coverage data has no coverage table: the old one must not survive as a "note")
    generated = {h for h, _ in _sections(text) if h is not None} | CARD_SECTIONS
    kept = [block.rstrip("\n") + "\n" for h, block in _sections(previous) if h is not None and h not in generated]
    return text if not kept else text.rstrip("\n") + "\n\n" + "\n".join(kept)


def _write_readme(out: Path, card: dict) -> None:
    path = out / "README.md"
    previous = path.read_text(encoding="utf-8") if path.exists() else None
    atomic_write_text(path, readme_text(card, previous))


def _domain_files(out: Path, card: dict, domain, info: Optional[dict]) -> None:
    from orbdistill.models.domain import DOMAIN_FILE

    atomic_torch_save(domain.state(), out / DOMAIN_FILE)
    method = "per-element Mahalanobis distance of the readout features"
    if (info or {}).get("force_error"):
        method += ", and a force-error estimate from it and the predicted force (calibrated on held-out errors)"
    card.setdefault("domain", {})["ood"] = {"method": method,
                                            "file": DOMAIN_FILE, "weights_sha256": card.get("weights_sha256"),
                                            **(info or {})}


def write_domain(package, domain, info: Optional[dict] = None) -> None:
    """Add (or replace) a package's out-of-domain model and its calibration; the weights and
    exports are not touched."""
    out = Path(package)
    card = read_card(out)
    card["weights_sha256"] = weights_sha256(out)
    _domain_files(out, card, domain, info)
    write_card(out, card)
    _write_readme(out, card)


def _coverage_text(c: dict) -> str:
    """One line of what a protocol group covers (temperatures, pressures, facets, ...)."""
    parts = []

    def span(values, unit):
        return f"{min(values):g} to {max(values):g} {unit}" if len(values) > 1 else f"{values[0]:g} {unit}"

    if c.get("temperatures_k"):
        parts.append(span(c["temperatures_k"], "K"))
    if any(c.get("pressures_gpa", [])):
        parts.append(span(c["pressures_gpa"], "GPa"))
    if c.get("strain_max"):
        parts.append(f"strains up to {100 * c['strain_max']:g} %")
    if c.get("facets"):
        parts.append("facets " + ", ".join(c["facets"]))
    if c.get("defects"):
        parts.append(", ".join(c["defects"]))
    if c.get("cluster_sizes"):
        parts.append("clusters of " + ", ".join(str(n) for n in c["cluster_sizes"]) + " atoms")
    if c.get("volume_scales"):
        parts.append("cells scaled by " + ", ".join(f"{x:g}" for x in c["volume_scales"]))
    if c.get("pairs"):
        modes = {"dimer": "dimers", "pushed_pair": "pushed pairs", "rattle": "hard rattles"}
        parts.append(", ".join(c["pairs"]) + " pairs from " + f"{c.get('min_distance_factor', 0.6):g}"
                     + " of their distance in the crystal ("
                     + ", ".join(modes.get(m, m) for m in c.get("modes", ["dimer", "pushed_pair"])) + ")")
    if c.get("sizes"):
        parts.append("cells of ~" + ", ".join(str(n) for n in c["sizes"]) + " atoms")
    return "; ".join(parts) or "-"


def _wall_time_text(card: dict) -> str:
    """What the distillation cost: labelling as it ran (also when a later run reused the data),
    the sampler's MD when another model sampled the configurations, and training."""
    t = card.get("timing") or {}
    parts = []
    label_s = t.get("data_tasks_s", t.get("generate_s"))
    if label_s is not None:
        parts.append(f"labelling {label_s:,.0f} s")
    if t.get("sampler_tasks_s") is not None:
        parts.append(f"sampler MD {t['sampler_tasks_s']:,.0f} s")
    train_s = t.get("train_epochs_s", t.get("train_s"))  # the epochs' own time: also right after a repackaging
    if train_s is not None:
        epochs = (card.get("training") or {}).get("epochs_run")
        parts.append(f"training {train_s:,.0f} s" + (f" ({epochs} epochs)" if epochs else ""))
    return ", ".join(parts)


def card_markdown(card: dict) -> str:
    m = card.get("metrics", {})
    t = card.get("teacher", {})
    lines = [
        f"# {card['name']}",
        "",
        f"A `{card['student']['kind']}` student ({card['student']['params']:,} parameters) distilled from "
        f"`{t.get('name', '?')}` by orbdistill {card['orbdistill_version']}.",
        "",
        "| | |",
        "|---|---|",
        f"| species | {' '.join(card['species'])} |",
        f"| cutoff | {card['cutoff']} Å (neighbour cap: {card['max_neighbors']}) |",
        f"| teacher | {t.get('name')} ({t.get('weights', '')}) |",
    ]
    if card.get("sampler"):
        lines.append(f"| configurations | sampled by MD and relaxations of `{card['sampler'].get('name')}`; every "
                     f"frame labelled by the teacher |")
    start = (card.get("training") or {}).get("init_from")
    if start:
        lines.append(f"| started from | `{start['source']}` (weights sha256 {start['weights_sha256'][:12]}...), "
                     "fine-tuned on the data below |")
    if m:
        lines += [
            f"| held-out energy MAE | {m.get('energy_mae_mev_atom', float('nan')):.2f} meV/atom |",
            f"| held-out force MAE | {m.get('force_mae_mev_a', float('nan')):.1f} meV/Å |",
            f"| held-out stress MAE | {m.get('stress_mae_gpa', float('nan')):.3f} GPa |",
            f"| held-out frames | {m.get('n_frames', '?')} (whole trajectories never seen in training) |",
        ]
    ood = card.get("domain", {}).get("ood")
    if ood:
        lines.append(f"| out-of-domain threshold | {ood['threshold']:.2f} (largest per-atom `uncertainty`; "
                     f"{100 * ood.get('held_out_flagged', 0):.1f} % of held-out frames above it) |")
        fe = ood.get("force_error")
        if fe:
            lines.append(f"| force-error bar | {1e3 * fe['threshold_ev_a']:.1f} meV/Å (estimated force MAE of a structure, "
                         f"`mean_force_error`; rank correlation {fe['spearman']:.2f} with the measured held-out errors) |")
    d = card.get("data")
    if d:
        lines.append(f"| training data | {d.get('n_frames')} frames ({d.get('n_train')} train, {d.get('n_val')} validation, "
                     f"{d.get('n_test')} test); protocols {', '.join(d.get('protocols', []))} |")
    wall = _wall_time_text(card)
    if wall:
        lines.append(f"| wall time | {wall} |")
    if card.get("timing_note"):
        lines.append(f"| how the time was spent | {card['timing_note']} |")
    sp = card.get("speed")
    if sp and sp.get("speedup"):
        lines.append(f"| speed-up over the teacher | {sp['speedup']:.0f}x ({sp.get('formula', '?')}, "
                     f"{sp['student_ms_per_step']:,.1f} ms against {sp['teacher_ms_per_step']:,.0f} ms per MD step, "
                     f"{sp.get('threads', '?')} threads) |")
    by_group = m.get("by_group") or {}
    if by_group:
        lines += ["", "## Held-out errors by kind of structure", "",
                  "| structures | frames | energy MAE (meV/atom) | force MAE (meV/Å) | stress MAE (GPa) |",
                  "|---|---|---|---|---|"]
        for g, gm in by_group.items():
            stress = f"{gm['stress_mae_gpa']:.3f}" if "stress_mae_gpa" in gm else "-"
            lines.append(f"| {g} | {gm.get('n_frames', '?')} | {gm['energy_mae_mev_atom']:.2f} | "
                         f"{gm['force_mae_mev_a']:.1f} | {stress} |")
    coverage = card.get("coverage")
    if coverage:
        lines += ["", "## Domain covered by the training data", "",
                  "| structures | frames | conditions |", "|---|---|---|"]
        for g, c in coverage.items():
            lines.append(f"| {g} | {c.get('frames', 0)} | {_coverage_text(c)} |")
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from orbdistill import StudentCalculator",
        f'calc = StudentCalculator("{card["name"]}")  # or the path of this folder',
        "atoms.calc = calc  # energy, forces, stress, per-atom energies",
        "```",
        "",
        "The student is conservative (forces and stress are derivatives of its energy). It is only",
        "valid for the species above and for configurations like those it was trained on: check it",
        "against the teacher on your system before production runs.",
    ]
    if ood:
        lines += [
            "",
            "The calculator returns a per-atom `uncertainty` (training atoms score about 1) and warns when a",
            f"structure's largest value exceeds {ood['threshold']:.2f}: the student is then outside the data it",
            "learned from, and its errors can be far above those in the table (`on_extrapolation=\"raise\"` makes",
            "that an error). See docs/domain.md in the orbdistill repository.",
        ]
        if ood.get("force_error"):
            lines += [
                "",
                "It also estimates each atom's force error (`force_error`, eV/Å) from that value and the size of the",
                "predicted force, fitted to the held-out errors, and warns when the structure's mean",
                f"(`mean_force_error`) exceeds {1e3 * ood['force_error']['threshold_ev_a']:.0f} meV/Å: inside the data too,",
                "hot, molten, compressed or very small structures can be fitted worse than the bulk.",
            ]
    if (card.get("plots")):
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in card["plots"]]
    return "\n".join(lines) + "\n"


def export_package(path, formats=("torchscript", "onnx"), dtypes=("float32", "float64"), progress=True,
                   fused_kernels="auto") -> dict:
    """Export a package's student to TorchScript, ONNX and/or LAMMPS files inside the package.

    Files are named ``model_<dtype>.<format>`` (``model_<dtype>.lammps.pt`` for LAMMPS'
    ``pair_style orbdistill``); each records the SHA-256 of the ``model.pt``
    it came from, and ``card.json`` lists them under ``exports``. ``fused_kernels`` applies to
    the LAMMPS files (:func:`orbdistill.lammps.export_lammps`). Returns {filename: seconds}.
    """
    import time as _time

    from orbdistill.models import load_student

    from orbdistill.lammps import export_lammps

    from .traced import export_onnx, export_torchscript

    writers = {"onnx": export_onnx, "torchscript": export_torchscript, "lammps": export_lammps}

    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path} is not a package folder: `orbdistill export` takes the folder that holds "
                         f"{MODEL_FILE} and card.json (e.g. calculators/cu-sevennet-v2).")
    card = read_card(path)
    bad = [f for f in formats if f not in ("torchscript", "onnx", "lammps")]
    if bad:
        raise ValueError(f"Unknown export format(s) {bad}; choose torchscript, onnx, lammps or all.")
    sha = weights_sha256(path)
    written = {}
    for dt_name in dtypes:
        dt = resolve_dtype(dt_name)
        for fmt in formats:
            model = load_student(path / MODEL_FILE)
            target = exported_file(path, fmt, dt_name)
            t0 = _time.perf_counter()
            extra = {"fused_kernels": fused_kernels} if fmt == "lammps" else {}
            writers[fmt](model, target, dtype=dt, weights_sha256=sha, **extra)
            written[target.name] = round(_time.perf_counter() - t0, 1)
            if progress:
                print(f"wrote {target} ({written[target.name]} s)")
    card.setdefault("exports", {}).update(written)
    card["weights_sha256"] = sha
    write_card(path, card)
    return written
