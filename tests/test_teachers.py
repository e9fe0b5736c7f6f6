"""Teachers: one interface over Orb, SevenNet-0, EMT and any ASE calculator."""

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT

from orbdistill.teachers import available_teachers, load_teacher

from conftest import rattled_triclinic_cu


def test_unknown_teacher_lists_valid_names():
    with pytest.raises(ValueError) as e:
        load_teacher("orb-v9")
    msg = str(e.value)
    assert "orb-v3-conservative-inf-omat" in msg and "sevennet-0" in msg and "emt" in msg


def test_emt_teacher_agrees_with_ase():
    atoms = rattled_triclinic_cu()
    t = load_teacher("emt")
    (p,) = t.predict([atoms])
    ref = atoms.copy()
    ref.calc = EMT()
    assert p.energy == pytest.approx(ref.get_potential_energy(), abs=1e-12)
    np.testing.assert_allclose(p.forces, ref.get_forces(), atol=1e-12)
    np.testing.assert_allclose(p.stress, ref.get_stress(), atol=1e-12)
    assert t.model is None and t.describe()["params"] == 0


def test_teacher_refuses_elements_it_does_not_cover():
    t = load_teacher("emt")
    with pytest.raises(ValueError, match=r"Fe \(Z=26\)"):
        t.predict([bulk("Fe", "bcc", a=2.87)])


def test_any_ase_calculator_is_a_teacher():
    t = load_teacher(EMT(), species=[29])
    (p,) = t.predict(bulk("Cu", "fcc", a=3.61))
    assert p.forces.shape == (1, 3)
    assert t.describe()["species"] == [29]


def test_molecule_labels_have_no_stress():
    from ase.build import molecule

    (p,) = load_teacher("emt").predict(molecule("CH4"))
    assert p.stress is None and p.forces.shape == (5, 3)


def test_sevennet0_gives_sane_copper():
    t = load_teacher("sevennet-0", device="cpu")
    d = t.describe()
    assert d["cutoff"] == pytest.approx(5.0) and 29 in d["species"] and d["params"] > 500_000
    perfect = bulk("Cu", "fcc", a=3.61, cubic=True)
    (p,) = t.predict(perfect)
    assert -4.6 < p.energy / len(perfect) < -3.6  # PBE cohesive region for Cu
    assert np.abs(p.forces).max() < 1e-3  # symmetric site: no force
    compressed = bulk("Cu", "fcc", a=3.45, cubic=True)
    (pc,) = t.predict(compressed)
    assert pc.stress[:3].mean() < 0  # compressed cell: negative (compressive) stress, ASE sign
    assert pc.energy / 4 > p.energy / 4


@pytest.fixture(scope="module")
def orb20():
    return load_teacher("orb-v3-conservative-20-omat", weights="random", device="cpu")


def test_random_orb_says_so(orb20):
    d = orb20.describe()
    assert d["weights"] == "random" and "RANDOM" in d["warning"]
    assert d["params"] == sum(p.numel() for p in orb20.model.parameters()) and d["max_neighbors"] == 20 and d["cutoff"] == 6.0


def test_orb_step_used_by_the_analyser_agrees_with_orbs_calculator(orb20):
    """Our separated forward/gradient pass reproduces orb-models' own calculator."""
    from orbdistill.profiling.targets import orb_target

    atoms = rattled_triclinic_cu()
    atoms.wrap()
    tgt = orb_target(orb20)
    energy, forces, stress = tgt.step(tgt.make_inputs(atoms))
    (p,) = orb20.predict([atoms])
    assert float(energy) == pytest.approx(p.energy, rel=1e-5, abs=1e-4)
    np.testing.assert_allclose(forces.numpy(), p.forces, atol=1e-4)
    from ase.stress import full_3x3_to_voigt_6_stress

    np.testing.assert_allclose(full_3x3_to_voigt_6_stress(stress[0].numpy()), p.stress, atol=1e-5)


def test_orb_missing_local_checkpoint_names_the_file(tmp_path):
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        load_teacher("orb-v3-conservative-20-omat", weights=str(missing))


def test_orb_corrupt_checkpoint_gives_a_clear_error(tmp_path):
    bad = tmp_path / "corrupt.ckpt"
    bad.write_bytes(b"this is not a torch file")
    with pytest.raises(RuntimeError, match="corrupt|Cannot read|does not match"):
        load_teacher("orb-v3-conservative-20-omat", weights=str(bad))


def test_orb_mismatched_checkpoint_is_named(tmp_path, orb20):
    wrong = tmp_path / "direct.ckpt"
    from orbdistill.teachers.orb import build_orb_architecture

    model, _ = build_orb_architecture("orb-v3-direct-20-omat")
    torch.save(model.state_dict(), wrong)
    with pytest.raises(RuntimeError, match="does not match"):
        load_teacher("orb-v3-conservative-20-omat", weights=str(wrong))


def test_orb_local_checkpoint_loads_through_orbs_loader(tmp_path, orb20):
    path = tmp_path / "cons20.ckpt"
    torch.save(orb20.model.state_dict(), path)
    t = load_teacher("orb-v3-conservative-20-omat", weights=str(path), device="cpu", precision="float32-highest")
    atoms = rattled_triclinic_cu()
    atoms.wrap()
    assert t.predict(atoms)[0].energy == pytest.approx(orb20.predict(atoms)[0].energy, rel=1e-5)
    assert t.weights.endswith("cons20.ckpt")


def test_orb_unreachable_download_says_how_to_pass_a_file(monkeypatch):
    import orb_models.forcefield.pretrained as pretrained

    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(pretrained, "cached_path", offline)
    with pytest.raises(RuntimeError, match="weights="):
        load_teacher("orb-v3-conservative-inf-omat")


def test_available_teachers_include_all_families():
    names = available_teachers()
    for n in ("orb-v3-conservative-inf-omat", "orb-v3-conservative-20-omat", "orb-v3-direct-20-omat",
              "orb-v3-conservative-inf-mpa", "orb-v2", "sevennet-0", "emt"):
        assert n in names


def test_a_loader_that_renamed_weights_path_fails_instead_of_downloading():
    """A future orb-models loader without ``weights_path`` must not silently get the
    argument dropped (it would then download the published weights instead)."""
    from orbdistill.teachers.orb import _call_with_supported

    calls = []

    def loader(device=None, precision=None, checkpoint=None):  # "weights_path" renamed
        calls.append(checkpoint)

    with pytest.raises(RuntimeError, match="weights_path.*not fall back to downloading"):
        _call_with_supported(loader, required=("weights_path",), device="cpu", weights_path="/x.ckpt")
    assert calls == []
    _call_with_supported(loader, required=("weights_path",), device="cpu", compile=False)  # optional ones may go
    assert calls == [None]


OFFLINE = [("sevennet-0-22may2024", {}), ("sevennet-l3i5", {}), ("sevennet-mf-0", {"modal": "PBE"}),
           ("sevennet-mf-0", {"modal": "R2SCAN"}), ("chgnet", {}), ("chgnet-r2scan", {})]


@pytest.mark.parametrize("name,kwargs", OFFLINE, ids=[n + "-" + "-".join(k.values()) for n, k in OFFLINE])
def test_offline_teachers_load_by_name_and_are_conservative(name, kwargs):
    """Every teacher whose weights ship in a wheel: it describes itself, is sane on Cu (no
    force on a symmetric site, compression costs energy and gives negative ASE stress) and
    its forces are -dE/dx (central differences on a rattled cell)."""
    t = load_teacher(name, device="cpu", **kwargs)
    d = t.describe()
    assert d["name"] == name and 29 in d["species"] and 4.0 <= d["cutoff"] <= 6.0 and d["params"] > 100_000
    assert t.spec == {"name": name, "weights": None, **kwargs}  # reloads the same way on a Dask worker
    perfect = bulk("Cu", "fcc", a=3.61, cubic=True)
    compressed = bulk("Cu", "fcc", a=3.45, cubic=True)
    p, pc = t.predict([perfect, compressed])
    assert np.isfinite(p.energy) and np.abs(p.forces).max() < 2e-3
    assert pc.energy > p.energy and pc.stress[:3].mean() < 0
    rattled = bulk("Cu", "fcc", a=3.61, cubic=True)
    rattled.rattle(0.05, seed=1)
    (r,) = t.predict(rattled)
    h = 1e-3
    for atom, axis in ((0, 0), (2, 1)):
        plus, minus = rattled.copy(), rattled.copy()
        plus.positions[atom, axis] += h
        minus.positions[atom, axis] -= h
        ep, em = (x.energy for x in t.predict([plus, minus]))
        assert abs(-(ep - em) / (2 * h) - r.forces[atom, axis]) < 5e-3 + 0.02 * abs(r.forces[atom, axis])


def test_multi_fidelity_modals_are_chosen_and_checked():
    pbe = load_teacher("sevennet-mf-0", device="cpu")
    assert pbe.extra["modal"] == "PBE"  # the default
    r2scan = load_teacher("sevennet-mf-0", device="cpu", modal="R2SCAN")
    cu = bulk("Cu", "fcc", a=3.61, cubic=True)
    (a,), (b,) = pbe.predict(cu), r2scan.predict(cu)
    assert abs(a.energy - b.energy) / len(cu) > 0.05  # two levels of theory, two answers
    with pytest.raises(ValueError, match="PBE or R2SCAN"):
        load_teacher("sevennet-mf-0", device="cpu", modal="HSE")
    with pytest.raises(ValueError, match="one level of theory"):
        load_teacher("sevennet-0", device="cpu", modal="PBE")


def test_a_distillation_config_passes_the_modal_to_the_teacher():
    import json
    from pathlib import Path

    from orbdistill.distill_config import load_distill_config, teacher_from_config

    workflows = Path(__file__).resolve().parents[1] / "workflows"
    cfg = json.loads((workflows / "quickstart_cu_sevennet.json").read_text())
    cfg["teacher"] = {"name": "sevennet-mf-0", "modal": "R2SCAN"}
    assert teacher_from_config(load_distill_config(cfg, base_dir=workflows)).extra["modal"] == "R2SCAN"
