"""Give a finished data folder another teacher's labels.

The MD and relaxations of :func:`~orbdistill.data.generate.generate` cost many teacher
calls per kept frame (equilibration, the steps between frames, relaxation steps).
Relabelling a folder costs one call per kept frame: the configurations stay those of the
first teacher (recorded as the new folder's ``sampler``), the energies, forces and stress
are the new teacher's. Two students distilled from the two folders have seen the same
structures and are split into the same trajectories, so their errors, and the two
teachers' disagreement, are measured on the same held-out frames.

The result is the folder that ``generate(cfg, new_teacher, out, sampler=old_teacher)``
would resume from: the same configuration, the new teacher, the old one as sampler. A
distillation config with ``"sampler": {"name": OLD}`` and ``"teacher": {"name": NEW}``
trains on it without labelling again.

Example:
    >>> from orbdistill.data.relabel import relabel                        # doctest: +SKIP
    >>> from orbdistill.teachers import load_teacher                       # doctest: +SKIP
    >>> relabel("runs/nial-sevennet-v2/data", "runs/nial-sevennet-l3i5-v2/data",
    ...         load_teacher("sevennet-l3i5"))                              # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Optional

from tqdm.auto import tqdm

from .generate import (GenerateConfig, _atomic_write_json, _write_chunk, check_teacher_covers, relabel_frames)
from .seeds import load_seeds

log = logging.getLogger(__name__)


def relabel(src_dir, out_dir, teacher, progress: bool = True, max_tasks: Optional[int] = None) -> dict:
    """Label every frame of the data folder ``src_dir`` with ``teacher`` into ``out_dir``
    (resumable task by task; chunk and manifest are written atomically). Returns the new
    manifest.

    Frames the new teacher's labels reject (forces above ``reject_fmax``) are dropped and
    counted in the task's ``rejected``.
    """
    from ase.io import read

    src, out = Path(src_dir), Path(out_dir)
    src_manifest_path = src / "manifest.json"
    if not src_manifest_path.exists():
        raise FileNotFoundError(f"{src} has no manifest.json: not a generated data folder.")
    if src.resolve() == out.resolve():
        raise ValueError(f"relabel writes a new folder; {out} is the source itself.")
    source = json.loads(src_manifest_path.read_text())
    if not source.get("complete"):
        raise ValueError(f"{src} is not complete (its generation was interrupted); finish it first: the relabelled "
                         "folder must hold every task of its configuration.")
    if source["teacher"].get("name") == teacher.name:
        raise ValueError(f"{src} is already labelled by {teacher.name!r}.")
    cfg = GenerateConfig.from_dict(source["config"])
    check_teacher_covers(teacher, load_seeds(cfg.seeds))
    sampler = source.get("sampler") or source["teacher"]
    (out / "chunks").mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("teacher", {}).get("name") != teacher.name or manifest.get("config") != source["config"] or \
                (manifest.get("sampler") or {}).get("name") != sampler.get("name"):
            raise ValueError(f"{out} holds other data (teacher, sampler or configuration differ); use a new folder.")
    else:
        manifest = {"config": source["config"], "teacher": {k: v for k, v in teacher.describe().items()
                                                            if k != "species"},
                    "sampler": sampler, "relabelled_from": str(src), "tasks": {},
                    "created": time.strftime("%Y-%m-%d %H:%M:%S")}
        for key in ("extensions",):
            if key in source:
                manifest[key] = source[key]
    for stale in (out / "chunks").glob("*.tmp"):
        stale.unlink()
    todo = [tid for tid in sorted(source["tasks"]) if tid not in manifest["tasks"]]
    if len(todo) < len(source["tasks"]):
        log.info("resuming: %d of %d tasks already relabelled", len(source["tasks"]) - len(todo), len(source["tasks"]))
    n_frames = sum(source["tasks"][t]["frames"] for t in todo)
    bar = tqdm(total=n_frames, desc=f"relabelling with {teacher.name}", unit="frame", disable=not progress)
    try:
        for k, tid in enumerate(todo):
            if max_tasks is not None and k >= max_tasks:
                break
            info = source["tasks"][tid]
            t0 = time.perf_counter()
            frames = read(src / info["file"], index=":") if info["frames"] else []
            kept, rejected = relabel_frames(frames, teacher, {"id": tid, **info}, cfg)
            path = out / "chunks" / f"{tid}.extxyz"
            _write_chunk(path, kept)
            manifest["tasks"][tid] = {**info, "file": f"chunks/{path.name}", "frames": len(kept),
                                      "rejected": info["rejected"] + rejected,
                                      "seconds": round(time.perf_counter() - t0, 2),
                                      "sampler_seconds": info.get("seconds")}
            _atomic_write_json(manifest_path, manifest)
            bar.update(len(frames))
    finally:
        bar.close()
    manifest["complete"] = all(t in manifest["tasks"] for t in source["tasks"])
    manifest["n_frames"] = sum(v["frames"] for v in manifest["tasks"].values())
    manifest["n_rejected"] = sum(v["rejected"] for v in manifest["tasks"].values())
    _atomic_write_json(manifest_path, manifest)
    return manifest
