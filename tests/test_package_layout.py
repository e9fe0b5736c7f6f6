"""The house: no import circles, a light core, and the public names one import away."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "orbdistill"


def _module_graph():
    mods = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = p
    edges = {m: set() for m in mods}
    for m, p in mods.items():
        package = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(p.read_text())):  # function-level imports count too
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    b = ".".join(base + ([node.module] if node.module else []))
                else:
                    b = node.module or ""
                subs = [f"{b}.{a.name}" for a in node.names if f"{b}.{a.name}" in mods]
                targets = subs + ([b] if len(subs) < len(node.names) else [])
            for t in targets:
                while t and t not in mods:
                    t = t.rsplit(".", 1)[0] if "." in t else ""
                if t.startswith("orbdistill") and t != m:
                    edges[m].add(t)
    return edges


def test_no_import_circles_in_the_package():
    edges = _module_graph()
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    assert not cycles, f"import circles: {cycles}"
    assert "orbdistill" not in {t for m, ts in edges.items() for t in ts if m != "orbdistill"}, \
        "modules must not import the package root (it imports them lazily)"


OPTIONAL = ["e3nn", "sevenn", "orb_models", "onnx", "onnxruntime", "onnxscript", "matplotlib", "pydantic", "yaml",
            "tqdm", "pymatgen", "matscipy", "torch_geometric", "dask", "chgnet", "phonopy"]  # scipy comes with ase


def test_a_packaged_student_runs_with_only_the_core_dependencies():
    """`pip install orbdistill` (torch, numpy, ase, vesin) runs a packaged student by name:
    the optional packages are made unimportable in a fresh process."""
    code = f"""
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {OPTIONAL!r}:
            raise ImportError('blocked optional dependency ' + name)
sys.meta_path.insert(0, Block())
from ase.build import bulk
from orbdistill import StudentCalculator
atoms = bulk('Cu', 'fcc', a=3.61, cubic=True).repeat(2)
atoms.rattle(0.05, seed=0)
atoms.calc = StudentCalculator('cu-sevennet-v2')
print(atoms.get_potential_energy(), atoms.get_forces().shape, atoms.get_stress().shape)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd="/")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "(32, 3) (6,)" in res.stdout


def test_public_names_are_one_import_away():
    import orbdistill

    for name in ("StudentCalculator", "load_student", "load_teacher", "distill", "validate", "build_student"):
        assert callable(getattr(orbdistill, name)), name
    with pytest.raises(AttributeError):
        orbdistill.not_a_name  # noqa: B018


def test_packages_are_found_by_name_and_by_a_user_folder(tmp_path, monkeypatch):
    import shutil

    from orbdistill import StudentCalculator
    from orbdistill.packages import available_packages, find_package

    assert "cu-sevennet-v2" in available_packages()
    assert (find_package("cu-sevennet-v2") / "model.pt").exists()
    shutil.copytree(PKG.parent / "calculators" / "cu-sevennet-v2", tmp_path / "my-cu",
                    ignore=shutil.ignore_patterns("*.onnx", "*.torchscript", "*.png"))
    monkeypatch.setenv("ORBDISTILL_CALCULATORS", str(tmp_path))
    calc = StudentCalculator("my-cu")
    assert calc.card["name"] == "cu-sevennet-v2" and calc.species == {29}
    with pytest.raises(FileNotFoundError, match="Known packages: .*my-cu"):
        StudentCalculator("no-such-student")


def _committed_packages():
    root = Path(__file__).resolve().parent.parent / "calculators"
    return sorted(p.name for p in root.iterdir() if (p / "card.json").exists())


@pytest.mark.parametrize("name", _committed_packages())
def test_every_committed_package_loads_by_name_and_carries_its_card(name):
    """What a user relies on for each package: found by name, runs on its own recipe's
    seed, and its card states teacher, held-out errors, domain, out-of-domain threshold
    and speed; its TorchScript export gives the eager student's forces."""
    import json

    import numpy as np
    from ase.io import read

    from orbdistill.calculator import StudentCalculator
    from orbdistill.packages import find_package
    from orbdistill.structures import supercell

    pkg = find_package(name)
    card = json.loads((pkg / "card.json").read_text())
    for key in ("teacher", "metrics", "species", "cutoff", "student"):
        assert key in card, key
    assert card["metrics"]["force_mae_mev_a"] > 0
    assert card["speed"]["speedup"] > 1 and card["speed"]["teacher"] == card["teacher"]["name"]
    seed = Path(json.loads((pkg / "config.json").read_text())["generate"]["seeds"][0]).name
    atoms = supercell(read(Path(__file__).resolve().parent.parent / "data" / "structures" / seed), 16)
    atoms.rattle(0.03, seed=0)
    calc = StudentCalculator(name, on_extrapolation="ignore")
    atoms.calc = calc
    forces = atoms.get_forces()
    assert np.isfinite(atoms.get_potential_energy()) and np.abs(forces.sum(axis=0)).max() < 1e-3
    if card.get("domain"):  # coverage-era packages: signal, threshold and speed on the card
        assert card["domain"]["ood"]["threshold"] > 1.0 and "uncertainty" in calc.results
    if (pkg / "model_float32.torchscript").exists():
        ts = StudentCalculator(name, backend="torchscript", on_extrapolation="ignore")
        np.testing.assert_allclose(ts.get_forces(atoms), forces, atol=2e-4)
