"""The distillation config: read (JSON, YAML, TOML) and checked whole before any work starts.

:func:`load_distill_config` validates every section (see :mod:`orbdistill.config`),
resolves every relative path against the folder of the config file (seeds, ``work_dir``,
``package_dir``, ``teacher.weights``), passes a top-level ``device`` on to training, and
builds the student once on the seeds' elements, so a bad student setting fails in seconds,
not after the teacher has labelled for half an hour.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from pathlib import Path
from typing import Optional, Union

from orbdistill.config import ConfigError, _format_pydantic, build_config

TOP_KEYS = ("name", "teacher", "student", "generate", "train", "split", "split_method", "work_dir", "package_dir",
            "device", "threads", "executor", "onpolicy", "sampler")
TEACHER_KEYS = ("name", "weights", "precision", "modal")
STUDENT_KEYS = ("kind", "species", "overrides", "init_from_teacher", "init_from")


def read_config_file(path) -> dict:
    """A config file as a dict: ``.json``, ``.yaml``/``.yml`` or ``.toml``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Config file {path} does not exist.")
    text = path.read_text()
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        elif suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except Exception as exc:
        kind = {".yaml": "YAML", ".yml": "YAML", ".toml": "TOML"}.get(suffix, "JSON")
        raise ConfigError(f"Config {path} is not valid {kind}: {' '.join(str(exc).split())}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"Config {path} must hold a mapping of sections, got {type(data).__name__}.")
    return data


def _resolve(value, base: Path):
    if value is None:
        return None
    text = os.fspath(value)
    if text.startswith("bulk:") or "://" in text or text == "random":
        return text
    p = Path(text).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def _check_choice(errors, key, value, allowed):
    if value not in allowed:
        errors.append(f"{key} = {value!r}: must be one of {', '.join(map(str, allowed))}")


def load_distill_config(source: Union[str, os.PathLike, dict], base_dir: Optional[Path] = None,
                        check_student: bool = True) -> dict:
    """Read and validate a whole distillation config; return it as a plain dict with every
    default filled in and every path absolute. Raises :class:`ConfigError` (all problems,
    one per line) before any work starts.

    A dict given directly resolves relative paths against ``base_dir`` (default: the
    current directory). A dict that carries ``_base_dir`` (what this function returns) is
    accepted again unchanged in meaning.
    """
    from orbdistill.data.executors import ExecutorConfig
    from orbdistill.data.generate import GenerateConfig
    from orbdistill.training.trainer import TrainConfig

    if isinstance(source, dict):
        raw = copy.deepcopy(source)
        origin = "config"
        base = Path(raw.pop("_base_dir", None) or base_dir or Path.cwd())
    else:
        raw = read_config_file(source)
        origin = f"config {source}"
        base = Path(source).resolve().parent
    errors = []
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        errors.append(f"unknown top-level keys {unknown}; valid: {', '.join(TOP_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip() or any(c in name for c in "/\\"):
        errors.append(f"name = {name!r}: required, a non-empty string without slashes (it names the package)")
    teacher = raw.get("teacher")
    if not isinstance(teacher, dict) or not isinstance(teacher.get("name"), str):
        errors.append(f"teacher = {teacher!r}: required, a mapping with a 'name' (see `orbdistill teachers`)")
        teacher = {}
    else:
        bad = sorted(set(teacher) - set(TEACHER_KEYS))
        if bad:
            errors.append(f"teacher: unknown keys {bad}; valid: {', '.join(TEACHER_KEYS)}")
    sampler = raw.get("sampler")
    if sampler is not None:
        if not isinstance(sampler, dict) or not isinstance(sampler.get("name"), str):
            errors.append(f"sampler = {sampler!r}: a mapping with a 'name' (the potential that runs the MD; the "
                          "teacher labels its frames), or leave it out")
            sampler = None
        else:
            bad = sorted(set(sampler) - set(TEACHER_KEYS))
            if bad:
                errors.append(f"sampler: unknown keys {bad}; valid: {', '.join(TEACHER_KEYS)}")
    student = raw.get("student", {"kind": "v2"})
    if not isinstance(student, dict):
        errors.append(f"student = {student!r}: must be a mapping")
        student = {}
    bad = sorted(set(student) - set(STUDENT_KEYS))
    if bad:
        errors.append(f"student: unknown keys {bad}; valid: {', '.join(STUDENT_KEYS)}")
    from orbdistill.models import STUDENT_KINDS

    student.setdefault("kind", "v2")
    _check_choice(errors, "student.kind", student["kind"], sorted(STUDENT_KINDS))
    if not isinstance(student.get("overrides", {}), dict):
        errors.append(f"student.overrides = {student.get('overrides')!r}: must be a mapping of model config fields")
    if "init_from_teacher" in student and not isinstance(student["init_from_teacher"], bool):
        errors.append(f"student.init_from_teacher = {student['init_from_teacher']!r}: must be true or false")
    init_from = student.get("init_from")
    if init_from is not None and (not isinstance(init_from, str) or not init_from.strip()):
        errors.append(f"student.init_from = {init_from!r}: a package (name or folder) or a student checkpoint file")
        init_from = None
    if init_from and student.get("init_from_teacher"):
        errors.append("student.init_from and student.init_from_teacher both set: start from one set of weights")
    species = student.get("species")
    if species is not None and (not isinstance(species, list) or not species):
        errors.append(f"student.species = {species!r}: must be a non-empty list of elements (e.g. [\"Cu\"]) or null")

    sections = {}
    from orbdistill.onpolicy_config import OnPolicyConfig

    for key, cls in (("generate", GenerateConfig), ("train", TrainConfig), ("executor", ExecutorConfig),
                     ("onpolicy", OnPolicyConfig)):
        values = raw.get(key, {})
        if key == "train" and isinstance(values, dict) and "device" not in values and raw.get("device"):
            values = dict(values, device=raw["device"])  # the top-level device reaches training
        try:
            # from_dict: a section may read keys of older configs (onpolicy's surface_miller)
            sections[key] = cls.from_dict(values) if isinstance(values, dict) else build_config(cls, values, key)
        except ConfigError as exc:
            errors.extend(str(exc).splitlines())
    split = raw.get("split", [0.8, 0.1, 0.1])
    if not (isinstance(split, (list, tuple)) and len(split) == 3 and all(isinstance(x, (int, float)) for x in split)
            and min(split) >= 0 and split[0] > 0 and split[1] > 0 and abs(sum(split) - 1) < 1e-6):
        errors.append(f"split = {split!r}: three fractions (train, validation, test) >= 0 summing to 1, "
                      "with train and validation > 0")
    from orbdistill.data.dataset import SPLIT_METHODS

    split_method = raw.get("split_method", "stratified")
    if split_method not in SPLIT_METHODS:
        errors.append(f"split_method = {split_method!r}: one of {', '.join(SPLIT_METHODS)}")
    threads = raw.get("threads")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        errors.append(f"threads = {threads!r}: must be a whole number >= 1")
    device = raw.get("device")
    if device is not None and (not isinstance(device, str) or not (device in ("cpu", "auto", "mps") or device.startswith("cuda"))):
        errors.append(f"device = {device!r}: must be 'cpu', 'cuda', 'cuda:N' or 'auto'")
    if errors:
        raise ConfigError("\n".join(f"{origin}: {e}" for e in errors))

    gen = sections["generate"]
    gen.seeds = [_resolve(s, base) for s in gen.seeds]
    out = {
        "name": name,
        "teacher": {"name": teacher["name"], "weights": _resolve(teacher.get("weights"), base),
                    **{k: teacher[k] for k in ("precision", "modal") if teacher.get(k)}},
        "sampler": None if sampler is None else {
            "name": sampler["name"], "weights": _resolve(sampler.get("weights"), base),
            **{k: sampler[k] for k in ("precision", "modal") if sampler.get(k)}},
        "student": {"kind": student["kind"], "species": species, "overrides": dict(student.get("overrides", {})),
                    "init_from_teacher": bool(student.get("init_from_teacher", False)),
                    "init_from": _resolve_weights(init_from, base)},
        "generate": dataclasses.asdict(gen),
        "train": dataclasses.asdict(sections["train"]),
        "executor": dataclasses.asdict(sections["executor"]),
        "onpolicy": dataclasses.asdict(sections["onpolicy"]),
        "split": [float(x) for x in split],
        "split_method": split_method,
        "work_dir": _resolve(raw.get("work_dir") or f"runs/{name}", base),
        "package_dir": _resolve(raw.get("package_dir") or f"calculators/{name}", base),
        "device": device,
        "threads": threads,
        "_base_dir": str(base),
    }
    _check_teacher(out["teacher"], origin, "teacher")
    if out["sampler"] is not None:
        _check_teacher(out["sampler"], origin, "sampler")
    if check_student:
        check_student_config(out, origin)
    return out


def _resolve_weights(value: Optional[str], base: Path) -> Optional[str]:
    """A path relative to the config's folder when it names something there, else the value
    as given (a package name, found on the package search path)."""
    if not value:
        return None
    resolved = _resolve(value, base)
    return resolved if os.path.exists(resolved) else value


def _check_teacher(t: dict, origin: str, what: str = "teacher") -> None:
    from orbdistill.teachers import ORB_NAMES, available_teachers

    key = t["name"].strip().lower()
    if key not in available_teachers():
        others = [n for n in available_teachers() if n not in ORB_NAMES]
        raise ConfigError(f"{origin}: {what}.name = {t['name']!r}: unknown; valid: {', '.join(others)}, orb-v2, "
                          "orb-v3-{conservative,direct}-{20,inf}-{omat,mpa} (`orbdistill teachers` lists them)")
    w = t.get("weights")
    if w is not None and key not in ORB_NAMES:
        raise ConfigError(f"{origin}: {what}.weights = {w!r}: only Orb teachers take weights")
    if w not in (None, "random") and "://" not in w and not os.path.exists(w):
        raise ConfigError(f"{origin}: {what}.weights = {w!r}: no such checkpoint file")


def check_student_config(cfg: dict, origin: str = "config") -> None:
    """Build the student once on the species it will have, so that a bad kind, field,
    type or width fails now rather than after the teacher has labelled the data."""
    from orbdistill.data.seeds import load_seeds

    s = cfg["student"]
    species = s.get("species")
    if not species:
        try:
            species = sorted({int(z) for a in load_seeds(cfg["generate"]["seeds"]) for z in a.numbers})
        except Exception as exc:
            raise ConfigError(f"{origin}: generate.seeds: {exc}") from None
    if s.get("init_from_teacher"):
        from orbdistill.teachers import ORB_NAMES

        if s["kind"] != "v1" or cfg["teacher"]["name"].strip().lower() not in ORB_NAMES:
            raise ConfigError(f"{origin}: student.init_from_teacher = true needs student.kind 'v1' and an Orb teacher "
                              f"(got kind {s['kind']!r}, teacher {cfg['teacher']['name']!r})")
        return  # built from the teacher's weights later; its widths come from the overrides
    if s.get("init_from"):
        model = check_init_from(s, species, origin)
    else:
        model = _check_new_student(s, species, origin)
    gen = cfg["generate"]
    if set(gen.get("coverage", ())) & {"surface", "cluster"} and gen["vacuum"] < model.cutoff:
        raise ConfigError(f"{origin}: generate.vacuum = {gen['vacuum']} Å is shorter than the student's cutoff "
                          f"({model.cutoff} Å): the two sides of a slab or cluster would see each other")


def check_init_from(s: dict, species, origin: str = "config"):
    """The student that ``student.init_from`` names, loaded, after checking that it can be
    trained on this config's data: the same kind, every element of the seeds among its
    species, and no override that contradicts the loaded architecture."""
    from orbdistill.models import load_student

    try:
        model = load_student(s["init_from"])
    except Exception as exc:
        raise ConfigError(f"{origin}: student.init_from = {s['init_from']!r}: {exc}") from None
    kind = model.config.kind
    if s["kind"] != kind:
        raise ConfigError(f"{origin}: student.init_from = {s['init_from']!r} is a {kind} student, but student.kind "
                          f"is {s['kind']!r}")
    from ase.data import atomic_numbers, chemical_symbols

    have = {int(z) for z in model.config.species}
    want = {int(atomic_numbers[z]) if isinstance(z, str) else int(z) for z in species}
    if want - have:
        raise ConfigError(f"{origin}: student.init_from = {s['init_from']!r} covers "
                          f"{', '.join(chemical_symbols[z] for z in sorted(have))}; the data also has "
                          f"{', '.join(chemical_symbols[z] for z in sorted(want - have))}")
    stored = model.config.to_dict()
    clash = {k: (v, stored.get(k)) for k, v in s.get("overrides", {}).items() if k in stored and stored[k] != v}
    unknown = sorted(set(s.get("overrides", {})) - set(stored))
    if unknown or clash:
        what = [f"unknown fields {unknown}"] if unknown else []
        what += [f"{k} = {v!r} (the weights have {w!r})" for k, (v, w) in clash.items()]
        raise ConfigError(f"{origin}: student.overrides contradict the weights of student.init_from "
                          f"{s['init_from']!r}: {'; '.join(what)}. Leave the overrides out (the architecture comes "
                          "with the weights).")
    return model


def _check_new_student(s: dict, species, origin: str):
    from pydantic import TypeAdapter, ValidationError

    from orbdistill.models import STUDENT_KINDS, build_student

    cls = STUDENT_KINDS[s["kind"]].config_cls
    fields = cls().to_dict()
    unknown = sorted(set(s.get("overrides", {})) - set(fields))
    if unknown:
        raise ConfigError(f"{origin}: student.overrides: unknown {s['kind']} fields {unknown}; valid: {', '.join(sorted(fields))}")
    try:  # the types of the model config's fields
        TypeAdapter(cls).validate_python(dict(fields, **s.get("overrides", {})))
    except ValidationError as exc:
        raise ConfigError("\n".join(f"{origin}: {line}" for line in _format_pydantic(exc, "student.overrides").splitlines())) from None
    try:
        model = build_student(s["kind"], species, **s.get("overrides", {}))
    except Exception as exc:
        raise ConfigError(f"{origin}: student ({s['kind']}, overrides {s.get('overrides', {})}): "
                          f"{type(exc).__name__}: {exc}") from None
    return model


def teacher_from_config(cfg: dict):
    """The teacher a loaded distillation config names (weights, precision and modal included)."""
    from orbdistill.teachers import load_teacher

    t = cfg["teacher"]
    kwargs = {k: t[k] for k in ("precision", "modal") if t.get(k)}
    return load_teacher(t["name"], device=cfg.get("device"), weights=t.get("weights"), **kwargs)


def sampler_from_config(cfg: dict):
    """The potential that runs the config's MD and relaxations when it is not the teacher
    (``sampler`` in the config), or None."""
    from orbdistill.teachers import load_teacher

    s = cfg.get("sampler")
    if not s:
        return None
    kwargs = {k: s[k] for k in ("precision", "modal") if s.get(k)}
    return load_teacher(s["name"], device=cfg.get("device"), weights=s.get("weights"), **kwargs)

