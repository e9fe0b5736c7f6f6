"""Every recipe in workflows/ runs (at small size)."""

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import ORB_V3_CONSERVATIVE_PARAMS

from orbdistill.pipeline import distill, load_config

WF = Path(__file__).resolve().parent.parent / "workflows"

TINY_GENERATE = {"sizes": [8], "protocol_sizes": {}, "nvt_temperatures_k": [600.0], "nvt_trajectories_per_temperature": 2,
                 "nvt_equilibration_steps": 2, "nvt_interval_steps": 1, "nvt_frames": 3, "npt_pressures_gpa": [], "strain_frames": 4,
                 "strain_frames_per_task": 2, "rattle_relax_frames": 0, "relax_trajectories": 0,
                 "coverage": ["surface", "cluster"], "surface_millers": [[1, 1, 1]], "surface_temperatures_k": [600.0],
                 "surface_frames": 2, "surface_rattle_relax_starts": 0, "cluster_sizes": [13],
                 "cluster_temperatures_k": [600.0], "cluster_shapes": 1, "cluster_frames": 2, "cluster_relax_steps": 1}


def shrink(cfg, tmp_path, **train):
    cfg["generate"].update(TINY_GENERATE)
    cfg["train"] = dict({"epochs": 1, "batch_size": 2, "warmup_epochs": 1}, **train)
    cfg["split"] = [0.5, 0.25, 0.25]
    cfg["work_dir"] = str(tmp_path / "run")
    cfg["package_dir"] = str(tmp_path / "pkg")
    return cfg


@pytest.mark.parametrize("recipe", ["distill_cu_sevennet.json", "quickstart_cu_sevennet.json",
                                    "distill_cu_sevennet_v1_reduced.json"])
def test_sevennet_recipe_is_valid_and_runs(tmp_path, recipe):
    cfg = load_config(WF / recipe)
    assert cfg["teacher"]["name"] == "sevennet-0" and Path(cfg["generate"]["seeds"][0]).exists()
    summary = distill(shrink(cfg, tmp_path), progress=False, log_fn=None)
    card = json.loads((tmp_path / "pkg" / "card.json").read_text())
    assert card["teacher"]["name"] == "sevennet-0" and card["student"]["kind"] == cfg["student"]["kind"]
    # NVT 2 x 3, strain 4, one (111) slab MD 2, a 13-atom cluster: start + 1 relaxation step + 2 MD
    assert summary["data"]["n_frames"] == 2 * 3 + 4 + 2 + (1 + 1 + 2)


def test_orb_recipe_is_valid_and_runs_with_random_weights(tmp_path):
    cfg = load_config(WF / "distill_cu_orb.json")
    assert cfg["student"]["init_from_teacher"] and cfg["teacher"]["name"].startswith("orb-v3")
    cfg["teacher"]["weights"] = "random"  # no download here; the recipe downloads by default
    cfg = shrink(cfg, tmp_path, device="cpu")
    distill(cfg, progress=False, log_fn=None)
    card = json.loads((tmp_path / "pkg" / "card.json").read_text())
    assert card["student"]["kind"] == "v1" and card["teacher"]["weights"] == "random"
    assert 0.3 < card["student"]["params"] / ORB_V3_CONSERVATIVE_PARAMS < 0.5


def test_md_script_runs_with_a_packaged_student(tmp_path):
    import runpy
    import sys

    cfg = shrink(load_config(WF / "distill_cu_sevennet.json"), tmp_path)
    cfg["teacher"] = {"name": "emt"}
    distill(cfg, progress=False, log_fn=None)
    mod = runpy.run_path(str(WF / "md_nvt.py"))
    atoms = mod["main"]([str(tmp_path / "pkg"), "--steps", "20", "--repeat", "2", "--out", str(tmp_path / "md.extxyz")])
    from ase.io import read

    frames = read(tmp_path / "md.extxyz", index=":")
    assert len(frames) == 3 and np.isfinite(atoms.get_potential_energy())


def test_mgo_chgnet_recipe_is_valid_and_runs(tmp_path):
    """The ionic-oxide recipe: CHGNet teacher, two elements, surfaces and clusters of a
    rock-salt seed."""
    cfg = load_config(WF / "distill_mgo_chgnet.json")
    assert cfg["teacher"]["name"] == "chgnet" and Path(cfg["generate"]["seeds"][0]).exists()
    # the polar (111) slab, which a user gets from the primitive cell's "(100)", is in the data
    assert (1, 1, 1) in [tuple(m) for m in cfg["generate"]["surface_millers"]]
    # the shipped package's loss: force weighting, and the energy/stress terms at the balance
    # the package before the short range had (docs/domain.md); kept in the small run
    assert "short_range" in cfg["generate"]["coverage"] and cfg["train"]["force_delta"] > 0
    loss = {k: cfg["train"][k] for k in ("force_delta", "energy_weight", "stress_weight")}
    cfg = shrink(cfg, tmp_path, **loss)
    cfg["generate"]["surface_millers"] = [[1, 0, 0]]
    cfg["generate"]["cluster_sizes"] = [8]
    summary = distill(cfg, progress=False, log_fn=None)
    card = json.loads((tmp_path / "pkg" / "card.json").read_text())
    assert card["teacher"]["name"] == "chgnet" and sorted(card["atomic_numbers"]) == [8, 12]
    # NVT 2 x 3, strain 4, one (100) slab MD 2, an 8-atom cluster: start + 1 relaxation step + 2 MD
    assert summary["data"]["n_frames"] == 2 * 3 + 4 + 2 + (1 + 1 + 2)


def test_nial_sevennet_recipe_is_valid_and_runs(tmp_path):
    """The B2 intermetallic recipe: two metals, antisites among its defects, a (110) slab."""
    cfg = load_config(WF / "distill_nial_sevennet.json")
    assert cfg["teacher"]["name"] == "sevennet-0" and Path(cfg["generate"]["seeds"][0]).exists()
    assert "antisite" in cfg["generate"]["defect_kinds"]
    cfg = shrink(cfg, tmp_path)
    cfg["generate"]["surface_millers"] = [[1, 1, 0]]
    summary = distill(cfg, progress=False, log_fn=None)
    card = json.loads((tmp_path / "pkg" / "card.json").read_text())
    assert sorted(card["atomic_numbers"]) == [13, 28] and "sampler" not in card
    assert summary["data"]["n_frames"] == 2 * 3 + 4 + 2 + (1 + 1 + 2)


def test_nial_l3i5_recipe_labels_the_frames_sevennet0_samples(tmp_path):
    """The expensive teacher labels only the frames its sampler keeps: one call a frame."""
    cfg = load_config(WF / "distill_nial_sevennet_l3i5.json")
    assert cfg["teacher"]["name"] == "sevennet-l3i5" and cfg["sampler"]["name"] == "sevennet-0"
    same = load_config(WF / "distill_nial_sevennet.json")["generate"]
    assert cfg["generate"] == same  # the two NiAl packages share their configurations
    cfg = shrink(cfg, tmp_path)
    cfg["generate"].update({"nvt_trajectories_per_temperature": 2, "nvt_frames": 2, "strain_frames": 0,
                            "coverage": []})
    distill(cfg, progress=False, log_fn=None)
    card = json.loads((tmp_path / "pkg" / "card.json").read_text())
    assert card["teacher"]["name"] == "sevennet-l3i5" and card["sampler"]["name"] == "sevennet-0"
    from orbdistill.data.generate import read_frames

    frames = read_frames(tmp_path / "run" / "data")
    assert len(frames) == 4 and all(f.info["teacher"] == "sevennet-l3i5" and f.info["sampler"] == "sevennet-0"
                                    for f in frames)


def test_water_chgnet_recipe_is_valid_and_runs(tmp_path):
    """The molecular-liquid recipe: a box of whole water molecules, MD with heavy hydrogen,
    a liquid-vapour interface instead of facets and clusters of whole molecules."""
    from ase.io import read

    from orbdistill.data.generate import read_frames

    cfg = load_config(WF / "distill_water_chgnet.json")
    seed = read(cfg["generate"]["seeds"][0])
    assert cfg["teacher"]["name"] == "chgnet" and seed.get_chemical_formula() == "H64O32"
    assert cfg["generate"]["hydrogen_mass_amu"] == pytest.approx(2.014)
    cfg = shrink(cfg, tmp_path)
    # the recipe's protocols on a 12-molecule box (CHGNet on the recipe's 96 atoms costs
    # 3x the time; the box is only the seed)
    from ase.io import write

    from orbdistill.structures import molecular_liquid

    write(tmp_path / "water_12.extxyz", molecular_liquid("H2O", 12, 1.0, seed=0))
    cfg["generate"].update(seeds=[str(tmp_path / "water_12.extxyz")], cluster_sizes=[9])
    summary = distill(cfg, progress=False, log_fn=None)
    card = json.loads((tmp_path / "pkg" / "card.json").read_text())
    assert card["teacher"]["name"] == "chgnet" and sorted(card["atomic_numbers"]) == [1, 8]
    frames = read_frames(tmp_path / "run" / "data")
    # NVT 2 x 3, strain 4, a liquid-vapour interface MD 2, three molecules: start + 1 relaxation step + 2 MD
    assert summary["data"]["n_frames"] == len(frames) == 2 * 3 + 4 + 2 + (1 + 1 + 2)
    assert {f.info["facet"] for f in frames if f.info["protocol"] == "surface"} == {"liquid-vapour"}
    assert all(f.get_chemical_formula() == "H6O3" for f in frames if f.info["protocol"] == "cluster")
    assert all(abs(f.get_masses()[f.numbers == 1] - 1.008).max() < 1e-3 for f in frames)


def test_short_range_recipe_adds_dimers_pushed_pairs_and_rattles(tmp_path):
    """The Cu recipe with the short-range protocol (docs/domain.md): at small size its data
    hold the three kinds of short-range frame and its card says so."""
    cfg = load_config(WF / "distill_cu_sevennet_short_range.json")
    assert "short_range" in cfg["generate"]["coverage"] and cfg["student"]["overrides"]["pair_repulsion"] == "physical"
    cfg = shrink(cfg, tmp_path)
    cfg["generate"].update(coverage=["short_range"], short_range_frames=2, short_range_dimer_frames=2,
                           short_range_rattle_frames=2, short_range_frames_per_task=1)
    distill(cfg, progress=False, log_fn=None)
    card = json.loads((tmp_path / "pkg" / "card.json").read_text())
    assert card["coverage"]["short_range"]["modes"] == ["dimer", "pushed_pair", "rattle"]
    assert card["coverage"]["short_range"]["pairs"] == ["Cu-Cu"]
    assert card["student"]["config"]["pair_repulsion"] == "physical"
