"""Long end-to-end runs, deselected by default: ``python -m pytest -m slow``.

* the full Cu recipe (SevenNet-0 teacher, every protocol) at reduced size, trained long
  enough to learn, then checked in MD;
* the full validation protocol (not --quick) of the committed v2 package.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from orbdistill.pipeline import distill, load_config

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_full_cu_recipe_at_reduced_size_learns_sevennet(tmp_path):
    cfg = load_config(ROOT / "workflows" / "distill_cu_sevennet.json")
    g = cfg["generate"]
    g.update(sizes=[32], protocol_sizes={}, nvt_trajectories_per_temperature=1, nvt_frames=15,
             npt_frames=10, strain_frames=60, rattle_relax_frames=40, relax_trajectories=1,
             surface_frames=10, surface_rattle_relax_starts=2, defect_frames=8, defect_relax_steps=3,
             cluster_sizes=[13, 38], cluster_frames=8, cluster_relax_steps=3, hot_frames=10, volume_frames=4)
    cfg["train"].update(epochs=25, patience=25)
    cfg["work_dir"], cfg["package_dir"] = str(tmp_path / "run"), str(tmp_path / "pkg")
    summary = distill(cfg, progress=False, log_fn=None)
    m = summary["metrics"]
    assert set(summary["data"]["protocols"]) >= {"nvt", "strain", "rattle_relax", "surface", "cluster"}
    # the bounds were set for bulk data; the coverage groups are reported beside them
    bulk = m["by_group"]["bulk"]
    assert bulk["energy_mae_mev_atom"] < 5 and bulk["force_mae_mev_a"] < 60 and bulk["stress_mae_gpa"] < 0.5, m["by_group"]
    for group in ("surface", "defect", "cluster"):
        if group in m["by_group"]:  # whole trajectories: a group may have none in the test split
            assert m["by_group"][group]["force_mae_mev_a"] < 3 * max(bulk["force_mae_mev_a"], 20.0), m["by_group"]
    from ase import units
    from ase.build import bulk
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    from orbdistill import StudentCalculator

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    atoms.calc = StudentCalculator(tmp_path / "pkg")
    e0 = atoms.get_total_energy()
    VelocityVerlet(atoms, timestep=1 * units.fs).run(500)
    assert abs(atoms.get_total_energy() - e0) / len(atoms) < 2e-3  # eV/atom over 0.5 ps


def test_full_validation_protocol_of_the_committed_v2_package(tmp_path):
    from orbdistill.validation import ValidateConfig, validate

    cfg = ValidateConfig(progress=False, throughput_sizes=(32, 256, 2048), backends=("torch", "torchscript"))
    summary = validate("emt", ["cu-sevennet-v2"], out=tmp_path, config=cfg, threads=2)
    report = json.loads((tmp_path / "report.json").read_text())
    nve = report["nve"]["cu-sevennet-v2"]
    assert nve["failed"] is None and nve["steps_completed"] == 10_000
    assert abs(nve["drift_mev_atom_ps"]) < 0.05
    assert {r["n_atoms"] for r in report["throughput"]["rows"] if r["model"] == "cu-sevennet-v2"} == {32, 256, 2048}
    assert "elastic" in summary and "md" in summary and (tmp_path / "report.md").exists()
